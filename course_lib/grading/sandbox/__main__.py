"""``python -m course_lib.grading.sandbox kernel CONFIG -f FILE`` (the kernelspec's command) and
``python -m course_lib.grading.sandbox check [--assignment ID]`` (can this machine sandbox?)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib.grading.sandbox.check import check_inside
from course_lib.grading.sandbox.kernelspec import launch_kernel
from course_lib.grading.sandbox.policy import SandboxUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.grading.sandbox",
                                     description="The grading sandbox (bubblewrap).")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernel", help="start a sandboxed kernel (a kernelspec's command)")
    k.add_argument("config", type=Path)
    k.add_argument("-f", dest="connection_file", required=True)
    c = sub.add_parser("check", help="start the real sandbox and import what runs inside")
    c.add_argument("--assignment", default=None,
                   help="also import this assignment's checks (e.g. ex01_standard)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "kernel":  # extra: the kernel's own options (nbclient adds some)
        return launch_kernel(args.config, args.connection_file, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    modules = (f"course_lib.checks.{args.assignment}",) if args.assignment else ()
    try:
        print(f"yes: {check_inside(modules)}")
    except SandboxUnavailable as exc:
        print(f"NO: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
