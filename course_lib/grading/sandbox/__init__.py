"""The box, seen from outside: every execution of student code goes through here.

* :mod:`.policy` — what student code sees (the mount policy as data, turned into bwrap's argv);
* :mod:`.supervisor` — the one supervisor of every sandboxed run (processes, wall clock, audit);
* :mod:`.broker` — warm kernels: one nursery per shard, one kernel at a time;
* :mod:`.kernelspec` — the kernelspec nbgrader starts kernels with, and its launcher;
* :mod:`.recheck_client` — the re-check's server, started and fed from outside;
* :mod:`.check` — ``python -m course_lib.grading.sandbox check``: can this machine run the box?
* :mod:`.seccomp` — the system-call filter bwrap loads for everything in the box;
* :mod:`.cgroups` — whole-notebook caps (memory, tasks, CPU): one cgroup per kernel and job.

What runs inside is :mod:`course_lib.grading.inside`. Recipe and gotchas: shared/DESIGN.md and
book/instructor_guide.md ("Broken and hostile notebooks").
"""
from course_lib.grading.sandbox.policy import (  # noqa: F401
    Limits, Sandbox, SandboxUnavailable, bwrap_path)
from course_lib.grading.sandbox.supervisor import RunReport, run_sandboxed  # noqa: F401


def __getattr__(name: str):
    # The kernel client is imported lazily (jupyter_client is the grader's, not the student's);
    # nbgrader finds it by this dotted name (Sandbox.kernel_manager_config).
    if name == "SandboxKernelClient":
        from course_lib.grading.sandbox.kernelspec import kernel_client_class

        return kernel_client_class()
    raise AttributeError(name)
