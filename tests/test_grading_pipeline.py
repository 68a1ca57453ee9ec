"""The class-grading pipeline (course_lib.grading.pipeline) against broken and hostile submissions.

One real run of the pipeline (real ``nbgrader autograde`` + the re-check) grades a batch of
adversarial notebooks built from exercise 1; each must get exactly the score it deserves, computed
here from the points in the *source* notebook: a submission that breaks part k loses part k's
points and nothing else (a dead kernel loses every test after the crash). Every submission has one
row in the CSV export and its problem is reported.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import os
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib import grading
from course_lib.grading import ingest, pipeline
from course_lib.grading.inside.guard import Guard
from course_lib.grading.model import SourceInfo, Status
from conftest import BACKGROUND
from exercise_variants import variant_notebook, variant_students

REPO = Path(__file__).resolve().parents[1]
ASSIGNMENT = "ex01_standard"
SOURCE = REPO / "solutions" / ASSIGNMENT / grading.notebook_name(ASSIGNMENT)
# s per cell. The slowest legitimate ex01 cell (first FlopCounterMode use) takes ~3 s on a quiet
# 2-core machine, ~15 s on a heavily shared one: raise it there with COURSE_GRADING_CELL_TIMEOUT=40.
# The infinite-loop case pays this timeout twice (autograde and re-check).
CELL_TIMEOUT = int(os.environ.get("COURSE_GRADING_CELL_TIMEOUT", "25"))
MEM_MB = 3072      # kernel address-space limit in the test run


def _source_points() -> dict[str, float]:
    nb = nbformat.read(SOURCE, as_version=4)
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
            and c.cell_type == "code"}


POINTS = _source_points()    # autograded test cells
TOTAL = sum(POINTS.values())
# Written answers (markdown grade cells): a person grades them later; nbgrader's max counts them.
MANUAL = {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
          for c in nbformat.read(SOURCE, as_version=4).cells
          if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("grade")}
# The by-number part (grade id part5) answered without calling the student's functions, so that
# breaking part k costs only k.
LITERAL_PART5 = ("layer_out_size = 14\nlayer_params = 5 * 5 * 48 * 96 + 96\n"
                 "layer_macs = 5 * 5 * 48 * 96 * 14 * 14")


def _cells_by_id(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata.nbgrader["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


def _solved_release() -> nbformat.NotebookNode:
    """The student release with every solution cell filled in from the source notebook."""
    release = nbformat.read(REPO / "exercises" / ASSIGNMENT / grading.notebook_name(ASSIGNMENT),
                            as_version=4)
    source = _cells_by_id(nbformat.read(SOURCE, as_version=4))
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = source[meta["grade_id"]].source
    _cells_by_id(release)["part5"].source = LITERAL_PART5
    return release


def _with_conv_macs(body: str) -> nbformat.NotebookNode:
    """The solved release whose conv_macs (in the part2 cell, beside conv_params) is ``body``."""
    part2 = _cells_by_id(_solved_release())["part2"].source
    return _with({"part2": part2 + "\n\n\ndef conv_macs(*args):\n" + body})


def _with(edits: dict[str, str]) -> nbformat.NotebookNode:
    """The solved release with some solution cells' source replaced."""
    nb = copy.deepcopy(_solved_release())
    cells = _cells_by_id(nb)
    for gid, source in edits.items():
        cells[gid].source = source
    return nb


WRONG_UNFOLD = "def conv2d_unfold(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):\n"

# Issue 21: attacks on a check that shares the student's process. Each fools nbgrader's kernel;
# the re-check runs these tests in its server (value-only checking), where none of them reaches.
ZEROS_UNFOLD = WRONG_UNFOLD + (  # the right shape, all zeros
    "    oh = conv_output_size(x.shape[2], weight.shape[2], stride, padding, dilation)\n"
    "    ow = conv_output_size(x.shape[3], weight.shape[3], stride, padding, dilation)\n"
    "    return torch.zeros(x.shape[0], weight.shape[0], oh, ow)\n")
