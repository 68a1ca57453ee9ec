"""The instructor's side of the course: everything that runs nbgrader or student code.

What a student imports (ops, models, costs, timing, data, viz, checks) lives in ``course_lib``;
this subpackage is the trust boundary, kept apart so that the student-facing package stays small:

* :mod:`.course` — single nbgrader steps in a course directory (generate, validate, autograde);
* :mod:`.grade_class` — grade a whole class (``python -m course_lib.grade_class``);
* :mod:`.cluster` — where the grading tasks run: dask workers, embedded or on many hosts;
* :mod:`.sandbox` — the bubblewrap sandbox every execution of student code goes through;
* :mod:`.kernel` — the resource-limited kernel nbgrader starts (inside the sandbox);
* :mod:`.recheck` — the re-check that student code cannot reach;
* :mod:`.bench`, :mod:`.sandbox_bench` — throughput of the pipeline, and the sandbox's cost;
* :mod:`.authoring` — writes nbgrader source notebooks.

The names of :mod:`.course` are re-exported here (``from course_lib import grading;
grading.new_course(...)``).
"""
from course_lib.grading.course import (  # noqa: F401
    ASSIGNMENT_PATTERN, GradingError, SubmissionScore, ValidationResult, assignments, autograde,
    new_course, notebook_name, release_path, repo_root, run_nbgrader, scores, submit, validate)
