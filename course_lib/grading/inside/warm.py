"""What the warm servers in the box (the kernel nursery, the re-check server) share: the imports
paid once before any student code, and the fork of a clean child per student.
"""
from __future__ import annotations

import contextlib
import importlib
import os


def warm_up_flop_counter() -> None:
    """The first FlopCounterMode use imports ~800 modules (seconds on a busy machine): done once
    in a process that forks, not in every child against the cell timeout."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False):
        torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, device="meta"),
                                   torch.zeros(1, 1, 1, 1, device="meta"))


def warm_up_tracebacks(modules: list[str]) -> None:
    """IPython's first traceback in a process parses, with ``ast``, every source file on the stack
    (IPython's own ``interactiveshell.py``, ~3900 lines, above all) and builds its highlighting:
    0.3 s of CPU in each forked kernel whose notebook has a failing cell (profiled), 0.04 s for
    the next. The parsed sources are cached per process, so a fork inherits them: the same
    traceback text, paid once. Formats one traceback raised through the assignment's checks."""
    import sys

    import stack_data
    from IPython.core import interactiveshell, ultratb

    stack_data.Source.for_filename(interactiveshell.__file__)  # run_code: in every cell's stack
    for name in modules:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            stack_data.Source.for_filename(module.__file__)
    try:
        raise NotImplementedError("warm-up")
    except NotImplementedError:
        ultratb.AutoFormattedTB(mode="Context").structured_traceback(*sys.exc_info())


def warm_up_matplotlib() -> None:
    """matplotlib lists the system's fonts the first time it is imported where it finds no font
    cache, and every kernel's /tmp (its config folder) starts empty: seconds, and two ``fc-list``
    processes that the kernel's audit would report as the student's. Listed once here."""
    import matplotlib.font_manager  # noqa: F401
    import matplotlib.pyplot  # noqa: F401


def preload(modules: list[str]) -> None:
    """Everything the children share, imported before any student code (no threads started:
    they would not survive ``fork``)."""
    import torch

    torch.set_num_threads(1)
    import numpy  # noqa: F401
    for name in modules:
        importlib.import_module(name)
    warm_up_flop_counter()
    # Only ever speed-ups: a library that changed its API (IPython 9 did) must not stop a server.
    with contextlib.suppress(Exception):
        warm_up_matplotlib()
    with contextlib.suppress(Exception):
        warm_up_tracebacks([*modules, "course_lib.checks"])


def fork_child(keep: list[int], child) -> int:
    """Fork; in the child, close every descriptor but 0-2 and ``keep`` (the server's own channel
    above all), then run ``child()`` and exit (it never returns there). Returns the child's PID."""
    pid = os.fork()
    if pid:
        return pid
    try:
        low = 3
        for fd in sorted(keep):
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 4096)
        child()
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)
