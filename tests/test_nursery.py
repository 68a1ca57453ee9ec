"""Warm kernels (course_lib.grading.sandbox.broker and .inside.nursery): one real bwrap sandbox forks every kernel of a shard.

Kernels are started the way nbgrader starts them, with jupyter_client's KernelManager and the
grading kernelspec; what one student's kernel leaves behind (processes, files in /tmp and in its
folder) must be gone when the next student's kernel starts, and a kernel that kills the nursery
must not stop the next one from starting.
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from course_lib.grading import sandbox
from course_lib.grading.sandbox.broker import Broker
from course_lib.grading.sandbox.kernelspec import install_kernelspec, kernel_env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sandbox.bwrap_path() is None, reason="needs bubblewrap")]


@pytest.fixture()
def broker(tmp_path):
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    (course / "solutions" / "answer.txt").write_text("the answer")
    limits = sandbox.Limits(mem_mb=3072, processes=16, wall_s=120)
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[course], limits=limits).for_shard()
    with Broker(box, [], log=tmp_path / "nursery.log") as b:
        env = kernel_env(install_kernelspec(tmp_path / "jupyter", b.box, 3072))
        yield b, env, tmp_path


def _run_in_kernel(broker_env, student: str, code: str, timeout: float = 120) -> dict:
    """Run ``code`` (whose last line prints JSON) as a one-cell notebook in ``student``'s folder
    with nbclient and the grading kernelspec, as nbgrader does; returns that JSON."""
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    b, env, tmp = broker_env
    folder = tmp / "autograded" / student / "ex"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text(f"{student}'s own file")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(code))])
    old = dict(os.environ)
    os.environ.update(env)
    try:
        # The kernel manager's settings nbgrader gets from Sandbox.kernel_manager_args.
        config = Config({"KernelManager": {
            "transport": "ipc", "ip": f"{b.box.ipc_dir}/k",
            "client_class": "course_lib.grading.sandbox.SandboxKernelClient"}})
        NotebookClient(nb, config=config, kernel_name="python3", timeout=timeout,
                       startup_timeout=300,
                       resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    return json.loads(text.strip().splitlines()[-1])


def test_warm_kernels_leave_nothing_to_the_next_student(broker):
    b = broker[0]
    first = _run_in_kernel(broker, "alice", """
        import json, os, subprocess, sys
        # A process that outlives the kernel, a file in /tmp, a file next to the notebook.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
        open("/tmp/left-by-alice", "w").write("x")
        open("planted.py", "w").write("x = 1")
        # An IPython startup file (HOME is /tmp) in folders made unwritable, for the next kernel
        # to run when it starts.
        startup = "/tmp/.ipython/profile_default/startup"
        os.makedirs(startup, exist_ok=True)
        open(f"{startup}/00-evil.py", "w").write("open('/tmp/evil-ran', 'w').write('x')")
        for d in (startup, os.path.dirname(startup), "/tmp/.ipython"):
            os.chmod(d, 0o500)
        # Shared memory (/dev/shm), a file in /dev, System V and POSIX IPC objects, left for the
        # next kernel to find; the kernels' socket folder made unwritable (nbgrader's next
        # kernel could not make its sockets).
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        open("/dev/shm/left-by-alice", "w").write("x")
        open("/dev/left-by-alice", "w").write("x")
        sysv = libc.shmget(4242, 4096, 0o1600), ctypes.get_errno()  # IPC_CREAT | 0600
        mq = libc.mq_open(b"/left-by-alice", 0o100 | 0o2, 0o600, None), ctypes.get_errno()
        sockets = os.path.dirname(json.load(open("/tmp/connection.json"))["ip"])
        os.chmod(sockets, 0o500)
        print(json.dumps({"cwd": os.getcwd(), "files": sorted(os.listdir(".")),
                          "torch_loaded": "torch" in sys.modules, "sysv": sysv, "mq": mq}))
    """)
    # The kernel was forked from the warm nursery: PyTorch is already imported, and the
    # notebook's folder is a copy of its own files.
    assert first["torch_loaded"] is True
    assert first["files"] == ["notes.txt", "planted.py"]
    # System V and POSIX message-queue IPC are refused by the box's system-call filter.
    assert first["sysv"] == [-1, 1] and first["mq"] == [-1, 1], first  # EPERM
    second = _run_in_kernel(broker, "bob", """
        import json, os
        # The box's /proc (a kernel's PID namespace of its own cannot mount one): this kernel
        # and the processes above it (the nursery, its middle process, the namespace's first).
        ours, pid = set(), int(os.readlink("/proc/self"))
        while pid > 0:
            ours.add(pid)
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        others = []
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) not in ours:
                try:
                    others.append(open(f"/proc/{pid}/cmdline").read().replace("\\0", " "))
                except OSError:
                    pass
        parent = os.path.dirname(os.getcwd())
        shm = open("/proc/sysvipc/shm").read().splitlines()[1:]
        sockets = os.path.dirname(json.load(open("/tmp/connection.json"))["ip"])
        print(json.dumps({"others": others, "tmp": sorted(os.listdir("/tmp")),
                          "dev": sorted(os.listdir("/dev")),
                          "sockets_mode": oct(os.stat(sockets).st_mode & 0o777),
                          "dev_shm": sorted(os.listdir("/dev/shm")), "sysv_shm": shm,
                          "siblings": sorted(os.listdir(parent)),
                          "files": sorted(os.listdir(".")),
                          "solutions_visible": os.path.exists(%r)}))
    """ % str(broker[2] / "course" / "solutions" / "answer.txt"))
    assert second["others"] == [], "alice's process survived into bob's kernel"
    assert "left-by-alice" not in second["tmp"], "alice's /tmp file reached bob"
    assert "evil-ran" not in second["tmp"], "alice's IPython startup file ran in bob's kernel"
    assert second["dev_shm"] == [] and second["sysv_shm"] == [], "alice's shared memory is left"
    assert "left-by-alice" not in second["dev"], "alice's file in /dev reached bob"
    assert second["sockets_mode"] == "0o700", "the socket folder keeps alice's mode"
    assert len(second["siblings"]) == 1, "another kernel's folder is visible"
    assert second["files"] == ["notes.txt"]
    assert second["solutions_visible"] is False
    assert b.kernels == 2
    # The supervisor's reports are written as for a kernel in a sandbox of its own.
    events = Path(b.box.events_dir)
    report = json.loads((events / "kernel-alice.json").read_text().splitlines()[-1])
    assert any(e["kind"] == "spawn" for e in report["audit"]), report


SIGNAL_THE_NURSERY = """
import ctypes, json, os, signal, subprocess, sys
me = os.getpid()
# Every PID the box's /proc lists (a kernel reads the box's /proc: see the nursery), the nursery
# and the processes above this kernel among them. In the kernel's namespace such a number names
# nothing or one of its own threads (SIGUSR1 is handled here: it ends nothing of ours).
signal.signal(signal.SIGUSR1, lambda *args: None)
listed = [int(p) for p in os.listdir("/proc") if p.isdigit()]
nursery_seen = any("inside.nursery" in open(f"/proc/{p}/cmdline").read() for p in listed)
for pid in listed:
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        pass
for sig in (signal.SIGSTOP, signal.SIGKILL):  # the namespace's first process takes neither
    os.kill(os.getppid(), sig)
