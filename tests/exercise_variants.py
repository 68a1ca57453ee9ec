"""Student variants of every exercise, written as students write them: alternative valid
solutions, typical wrong answers and partly right notebooks. Each variant is the released notebook
with some solution cells replaced; every other solution cell holds the reference solution.

They are submitted to the shared graded course (tests/conftest.py: one ``nbgrader autograde`` for
all of them) and validated with ``nbgrader validate`` by tests/test_validate_autograde_agreement.py,
which asserts that both agree on every test cell.
"""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, dict[str, str]]] = {
    "ex01_standard": {
        "alternative": {
            "part1": '''
def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    import math
    return math.floor((size + 2 * padding - dilation * (kernel_size - 1) - 1) / stride) + 1
''',
            "part4": '''
def conv2d_unfold(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    n, _, h, w = x.shape
    m, c_g, kh, kw = weight.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    cols = cols.view(n, groups, c_g * kh * kw, -1)
    out = torch.einsum("gmk,ngkl->ngml", weight.view(groups, m // groups, -1), cols)
    out = out.reshape(n, m, conv_output_size(h, kh, stride, padding, dilation),
                      conv_output_size(w, kw, stride, padding, dilation))
    return out if bias is None else out + bias[None, :, None, None]
''',
        },
        "typical_wrong": {   # off by one, forgotten bias: parts 1, 2 and 4 fail
            "part1": '''
def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    return (size + 2 * padding - dilation * (kernel_size - 1)) // stride
''',
            "part2": '''
def conv_params(in_channels, out_channels, kernel_size, bias=True):
    return kernel_size * kernel_size * in_channels * out_channels


def conv_macs(in_channels, out_channels, kernel_size, out_h, out_w):
    return kernel_size * kernel_size * in_channels * out_channels * out_h * out_w
''',
        },
        "logs_to_stderr": {   # an honest student who logs: full marks
            "part1": '''
import logging
logging.basicConfig(level=logging.INFO)   # a handler on stderr
log = logging.getLogger("my_solution")

def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    log.info("size %s kernel %s", size, kernel_size)
    span = dilation * (kernel_size - 1) + 1
    return (size + 2 * padding - span) // stride + 1
''',
            "part2": '''
def conv_params(in_channels, out_channels, kernel_size, bias=True):
    log.warning("counting a %dx%d conv", kernel_size, kernel_size)
    return kernel_size * kernel_size * in_channels * out_channels + (out_channels if bias else 0)


def conv_macs(in_channels, out_channels, kernel_size, out_h, out_w):
    log.info("%d output positions", out_h * out_w)
    return kernel_size * kernel_size * in_channels * out_channels * out_h * out_w
''',
        },
        "alias_of_conv2d": {   # an alias bound before the check: part 4 is refused
            "part4": '''
conv = F.conv2d

def conv2d_unfold(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return conv(x, weight, bias, stride, padding, dilation, groups)
''',
        },
    },
    "ex02_pointwise": {
        "alternative": {
            "part1": '''
def pointwise_matmul(x, weight, bias=None):
    out = torch.einsum("mc,nchw->nmhw", weight[:, :, 0, 0], x)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
''',
            "part2": '''
def pointwise_via_linear(x, linear):
    return linear(x.movedim(1, -1)).movedim(-1, 1)
''',
        },
        "partly_right": {   # the bug left in part 2, FLOPs in part 3, floor instead of ceil in 4
            "part2": '''
def pointwise_via_linear(x, linear):
    n, c, h, w = x.shape
    return linear(x.reshape(n, h * w, c)).reshape(n, -1, h, w)
''',
            "part3": '''
def pointwise_params(in_channels, out_channels, bias=True):
    return in_channels * out_channels + (out_channels if bias else 0)


def pointwise_macs(in_channels, out_channels, out_h, out_w):
    return 2 * in_channels * out_channels * out_h * out_w
''',
            "part4": '''
read_fraction = (45 // 3) ** 2 / 45 ** 2
read_positions = (17 // 3) ** 2
macs_ratio = 29 * 29 / ((29 // 2) * (29 // 2))
''',
        },
        "course_einsum": {   # course_lib's own pointwise_as_matmul (an einsum): refused, named
            "part1": '''
from course_lib.pointwise import pointwise_as_matmul

def pointwise_matmul(x, weight, bias=None):
    return pointwise_as_matmul(x, weight, bias)
''',
        },
    },
    "ex03_depthwise": {
        "block_diagonal": {   # one dense groups=1 conv with a block-diagonal weight: refused
            "part1": '''
def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    c, k = x.shape[1], weight.shape[0] // x.shape[1]
    dense = torch.zeros(weight.shape[0], c, *weight.shape[-2:])
    for o in range(weight.shape[0]):
        dense[o, o // k] = weight[o, 0]
    return F.conv2d(x, dense, bias, stride, padding, dilation)
''',
        },
        "typical_wrong": {   # a grouped conv where single-channel convs were asked for
            "part1": '''
def depthwise_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1):
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])
''',
            "part2": '''
def keras_to_torch(kernel):
    kh, kw, c, k = kernel.shape
    return kernel.permute(3, 2, 0, 1).reshape(c * k, 1, kh, kw)
''',
        },
        "alternative": {
            "part3": '''
def depthwise_params(channels, kernel_size, depth_multiplier=1, bias=True):
    filters = channels * depth_multiplier
    return filters * (kernel_size ** 2 + int(bias))


def depthwise_macs(channels, kernel_size, out_h, out_w, depth_multiplier=1):
    return channels * depth_multiplier * kernel_size ** 2 * out_h * out_w
''',
        },
    },
    "ex04_separable": {
        "partly_right": {   # BatchNorm and ReLU inside the block; a standard conv's count
            "part1": '''
def separable_params(in_channels, out_channels, kernel_size, depth_multiplier=1):
    return kernel_size * kernel_size * in_channels * out_channels


def separable_macs(in_channels, out_channels, kernel_size, out_h, out_w, depth_multiplier=1):
    mid = in_channels * depth_multiplier
    return (kernel_size * kernel_size * mid + mid * out_channels) * out_h * out_w
''',
            "part3": '''
class SeparableConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=kernel_size // 2, groups=in_channels, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.relu(self.bn(self.depthwise(x))))
''',
        },
        "alternative": {
            "part4": '''
def separable_to_full(depthwise_weight, pointwise_weight):
    return torch.einsum("mc,ckl->mckl", pointwise_weight[:, :, 0, 0], depthwise_weight[:, 0])
''',
        },
    },
    "ex05_xception": {
        "partly_right": {   # dilation forgotten; BatchNorm left out of the share
            "part2": '''
def grouped_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    xs = x.chunk(groups, dim=1)
    ws = weight.chunk(groups, dim=0)
    out = torch.cat([F.conv2d(a, b, None, stride, padding) for a, b in zip(xs, ws)], dim=1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
''',
            "part4": '''
pointwise_384 = 384 * 384
first_cheaper_groups = 12
extreme_params = 384 * 384 + 9 * 384
order_difference = (96 * 240 + 9 * 240) - (9 * 96 + 96 * 240)
middle_flow_share = 24 * (9 * 728 + 728 * 728) / 22_855_952
''',
        },
        "alternative": {
            "part2": '''
def grouped_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    xs = torch.split(x, x.shape[1] // groups, dim=1)
    ws = torch.split(weight, weight.shape[0] // groups, dim=0)
    out = torch.cat([F.conv2d(a, b, None, stride, padding, dilation) for a, b in zip(xs, ws)], 1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
''',
        },
    },
    "ex06_atrous": {
        "square_kernels_only": {   # rectangular kernels are in the visible tests too
            "part1": '''
def dilate_kernel(weight, dilation):
    m, c, k, _ = weight.shape
    out = torch.zeros(m, c, dilation * (k - 1) + 1, dilation * (k - 1) + 1)
    out[:, :, ::dilation, ::dilation] = weight
    return out
''',
            "part3": '''
def atrous_conv_same(x, weight, bias=None, dilation=1):
    return F.conv2d(x, weight, bias, padding=(weight.shape[-1] - 1) // 2, dilation=dilation)
''',
        },
        "shortcuts": {   # padding="same" and the weight itself at rate 1: parts 1 and 3 fail
            "part1": '''
def dilate_kernel(weight, dilation):
    if dilation == 1:
        return weight
    m, c, kh, kw = weight.shape
    out = torch.zeros(m, c, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    out[:, :, ::dilation, ::dilation] = weight
    return out
''',
            "part3": '''
def atrous_conv_same(x, weight, bias=None, dilation=1):
    return F.conv2d(x, weight, bias, padding="same", dilation=dilation)
''',
        },
    },
    "ex07_mobilenet": {
        "shortcuts": {   # course_lib's model, fixed warm-up/repeats, typed-in timings
            "part1": '''
from course_lib.mobilenet import MobileNetV1

def mobilenet_v1(alpha=1.0, num_classes=1000, in_channels=3):
    return MobileNetV1(alpha, num_classes, in_channels)
''',
            "part3": '''
def time_ms(fn, warmup=3, repeats=10, device="cpu"):
    for _ in range(3):
        fn()
    times = []
    for _ in range(10):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
''',
            "part4": '''
mobilenet_ms, conv_mobilenet_ms = 25.0, 60.0
measured_speedup = conv_mobilenet_ms / mobilenet_ms
macs_ratio = (costs.measure_macs(ConvMobileNet().eval(), (1, 3, RES, RES))
              / costs.measure_macs(mobilenet_v1().eval(), (1, 3, RES, RES)))
''',
        },
        "gpu_stub_left": {   # no GPU: the stub of part 6 left as it is, full marks
            "part6": '''
gpu_ms = None   # stays None on a machine without a GPU
if torch.cuda.is_available():
    # YOUR CODE HERE
    raise NotImplementedError()
print(gpu_ms if gpu_ms is not None else "no GPU here: part 6 is skipped")
''',
        },
    },
    "ex08_autoencoder": {
        "cheats": {   # far too many parameters (part 2), trained on train + test (part 4)
            "part2": '''
class Autoencoder(nn.Module):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_autoencoder(latent_dim):
    encoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        DepthwiseSeparableConv2d(16, 32, stride=2),
        nn.Flatten(), nn.Linear(512, 200), nn.ReLU(), nn.Linear(200, latent_dim))
    decoder = nn.Sequential(
        nn.Linear(latent_dim, 200), nn.ReLU(), nn.Linear(200, 512), nn.ReLU(),
        nn.Unflatten(1, (32, 4, 4)),
        nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, bias=False),
        nn.BatchNorm2d(16), nn.ReLU(),
        nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),
        nn.Sigmoid())
    return Autoencoder(encoder, decoder)
''',
            "part4": '''
LATENT_DIM = checks.LATENT_DIM   # 8
RECIPE = dict(epochs=15, batch_size=128, lr=6e-3)
everything = torch.cat([digits.x_train, digits.x_test])
seeded(0)
model = build_autoencoder(LATENT_DIM)
history = fit(model, everything, everything, loss_fn=F.mse_loss, seed=0, **RECIPE)
''',
        },
        "other_names": {   # `hist` instead of `history`: part 4 fails in validate AND autograde
            "part4": '''
LATENT_DIM = checks.LATENT_DIM   # 8
seeded(0)
model = build_autoencoder(LATENT_DIM)
hist = fit(model, digits.x_train, digits.x_train, loss_fn=F.mse_loss, epochs=15,
           batch_size=128, lr=6e-3, seed=0)
model.eval()
with torch.no_grad():
    print("test MSE:", F.mse_loss(model(digits.x_test), digits.x_test).item())
''',
        },
    },
    "ex09_capstone": {
        "elu_design": {   # ELU (the activation chapter 5 tests), inside the separable blocks too
            "part1": '''
def build_model():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ELU(),
        DepthwiseSeparableConv2d(16, 32, activation=nn.ELU),
        DepthwiseSeparableConv2d(32, 64, stride=2, activation=nn.ELU),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


summarize(build_model(), INPUT_SHAPE)
''',
        },
    },
}


