"""Value-only checking (issue 21): what crosses between the re-check's server and the student's
process, and which test cells the server runs itself.

The attacks this stops are played end to end by the hostile class of test_grading_pipeline.py
(audit hook, TorchFunctionMode, fake checks module, lying number, cases zeroed in place, hidden
tests read from memory); here are the pieces they rely on.
"""
from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import course_lib.checks.ex01_standard as ex01
import course_lib.checks.ex07_mobilenet as ex07
from course_lib import checks
from course_lib.grading.inside import checker, values
from course_lib.grading.inside.recheck import _run_plain

REPO = Path(__file__).resolve().parents[1]


def _kept():
    found: list = []

    def keep(value) -> int:
        found.append(value)
        return len(found) - 1

    return found, keep


def _round_trip(value):
    kept, keep = _kept()
    return values.decode(values.encode(value, keep), lambda message: ("handle", message))


@pytest.mark.parametrize("tensor", [
    torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)),
    torch.arange(24).reshape(4, 6)[:, ::2],           # not contiguous
    torch.randn(3, 5).t(),                            # transposed
    torch.tensor([True, False, True]),
    torch.randn(4, dtype=torch.float64),
    torch.randn(4).to(torch.bfloat16),
    torch.randn(3, dtype=torch.complex64),
    torch.tensor(7, dtype=torch.int32),               # 0-d
    torch.zeros(0, 3),                                # empty
])
def test_a_tensor_arrives_equal_by_pytorchs_own_comparison(tensor):
    arrived = _round_trip(tensor)
    assert type(arrived) is torch.Tensor and arrived.dtype == tensor.dtype
    assert arrived.shape == tensor.shape and torch.equal(arrived, tensor)
    assert arrived.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr() \
        or tensor.numel() == 0


def test_data_arrives_as_data_and_everything_else_as_a_handle():
    nested = (1, -2.5, float("inf"), None, True, "text", [torch.Size([2, 3]), {"k": (4,)}],
              torch.float16, torch.device("cpu"))
    arrived = _round_trip(nested)
    assert arrived[:2] == (1, -2.5) and math.isinf(arrived[2]) and arrived[3:6] == (None, True,
                                                                                      "text")
    assert arrived[6] == [torch.Size([2, 3]), {"k": (4,)}] and type(arrived[6][0]) is torch.Size
    assert arrived[7:] == (torch.float16, torch.device("cpu"))
    assert math.isnan(_round_trip(float("nan")))
    # NumPy numbers become plain numbers; a parameter stays a parameter (checks read its data).
    assert [type(_round_trip(v)) for v in (np.int64(3), np.float32(0.5), np.bool_(True))] == \
        [int, float, bool]
    assert type(_round_trip(torch.nn.Parameter(torch.ones(2)))) is torch.nn.Parameter

    class Sneaky(torch.Tensor):
        pass

    def student_function(x):
        return x

    for value in (student_function, torch.ones(2).as_subclass(Sneaky), np.ones(3),
                  torch.nn.Linear(2, 2), object()):
        kept, keep = _kept()
        message = values.encode(value, keep)
        assert message["t"] == "handle" and kept == [value]
        assert message["type"] == type(value).__name__
        assert message["callable"] is callable(value)


def test_a_tensor_too_large_to_send_is_refused_and_a_meta_tensor_stays_one(monkeypatch):
    """No placeholder for a tensor too large to check: a check computing with one would read
    memory nobody wrote (PyTorch mixes a meta tensor into a CPU convolution without a word)."""
    monkeypatch.setattr(values, "MAX_TENSOR_BYTES", 64)
    with pytest.raises(values.BadValue, match=r"\(5, 5\) is too large"):
        _round_trip(torch.ones(5, 5))
    arrived = _round_trip(torch.empty(5, 5, device="meta"))
    assert arrived.device.type == "meta" and arrived.shape == (5, 5)