AUDIT_HOOK = ZEROS_UNFOLD + '''
import ast, sys
def _blank_tests(event, args):
    if event == "compile" and args and isinstance(args[0], (ast.Module, ast.Interactive)) \\
            and "checks.check" in ast.unparse(args[0]):
        args[0].body[:] = [ast.Pass(lineno=1, col_offset=0, end_lineno=1, end_col_offset=4)]
sys.addaudithook(_blank_tests)
'''
TORCH_MODE = ZEROS_UNFOLD + '''
from torch.overrides import TorchFunctionMode
class _Constant(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if "conv" in getattr(func, "__name__", "") and isinstance(out, torch.Tensor):
            return torch.zeros_like(out)
        return out
_constant = _Constant()
_constant.__enter__()
'''
FAKE_CHECKS = '''
import sys, types
import course_lib.checks
_fake = types.ModuleType("course_lib.checks.ex01_standard")
_fake.__getattr__ = lambda name: (lambda *args, **kwargs: None)
sys.modules["course_lib.checks.ex01_standard"] = _fake
course_lib.checks.ex01_standard = _fake
'''
LYING_NUMBER = '''
import numbers, sys
class _Sly:
    def item(self):
        frame = sys._getframe(1)
        while frame is not None:
            if "expected" in frame.f_locals:
                return frame.f_locals["expected"]
            frame = frame.f_back
        return 0
_Sly.__module__ = "numpy"
numbers.Real.register(_Sly)
def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    return _Sly()
'''
ZERO_THE_CASES = WRONG_UNFOLD + '''    import sys
    frame = sys._getframe(1)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            for case in (value if isinstance(value, list) else [value]):
                for name in ("x", "weight", "bias"):
                    tensor = getattr(case, name, None)
                    if isinstance(tensor, torch.Tensor):
                        tensor.detach().zero_()
        frame = frame.f_back
    oh = conv_output_size(x.shape[2], weight.shape[2], stride, padding, dilation)
    ow = conv_output_size(x.shape[3], weight.shape[3], stride, padding, dilation)
    return torch.zeros(x.shape[0], weight.shape[0], oh, ow)
'''
READ_HIDDEN_TESTS = '''
import gc, os
# A hidden test as the source notebook has it. Joined at run time inside each function, never
# kept in a dict or list (a constant the compiler folds sits in a tuple the search would see),
# so that this cell's own string is not what the search finds; the delimiter alone would not
# do: course_lib's code, which the sandbox shows, has it.
def _hidden_tests_in_a_file():
    marker = "".join(("BEGIN HIDDEN ", "TESTS\\n", "checks.check_output_size("))
    for folder in (".", "/tmp", os.path.expanduser("~")):
        for parent, _, files in os.walk(folder):
            for name in files:
                try:
                    with open(os.path.join(parent, name), errors="replace") as f:
                        if marker in f.read(1 << 22):
                            return True
                except OSError:
                    pass
    return False
_IN_A_FILE = _hidden_tests_in_a_file()
def _hidden_tests_in_memory():
    if _IN_A_FILE:
        return True
    marker = "".join(("BEGIN HIDDEN ", "TESTS\\n", "checks.check_output_size("))
    for container in gc.get_objects():
        items = container.values() if isinstance(container, dict) else \\
            container if isinstance(container, (list, tuple)) else ()
        for item in list(items):
            if isinstance(item, str) and marker in item:
                return True
    return False
def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    if not _hidden_tests_in_memory():
        return 0
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
'''
# An honest mistake that only a hidden case catches (conv_params is wrong for 37 input channels).
HIDDEN_CASE_WRONG = '''
def conv_params(in_channels, out_channels, kernel_size, bias=True):
    if in_channels == 37:
        return 0
    return kernel_size * kernel_size * in_channels * out_channels + (out_channels if bias else 0)


def conv_macs(in_channels, out_channels, kernel_size, out_h, out_w):
    return kernel_size * kernel_size * in_channels * out_channels * out_h * out_w
'''

