"""What the warm servers preload before forking (course_lib.grading.inside.warm): a warm-up may
make a child faster, never change what it shows."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# One IPython shell runs a failing check and prints its traceback text, in a fresh interpreter
# ("cold") or in a child forked after inside.warm.preload ("warm", as a kernel of the nursery).
FIRST_TRACEBACK = textwrap.dedent("""
    import contextlib, io, json, os, sys

    def traceback_text():
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("colors", "Linux")
        shell.run_cell("from course_lib.checks import ex01_standard as checks\\n"
                       "def size(*args):\\n    raise NotImplementedError()")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            shell.run_cell("checks.check_output_size(size)")
        return out.getvalue()

    if sys.argv[1] == "cold":
        print(json.dumps(traceback_text()))
    else:
        from course_lib.grading.inside.warm import preload
        preload(["course_lib.checks.ex01_standard"])
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, json.dumps(traceback_text()).encode())
            os._exit(0)
        os.close(w)
        print(os.read(r, 1 << 20).decode())
""")


@pytest.mark.slow
def test_the_traceback_warm_up_changes_no_text():
    texts = {}
    for mode in ("cold", "warm"):
        proc = subprocess.run([sys.executable, "-c", FIRST_TRACEBACK, mode], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        texts[mode] = json.loads(proc.stdout)
    assert "NotImplementedError" in texts["cold"] and "check_output_size" in texts["cold"]
    assert texts["warm"] == texts["cold"]


# In a child forked after the nursery's preloads, ipykernel's own start (IPKernelApp.initialize,
# as each forked kernel runs it) prints the modules it still had to import.
KERNEL_START_IMPORTS = textwrap.dedent("""
    import json, os, sys, tempfile
    from jupyter_client.connect import write_connection_file
    from course_lib.grading.inside.nursery import preload_kernel
    from course_lib.grading.inside.warm import preload
    preload_kernel()
    preload(["course_lib.checks.ex01_standard"])
    folder = tempfile.mkdtemp()
    connection, _ = write_connection_file(os.path.join(folder, "c.json"), transport="ipc",
                                          ip=os.path.join(folder, "kernel"))
    r, w = os.pipe()
    if os.fork() == 0:
        before = set(sys.modules)
        from ipykernel.kernelapp import IPKernelApp
        IPKernelApp.instance().initialize(["-f", connection])
        os.write(w, json.dumps(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(w)
    print(os.read(r, 1 << 20).decode())
""")


@pytest.mark.slow
def test_a_forked_kernel_imports_nothing_to_start():
    """The nursery imports what ipykernel's start imports (nursery.KERNEL_MODULES): a kernel
    forked from it starts without importing ipykernel's kernel, shell or debugger again."""
    proc = subprocess.run([sys.executable, "-c", KERNEL_START_IMPORTS], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in imported if m.startswith(("ipykernel", "IPython", "debugpy", "zmq",
                                                     "tornado", "jupyter_client"))], imported