@pytest.mark.parametrize("message", [
    {"t": "tensor", "dtype": "object", "shape": [1], "device": "cpu", "data": "AAAA"},
    {"t": "tensor", "dtype": "float32", "shape": [2], "device": "cpu", "data": "AAAA"},  # 3 bytes
    {"t": "tensor", "dtype": "float32", "shape": [-1], "device": "cpu", "data": ""},
    {"t": "tensor", "dtype": "float32", "shape": [1], "device": "cpu", "data": "not base64!"},
    {"t": "tensor", "dtype": "float32", "shape": [1], "device": "nowhere", "data": "AAAAAA=="},
    # a backend's name makes PyTorch import a module of that name: refused before it reads it
    {"t": "tensor", "dtype": "float32", "shape": [1], "device": "privateuseone", "data": "AAAAAA=="},
    {"t": "device", "v": "privateuseone"},
    {"t": "tensor", "dtype": "float32", "shape": [2 ** 62, 2 ** 62], "device": "meta",
     "data": None},                                                       # PyTorch refuses it
    {"t": "size", "v": [2 ** 64]},
    {"t": "dict", "v": [[{"t": "tuple", "v": [{"t": "list", "v": []}]}, 1]]},  # unhashable key
    {"t": "pickle", "v": "gASVAAAAAAAAAAA="},
    {"t": "float", "v": "1e308*10"},
    [1, 2],
])
def test_the_loader_refuses_what_the_encoder_would_not_write(message):
    with pytest.raises(values.BadValue):
        values.decode(message, lambda m: m)


def test_a_value_of_more_items_than_the_budget_is_refused():
    """A 30 MiB line of numbers would be 250 MiB of Python objects once decoded."""
    rows = values.MAX_TOTAL // 5000 + 1
    many = {"t": "list", "v": [{"t": "list", "v": [1.5] * 5000}] * rows}
    with pytest.raises(values.BadValue, match="items"):
        values.decode(many, lambda m: m)
    assert len(values.decode({"t": "list", "v": [1.5] * 1000}, lambda m: m)) == 1000


def test_nesting_deeper_than_the_limit_is_refused():
    message: object = 1
    for _ in range(values.MAX_DEPTH + 3):
        message = {"t": "list", "v": [message]}
    with pytest.raises(values.BadValue):
        values.decode(message, lambda m: m)


def _ex01_cells() -> list[dict]:
    nb = nbformat.read(REPO / "solutions" / "ex01_standard" / "ex01_standard.ipynb", 4)
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code":
            cells.append({"id": meta.get("grade_id"), "source": cell.source,
                          "locked": bool(meta.get("locked")),
                          "kind": "test" if meta.get("grade") else "code"})
    return cells


def test_the_server_trusts_only_checks_modules_that_locked_cells_import():
    cells = _ex01_cells()
    assert checker.trusted_modules(cells) == {"checks": ex01}
    student = {"id": "mine", "locked": False, "kind": "code",
               "source": "import course_lib.checks.ex01_standard as mine"}
    assert checker.trusted_modules([student]) == {}


def test_which_test_cells_the_server_runs():
    trusted = {"checks": ex01}
    every_test = [c["source"] for c in _ex01_cells() if c["kind"] == "test"]
    assert every_test and all(checker.runs_in_server(s, trusted) for s in every_test)
    for source in [
        "time_ms = checks.recorded(time_ms)",                       # binds a name
        "checks.check_output_size(lambda *a: 1)",                   # computes an argument
        "other.check_output_size(conv_output_size)",                # a module no locked cell bound
        "checks.check_output_size(conv_output_size)\nprint(1)",     # something else too
        "",                                                          # nothing
        "checks.check_output_size(*sizes)",                          # unpacks a student value
    ]:
        assert not checker.runs_in_server(source, trusted), source
    # A function of a checks module not marked value-only (here the recorder, which wraps the
    # student's timer where it lives) runs in the child; checks that read the student's model or
    # time workloads beside its timer through a probe run in the server.
    assert not checker.runs_in_server("checks.recorded(time_ms)", {"checks": ex07})
    assert checker.runs_in_server("checks.check_mobilenet(mobilenet_v1)", {"checks": ex07})
    assert checker.runs_in_server("checks.check_time_ms(time_ms, ms=11.5, gpu_ms=13.5)",
                                  {"checks": ex07})


def test_every_value_only_check_is_marked_on_purpose():
    """The marker is the decorator, nothing a test cell can set: a check module's other
    functions (helpers, checks that need the student's objects) are not marked."""
    marked = {name for name, fn in vars(ex07).items() if getattr(fn, "value_only", False)}
    assert marked == {"check_mobilenet", "check_paper_costs", "check_time_ms",
                      "check_cpu_measurements", "check_intensity", "check_gpu_measurements"}
    assert not getattr(ex07.recorded, "value_only", False)
    assert getattr(checks.call_student, "value_only", False) is False


