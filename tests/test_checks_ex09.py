"""Exercise 9's checks (the capstone): the solution notebook's own design passes with nothing on
stderr; designs over budget, custom modules, pretrained models, bad recipes and a linear classifier
fail with a message that says what to do. The design under test is read from the solutions
notebook, so the test and the notebook cannot drift apart."""
import ast
import contextlib
import copy
import io
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.checks.ex09_capstone as checks
from course_lib import costs
from course_lib.checks import CheckFailed
from course_lib.separable import DepthwiseSeparableConv2d
from course_lib.training import fit, seeded
from conftest import REPO

NOTEBOOK = REPO / "solutions" / "ex09_capstone" / "ex09_capstone.ipynb"


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


@pytest.fixture(scope="module")
def solution() -> dict:
    """build_model, build_alternative and RECIPE as the solutions notebook defines them."""
    torch.set_num_threads(1)
    cells = {c.metadata.nbgrader["grade_id"]: c.source
             for c in nbformat.read(NOTEBOOK, as_version=4).cells if "nbgrader" in c.metadata}
    namespace = {"nn": nn, "DepthwiseSeparableConv2d": DepthwiseSeparableConv2d}
    for gid in ("part1", "part3"):
        exec(cells[gid].split("\n\n\nsummarize(")[0], namespace)
    recipe = re.search(r"### BEGIN SOLUTION\n(.*?)\n### END SOLUTION", cells["part2"], re.S)
    exec(recipe.group(1), namespace)
    # the hidden test's cases: literal keyword arguments of the calls in the hidden block
    hidden = cells["part2-tests"].split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN")[0]
    namespace["hidden_accuracy_cases"] = [
        {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        for node in ast.walk(ast.parse(hidden)) if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "check_accuracy"]
    return namespace


def linear_classifier():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 10))


def test_measured_costs_agree_with_the_formulas(solution):
    """The budget is measured by FlopCounterMode; the closed-form counts of chapter 1-4 agree."""
    params, macs = checks.measured_costs(solution["build_model"]())
    expected_macs = (costs.conv2d_macs(1, 16, 3, 8)                                  # stem
                     + costs.conv2d_macs(16, 16, 3, 8, groups=16) + costs.conv2d_macs(16, 32, 1, 8)
                     + costs.conv2d_macs(32, 32, 3, 4, groups=32) + costs.conv2d_macs(32, 64, 1, 4)
                     + costs.linear_macs(64 * 4 * 4, 10))
    bn = 2 * (16 + 16 + 32 + 32 + 64)   # BatchNorm's scale and shift
    expected_params = (costs.conv2d_params(1, 16, 3, bias=False)
                       + costs.conv2d_params(16, 16, 3, groups=16, bias=False)
                       + costs.conv2d_params(16, 32, 1, bias=False)
                       + costs.conv2d_params(32, 32, 3, groups=32, bias=False)
                       + costs.conv2d_params(32, 64, 1, bias=False)
                       + costs.linear_params(64 * 4 * 4, 10) + bn)
    assert (params, macs) == (expected_params, expected_macs)
    assert macs <= checks.MAC_BUDGET and params <= checks.PARAM_BUDGET
    # the budget rules out the same plan with full 3x3 convs (the notebook's alternative)
    assert checks.measured_costs(solution["build_alternative"]())[1] > checks.MAC_BUDGET


@pytest.mark.slow  # trains the design twice, as the notebook's test does (the nbgrader run repeats it)
def test_solution_passes_every_check_without_stderr(solution):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        checks.check_budget(solution["build_model"])
        checks.check_accuracy(solution["build_model"], solution["RECIPE"])
        for case in solution["hidden_accuracy_cases"]:
            checks.check_accuracy(solution["build_model"], solution["RECIPE"], **case)
        checks.check_alternative(solution["build_model"], solution["build_alternative"])
    assert stderr.getvalue() == ""
    assert solution["hidden_accuracy_cases"], "the hidden test passes its own seeds"


def test_check_trains_exactly_like_the_notebook(solution):
    """train_design reproduces the notebook's cell (seeded build, fit with seed) bit for bit."""
    recipe = dict(solution["RECIPE"], epochs=2)
    model, _ = checks.train_design(solution["build_model"], dict(recipe, weight_decay=0.0), 3)
    seeded(3)
    mine = solution["build_model"]()
    fit(mine, checks.digits().x_train, checks.digits().y_train, loss_fn=F.cross_entropy, seed=3,
        progress=False, **recipe)
    for a, b in zip(model.state_dict().values(), mine.state_dict().values()):
        assert torch.equal(a, b)


