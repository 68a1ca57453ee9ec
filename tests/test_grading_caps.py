"""Whole-notebook caps, the system-call filter, the bounded channels, the re-check's heartbeat.

Everything runs for real: bubblewrap, the kernel's cgroups (v1 or v2, whichever the machine has),
the BPF filter bwrap loads, the re-check's server. The notebook that attacks the machine's
resources while it solves the exercise (:func:`resource_hog`) is graded through the pipeline in
tests/test_grading_safety.py's batch, with an honest classmate after it, by the same warm kernels
and the same re-check server (one pipeline run serves both modules).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import nbformat
import pytest

from course_lib.grading import sandbox
from course_lib.grading.inside import hygiene, wire
from course_lib.grading.inside.hygiene import descendants
from course_lib.grading.sandbox import cgroups, seccomp
from course_lib.grading.sandbox.recheck_client import STALL_S, RecheckServer
from course_lib.grading.sandbox.supervisor import program_pid

MEM_MB = 3072
needs_bwrap = pytest.mark.skipif(sandbox.bwrap_path() is None, reason="needs bubblewrap")
needs_caps = pytest.mark.skipif("memory" not in cgroups.hierarchy().bases,
                                reason="no usable memory cgroup on this machine")
needs_filter = pytest.mark.skipif(seccomp.machine() != "x86_64",
                                  reason="the system-call numbers below are x86_64's")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caps")
    limits = sandbox.Limits(mem_mb=MEM_MB, processes=16, wall_s=120)
    return sandbox.Sandbox.for_batch(tmp / "work", hide=[], limits=limits)


def _run(box, code: str):
    """Run ``code`` in the real sandbox; (report, the JSON its last line printed)."""
    scratch = box.new_scratch("caps")
    out = scratch.parent / f"{scratch.name}.out"
    with open(out, "wb") as stdout:
        report = sandbox.run_sandboxed(box, [sys.executable, "-c", textwrap.dedent(code)], "caps",
                                       writable={str(scratch): str(scratch)}, cwd=str(scratch),
                                       stdout=stdout, stderr=subprocess.STDOUT)
    text = out.read_text()
    try:
        return report, json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return report, {"raw": text[-3000:]}


# ----------------------------------------------------------------------------- system calls
@needs_bwrap
@needs_filter
def test_each_denied_call_fails_with_eperm_inside_and_python_still_works(box):
    report, seen = _run(box, f"""
        import ctypes, json, os, subprocess, sys, threading
        libc = ctypes.CDLL(None, use_errno=True)
        calls = {dict((k, v[0]) for k, v in seccomp.SYSCALLS.items())!r}
        got = {{}}
        for name, nr in calls.items():
            ctypes.set_errno(0)
            got[name] = [libc.syscall(nr, 0, 0, 0, 0, 0, 0), ctypes.get_errno()]
        ctypes.set_errno(0)
        new_user_ns = [libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno()]
        ctypes.set_errno(0)
        clone3 = [libc.syscall(435, 0, 0), ctypes.get_errno()]
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        import torch
        x = torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))
        import matplotlib.pyplot as plt
        plt.plot([1, 2]); plt.savefig("plot.png")
        print(json.dumps({{"got": got, "new_user_ns": new_user_ns, "clone3": clone3,
                          "child": subprocess.run(["true"]).returncode, "conv": x.sum().item(),
                          "png": os.path.getsize("plot.png"),
                          "seccomp": open("/proc/self/status").read().split("Seccomp:")[1].split()[0]}}))
    """)
    assert "raw" not in seen, seen
    assert seen["seccomp"] == "2", "no filter loaded"
    assert {k: v for k, v in seen["got"].items() if v != [-1, errno.EPERM]} == {}
    assert seen["new_user_ns"] == [-1, errno.EPERM]   # clone with a namespace flag
    assert seen["clone3"] == [-1, errno.ENOSYS]       # so that the C library uses clone
    assert seen["child"] == 0 and seen["conv"] == 36.0 and seen["png"] > 1000
    assert report.returncode == 0


def test_filter_is_built_for_both_architectures_and_refuses_others():
    for arch in ("x86_64", "aarch64"):
        prog = seccomp.program(arch)
        assert len(prog) % 8 == 0 and len(prog) // 8 > len(seccomp.DENIED)
    with pytest.raises(ValueError, match="no seccomp filter for the mips architecture"):
        seccomp.program("mips")


# ----------------------------------------------------------------------------- caps
@needs_bwrap
@needs_caps
def test_memory_of_all_processes_together_is_capped(box):
    """Four processes of 1 GiB each (RLIMIT_AS allows each one) exceed the notebook's 3 GiB."""
    report, seen = _run(box, """
        import json, subprocess, sys, time
        hog = "import time; x = b'1' * (1 << 30); time.sleep(30)"
        procs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(4)]
        start = time.monotonic()
        while time.monotonic() - start < 60 and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        codes = [p.poll() for p in procs]
        for p in procs:
            p.kill()
        print(json.dumps({"codes": codes, "seconds": time.monotonic() - start}))
    """)
    assert -9 in seen["codes"], seen  # the OOM killer of the notebook's cgroup, within seconds
    assert seen["seconds"] < 60, "bounded by the cap, not by a timeout"
    assert "memory" in report.caps_hit
    assert report.peak_mb is not None and report.peak_mb <= MEM_MB