class _NotebookChannel:
    """The child's side of lookups answered from a dict in this process (the real transport, the
    re-check's pipes, is played end to end in test_grading_pipeline.py)."""

    def __init__(self, notebook: dict) -> None:
        self.notebook, self.asked = notebook, []

    def lookup(self, name: str):
        self.asked.append(name)
        return self.notebook[name]


def test_a_test_cell_reads_the_trusted_module_whatever_the_notebook_bound():
    def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
        return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1

    fake = type(ex01)("course_lib.checks.ex01_standard")
    fake.check_output_size = lambda *args, **kwargs: None
    cell = "checks.check_output_size(conv_output_size)"
    channel = _NotebookChannel({"checks": fake, "conv_output_size": lambda *a: 0})
    with pytest.raises(checks.CheckFailed):
        _run_plain(cell, {"__builtins__": __builtins__},
                   checker.StudentNames({"checks": ex01}, channel))
    assert channel.asked == ["conv_output_size"]  # never "checks"
    channel.notebook["conv_output_size"] = conv_output_size
    assert _run_plain(cell, {"__builtins__": __builtins__},
                      checker.StudentNames({"checks": ex01}, channel)) is None
    with pytest.raises(NameError):  # a name the notebook does not have: as in nbgrader
        _run_plain("checks.check_output_size(missing)", {"__builtins__": __builtins__},
                   checker.StudentNames({"checks": ex01}, channel))


def test_where_tests_run_follows_the_checks_marks(tmp_path):
    """The guide's table: every graded test of the course runs in the server, with its points;
    a test cell that is not only calls of value-only checks (here one that binds a name first)
    would run in the student's process, and the table says so."""
    from course_lib.grading.course import assignments, where_tests_run

    for assignment in assignments(REPO):
        places = where_tests_run(assignment, REPO)
        assert places and all(points and points > 0 for points in places.values()), places
    places = where_tests_run("ex07_mobilenet", REPO)
    assert places["part3-tests"] == 5.0 and places["part1-tests"] == 4.0
    nb = nbformat.read(REPO / "solutions" / "ex01_standard" / "ex01_standard.ipynb", 4)
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
             and not c.metadata["nbgrader"].get("solution")]
    tests[0].source = "size = conv_output_size\n" + tests[0].source
    (tmp_path / "solutions" / "ex01_standard").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "solutions" / "ex01_standard" / "ex01_standard.ipynb")
    places = where_tests_run("ex01_standard", tmp_path)
    gid = tests[0].metadata["nbgrader"]["grade_id"]
    assert places[gid] is None
    assert all(points for other, points in places.items() if other != gid)


def _job(assignment: str, keep: tuple[str, ...], edits: dict[str, str]) -> dict:
    """The re-check's job for a solution notebook's cells ``keep``, student cells replaced by
    ``edits`` (as shard.recheck_job builds it: tests and locked cells from the source)."""
    nb = nbformat.read(REPO / "solutions" / assignment / f"{assignment}.ipynb", 4)
    cells = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        gid = meta.get("grade_id")
        if cell.cell_type != "code" or gid not in keep:
            continue
        test = bool(meta.get("grade")) and not meta.get("solution")
        cells.append({"id": gid, "kind": "test" if test else "code", "locked": test or
                      bool(meta.get("locked")), "points": meta.get("points", 0),
                      "source": edits.get(gid, cell.source)})
    return {"student": "s", "cells": cells}