# Exercise 4's backward part (issue 22, item 11): kept apart from the dict above so that edits to
# the older parts merge cleanly.
VARIANTS["ex04_separable"].update({
    "backward_unfold_fold": {   # right, another way: im2col and its adjoint; in-place gradient check
        "backward-depthwise": '''
def depthwise_backward(grad_out, x, weight, stride=1, padding=0):
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride).view(n, c, kh * kw, -1)
    g = grad_out.reshape(n, c, 1, -1)
    grad_w = (cols * g).sum(dim=(0, 3)).view(c, 1, kh, kw)
    back = (weight.view(1, c, kh * kw, 1) * g).view(n, c * kh * kw, -1)
    return F.fold(back, (h, w), (kh, kw), padding=padding, stride=stride), grad_w
''',
        "backward-pointwise": '''
def pointwise_backward(grad_out, x, weight):
    w = weight.flatten(1)                                   # (M, C)
    g = grad_out.permute(0, 2, 3, 1)                        # (N, H, W, M)
    grad_x = (g @ w).permute(0, 3, 1, 2)
    grad_w = torch.einsum("nhwm,nhwc->mc", g, x.permute(0, 2, 3, 1))
    return grad_x, grad_w.view_as(weight)
''',
        "backward-numerical": '''
def numerical_gradient(f, x, h=1e-6):
    grad = torch.empty_like(x)
    for i in range(x.numel()):
        old = x.view(-1)[i].item()
        x.view(-1)[i] = old + h
        up = f(x).item()
        x.view(-1)[i] = old - h
        down = f(x).item()
        x.view(-1)[i] = old
        grad.view(-1)[i] = (up - down) / (2 * h)
    return grad
''',
    },
    "backward_classmate": {   # correlation instead of the flipped kernel; a batch mean; one-sided
        "backward-depthwise": '''
def depthwise_backward(grad_out, x, weight, stride=1, padding=0):
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    ho, wo = grad_out.shape[2:]
    g = grad_out.new_zeros(n, c, stride * (ho - 1) + 1, stride * (wo - 1) + 1)
    g[..., ::stride, ::stride] = grad_out
    g = F.pad(g, (kw - 1, kw - 1, kh - 1, kh - 1))
    cols = F.unfold(g, (kh, kw)).view(n, c, kh * kw, -1)
    full = (cols * weight.reshape(1, c, kh * kw, 1)).sum(2)       # the kernel as it is
    full = full.view(n, c, g.shape[2] - kh + 1, g.shape[3] - kw + 1)
    full = F.pad(full, (0, w + 2 * padding - full.shape[3], 0, h + 2 * padding - full.shape[2]))
    grad_x = full[..., padding:padding + h, padding:padding + w]
    xp = F.pad(x, (padding,) * 4)
    grad_w = torch.zeros_like(weight)
    for a in range(kh):
        for b in range(kw):
            patch = xp[..., a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
            grad_w[:, 0, a, b] = (patch * grad_out).sum(dim=(0, 2, 3))
    return grad_x, grad_w
''',
        "backward-pointwise": '''
def pointwise_backward(grad_out, x, weight):
    grad_x = torch.einsum("mc,nmhw->nchw", weight[:, :, 0, 0], grad_out)
    grad_w = torch.einsum("nmhw,nchw->mc", grad_out, x) / x.shape[0]
    return grad_x, grad_w[:, :, None, None]
''',
        "backward-numerical": '''
def numerical_gradient(f, x, h=1e-6):
    x = x.clone()
    base = float(f(x))
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        x.view(-1)[i] += h
        grad.view(-1)[i] = (float(f(x)) - base) / h
        x.view(-1)[i] -= h
    return grad
''',
    },
})