@needs_bwrap
def test_shared_memory_tmp_and_scratch_are_size_limited(box):
    """/dev/shm and /tmp are tmpfs of a fixed size (not half the RAM)."""
    limits = box.limits
    _, seen = _run(box, """
        import json, os
        def fill(folder):
            chunk, written = b"0" * (16 << 20), 0
            try:
                for i in range(128):
                    with open(os.path.join(folder, f"fill{i}"), "wb") as f:
                        f.write(chunk)
                    written += 16
            except OSError as exc:
                return written, exc.errno
            return written, None
        print(json.dumps({"shm": fill("/dev/shm"), "tmp": fill("/tmp")}))
    """)
    assert seen["shm"][1] == errno.ENOSPC and seen["shm"][0] <= limits.shm_mb, seen
    assert seen["tmp"][1] == errno.ENOSPC and seen["tmp"][0] <= limits.tmp_mb, seen


# Threads until the tasks cap refuses one (played alone and inside a graded notebook).
THREAD_FLOOD = """
threading.stack_size(64 * 1024)
_stop, _started = threading.Event(), 0
try:
    for _ in range(3000):
        threading.Thread(target=_stop.wait, daemon=True).start()
        _started += 1
except RuntimeError:
    pass
_stop.set()
"""


@needs_bwrap
@needs_caps
def test_tasks_are_capped(box):
    if "pids" not in cgroups.hierarchy().bases:
        pytest.skip("no pids controller")
    report, seen = _run(box, """
        import json, threading
    """ + textwrap.indent(THREAD_FLOOD, "        ") + """
        print(json.dumps({"started": _started}))
    """)
    assert seen["started"] < box.limits.tasks, seen
    assert "tasks" in report.caps_hit


# Processes that keep changing PID: each forks and exits at once, six chains side by side.
PID_CHAINS = """
import os
for _ in range(5):
    if os.fork() == 0:
        break
while True:
    if os.fork():
        os._exit(0)
"""


@pytest.mark.skipif(not (cgroups.hierarchy().version == 2 or
                         cgroups.FREEZER in cgroups.hierarchy().bases),
                    reason="neither cgroup v2 nor the v1 freezer on this machine")
def test_one_kill_pass_ends_processes_that_keep_changing_pid():
    """A PID read from the cage names a process that may already have forked its successor and
    exited, so one pass of SIGKILL over the PIDs misses the successors (every time, on these
    machines). Frozen first (v1) or killed by the kernel (v2's cgroup.kill), the cage empties
    in one pass, three times out of three."""
    for _ in range(3):
        cage = cgroups.Cage.create("pid-chains", None, None, None)
        proc = subprocess.Popen(cage.argv() + [sys.executable, "-c", PID_CHAINS])
        try:
            time.sleep(0.3)  # the chains run
            assert len(cage.pids()) >= 6
            assert cage.kill_all(rounds=1), "processes survived one kill pass"
        finally:
            cage.close()
            proc.wait()


ZOMBIE_AND_SLEEPER = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # alive
child = os.fork()
if child == 0:
    os._exit(0)  # a zombie: its parent never collects it