unshared = ctypes.CDLL(None, use_errno=True).unshare(0x10000000 | 0x20000000) == 0
CHAIN = "import os\\nwhile True:\\n    if os.fork():\\n        os._exit(0)"
subprocess.Popen([sys.executable, "-c", CHAIN], start_new_session=True)
print(json.dumps({"me": me, "nursery_seen": nursery_seen, "unshared": unshared}))
"""


def test_a_kernel_cannot_signal_the_nursery(broker):
    """Each kernel runs in a PID namespace of its own (issue 21, item 2): the nursery's PID, read
    from the box's /proc, names nothing there (or a process of the kernel's own), so a signal
    sent to every PID listed reaches no process outside, and SIGSTOP and SIGKILL do not reach
    the namespace's first process (its parent there); the kernel cannot make
    namespaces (its filter is loaded before it starts); a chain that forks and exits without
    pause ends with the kernel. The next kernel comes from the same nursery, and sees nothing
    of the first."""
    b = broker[0]
    first = _run_in_kernel(broker, "mallory", SIGNAL_THE_NURSERY)
    assert first == {"me": 2, "nursery_seen": True, "unshared": False}, first
    nursery, bwrap = b.nursery_pid, b.proc.pid
    after = _run_in_kernel(broker, "carol", """
        import json, os
        ours, pid = set(), int(os.readlink("/proc/self"))
        while pid > 0:
            ours.add(pid)
            pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        print(json.dumps({"others": [p for p in os.listdir("/proc")
                                     if p.isdigit() and int(p) not in ours],
                          "files": sorted(os.listdir("."))}))
    """)
    assert after == {"others": [], "files": ["notes.txt"]}, after
    assert (b.nursery_pid, b.proc.pid) == (nursery, bwrap), "the nursery was replaced"
    assert b.kernels == 2


@pytest.fixture()
def broker_without_namespaces(tmp_path):
    """A broker whose kernels share the box's PID namespace with the nursery (issue 21's
    protections off, as on a machine that allows no nested namespaces): what a kernel does to
    the nursery must still end only its own sandbox."""
    course = tmp_path / "course"
    course.mkdir()
    limits = sandbox.Limits(mem_mb=3072, processes=16, wall_s=120, caps=False)
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[course], limits=limits).for_shard()
    with Broker(box, [], log=tmp_path / "nursery.log") as b:
        env = kernel_env(install_kernelspec(tmp_path / "jupyter", b.box, 3072))
        yield b, env, tmp_path


def test_a_kernel_that_kills_the_nursery_only_ends_itself(broker_without_namespaces):
    broker = broker_without_namespaces
    b = broker[0]
    with pytest.raises(Exception):
        _run_in_kernel(broker, "mallory", """
            import os, signal
            os.kill(os.getppid(), signal.SIGKILL)   # the nursery: the whole sandbox ends
            import time; time.sleep(30)
        """, timeout=15)
    after = _run_in_kernel(broker, "carol", """
        import json, os
        print(json.dumps({"ok": True, "files": sorted(os.listdir("."))}))
    """)
    assert after == {"ok": True, "files": ["notes.txt"]}
    assert b.kernels == 2  # carol's kernel came from a fresh nursery


def test_without_a_broker_the_launcher_falls_back(tmp_path):
    """A kernelspec naming a broker that is not there starts a sandbox of its own."""
    limits = sandbox.Limits(mem_mb=3072, processes=16, wall_s=120)
    box = sandbox.Sandbox.for_batch(tmp_path / "work", hide=[], limits=limits).for_shard()
    b = Broker(box, [])  # never entered: nobody listens on its socket
    env = kernel_env(install_kernelspec(tmp_path / "jupyter", b.box, 3072))
    out = _run_in_kernel((b, env, tmp_path), "dave", """
        import json, sys
        print(json.dumps({"torch_loaded": "torch" in sys.modules}))
    """)
    assert out == {"torch_loaded": False}  # a cold kernel: nothing imported before the notebook


def test_a_kernel_that_stops_the_nursery_only_ends_itself(broker_without_namespaces):
    """SIGSTOP leaves the nursery alive but deaf: the broker notices the kernel ended without
    the nursery saying so, and the next kernel comes from a fresh sandbox."""
    broker = broker_without_namespaces
    b = broker[0]
    out = _run_in_kernel(broker, "eve", """
        import json, os, signal
        os.kill(os.getppid(), signal.SIGSTOP)   # the nursery
        print(json.dumps({"stopped": True}))
    """)
    assert out == {"stopped": True}
    after = _run_in_kernel(broker, "frank", """
        import json, os
        print(json.dumps({"files": sorted(os.listdir("."))}))
    """)
    assert after == {"files": ["notes.txt"]}
    assert b.kernels == 2