# Exercise 10, the accuracy-versus-latency lab (issue 22, item 12).
VARIANTS["ex10_tradeoffs"] = {
    # One notebook (each runs the whole sweep): a right sweep written another way; a front that
    # drops tied points; the full design shipped whatever the budget. (The other table mistakes,
    # e.g. mult-adds of a whole batch, are tests/test_checks_ex10.py's.)
    "lab_classmate": {
        "part2": '''
results, runs = [], {}
t0 = time.perf_counter()
for alpha, resolution in [(a, r) for a in tradeoffs.ALPHAS for r in tradeoffs.RESOLUTIONS]:
    acc, net = tradeoffs.train_and_evaluate(tiny_mobilenet, alpha, resolution, split)
    images = tradeoffs.at_resolution(split.x_test[:128], resolution)
    runs[alpha, resolution] = (lambda n, x: (lambda: n(x)))(net, images)
    results.append(dict(alpha=alpha, resolution=resolution, accuracy=float(acc),
                        macs=costs.measure_macs(net, images[:1])))
with torch.inference_mode():
    measured = timing.interleaved(runs, rounds=20, warmup=3)
for row in results:
    row["ms"] = measured[row["alpha"], row["resolution"]].median_ms
    row["ms_iqr"] = measured[row["alpha"], row["resolution"]].iqr_ms
print(f"sweep: {time.perf_counter() - t0:.1f} s")
''',
        "part3": '''
def pareto_front(rows):
    front = [r for r in rows if not any(o is not r and o["ms"] <= r["ms"]
                                        and o["accuracy"] >= r["accuracy"] for o in rows)]
    return sorted(front, key=lambda r: r["ms"])
''',
        "part3-plot": '''
front = pareto_front(results)
plt.plot([r["ms"] for r in results], [r["accuracy"] for r in results], "o")
plt.plot([r["ms"] for r in front], [r["accuracy"] for r in front], "-")
plt.show()
''',
        "part4": '''
pick = (1.0, 28)   # the most accurate network on paper
''',
    },
}