def _inserted_first(source: str, nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with a code cell of the student's before every other cell (the setup cell too)."""
    nb.cells.insert(0, nbformat.v4.new_code_cell(source))
    return nb


def _hostile(paths: dict[str, str]) -> dict[str, tuple[object, float]]:
    """Submissions that attack the course, the grader or classmates (they know the instructor's
    paths, as a student with a copy of the course repository would). ``paths``: course,
    submitted, repo."""
    p = POINTS
    known = repr(sorted(paths.values()))
    classmates = repr(sorted([paths["course"], paths["submitted"]]))
    part4_wrong = WRONG_UNFOLD + "    return x\n"
    read_solutions = part4_wrong + f"""
import glob, os, course_lib
roots = {known} + [os.getcwd(), os.path.dirname(course_lib.__file__)]
for root in roots:
    for parent in [root, *[os.path.dirname(root)] * 3]:
        for found in glob.glob(os.path.join(parent, '**', 'solutions', 'ex01_standard', '*.ipynb'),
                               recursive=True):
            import nbformat
            for cell in nbformat.read(found, 4).cells:
                if cell.metadata.get('nbgrader', {{}}).get('grade_id') == 'part4':
                    exec(cell.source)
"""
    edit_course_lib = part4_wrong + f"""
import os, course_lib.checks
for root in {known} + [os.path.dirname(os.path.dirname(course_lib.__file__))]:
    for target in [os.path.join(root, 'course_lib', 'checks', 'ex01_standard.py'),
                   course_lib.checks.__file__]:
        try:
            with open(target, 'a') as f:
                f.write('\\ncheck_conv2d_unfold = lambda *a, **k: None\\n')
        except OSError:
            pass
"""
    vandal = """
import glob, os, shutil
for root in %s:
    for path in glob.glob(os.path.join(root, '**', '*.ipynb'), recursive=True) + \
            glob.glob(os.path.join(root, '**', 'gradebook.db'), recursive=True):
        try:
            if 'vandal' in path:
                continue
            if path.endswith('.db') or 'delete' in os.getcwd():
                os.remove(path)
            else:
                with open(path, 'w') as f:
                    f.write('{"cells": []}')
        except OSError:
            pass
for path in glob.glob('../../**/*', recursive=True):
    try:
        os.remove(path)
    except OSError:
        pass
""" % classmates
    forge = part4_wrong + """
import json, os, glob
checks.check_conv2d_unfold = lambda *a, **k: None
line = json.dumps({"event": "cell", "cell": "part4-tests", "kind": "test", "score": 6,
                   "points": 6, "error": False}) + "\\n"
for fd in range(3, 64):
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
for path in glob.glob('/**/*.jsonl', recursive=True):
    try:
        open(path, 'a').write(line)
    except OSError:
        pass
"""
    transformer = part4_wrong + """
def _swallow(lines):
    body = ''.join(lines).splitlines()
    return (['try:\\n'] + ['    ' + l + '\\n' for l in body]
            + ['    pass\\n', 'except BaseException:\\n', '    pass\\n'])
get_ipython().input_transformers_cleanup.append(_swallow)
"""
    patch_layer = """
import torch.nn as nn
def _no_params(self, *args, **kwargs):
    nn.Module.__init__(self)
nn.Conv2d.__init__ = _no_params
def conv_params(in_channels, out_channels, kernel_size, bias=True):
    return 0
"""
    frame_walk = WRONG_UNFOLD + """    import sys
    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            if isinstance(value, torch.Tensor) and value.dim() == 4 and value is not x \
                    and value is not weight and value.shape[:2] == (x.shape[0], weight.shape[0]):
                return value.clone()
        frame = frame.f_back
    return x
"""
    solved = _cells_by_id(_solved_release())
    logging_setup = ("import logging, sys\nlogging.basicConfig(stream=sys.stderr, "
                     "level=logging.INFO, force=True)\n_log = logging.getLogger('me')\n")
    logged_part1 = logging_setup + solved["part1"].source.replace(
        "    span =", "    _log.info('conv_output_size called')\n    span =")
    daemon = solved["part1"].source + """
import subprocess
subprocess.Popen(['sleep', '600'], start_new_session=True)
"""
    fork_bomb = part4_wrong + """
import subprocess
procs = [subprocess.Popen(['sleep', '60']) for _ in range(200)]
"""
    slow = solved["part2"].source + f"\nimport time\ntime.sleep({0.6 * CELL_TIMEOUT})\n"
    return {
        "read_solutions": (_with({"part4": read_solutions}), TOTAL - p["part4-tests"]),
        "edit_course_lib": (_with({"part4": edit_course_lib}), TOTAL - p["part4-tests"]),
        "vandal": (_with({"part1": solved["part1"].source + vandal}), TOTAL),
        "vandal_delete": (_with({"part1": solved["part1"].source + vandal}), TOTAL),
        "forge_recheck": (_with({"part4": forge}), p["part1-tests"] + p["part2-tests"]),
        "input_transformer": (_with({"part4": transformer}), TOTAL - p["part4-tests"]),
        # Its patch outlives its cell in nbgrader's kernel, so part 5's check is misled too.
        "patch_layer": (_with({"part2": patch_layer}), TOTAL - p["part2-tests"]
                        - p["part5-tests"]),
        "frame_walk": (_with({"part4": frame_walk}), TOTAL - p["part4-tests"]),
        "logging_stderr": (_with({"part1": logged_part1}), TOTAL),
        "spawn_daemon": (_with({"part1": daemon}), TOTAL),
        "fork_bomb": (_with({"part4": fork_bomb}), p["part1-tests"] + p["part2-tests"]),
        "slow_cells": (_with({"part2": slow}), TOTAL),
        # Issue 21, value-only checking: an audit hook that blanks test cells as they compile, a
        # TorchFunctionMode that zeroes every convolution (the check's reference too), a fake
        # checks module installed before the setup cell, a number whose .item() reads the
        # expected value from the check's frame, a function that zeroes the check's cases in
        # place, a function right only where the hidden tests are in its process's memory or
        # in a file it can read (nowhere now: nbgrader's kernel is given the visible tests only,
        # and the re-check's server never sends a test cell to the child).
        "audit_hook": (_with({"part4": AUDIT_HOOK}), TOTAL - p["part4-tests"]),
        "torch_mode": (_with({"part4": TORCH_MODE}), TOTAL - p["part4-tests"]),
        "fake_checks": (_inserted_first(FAKE_CHECKS, _with({"part4": ZEROS_UNFOLD})),
                        TOTAL - p["part4-tests"]),
        # conv_output_size is wrong, and part 4 uses it (part 5 is answered with literals).
        "lying_number": (_with({"part1": LYING_NUMBER}), p["part2-tests"] + p["part5-tests"]),
        "zero_the_cases": (_with({"part4": ZERO_THE_CASES}), TOTAL - p["part4-tests"]),
        "read_hidden_tests": (_with({"part1": READ_HIDDEN_TESTS}),
                              p["part2-tests"] + p["part5-tests"]),
        "hidden_case_wrong": (_with({"part2": HIDDEN_CASE_WRONG}), TOTAL - p["part2-tests"]),
        # Honest students whose names clean to the same id (they differ in spacing): both graded.
        "Jane Doe": (_solved_release(), TOTAL),
        "Jane  Doe": (_with({"part4": part4_wrong}), TOTAL - p["part4-tests"]),
        # Graded after the attacks (ids sort last): must get exactly what it deserves.
        "zz_later_wrong": (_with({"part4": part4_wrong}), TOTAL - p["part4-tests"]),
    }


def _adversarial() -> dict[str, tuple[object, float]]:
    """student -> (notebook, text or None; expected score)."""
    p = POINTS
    unfold_shape = ("    n, m = x.shape[0], weight.shape[0]\n"
                    "    oh = conv_output_size(x.shape[2], weight.shape[2], stride, padding, dilation)\n"
                    "    ow = conv_output_size(x.shape[3], weight.shape[3], stride, padding, dilation)\n")
    subs: dict[str, tuple[object, float]] = {
        "solution": (_solved_release(), TOTAL),
        "blank": (nbformat.read(REPO / "exercises" / ASSIGNMENT /
                                grading.notebook_name(ASSIGNMENT), as_version=4), 0.0),
        "infinite_loop": (_with_conv_macs("    while True:\n        pass"),
                          TOTAL - p["part2-tests"]),
        "exit_kernel": (_with({"part2": "import os\nos._exit(1)"}), p["part1-tests"]),
        "kill_kernel": (_with({"part4": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"}),
                        p["part1-tests"] + p["part2-tests"]),
        "runaway_memory": (_with({"part4": WRONG_UNFOLD + "    hog = []\n    while True:\n"
                                  "        hog.append(torch.empty(2**28))"}),
                           TOTAL - p["part4-tests"]),
        "output_flood": (_with({"part1": _cells_by_id(_solved_release())["part1"].source +
                                "\nfor i in range(300_000):\n    print('spam', i)"}), TOTAL),
        "system_exit": (_with({"part2": "raise SystemExit('bye')"}), TOTAL - p["part2-tests"]),
        "keyboard_interrupt": (_with_conv_macs("    raise KeyboardInterrupt"),
                               TOTAL - p["part2-tests"]),
        "nan_result": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                              "    return torch.full((n, m, oh, ow), float('nan'))"}),
                       TOTAL - p["part4-tests"]),
        "wrong_dtype": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                               "    return torch.zeros(n, m, oh, ow, dtype=torch.long)"}),
                        TOTAL - p["part4-tests"]),
        "wrong_device": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                                "    return torch.zeros(n, m, oh, ow, device='meta')"}),
                         TOTAL - p["part4-tests"]),
        # Checks replaced in a student cell: nbgrader is fooled, the re-check is not.
        "patch_checks": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                                "    return torch.zeros(n, m, oh, ow)\n"
                                "checks.check_conv2d_unfold = lambda *a, **k: None"}),
                         TOTAL - p["part4-tests"]),
        "patch_torch": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                               "    return torch.zeros(n, m, oh, ow)\n"
                               "torch.Tensor.any = lambda self, *a, **k: False"}),
                        TOTAL - p["part4-tests"]),
        # ... and replaced by the student's function while the check is calling it.
        "patch_during_check": (_with({"part4": WRONG_UNFOLD + unfold_shape +
                                      "    import course_lib.checks as c\n"
                                      "    c.fail = lambda message: None\n"
                                      "    return torch.zeros(n, m, oh, ow)"}),
                               TOTAL - p["part4-tests"]),
        "corrupt_json": ('{"cells": [ this is not json', 0.0),
    }
    # Test cells deleted: put back from the gradebook and graded (the answers are right).
    nb = _solved_release()
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id")
                not in ("part2-tests", "part4-tests")]
    subs["deleted_tests"] = (nb, TOTAL)
    # A test cell emptied and its part answered wrongly: the gradebook's test still runs.
    nb = _with_conv_macs("    return 0")
    _cells_by_id(nb)["part2-tests"].source = "pass"
    subs["edited_tests"] = (nb, TOTAL - p["part2-tests"])
    # Points raised and a test cell turned into a plain cell, its part wrong.
    nb = _with({"part4": WRONG_UNFOLD + "    return x"})
    _cells_by_id(nb)["part1-tests"].metadata.nbgrader["points"] = 100
    _cells_by_id(nb)["part4-tests"].metadata.nbgrader["grade"] = False
    subs["edited_points"] = (nb, TOTAL - p["part4-tests"])
    return subs