os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # it has exited; left uncollected
print("ready", flush=True)
time.sleep(30)
"""


def test_the_process_count_leaves_out_zombies():
    """The watchdog counts processes running at once: a zombie (or a link of a fork chain that
    has exited since the walk read it) holds no CPU and no memory, and counting such links made
    a chain that forks and exits look like dozens of processes (a re-check server was killed
    for "more than 16 processes" that never ran at once)."""
    proc = subprocess.Popen([sys.executable, "-c", ZOMBIE_AND_SLEEPER], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        below = descendants(proc.pid)
        zombies = [p for p in below if hygiene.state(p) == "Z"]
        assert len(below) == 2 and len(zombies) == 1, below
        assert hygiene.alive_descendants(proc.pid) == [p for p in below if p not in zombies]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_check_says_which_limits_are_enforced():
    from course_lib.grading.sandbox.check import enforced_limits

    text = enforced_limits(sandbox.Limits(mem_mb=MEM_MB))
    tree = cgroups.hierarchy()
    if tree.bases:
        assert f"cgroup v{tree.version}" in text and f"{MEM_MB} MiB of memory" in text
    else:
        assert "NO whole-notebook caps" in text and tree.why in text
    assert ("system-call filter: " in text) == seccomp.supported()
    assert "turned OFF" in enforced_limits(sandbox.Limits(caps=False))


# ----------------------------------------------------------------------------- channels
def test_a_line_without_end_does_not_grow_the_reader():
    """1 GiB without a newline on the audit channel: the reader keeps at most one line's worth
    and closes the channel; the writer is refused after a few MiB."""
    read_end, write_end = os.pipe()
    events: list[dict] = []
    reader = threading.Thread(target=wire.collect_audit, args=(read_end, events))
    reader.start()
    chunk, sent = b"x" * (1 << 20), 0
    try:
        while sent < (1 << 30):
            sent += os.write(write_end, chunk)
    except BrokenPipeError:
        pass
    finally:
        os.close(write_end)
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert sent < 8 * wire.MAX_LINE, f"{sent} bytes accepted"
    assert events == []


# ----------------------------------------------------------------------------- the re-check
# A classmate's code, read out of memory (issue 21, attack 7): a secret in one student's cell is
# looked for in the memory of the next student's process. ``found`` holds the secrets seen: its
# own (which it must see, or the scan is broken) and a classmate's (which it must never see).
CLASSMATE_SECRET = "classmate-secret: " + "5f0c" * 8
OWN_SECRET = "own-secret: " + "9ab1" * 8
MEMORY_SCAN = """
import re
def _secrets_in_memory():
    pattern = re.compile(rb"(?:own|classmate)-secret: [0-9a-f]{32}")
    found = set()
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            named = len(fields) > 5 and not fields[5].startswith("[")
            if "r" not in fields[1] or named or hi - lo > 1 << 30:
                continue  # the heap, the stack and anonymous memory: where data lives
            try:
                mem.seek(lo)
                found.update(m.decode() for m in pattern.findall(mem.read(hi - lo)))
            except (OSError, ValueError, OverflowError):
                pass
    return found