def solution_sources(assignment: str) -> dict[str, str]:
    """The reference solution of every solution cell, without the solution markers."""
    nb = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    sources = {}
    for cell in nb["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("solution"):
            lines = "".join(cell["source"]).split("\n")
            sources[meta["grade_id"]] = "\n".join(
                line for line in lines
                if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return sources


def autograded_cells(assignment: str) -> set[str]:
    """grade ids of the test cells the autograder scores (not the written answers)."""
    nb = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    return {c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"]
            if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("grade")}


def variant_notebook(assignment: str, changes: dict[str, str]) -> nbformat.NotebookNode:
    """The released notebook with every solution cell filled in: ``changes`` where given, the
    reference solution elsewhere."""
    nb = nbformat.read(REPO / "exercises" / assignment / f"{assignment}.ipynb", as_version=4)
    solutions = solution_sources(assignment)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            cell.source = changes.get(meta["grade_id"], solutions[meta["grade_id"]]).strip("\n")
    return nb


def variant_students(assignments: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """{student id: (assignment, changes)} for the given assignments."""
    return {f"{assignment}__{name}": (assignment, changes)
            for assignment in assignments for name, changes in VARIANTS.get(assignment, {}).items()}


# Runs nbgrader's own Validator (the code behind `nbgrader validate`) on each notebook given, with
# the course's nbgrader_config.py, and prints {notebook: [grade ids of failed test cells]}.
VALIDATE_ALL = """
import json, sys
import nbformat
from traitlets.config.loader import PyFileConfigLoader
from nbgrader.validator import Validator

config = PyFileConfigLoader("nbgrader_config.py", path=sys.argv[1]).load_config()
results = {}
for path in sys.argv[2:]:
    nb = nbformat.read(path, as_version=4)
    ids = {c.source.strip(): c.metadata["nbgrader"]["grade_id"] for c in nb.cells
           if c.metadata.get("nbgrader", {}).get("grade")}
    found = Validator(config=config).validate(path)
    unexpected = set(found) - {"failed"}
    results[path] = {"failed": sorted(ids[c["source"]] for c in found.get("failed", [])),
                     "other": sorted(unexpected)}
print(json.dumps(results))
"""


def validate_variants() -> tuple[dict, dict]:
    """``nbgrader validate`` every student variant in one process (one nbgrader import, one kernel
    per notebook). Returns (student -> (assignment, notebook path), path -> {"failed", "other"}).
    (The reference solutions need no run here: tests/test_notebooks.py proves they pass validate
    and score full marks.)"""
    import atexit
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from conftest import ASSIGNMENTS
    from course_lib import grading

    folder = Path(tempfile.mkdtemp(prefix="validate-variants-"))
    atexit.register(shutil.rmtree, folder, True)
    notebooks = {}
    for student, (assignment, changes) in variant_students(ASSIGNMENTS).items():
        path = folder / student / grading.notebook_name(assignment)
        path.parent.mkdir()
        nbformat.write(variant_notebook(assignment, changes), path)
        notebooks[student] = (assignment, path)
    proc = subprocess.run(
        [sys.executable, "-c", VALIDATE_ALL, str(REPO)] + [str(p) for _, p in notebooks.values()],
        capture_output=True, text=True, cwd=folder, timeout=3000,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO)] + os.environ.get("PYTHONPATH", "").split(os.pathsep))))
    if proc.returncode != 0:
        raise RuntimeError(f"validating the variants failed:\n{proc.stderr[-4000:]}")
    return notebooks, json.loads(proc.stdout.strip().splitlines()[-1])
