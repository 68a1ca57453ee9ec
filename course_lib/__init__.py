"""course_lib: the shared package of the course on efficient convolutions.

One concept per module (see DESIGN.md): ``conv`` (standard convolution), ``costs`` (parameters and
mult-adds), ``timing`` (CPU/CUDA benchmarks), ``data`` (offline datasets), ``viz`` (figures),
``checks`` (student-facing checks), ``grading`` (nbgrader automation). Import what you use, e.g.
``from course_lib.costs import summarize``.
"""
# The course's release number, and the only place it is written: pyproject.toml reads it (setuptools
# dynamic version) and every exercise's setup cell pins it (course_lib.grading.authoring).
__version__ = "0.3.0"