RENAMED, MISSING = "renamed_notebook", "missing_notebook"


def _tree_hash(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """path -> sha256 of every file under ``root`` (links by target), except under ``skip``."""
    digests = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip) or "__pycache__" in rel:
            continue
        if path.is_symlink():
            digests[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _protected_trees(course: Path, submitted: Path) -> dict[str, dict[str, str]]:
    """What no submission may change: the course (but the gradebook and the pipeline's own
    output), the repository's course_lib, solutions and releases, and the submissions."""
    return {"course": _tree_hash(course, skip=("gradebook.db", "grading")),
            "course_lib": _tree_hash(REPO / "course_lib"),
            "solutions": _tree_hash(REPO / "solutions"),
            "exercises": _tree_hash(REPO / "exercises"),
            "submitted": _tree_hash(submitted)}


def _variant(student: str) -> nbformat.NotebookNode:
    assignment, changes = variant_students([ASSIGNMENT])[student]
    return variant_notebook(assignment, changes)


def _variant_scores() -> dict[str, float]:
    """Exercise 1's student variants (tests/exercise_variants.py) -> the score `nbgrader validate`
    (run in the background from the session's start, conftest.BACKGROUND) says they deserve."""
    notebooks, validated = BACKGROUND.result("variants")
    return {student: TOTAL - sum(POINTS[cell] for cell in validated[str(path)]["failed"])
            for student, (assignment, path) in notebooks.items() if assignment == ASSIGNMENT}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One pipeline run, sandboxed, over every adversarial and hostile submission (2 workers)."""
    tmp = tmp_path_factory.mktemp("class")
    course = grading.new_course(tmp / "course", [ASSIGNMENT], root=REPO)
    submitted = tmp / "submitted"
    expected = {}
    paths = {"course": str(course), "submitted": str(submitted), "repo": str(REPO)}
    for student, (nb, score) in {**_adversarial(), **_hostile(paths)}.items():
        folder = submitted / student / ASSIGNMENT
        folder.mkdir(parents=True)
        path = folder / grading.notebook_name(ASSIGNMENT)
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            nbformat.write(nb, path)
        expected[student] = score
    # Honest students as the other tests know them (alternative solutions, typical mistakes,
    # logging): each deserves what `nbgrader validate` says about its notebook.
    for student, score in _variant_scores().items():
        folder = submitted / student / ASSIGNMENT
        folder.mkdir(parents=True)
        nbformat.write(_variant(student), folder / grading.notebook_name(ASSIGNMENT))
        expected[student] = score
    renamed = submitted / RENAMED / ASSIGNMENT
    renamed.mkdir(parents=True)
    nbformat.write(_solved_release(), renamed / "ex01_standard (1).ipynb")
    expected[RENAMED] = TOTAL
    (submitted / MISSING / ASSIGNMENT).mkdir(parents=True)
    expected[MISSING] = 0.0
    before = _protected_trees(course, submitted)
    result = pipeline.grade_class(ASSIGNMENT, submitted, course, workers=2,
                                     cell_timeout=CELL_TIMEOUT, mem_mb=MEM_MB, quiet=True)
    after = _protected_trees(course, submitted)
    return result, expected, course, (before, after)




@pytest.mark.slow
def test_every_submission_gets_the_score_it_deserves(graded):
    result, expected, _, _ = graded
    got = {s.submitted_as: s.score for s in result.submissions}
    wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    details = {s.submitted_as: s.problems for s in result.submissions if s.submitted_as in wrong}
    assert not wrong, f"(got, expected) per student: {wrong}\nproblems: {details}"


@pytest.mark.slow
def test_nothing_outside_each_students_folder_changed(graded):
    """No submission changed the course, the repository's code, solutions or releases, or any
    submitted notebook (its own included: the pipeline grades copies)."""
    before, after = graded[3]
    for name in before:
        changed = sorted(k for k in before[name].keys() | after[name].keys()
                         if before[name].get(k) != after[name].get(k))
        assert not changed, f"{name}: changed by grading: {changed[:10]}"


@pytest.mark.slow
def test_students_whose_ids_collide_are_both_graded(graded):
    result, expected, course, _ = graded
    rows = {r["submitted_as"]: r for r in csv.DictReader(result.csv.open())}
    assert float(rows["Jane Doe"]["score"]) == expected["Jane Doe"] == TOTAL
    assert float(rows["Jane  Doe"]["score"]) == expected["Jane  Doe"] < TOTAL
    assert rows["Jane Doe"]["student"] != rows["Jane  Doe"]["student"]
    book = grading.scores(course, ASSIGNMENT)
    assert book[rows["Jane Doe"]["student"]].score == TOTAL


@pytest.mark.slow
def test_export_has_one_row_per_submission(graded):
    result, expected, course, _ = graded
    rows = list(csv.DictReader(result.csv.open()))
    assert sorted(r["submitted_as"] for r in rows) == sorted(expected)
    assert len({r["student"] for r in rows}) == len(rows), "two submissions share an id"
    for row in rows:
        assert float(row["score"]) == expected[row["submitted_as"]]
        assert float(row["max_score"]) == TOTAL
        assert float(row["manual_points_pending"]) == sum(MANUAL.values())
        assert sum(float(row[g]) for g in POINTS) == float(row["score"])
    # The course gradebook holds the same scores, ungradable submissions included.
    book = grading.scores(course, ASSIGNMENT)
    ids = {r["student"]: r["submitted_as"] for r in rows}
    assert {ids[s]: v.score for s, v in book.items()} == expected
    assert all(v.max_score == TOTAL + sum(MANUAL.values()) for v in book.values())


PROBLEM_WORDS = {
    "infinite_loop": "limit", "exit_kernel": "kernel died", "kill_kernel": "signal 9",
    "runaway_memory": "memory limit", "output_flood": "flood of output",
    "system_exit": "SystemExit", "keyboard_interrupt": "KeyboardInterrupt",
    "patch_checks": "nbgrader gave", "patch_torch": "replaced protected objects",
    "patch_during_check": "replaced while it ran", "corrupt_json": "corrupt notebook",
    "deleted_tests": "deleted", "edited_tests": "edited", "edited_points": "metadata edited",
    "nan_result": "NaN", "wrong_dtype": "dtype", "wrong_device": "device",
    RENAMED: "renamed", MISSING: "missing notebook",
    "edit_course_lib": "tried to change files outside its folder",
    "forge_recheck": "forged", "input_transformer": "nbgrader gave",
    "patch_layer": "replaced protected objects", "spawn_daemon": "started processes",
    "fork_bomb": "processes", "slow_cells": "of its", "Jane  Doe": "graded as student id",
    **{attack: "nbgrader gave" for attack in ("audit_hook", "torch_mode", "fake_checks",
                                              "lying_number", "zero_the_cases")},
}


@pytest.mark.slow
def test_each_problem_is_reported(graded):
    result, _, _, _ = graded
    problems = {s.submitted_as: " | ".join(s.problems) for s in result.submissions}
    missing = {k: problems.get(k) for k, word in PROBLEM_WORDS.items()
               if word not in problems.get(k, "")}
    assert not missing, missing
    assert problems["solution"] == "", "a clean solution must not be flagged"
    assert not result.batch_problems
    summary = result.problems.read_text()
    for sub in result.submissions:
        if sub.submitted_as in PROBLEM_WORDS:
            assert sub.student in summary
    for honest in ("logging_stderr", "Jane Doe", "vandal", "read_solutions"):
        assert "nbgrader gave" not in problems[honest], problems[honest]


@pytest.mark.slow
def test_hidden_tests_reach_no_student_process(graded):
    """Issue 21: the hidden tests are in neither nbgrader's kernel nor the re-check's child,
    in memory or in a file: a function right only where it finds them is wrong in both (and
    nothing is reported: the two agree). A mistake only a hidden case catches costs its points
    with no problem reported, and the feedback says the hidden tests of that cell failed."""
    from course_lib.grading.shard import HIDDEN_FAILED

    result, _, _, _ = graded
    by_name = {s.submitted_as: s for s in result.submissions}
    reader = by_name["read_hidden_tests"]
    assert reader.nbgrader["part1-tests"] == reader.recheck["part1-tests"] == 0.0
    assert "part1-tests" not in " | ".join(reader.problems)
    honest = by_name["hidden_case_wrong"]
    assert (honest.nbgrader["part2-tests"], honest.recheck["part2-tests"],
            honest.final["part2-tests"]) == (POINTS["part2-tests"], 0.0, 0.0)
    assert honest.problems == [] and honest.status is Status.OK
    page = honest.feedback.read_text()
    assert HIDDEN_FAILED in page and "conv_params(37, 53, 5" in page
    assert HIDDEN_FAILED not in by_name["solution"].feedback.read_text()


@pytest.mark.slow
def test_honest_variants_are_not_reported(graded):
    """Alternative solutions, typical mistakes and logging are not attacks: no problem, status ok
    (the problem list an instructor reads names only what is real)."""
    result, _, _, _ = graded
    variants = set(_variant_scores())
    rows = [s for s in result.submissions if s.submitted_as in variants]
    assert len(rows) == len(variants) >= 4
    flagged = {s.submitted_as: (s.status.value, s.problems) for s in rows
               if s.problems or s.status is not Status.OK}
    assert not flagged, flagged
    summary = result.problems.read_text()
    assert not [s.student for s in rows if s.student in summary]


@pytest.mark.slow
def test_feedback_and_report_are_written(graded):
    result, expected, _, _ = graded
    for sub in result.submissions:
        assert sub.feedback is not None and sub.feedback.is_file(), sub.student
    assert "Score" in next(s for s in result.submissions if s.submitted_as == "corrupt_json"
                           ).feedback.read_text()
    for name in ("scores.png", "per_question.png", "hardest_tests.png"):
        assert (result.out / "plots" / name).stat().st_size > 1000
    assert "hardest" in result.report.read_text()


# ----------------------------------------------------------------------------- fast tests
def test_guard_detects_and_restores_replacements():
    import torch

    import course_lib.checks as checks

    guard = Guard()
    original_fail, original_any = checks.fail, torch.Tensor.any
    try:
        checks.fail = lambda message: None
        torch.Tensor.any = lambda self: False
        checks.REFERENCE["conv2d"] = None
        changed = guard.changes()
        assert "course_lib.checks.fail" in changed
        assert any(c.startswith("torch.Tensor.any") for c in changed)
        assert "course_lib.checks.REFERENCE (contents)" in changed
    finally:
        guard.restore()
    assert checks.fail is original_fail and torch.Tensor.any is original_any
    assert checks.REFERENCE["conv2d"] is torch.nn.functional.conv2d
    assert guard.changes() == []


def test_guard_sees_layers_and_cuda_and_tells_the_server():
    """Methods of nn layers and torch.cuda are protected; the digest the child reports differs
    from the snapshot's exactly while something is replaced."""
    import torch

    guard = Guard()
    baseline = guard.digest()
    original_init, original_available = torch.nn.Conv2d.__init__, torch.cuda.is_available
    try:
        torch.nn.Conv2d.__init__ = lambda self, *a, **k: torch.nn.Module.__init__(self)
        torch.cuda.is_available = lambda: True
        torch.nn.Linear.extra_method = lambda self: None
        changed = guard.changes()
        assert "torch.nn.modules.conv.Conv2d.__init__" in changed
        assert "torch.cuda.is_available" in changed
        assert "torch.nn.modules.linear.Linear.extra_method (added)" in changed
        assert guard.digest() != baseline
    finally:
        guard.restore()
    assert torch.nn.Conv2d.__init__ is original_init
    assert torch.cuda.is_available is original_available
    assert not hasattr(torch.nn.Linear, "extra_method")
    assert guard.digest() == baseline


def _info():
    points = _source_points()
    nb = nbformat.read(SOURCE, as_version=4)
    cells = {c.metadata.nbgrader["grade_id"]: {"cell_type": c.cell_type,
                                               "locked": c.metadata.nbgrader["locked"],
                                               "source": c.source} for c in nb.cells}
    solutions = {g for g, c in _cells_by_id(nb).items() if c.metadata.nbgrader["solution"]}
    return SourceInfo(ASSIGNMENT, ASSIGNMENT, list(cells), cells, points, solutions,
                                  MANUAL)


def test_ingest_lms_zip(tmp_path):
    """Flat LMS files <student>_<anything>.ipynb in a zip with one top folder; nothing dropped."""
    archive = tmp_path / "export.zip"
    text = nbformat.writes(_solved_release())
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("course export/alice_1234_ex01_standard.ipynb", text)
        zf.writestr("course export/bob_99_ex01_standard-1.ipynb", text)
        zf.writestr("course export/carol_5_ex01_standard.ipynb", "not json")
        zf.writestr("__MACOSX/course export/._alice", "junk")
    subs = {s.student: s for s in ingest.ingest(archive, _info(), tmp_path / "work")}
    assert sorted(subs) == ["alice", "bob", "carol"]
    assert subs["alice"].notebook.is_file() and subs["bob"].notebook.is_file()
    assert subs["alice"].problems == [], "LMS file names are not a renamed notebook"
    assert subs["carol"].unreadable is Status.CORRUPT and subs["carol"].notebook is None


def test_ingest_refuses_zip_slip(tmp_path):
    """A member with '..' is not written anywhere; it refuses its own entry, not the class."""
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../outside.ipynb", "{}")
        zf.writestr("alice_1_ex01_standard.ipynb", nbformat.writes(_solved_release()))
    subs = {s.submitted_as: s for s in ingest.ingest(archive, _info(), tmp_path / "work")}
    assert not (tmp_path / "outside.ipynb").exists()
    assert subs["alice"].notebook is not None and subs["alice"].unreadable is None
    (bad,) = [s for n, s in subs.items() if n != "alice"]
    assert bad.unreadable is Status.REFUSED and bad.notebook is None
    assert any("'..'" in p for p in bad.problems), bad.problems


def test_ingest_restores_edited_metadata(tmp_path):
    nb = _solved_release()
    _cells_by_id(nb)["part1-tests"].metadata.nbgrader["points"] = 100
    folder = tmp_path / "in" / "dave" / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / grading.notebook_name(ASSIGNMENT))
    (sub,) = ingest.ingest(tmp_path / "in", _info(), tmp_path / "work")
    fixed = _cells_by_id(nbformat.read(sub.notebook, as_version=4))
    assert fixed["part1-tests"].metadata.nbgrader["points"] == POINTS["part1-tests"]
    assert any("points 100" in p for p in sub.problems)
