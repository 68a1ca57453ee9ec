"""How nbgrader's kernels get into the box: the grading kernelspec and its launcher.

nbgrader starts kernels through a kernelspec. :func:`install_kernelspec` writes one whose command
is this package's launcher (``python -m course_lib.grading.sandbox kernel CONFIG -f FILE``), and
:func:`kernel_env` makes Jupyter find it first. The launcher (:func:`launch_kernel`, outside the
box, as the grader) asks the shard's broker for a warm kernel (:mod:`.broker`) and relays
interrupts and shutdowns; where there is no broker it starts the kernel in a sandbox of its own.
Kernels talk to nbgrader over IPC sockets in a bound folder (TCP cannot cross
``--unshare-net``); nbgrader's side uses :class:`SandboxKernelClient` (no heartbeat).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sys
from dataclasses import asdict
from pathlib import Path

from course_lib.grading.inside import wire
from course_lib.grading.inside.hygiene import die_with_parent
from course_lib.grading.sandbox.policy import Sandbox
from course_lib.grading.sandbox.supervisor import events_file, run_sandboxed

LAUNCH_TIMEOUT_S = 390  # the broker may have to start a nursery first (imports on a busy machine)


def kernel_env(folder: Path, base: dict | None = None) -> dict:
    """Environment in which Jupyter finds the grading kernelspec before the stock ``python3``."""
    env = dict(os.environ if base is None else base)
    paths = [str(folder)] + [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    env["JUPYTER_PATH"] = os.pathsep.join(paths)
    env["MPLBACKEND"] = "Agg"
    # One thread per kernel: parallel grading workers must not oversubscribe the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def install_kernelspec(folder: Path, sandbox: Sandbox | None, mem_mb: int) -> Path:
    """Write ``folder/kernels/python3/kernel.json``: the limited kernel, sandboxed unless
    ``sandbox`` is None. Returns ``folder`` (put it first on JUPYTER_PATH)."""
    spec_dir = Path(folder) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    if sandbox is None:
        argv = [sys.executable, "-m", "course_lib.grading.inside.kernel", "--mem-mb",
                str(int(mem_mb)), "-f", "{connection_file}"]
        name = f"Python 3 (grading, {mem_mb} MiB limit, NO sandbox)"
    else:
        config = spec_dir / "sandbox.json"
        config.write_text(sandbox.to_json())
        argv = [sys.executable, "-m", "course_lib.grading.sandbox", "kernel", str(config),
                "-f", "{connection_file}"]
        name = f"Python 3 (grading sandbox, {mem_mb} MiB limit)"
    # Interrupts by signal: the launcher passes SIGINT on to the kernel inside. (Message-mode
    # interrupts hang nbclient for good when the kernel is already dead: a blocking zmq send.)
    spec = {"argv": argv, "display_name": name, "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return Path(folder)


@functools.lru_cache(maxsize=None)
def kernel_client_class():
    from jupyter_client.asynchronous import AsyncKernelClient

    class SandboxKernelClient(AsyncKernelClient):
        """nbclient's kernel client without the heartbeat channel.

        Over IPC, a heartbeat socket re-created after the kernel died blocks its thread for good
        (a zmq send to a socket file that is gone), and nbclient then hangs joining it. The kernel
        manager's own check (is the launcher process alive?) is what nbclient uses anyway."""

        def start_channels(self, shell=True, iopub=True, stdin=True, hb=True, control=True):
            super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=False,
                                   control=control)

    return SandboxKernelClient


def warm_kernel(path: str, connection_file: str, folder: str, kernel_args: list[str]
                ) -> int | None:
    """A kernel from the broker at ``path``; its exit status, or None where there is no nursery
    to give one (start a sandbox of its own instead)."""
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        wire.send(conn, {"connection": Path(connection_file).read_text(), "folder": folder,
                         "args": list(kernel_args)})
        reader = wire.LineReader(conn)
        reply = reader.read(LAUNCH_TIMEOUT_S)
    except (OSError, TimeoutError):
        return None
    if not reply or reply.get("event") != "started":
        conn.close()
        return None

    def relay(signum, frame):  # jupyter_client interrupts by SIGINT, stops by SIGTERM
        try:
            wire.send(conn, {"event": "interrupt" if signum == signal.SIGINT else "kill"})
        except OSError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, relay)
    while True:
        try:
            event = reader.read(None)
        except InterruptedError:
            continue
        if event is None:
            return 1
        if event.get("event") == "exit":
            return event.get("returncode") or 0


def launch_kernel(config: Path, connection_file: str, kernel_args: list[str] = ()) -> int:
    """The kernelspec's command (runs outside the sandbox, as the grader): a warm kernel from the
    shard's broker, else a kernel in a sandbox whose only writable folder is a scratch copy of
    the notebook's folder. Dies with nbgrader, so a killed grading run leaves no kernel."""
    die_with_parent()
    box = Sandbox.from_json(Path(config).read_text())
    cwd = os.getcwd()  # nbgrader starts the kernel in the notebook's folder
    if box.nursery:
        returncode = warm_kernel(box.nursery, connection_file, cwd, list(kernel_args))
        if returncode is not None:
            return returncode
    name = "/".join(Path(cwd).parts[-2:])
    try:  # a previous kernel may have changed the socket folder's mode (see broker)
        os.chmod(box.ipc_dir, 0o700)
    except OSError:
        pass
    lim = box.limits
    # Its folder is a size-limited tmpfs at the notebook's path, filled by the kernel from the
    # notebook's folder (bound read-only): it writes nothing to the disk.
    inbox = "/tmp/notebook-files"
    command = [sys.executable, "-m", "course_lib.grading.inside.kernel", "--mem-mb",
               str(lim.mem_mb), "--file-mb", str(lim.file_mb), "--copy-from", inbox,
               "-f", "/tmp/connection.json", *kernel_args]
    report = run_sandboxed(box, command, name, writable={box.ipc_dir: box.ipc_dir},
                           readonly={connection_file: "/tmp/connection.json", cwd: inbox},
                           tmpfs={cwd: lim.scratch_mb}, cwd=cwd, forward_sigint=True,
                           expect_started=True)
    if box.events_dir:
        with open(events_file(box, Path(cwd).parent.name), "a") as f:
            f.write(json.dumps(asdict(report)) + "\n")
    return report.returncode or 0