def test_a_linear_classifier_is_below_the_threshold():
    """The threshold asks for more than the pixels' linear classifier reaches (it fits the budget)."""
    checks.check_budget(linear_classifier)
    message = failure(checks.check_accuracy, linear_classifier,
                      dict(epochs=15, batch_size=64, lr=1e-2), seeds=(0,))
    assert "below the 97.5% required" in message


def full_convs():
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def wide_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 10))


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


_LINEAR = linear_classifier()


def linear_shared():
    """A builder that hands out the same model object every time (e.g. one trained earlier)."""
    return _LINEAR


@pytest.mark.parametrize("build, words", [
    (full_convs, "mult-adds per image, over the budget of 120,000"),
    (wide_mlp, "parameters, over the budget of 20,000"),
    (Custom, "is a Custom, which a design may not use"),
    (lambda: nn.Sequential(nn.Conv2d(1, 10, 3)), "Reduce the feature map"),
    (lambda: "a model", "should return an nn.Module"),
    (lambda: nn.Sequential(nn.Sequential(Custom())), "`0.0` is a Custom"),
    (lambda: nn.Sequential(*[nn.ReLU() for _ in range(200)], linear_classifier()),
     "has 202 layers; use at most 100"),
])
def test_wrong_designs_fail_the_budget_with_advice(build, words):
    assert words in failure(checks.check_budget, build)


def test_accuracy_needs_the_budget_and_a_fresh_model(solution):
    assert "within budget before its accuracy counts" in failure(
        checks.check_accuracy, full_convs, solution["RECIPE"])
    assert "same weights whatever the seed" in failure(
        checks.check_accuracy, linear_shared, solution["RECIPE"])
    # weights trained elsewhere (e.g. on the test digits) with noise added to look fresh
    data = checks.digits()
    seeded(0)
    trained = linear_classifier()
    fit(trained, data.x_test, data.y_test, loss_fn=F.cross_entropy, epochs=10, lr=1e-2,
        progress=False)

    def pretrained():
        model = copy.deepcopy(trained)
        with torch.no_grad():
            model[1].weight.add_(1e-4 * torch.randn_like(model[1].weight))
        return model

    assert "before any training" in failure(checks.check_accuracy, pretrained, solution["RECIPE"])


@pytest.mark.parametrize("recipe, words", [
    ([10, 128, 5e-3], "should be a dict"),
    (dict(epochs=10, batch_size=128, lr=5e-3, momentum=0.9), "unknown key(s) ['momentum']"),
    (dict(epochs=10, lr=5e-3), "missing ['batch_size']"),
    (dict(epochs=100, batch_size=128, lr=5e-3), "use 1 to 20"),
    (dict(epochs=10, batch_size=8, lr=5e-3), "use 32 to 1347"),
    (dict(epochs=10, batch_size=128, lr=0), "must be in (0, 0.1]"),
    (dict(epochs=10.5, batch_size=128, lr=5e-3), "expected a whole number"),
    (dict(epochs=10, batch_size=128, lr=5e-3, weight_decay=-1), "use 0 to 0.1"),
])
def test_bad_recipes_say_what_to_change(recipe, words):
    assert words in failure(checks.check_recipe, recipe)


def test_alternative_must_differ_in_cost(solution):
    assert "costs about the same" in failure(
        checks.check_alternative, solution["build_model"], solution["build_model"])
    assert "build_alternative() on a batch" in failure(
        checks.check_alternative, solution["build_model"], lambda: nn.Sequential(nn.Flatten()))


def test_not_implemented_says_so():
    def build_model():
        raise NotImplementedError()
    assert "not implemented yet" in failure(checks.check_budget, build_model)


def test_every_elementwise_activation_is_allowed_and_the_refusal_lists_them():
    """Chapter 5 tests ELU; any element-wise activation is allowed, also inside
    DepthwiseSeparableConv2d(activation=...); a refused layer's message lists what is allowed."""
    from course_lib.separable import DepthwiseSeparableConv2d

    for activation in (nn.ELU, nn.Sigmoid, nn.PReLU, nn.Mish, nn.SELU):
        def build(a=activation):
            return nn.Sequential(
                nn.Conv2d(1, 8, 3, stride=2, padding=1), a(),
                DepthwiseSeparableConv2d(8, 16, stride=2, activation=a),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        with contextlib.redirect_stdout(io.StringIO()):
            checks.check_budget(build)
    msg = failure(checks.check_budget, lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(256, 10), nn.Softmax(dim=1)))
    assert "Softmax" in msg and "nn.ELU" in msg and "nn.Conv2d" in msg


def test_cost_table_times_interleaved_with_ranges():
    table = checks.cost_table({"linear": linear_classifier, "mlp": wide_mlp}, batch_size=8,
                              repeats=4)
    assert "interleaved" in table and "IQR" in table
    assert "1.00x (1.00-1.00)" in table    # the first design against itself, round by round
