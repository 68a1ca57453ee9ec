"""Exercise 7's checks: reference answers pass with nothing on stderr; realistic wrong answers
(alpha forgotten on the 512 blocks, the Table 1 stride misprint, FLOPs for MACs, a timing function
without warm-up / with the mean / without synchronize) fail with a message that names the mistake.
Everything here runs on a CPU: the CUDA path is tested against the checks' simulated GPU."""
import contextlib
import io
import statistics
import time

import pytest
import torch
from torch import nn

import course_lib.checks.ex07_mobilenet as checks
from course_lib import bench, mobilenet
from course_lib.checks import CheckFailed
from course_lib.separable import DepthwiseSeparableConv2d
from exercise_helpers import case_sets, run_all_cases

BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + \
    [(1024, 2), (1024, 1)]


def build(alpha=1.0, num_classes=1000, in_channels=3, *, forget_512=False, last_stride=1,
          conv_bias=False):
    """A student-style MobileNetV1 with switchable, realistic mistakes."""
    c = int(32 * alpha)
    layers = [nn.Conv2d(in_channels, c, 3, stride=2, padding=1, bias=conv_bias),
              nn.BatchNorm2d(c), nn.ReLU()]
    for i, (out, stride) in enumerate(BLOCKS):
        if i == len(BLOCKS) - 1:
            stride = last_stride
        width = out if (forget_512 and out == 512 and i > 5) else int(out * alpha)
        layers.append(DepthwiseSeparableConv2d(c, width, 3, stride=stride, bias=conv_bias))
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def time_ms(fn, warmup=3, repeats=10, device="cpu", *, skip_warmup=False, use_mean=False,
            sync=True, seconds=False, events=False):
    """A correct timing function, with switchable mistakes."""
    cuda = str(device).startswith("cuda")
    if not skip_warmup:
        for _ in range(warmup):
            fn()
    times = []
    if cuda and events:
        torch.cuda.synchronize()
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        if sync:
            torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(repeats):
            if cuda and sync:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda and sync:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * (1 if seconds else 1e3))
    return statistics.fmean(times) if use_mean else statistics.median(times)


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def _paper_answers():
    macs = {a: mobilenet.total_macs(a) / 1e6 for a in (1.0, 0.75, 0.5, 0.25)}
    ratio = mobilenet.total_macs(full_conv=True) / mobilenet.total_macs()
    return macs, ratio


def _intensities():
    return (bench.layer_workload("depthwise", 512, 14, 1, 4).intensity,
            bench.layer_workload("pointwise", 512, 14, 1, 4).intensity)


def test_reference_answers_pass_without_stderr():
    """Visible and hidden cases (the hidden ones read from the solution notebook)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_all_cases("ex07_mobilenet", [
            (checks.check_mobilenet, build),
            (checks.check_time_ms, time_ms),
        ])
    assert stderr.getvalue() == ""


def test_course_lib_mobilenet_is_refused():
    """ex07 part 1 must not pass by returning course_lib's MobileNetV1, built inside or before."""
    msg = failure(checks.check_mobilenet, lambda *a: mobilenet.MobileNetV1(*a))
    assert "not return course_lib's MobileNetV1" in msg
    prebuilt = {args: mobilenet.MobileNetV1(*args) for args in checks.VISIBLE_CASES}
    msg = failure(checks.check_mobilenet, lambda *a: prebuilt[a])
    assert "containing course_lib's MobileNetV1" in msg
    assert isinstance(mobilenet.MobileNetV1(0.25, 10, 1), nn.Module)   # restored afterwards


def test_timing_that_ignores_warmup_and_repeats_is_caught():
    fixed = lambda fn, warmup=3, repeats=10, device="cpu": time_ms(fn, 3, 10, device)  # noqa
    msg = failure(checks.check_time_ms, fixed)
    assert "use the arguments" in msg and "called fn 13 times" in msg