@pytest.mark.slow
def test_the_server_runs_value_only_tests_through_a_real_recheck(tmp_path):
    """End to end, one real re-check server (unsandboxed here; the sandboxed class is in
    test_grading_pipeline.py): a student function that never returns is interrupted in its own
    process and the next test still runs; an unimplemented one is named; a function that edits
    the table it was given is caught although the check holds only its own copy; a timer that
    reads the check's durations from its frame finds none."""
    from course_lib.grading.sandbox.recheck_client import RecheckServer

    with RecheckServer(None, cell_timeout=5, mem_mb=None, log=tmp_path / "recheck.log",
                       check_modules=["course_lib.checks.ex01_standard",
                                      "course_lib.checks.ex06_atrous",
                                      "course_lib.checks.ex07_mobilenet",
                                      "course_lib.checks.ex10_tradeoffs"]) as server:
        events = server.judge(_job("ex01_standard", ("setup", "part1", "part1-tests", "part2",
                                                     "part2-tests"),
                                   {"part1": "def conv_output_size(*args):\n    while True:\n"
                                             "        pass",
                                    "part2": "def conv_params(*args, **kwargs):\n"
                                             "    raise NotImplementedError()\n"
                                             "def conv_macs(*args):\n    return 0"}),
                              budget_s=120)
        tests = {e["cell"]: e for e in events if e.get("kind") == "test"}
        assert [e.get("checked_in") for e in tests.values()] == ["server", "server"]
        assert tests["part1-tests"]["score"] == 0 and tests["part1-tests"]["timed_out"]
        assert tests["part2-tests"]["score"] == 0
        assert tests["part2-tests"]["error_kind"] == "not-implemented"
        assert "conv_params is not implemented yet" in tests["part2-tests"]["error_text"]
        assert not [e for e in events if e.get("event") in ("exit", "forged")], events
        sorting = ("def pareto_front(rows):\n    rows.sort(key=lambda r: (r['ms'], "
                   "-r['accuracy']))\n    front, best = [], -1.0\n    for r in rows:\n"
                   "        if r['accuracy'] > best:\n            front.append(r)\n"
                   "            best = r['accuracy']\n    return front")

        def right_then_wrong(assignment: str, part: str, points: float, wrong: str) -> dict:
            """The solution's part scores its points in the server; ``wrong`` scores 0 there."""
            keep = ("setup", part, f"{part}-tests")
            for edits, score in (({}, points), ({part: wrong}, 0.0)):
                events = server.judge(_job(assignment, keep, edits), budget_s=120)
                test = next(e for e in events if e.get("kind") == "test")
                assert (test["checked_in"], test["score"]) == ("server", score), events
            return test

        assert right_then_wrong("ex10_tradeoffs", "part3", 2.0, sorting)["error_kind"] == \
            "input_changed"
        # A fact about the student's object read where it lives (a probe): its result is the
        # very tensor it was given.
        nb = nbformat.read(REPO / "solutions" / "ex06_atrous" / "ex06_atrous.ipynb", 4)
        right = next(c.source for c in nb.cells
                     if c.metadata.get("nbgrader", {}).get("grade_id") == "part1")
        aliasing = (right + "\n_right = dilate_kernel\ndef dilate_kernel(weight, dilation):\n"
                    "    return weight if dilation == 1 else _right(weight, dilation)\n")
        assert "returned the weight itself" in right_then_wrong("ex06_atrous", "part1", 3.0,
                                                                aliasing)["error_text"]
        # Exercise 7's timer, checked on workloads built beside it: a timer that times nothing
        # and returns the durations it reads in the check's frame passes where the check runs
        # in its process (as in nbgrader's kernel), and finds no such frame in the re-check.
        lying: dict = {}
        exec(FRAME_READING_TIMER, lying)
        ex07.check_time_ms(lying["time_ms"])
        assert "too low" in right_then_wrong("ex07_mobilenet", "part3", 5.0,
                                             FRAME_READING_TIMER)["error_text"]
        # Its workloads' record is the student's to write, the clock is not.
        assert "sooner than the 7 calls" in right_then_wrong("ex07_mobilenet", "part3", 5.0,
                                                             RECORD_WRITING_TIMER)["error_text"]


# A timer that measures nothing (found by a hostile review): it adds to the workload's record of
# calls without calling it, or returns the duration the simulated GPU's launcher holds.
RECORD_WRITING_TIMER = """
def time_ms(fn, warmup=3, repeats=10, device="cpu"):
    for cell in fn.__closure__ or ():
        if isinstance(cell.cell_contents, list):
            cell.cell_contents.extend([8.0] * (warmup + repeats))
        if isinstance(cell.cell_contents, float):
            return cell.cell_contents
    return 8.0
"""


FRAME_READING_TIMER = """
import sys, torch
def time_ms(fn, warmup=3, repeats=10, device="cpu"):
    for _ in range(warmup + repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "check_time_ms":
            return frame.f_locals["g" if device == "cuda" else "d"]
        frame = frame.f_back
    return 0.0
"""


def test_a_reply_nested_past_the_parsers_depth_reads_as_garbage_not_a_crash():
    """The child writes what it likes on its pipe: JSON nested 100,000 deep makes json.loads
    raise RecursionError, which the grader's readers take as a broken line."""
    import os

    from course_lib.grading.inside import wire

    read, write = os.pipe()
    if os.fork() == 0:  # the writer (a pipe holds 64 KiB: a reader must be running)
        os.write(write, b"[" * 100_000 + b"\n")
        os._exit(0)
    os.close(write)
    try:
        assert wire.LineReader(read).read(10) is None
    finally:
        os.close(read)
        os.wait()
