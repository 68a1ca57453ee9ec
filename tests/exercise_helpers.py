"""The hidden test calls of the exercises, read from the source notebooks in ``solutions/``.

The hidden cases (seeds, shapes, rates) live only there, as literal keyword arguments of check
calls between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``. Tests of the checks run them
as well as the visible defaults, so both are known to pass with correct answers.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def hidden_blocks(assignment: str) -> list[str]:
    """The source of every hidden test block of an assignment."""
    nb = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    blocks = []
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if "### BEGIN HIDDEN TESTS" in source:
            hidden = source.split("### BEGIN HIDDEN TESTS")[1]
            blocks.append(hidden.split("### END HIDDEN TESTS")[0])
    return blocks


def hidden_calls(assignment: str) -> list[tuple[str, dict]]:
    """(check name, literal keyword arguments) of every ``checks.check_...(...)`` call in the
    assignment's hidden blocks."""
    calls = []
    for block in hidden_blocks(assignment):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks":
                calls.append((node.func.attr,
                              {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
    return calls


def case_sets(assignment: str, check: str) -> list[dict]:
    """Keyword arguments to run ``check`` with: the visible defaults ({}) and each hidden call."""
    return [{}] + [kwargs for name, kwargs in hidden_calls(assignment) if name == check]


def as_student(reference):
    """A copy of a course_lib function that behaves like a student's own code: the checks make
    course_lib's functions refuse while a student's function runs (by swapping their code), so a
    test that answers with course_lib's implementation needs a private copy of it, with private
    copies of the module functions it calls."""
    import types

    module_globals = dict(reference.__globals__)
    for name, value in list(module_globals.items()):
        if isinstance(value, types.FunctionType) and value.__module__ == reference.__module__:
            module_globals[name] = _copy_function(value, module_globals)
    return _copy_function(reference, module_globals)


def _copy_function(function, module_globals):
    import types

    copy = types.FunctionType(function.__code__, module_globals, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    return copy


def run_all_cases(assignment: str, pairs) -> int:
    """Run each (check, answer) pair on the visible defaults and on every hidden call of the
    solution notebook; returns how many check calls ran. ``answer`` is one function, or a tuple of
    the functions a check of several takes (``check_conv_costs(conv_params, conv_macs)``)."""
    runs = 0
    for check, answer in pairs:
        answers = answer if isinstance(answer, tuple) else (answer,)
        for kwargs in case_sets(assignment, check.__name__):
            check(*answers, **kwargs)
            runs += 1
    return runs


def autograded_points(assignment: str) -> dict[str, float]:
    """The test cells of an assignment's source notebook and their points (code grade cells that
    are not answers), read from the notebook itself, independently of the grading pipeline."""
    import nbformat

    from course_lib import grading

    nb = nbformat.read(REPO / "solutions" / assignment / grading.notebook_name(assignment), 4)
    return {c.metadata.nbgrader["grade_id"]: float(c.metadata.nbgrader["points"])
            for c in nb.cells if c.cell_type == "code"
            and c.metadata.get("nbgrader", {}).get("grade")
            and not c.metadata["nbgrader"].get("solution")}

