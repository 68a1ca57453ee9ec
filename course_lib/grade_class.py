"""``python -m course_lib.grade_class``: the class-grading command, kept at its documented name.

The pipeline itself is :mod:`course_lib.grading.pipeline`."""
import sys

from course_lib.grading.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