mine = %r
found = _secrets_in_memory()
""" % OWN_SECRET


def _job(student: str, code: str, test: str) -> dict:
    return {"student": student, "cells": [
        {"id": "code", "kind": "code", "source": textwrap.dedent(code), "locked": False,
         "points": 0},
        {"id": "test", "kind": "test", "source": textwrap.dedent(test), "locked": True,
         "points": 1}]}


@needs_bwrap
@pytest.mark.slow
def test_recheck_leftovers_memory_and_a_stopped_server(box, tmp_path):
    """One re-check server: a student leaves files in /dev, /dev/shm, /tmp and the scratch
    folder; the next student's child sees none of them, and a later one finds nothing of the
    first student's code in its own memory (children come from a zygote that never read a job).
    A server stopped by someone it cannot stop from inside (the grader's own machine) is noticed
    in seconds, not after its budget, and the next student gets a fresh server."""
    with RecheckServer(box, cell_timeout=30, mem_mb=MEM_MB, check_modules=[],
                       log=tmp_path / "recheck.log") as server:
        left = server.judge(_job("alice", f"""
            import os
            for path in ("/dev/left", "/dev/shm/left", "/tmp/left", "left"):
                open(path, "w").write("alice")
            secret = {CLASSMATE_SECRET!r}
        """, "assert os.path.exists('/dev/shm/left')"), budget_s=120)
        assert [e.get("score") for e in left if e.get("event") == "cell"] == [None, 1.0], left
        seen = server.judge(_job("bob", "import os", """
            assert not os.path.exists("/dev/left"), "/dev"
            assert os.listdir("/dev/shm") == [], "/dev/shm"
            assert "left" not in os.listdir("/tmp"), "/tmp"
            assert os.listdir(".") == [], "scratch"
        """), budget_s=120)
        assert [e.get("score") for e in seen if e.get("event") == "cell"] == [None, 1.0], seen
        scan = server.judge(_job("eve", MEMORY_SCAN, """
            assert mine in found, f"the scan is broken: {found}"
            assert found == {mine}, f"a classmate's code in memory: {found - {mine}}"
        """), budget_s=120)
        cells = [e for e in scan if e.get("event") == "cell"]
        assert [e.get("score") for e in cells] == [None, 1.0], cells
        starts = server.starts
        outer = server._outcome["proc"].pid  # bwrap, outside; the server is its program
        stopper = threading.Timer(3, lambda: os.kill(program_pid(outer), signal.SIGSTOP))
        stopper.start()
        start = time.monotonic()
        stopped = server.judge(_job("mallory", "import time\ntime.sleep(8)", "pass"),
                               budget_s=300)
        took = time.monotonic() - start
        stopper.join()
        assert took < STALL_S + 10, f"noticed after {took:.0f} s"
        assert any("stopped answering" in e.get("reason", "") for e in stopped), stopped
        after = server.judge(_job("carol", "x = 1", "assert x == 1"), budget_s=120)
        assert [e.get("score") for e in after if e.get("event") == "cell"] == [None, 1.0], after
        assert server.starts == starts + 1


# What a student's re-check child tries against the processes around it: signal every process it
# can name (its parent, every PID in the box's /proc: SIGUSR1 ends a process that has no handler,
# and this one has one, so hitting itself or its threads is harmless), stop its parent, start a
# namespace of its own, and leave behind a chain of processes that fork and exit without pause.
REACH_OUT = """
import ctypes, os, signal, subprocess, sys
me = os.getpid()
signal.signal(signal.SIGUSR1, lambda *args: None)
named = sorted({int(p) for p in os.listdir("/proc") if p.isdigit()} | {os.getppid()})
for pid in named:
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        pass
os.kill(os.getppid(), signal.SIGSTOP)
unshared = ctypes.CDLL(None, use_errno=True).unshare(0x10000000 | 0x20000000) == 0
CHAIN = "import os\\nwhile True:\\n    if os.fork():\\n        os._exit(0)"
subprocess.Popen([sys.executable, "-c", CHAIN], start_new_session=True)
"""


@needs_bwrap
@pytest.mark.slow
def test_a_recheck_child_has_a_pid_namespace_of_its_own(tmp_path):
    """Each student's child is in a PID namespace of its own (issue 21, item 2): it can signal
    no process outside it (not its server, not the zygote, not a classmate's child: a PID it
    reads from the box's /proc names nothing, or a process of its own namespace, whose first
    process takes no signal from inside), it cannot make namespaces (its filter is loaded before
    its first cell), and one kill ends all it started, however fast it forks: nothing of it is
    left in the box for the next student.

    The box allows the default number of processes (not the module's 16): the chain's links are
    alive at once only until each exits, but on a loaded machine several are, and the box-wide
    watchdog would then rightly end the server; that limit is not what this test is about."""
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[], limits=sandbox.Limits(
        mem_mb=MEM_MB, wall_s=120))
    assert box.limits.processes >= 64
    with RecheckServer(box, cell_timeout=30, mem_mb=MEM_MB, check_modules=[],
                       log=tmp_path / "recheck.log") as server:
        warm = server.judge(_job("alice", "x = 1", "assert x == 1"), budget_s=120)
        assert [e.get("score") for e in warm if e.get("event") == "cell"] == [None, 1.0], warm
        outer = server._outcome["proc"].pid
        before = set(descendants(outer))
        starts = server.starts
        reached = server.judge(_job("mallory", REACH_OUT, """
            assert me == 2, f"not in a PID namespace of its own: pid {me}"
            assert not unshared, "made a namespace"
        """), budget_s=120)
        cells = [e for e in reached if e.get("event") == "cell"]
        assert [e.get("score") for e in cells] == [None, 1.0], reached
        assert not [e for e in reached if e.get("event") in ("exit", "forged")], reached
        time.sleep(0.5)
        assert set(descendants(outer)) == before, "the chain outlived its job"
        after = server.judge(_job("carol", "x = 1", "assert x == 1"), budget_s=120)
        assert [e.get("score") for e in after if e.get("event") == "cell"] == [None, 1.0], after
        assert server.starts == starts, "the server had to be replaced"
    from course_lib.grading.sandbox.check import check_sandbox

    assert "run in a PID namespace of their own" in check_sandbox()  # and says so


# ----------------------------------------------------------------------------- a graded batch
def _solved() -> dict:
    """The solved release (as the hostile pipeline test builds it) and its cells by grade id."""
    from test_grading_pipeline import _cells_by_id, _solved_release

    nb = _solved_release()
    return nb, _cells_by_id(nb)


DISK = """
import os
def _fill(folder, most_mb):
    chunk, written = b"0" * (16 << 20), 0
    try:
        for i in range(most_mb // 16):
            with open(os.path.join(folder, f"fill{i}"), "wb") as f:
                f.write(chunk)
            written += 16
    except OSError:
        pass
    for name in os.listdir(folder):
        if name.startswith("fill"):
            os.remove(os.path.join(folder, name))
    return written
_disk = {"/dev/shm": _fill("/dev/shm", 1024), "/tmp": _fill("/tmp", 1024), ".": _fill(".", 2048)}
if not (_disk["/dev/shm"] <= %d and _disk["/tmp"] <= %d and _disk["."] <= %d):
    conv_output_size = None  # the attack went unbounded: this part is lost
"""
MEMORY = """
import subprocess, sys, time
_hog = "import time; x = b'1' * (1 << 30); time.sleep(60)"
_procs = [subprocess.Popen([sys.executable, "-c", _hog]) for _ in range(4)]
_start = time.monotonic()
while time.monotonic() - _start < 30 and all(p.poll() is None for p in _procs):
    time.sleep(0.05)
_capped = any(p.poll() == -9 for p in _procs)
for _p in _procs:
    _p.kill()
    _p.wait()
if not _capped:
    conv_params = None  # 4 GiB were allowed: this part is lost
"""
TASKS_AND_CALLS = """
import ctypes, json, os, threading
""" + THREAD_FLOOD + """_libc = ctypes.CDLL(None, use_errno=True)
_refused = []
for _nr in (101, 272, 165, 321, 298, 323, 29, 240):  # ptrace unshare mount bpf perf uffd shm mq
    ctypes.set_errno(0)
    _refused.append(_libc.syscall(_nr, 0, 0, 0, 0, 0, 0) == -1 and ctypes.get_errno() == 1)
# Leftovers for the next student: a file in /dev and /dev/shm, the socket folder locked.
open("/dev/planted", "w").write("x")
open("/dev/shm/planted", "w").write("x")
if os.path.exists("/tmp/connection.json"):
    os.chmod(os.path.dirname(json.load(open("/tmp/connection.json"))["ip"]), 0o500)
if _started >= %d or not all(_refused):
    conv2d_unfold = None  # a cap or the filter did not hold: this part is lost
"""


def resource_hog(limits: sandbox.Limits) -> nbformat.NotebookNode:
    """The solved release attacking the machine's resources (DISK, MEMORY, TASKS_AND_CALLS), each
    attack in a part it loses if the cap it tests did not hold. Graded, beside an honest
    classmate after it, in test_grading_safety.py's batch (one pipeline run for both modules)."""
    hog, cells = _solved()
    cells["part1"].source += DISK % (limits.shm_mb, limits.tmp_mb, limits.scratch_mb)
    cells["part2"].source += MEMORY
    cells["part4"].source += TASKS_AND_CALLS % limits.tasks
    return hog
