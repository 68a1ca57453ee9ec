"""A resource-limited Python kernel for autograding.

nbgrader starts one Jupyter kernel per submission and has no sandbox: a student cell that allocates
without bound can take the grading machine down with it. This module is a drop-in replacement for
the ``python3`` kernel that first caps the kernel process's address space (``RLIMIT_AS``), so a
runaway allocation fails inside the student's cell with ``MemoryError`` / "can't allocate memory"
(the cell scores 0, the batch goes on) instead of exhausting the machine.

:func:`install_kernelspec` writes a kernelspec named ``python3`` into a private folder; putting that
folder first on ``JUPYTER_PATH`` (see :func:`kernel_env`) makes nbgrader, which asks for the
``python3`` kernel, start this one — only in the grading processes that get that environment.

Run as ``python -m course_lib.grading.kernel --mem-mb 4096 -f CONNECTION_FILE``.
"""
from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

DEFAULT_MEM_MB = 4096


def apply_limits(mem_mb: int | None) -> None:
    """Cap this process's address space at ``mem_mb`` MiB (inherited by its children).

    The limit is on virtual memory: PyTorch and the interpreter reserve ~1.5 GiB of address space
    at import, so values below ~2048 make ``import torch`` itself fail."""
    if not mem_mb:
        return
    if mem_mb < 1024:
        raise ValueError(f"mem_mb={mem_mb} is too small for a Python + PyTorch kernel (>= 1024)")
    limit = int(mem_mb) * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def install_kernelspec(folder: Path, mem_mb: int = DEFAULT_MEM_MB) -> Path:
    """Write ``folder/kernels/python3/kernel.json`` starting this wrapper; returns ``folder``."""
    spec_dir = Path(folder) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "course_lib.grading.kernel", "--mem-mb", str(int(mem_mb)),
                 "-f", "{connection_file}"],
        "display_name": f"Python 3 (grading, {mem_mb} MiB limit)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return Path(folder)


def kernel_env(folder: Path, base: dict | None = None) -> dict:
    """Environment in which Jupyter finds the limited kernel before the stock ``python3``."""
    env = dict(os.environ if base is None else base)
    paths = [str(folder)] + [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    env["JUPYTER_PATH"] = os.pathsep.join(paths)
    env["MPLBACKEND"] = "Agg"
    # One thread per kernel: parallel grading workers must not oversubscribe the cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    mem_mb = DEFAULT_MEM_MB
    if "--mem-mb" in argv:
        i = argv.index("--mem-mb")
        mem_mb = int(argv[i + 1])
        del argv[i:i + 2]
    apply_limits(mem_mb)
    from ipykernel import kernelapp

    sys.argv = [sys.argv[0]] + argv
    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