def test_typed_in_timings_are_rejected():
    """Part 4's numbers must be values the (recorded) time_ms returned in this session."""
    recorded = checks.recorded(time_ms)
    model, conv = mobilenet.MobileNetV1().eval(), mobilenet.ConvMobileNet().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = recorded(lambda: model(x), warmup=1, repeats=3)
        b = recorded(lambda: conv(x), warmup=1, repeats=3)
    ratio = mobilenet.total_macs(1.0, 64, full_conv=True) / mobilenet.total_macs(1.0, 64)
    checks.check_cpu_measurements(a, b, b / a, ratio, 2, 64, recorded)
    typed_a, typed_b = round(a, 1) + 0.05, round(b, 1) + 0.05   # plausible, but typed in
    msg = failure(checks.check_cpu_measurements, typed_a, typed_b, typed_b / typed_a, ratio, 2,
                  64, recorded)
    assert "not a number your time_ms returned" in msg


def _fake_gpu_measure(student_factor=1.0, reference=(2.0, 9.0)):
    """An injected GPU measurement (no GPU here): the student's time_ms reads ``student_factor``
    times the grader's own timings of MobileNetV1 and ConvMobileNet."""
    def measure(student_time_ms):
        assert callable(student_time_ms)
        return {"MobileNetV1": (reference[0] * student_factor, reference[0]),
                "ConvMobileNet": (reference[1] * student_factor, reference[1])}
    return measure


def test_gpu_part_without_a_gpu_gives_full_marks_whatever_gpu_ms_holds(capsys):
    for gpu_ms in (None, {"MobileNetV1": 1e9}, "stub", 3):
        checks.check_gpu_measurements(gpu_ms, time_ms, gpu=False)
    assert capsys.readouterr().out.count("no GPU on this machine") == 4


def test_gpu_part_logic_with_an_injected_gpu(capsys):
    """The GPU grader's decisions, run on a CPU with an injected measurement."""
    honest = {"MobileNetV1": 2.2, "ConvMobileNet": 8.5}
    checks.check_gpu_measurements(honest, time_ms, gpu=True, measure=_fake_gpu_measure())
    # another GPU, 4x slower: still accepted (GPUs differ), and the ratio agrees
    slower = {k: 4 * v for k, v in honest.items()}
    checks.check_gpu_measurements(slower, time_ms, gpu=True, measure=_fake_gpu_measure())
    # a truthful None: graded on the student's time_ms measured by the grader
    checks.check_gpu_measurements(None, time_ms, gpu=True, measure=_fake_gpu_measure())
    assert "agrees with the grader's own timing, so this part counts" in capsys.readouterr().out
    # fabricated: implausible values, or a made-up ratio
    assert "implausible" in failure(checks.check_gpu_measurements, {"MobileNetV1": 0.01,
                                                                    "ConvMobileNet": 0.02},
                                    time_ms, gpu=True, measure=_fake_gpu_measure())
    assert "ratio" in failure(checks.check_gpu_measurements, {"MobileNetV1": 5.0,
                                                              "ConvMobileNet": 5.0},
                              time_ms, gpu=True, measure=_fake_gpu_measure())
    # a time_ms that does not synchronize reads far too little on the real GPU
    msg = failure(checks.check_gpu_measurements, honest, time_ms, gpu=True,
                  measure=_fake_gpu_measure(student_factor=0.05))
    assert "your time_ms gave" in msg and "synchronization" in msg
    assert "should be None" in failure(checks.check_gpu_measurements, "stub", time_ms, gpu=True,
                                       measure=_fake_gpu_measure())


def test_other_reference_answers_pass_without_stderr():
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        checks.check_paper_costs(*_paper_answers())
        checks.check_intensity(*_intensities())
        checks.check_gpu_measurements(None, time_ms)  # no GPU here: passes with a note
        # CUDA events instead of synchronize-around-each-call is also correct
        checks.check_time_ms(lambda *a, **k: time_ms(*a, events=True, **k))
    assert stderr.getvalue() == ""
    if not torch.cuda.is_available():
        assert "no GPU on this machine" in stdout.getvalue()


