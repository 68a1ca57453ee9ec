"""The instructor's side of the course: everything that runs nbgrader or student code.

What a student imports (ops, models, costs, timing, data, viz, checks) lives in ``course_lib``;
this subpackage is the trust boundary. Module map, in the order a class is graded
(``python -m course_lib.grade_class``, :mod:`.pipeline`):

* :mod:`.model` — the records that flow between stages (``Status``, ``GradingOptions`` with the
  one time-budget formula, ``SourceInfo``, ``Submission``, task and result types);
* :mod:`.ingest` — submissions folder or LMS zip -> one record per submitted name;
* :mod:`.identities` — one bounded student id per submitted name, never shared (the names
  and their ids are recorded in the gradebook by :mod:`.gradebook`);
* :mod:`.dispatch` — dask only: where tasks run, retries, stopping early, GPU routing;
* :mod:`.worker` — the dask task: one worker's warm session grades its submissions;
* :mod:`.shard` — grading one notebook in that session (autograde, re-check, feedback);
* :mod:`.feedback` — what of a notebook may reach a page: student HTML/JS as text, bounded outputs;
* :mod:`.nbgrader_runner` — nbgrader kept warm in a process of its own, with deadlines;
* :mod:`.scoring` — THE place a final score and status are decided;
* :mod:`.gradebook` — THE door to nbgrader's gradebook (it never touches manual grading);
* :mod:`.resume` — results stored as they come, so a re-run grades only what is missing,
  changed or suspect;
* :mod:`.outputs` — grades.csv, report.html, problems.txt, fallback feedback;
* :mod:`.environment` — is a worker's environment the coordinator's?
* :mod:`.sources` — course_lib's source files hashed (two copies are the same code, or not);
* :mod:`.pipeline` — ``grade_class``: the stages above, top to bottom;
* :mod:`.sandbox` — the box seen from outside (mount policy, system-call filter, cgroup caps,
  the one supervisor, the broker of warm kernels, the kernelspec, the re-check's client,
  ``sandbox check``);
* :mod:`.inside` — everything that runs IN the box (kernel, nursery, guard, re-check server),
  importing only its wire protocol (:mod:`.inside.wire`) and process hygiene
  (:mod:`.inside.hygiene`) from the grader;
* :mod:`.course` — single nbgrader steps in a course directory (generate, validate, autograde);
* :mod:`.authoring` — writes nbgrader source notebooks, setup cells, chapter twins;
* :mod:`.bench`, :mod:`.sandbox_bench` — throughput of the pipeline, and the sandbox's cost.

The names of :mod:`.course` are re-exported here (``from course_lib import grading;
grading.new_course(...)``).
"""
# Imported first: it also leaves out an import every grading process would pay for (see there).
from course_lib.grading.course import (  # noqa: F401
    ASSIGNMENT_PATTERN, GradingError, ValidationResult, assignments, autograde, new_course,
    notebook_name, release_path, repo_root, run_nbgrader, scores, submit, validate)


def __getattr__(name: str):
    if name == "SubmissionScore":  # lazily: the gradebook module imports nbformat
        from course_lib.grading.gradebook import SubmissionScore

        return SubmissionScore
    raise AttributeError(name)