def test_measurement_check_accepts_real_numbers():
    model, conv = mobilenet.MobileNetV1().eval(), mobilenet.ConvMobileNet().eval()
    x = torch.randn(2, 3, 64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the notebook does: steadier on a shared machine
    try:
        with torch.no_grad():
            a = time_ms(lambda: model(x), warmup=1, repeats=3)
            b = time_ms(lambda: conv(x), warmup=1, repeats=3)
    finally:
        torch.set_num_threads(threads)
    ratio = mobilenet.total_macs(1.0, 64, full_conv=True) / mobilenet.total_macs(1.0, 64)
    checks.check_cpu_measurements(a, b, b / a, ratio, 2, 64)
    assert "upside down" in failure(checks.check_cpu_measurements, a, b, a / b, ratio, 2, 64)
    assert "too high" in failure(checks.check_cpu_measurements, a, b, b / a, 8.6 * 2, 2, 64)
    # seconds instead of milliseconds
    assert "implausible" in failure(checks.check_cpu_measurements, a / 1e3, b / 1e3, b / a, ratio,
                                    2, 64)


def test_alpha_forgotten_on_the_512_blocks():
    msg = failure(checks.check_mobilenet, lambda *a: build(*a, forget_512=True))
    assert "mobilenet_v1(0.5, 10, 1)" in msg and "five 512-channel blocks" in msg


def test_table1_stride_misprint():
    msg = failure(checks.check_mobilenet, lambda *a: build(*a, last_stride=2))
    assert "last depthwise layer has stride 1" in msg


def test_conv_bias_before_batchnorm():
    msg = failure(checks.check_mobilenet, lambda *a: build(*a, conv_bias=True))
    assert "bias=False" in msg


def test_not_a_module_and_not_implemented():
    assert "should return an nn.Module" in failure(checks.check_mobilenet, lambda *a: [1, 2])

    def todo(*args):
        raise NotImplementedError()
    assert "not implemented yet" in failure(checks.check_mobilenet, todo)


def test_paper_cost_mistakes():
    macs, ratio = _paper_answers()
    flops = {a: 2 * m for a, m in macs.items()}
    assert "twice the mult-adds" in failure(checks.check_paper_costs, flops, ratio)
    raw = {a: m * 1e6 for a, m in macs.items()}
    assert "give millions" in failure(checks.check_paper_costs, raw, ratio)
    assert "missing the alpha" in failure(checks.check_paper_costs, {1.0: macs[1.0]}, ratio)
    assert "upside down" in failure(checks.check_paper_costs, macs, 1 / ratio)


def test_timing_without_warmup_is_caught():
    msg = failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, skip_warmup=True, **k))
    assert "warm-up" in msg


def test_timing_with_the_mean_is_caught():
    msg = failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, use_mean=True, **k))
    assert "median" in msg


def test_timing_in_seconds_is_caught():
    msg = failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, seconds=True, **k))
    assert "milliseconds" in msg


def test_timing_without_synchronize_is_caught_on_a_cpu():
    msg = failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, sync=False, **k))
    assert "synchronize" in msg and "launch" in msg
    # events read before synchronizing: the simulated device is not ready yet
    msg = failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, sync=False, events=True, **k))
    assert "device not ready" in msg


def test_fake_cuda_is_restored():
    before = (torch.cuda.synchronize, torch.cuda.Event, torch.cuda.is_available)
    failure(checks.check_time_ms, lambda *a, **k: time_ms(*a, sync=False, **k))
    assert (torch.cuda.synchronize, torch.cuda.Event, torch.cuda.is_available) == before


def test_the_buggy_timing_function_of_the_exercise_fails():
    """The notebook's time_ms_buggy: no warm-up, mean, no synchronize."""
    def time_ms_buggy(fn, warmup=3, repeats=10, device="cpu"):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sum(times) / len(times)
    failure(checks.check_time_ms, time_ms_buggy)


def test_intensity_mistakes():
    dw, pw = _intensities()
    assert "FLOPs (2 per multiply-add)" in failure(checks.check_intensity, dw / 2, pw)
    assert "4 bytes" in failure(checks.check_intensity, dw * 4, pw)
    no_weights = 2 * 512 * 512 * 196 / (4 * 2 * 512 * 196)
    assert "weights are read" in failure(checks.check_intensity, dw, no_weights)
