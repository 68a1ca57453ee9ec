"""Grading on dask.distributed (course_lib.grading.dispatch, .worker) with real schedulers and workers.

The cluster is started the way an instructor starts one, with the ``dask scheduler`` and
``dask worker`` commands on 127.0.0.1 (one single-threaded worker, and one that declares a GPU
resource), and torn down by killing their process groups. The engine tests run cheap task
functions on it, or on the embedded LocalCluster, and kill real worker processes; the pipeline
tests grade a small mixed class through ``--scheduler`` and compare with the embedded default.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from course_lib.grading import dispatch, environment, model, pipeline

REPO = Path(__file__).resolve().parents[1]


def dask_env(pythonpath: str | None = None) -> dict:
    """The environment of the dask processes: this one, plus tests/ on the path so that the
    scheduler and the workers can unpickle the task functions defined in this module."""
    paths = [str(Path(__file__).parent), pythonpath or os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A dask command in its own process group (killing the group is a host going down), run
    outside the repository (``python -m`` puts the current folder first on the path)."""
    return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent,
                            env=env or dask_env())


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 15) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(wait)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(wait)


class DaskCluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler = _start(["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                 "--no-dashboard"], folder / "scheduler.log")
        self.workers: dict[str, subprocess.Popen] = {}

    def add_worker(self, name: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
        proc = _start(["worker", self.address, "--name", name, "--nthreads", "1",
                       "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0",
                       "--local-directory", str(self.folder / name), *extra],
                      self.folder / f"{name}.log", env)
        self.workers[name] = proc
        return proc

    def wait(self, n: int, timeout: float = 180) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def close(self) -> None:
        for proc in self.workers.values():
            stop(proc)
        stop(self.scheduler)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in sorted(self.folder.glob("*.log")))


@contextmanager
def dask_cluster(folder: Path, workers: dict[str, tuple[str, ...]]):
    folder.mkdir(parents=True, exist_ok=True)
    c = DaskCluster(folder)
    try:
        for name, extra in workers.items():
            c.add_worker(name, *extra)
        if workers:
            c.wait(len(workers))
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.close()


@pytest.fixture(scope="session")
def two_workers(tmp_path_factory):
    """A scheduler, a CPU worker and a worker declaring one GPU, as an instructor starts them."""
    with dask_cluster(tmp_path_factory.mktemp("dask"),
                      {"cpu0": (), "gpu0": ("--resources", f"{dispatch.GPU}=1")}) as c:
        yield c


# ----------------------------------------------------------------------------- task functions
def where(chunk: list) -> list[str]:
    from distributed import get_worker
    return [get_worker().address for _ in chunk]


def die_once_or_always(chunk: list, marker: str) -> list[str]:
    """Kills its worker process: always for "poison", once (first try) for "flaky"."""
    for item in chunk:
        if item == "poison":
            os._exit(3)
        if item == "flaky" and not os.path.exists(marker):
            Path(marker).write_text("died once")
            os._exit(3)
    return [f"graded {item}" for item in chunk]


# ----------------------------------------------------------------------------- engine
@pytest.mark.slow
def test_dead_workers_are_retried_and_a_killer_is_failed_alone(tmp_path):
    """Embedded LocalCluster (2 worker processes): a task whose worker dies once is retried
    elsewhere; a chunk holding an item that kills every worker is split, its other items are
    graded, and that item alone fails after killing two workers."""
    items = ["a", "flaky", "b", "poison", "c"]
    with dispatch.Engine(workers=2) as engine:
        engine.wait_for_workers(2)
        got = engine.map_chunks(die_once_or_always, [items[:2], items[2:]],
                                str(tmp_path / "marker"), key=str)
    assert (tmp_path / "marker").read_text() == "died once"
    assert {k: v for k, v in got.items() if k != "poison"} == {
        i: f"graded {i}" for i in items if i != "poison"}
    assert isinstance(got["poison"], model.Failure)
    assert "killed its worker 2 times" in got["poison"].reason
    assert not got["poison"].grader, "killing its workers is the submission's own doing"


def sleep_then_echo(chunk: list, seconds: float) -> list:
    time.sleep(seconds)
    return list(chunk)


@pytest.mark.slow
def test_when_every_worker_is_gone_the_rest_fail_with_the_reason(tmp_path):
    """The only worker (a `dask worker` process group) goes down mid-task and none comes back:
    after the engine's patience, every item still waiting is a Failure that says why."""
    with dask_cluster(tmp_path / "dask", {"only": ()}) as c:
        with dispatch.Engine(scheduler=c.address, no_worker_timeout=10) as engine:
            import threading

            threading.Timer(3, stop, (c.workers["only"], signal.SIGKILL)).start()
            got = engine.map_chunks(sleep_then_echo, [[1], [2]], 60, key=str)
    assert set(got) == {"1", "2"}
    assert all(isinstance(v, model.Failure) and "no dask worker" in v.reason and v.grader
               for v in got.values()), got


@pytest.mark.slow
def test_gpu_work_goes_only_to_gpu_workers(two_workers):
    with dispatch.Engine(scheduler=two_workers.address) as engine:
        gpus = engine.gpu_workers()
        assert len(gpus) == 1 and len(engine.worker_info()) == 2
        resources, note = dispatch.route(engine, "ex07_mobilenet")
        assert resources == {dispatch.GPU: 1} and gpus[0] in note
        assert dispatch.route(engine, "ex01_standard") == (None, None)
        placed = engine.map_chunks(where, [[i] for i in range(6)], resources=resources, key=str)
    assert not [v for v in placed.values() if isinstance(v, model.Failure)], placed
    assert set(placed.values()) == set(gpus)


@pytest.mark.slow
def test_without_gpu_workers_the_route_says_none_declares_one():
    with dispatch.Engine(workers=1) as engine:
        engine.wait_for_workers(1)
        resources, note = dispatch.route(engine, "ex07_mobilenet")
    assert resources is None
    assert "part6-tests" in note and "no worker declares one" in note


@pytest.mark.slow
def test_a_worker_with_other_checks_is_refused(tmp_path):
    """A worker whose course_lib differs (here: an edited check) is named, with what differs and
    what to do, before anything is graded."""
    copy = tmp_path / "other" / "course_lib"
    shutil.copytree(REPO / "course_lib", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "checks" / "ex01_standard.py", "a") as f:
        f.write("\n# edited on this worker\n")
    env = dask_env(str(copy.parent))
    with dask_cluster(tmp_path / "dask", {}) as c:
        c.add_worker("stale", env=env)
        c.wait(1)
        with dispatch.Engine(scheduler=c.address) as engine:
            with pytest.raises(environment.EnvironmentMismatch) as err:
                engine.check_environment("ex01_standard")
            worker = next(iter(engine.worker_info()))
    message = str(err.value)
    assert worker in message and "checks of ex01_standard" in message
    assert "requirements.txt" in message


def test_unreachable_scheduler_says_how_to_start_one():
    with pytest.raises(dispatch.ClusterError, match="dask scheduler"):
        with dispatch.Engine(scheduler=f"tcp://127.0.0.1:{free_port()}", connect_timeout=2):
            pass


def test_chunks_cover_every_item_once():
    """One submission per task by default (a worker's session stays warm between tasks, so no
    notebook waits behind a slow one); ``chunk_size`` groups them."""
    items = list(range(37))
    for workers in (1, 2, 5, 50):
        assert dispatch.chunked(items, workers) == [[i] for i in items]
    chunks = dispatch.chunked(items, 2, chunk_size=5)
    assert sorted(i for c in chunks for i in c) == items and max(map(len, chunks)) == 5
    assert len(chunks) == 8
    assert dispatch.chunked([], 3) == []


def test_a_batch_stops_early_when_its_first_results_fail_alike():
    """The first three results all the same grader error: stop; a student's own failure or a
    graded row among them: go on."""
    options = model.GradingOptions()
    broken = model.Failure("the re-check's server did not start (its log ends: x)")
    first: list = [broken, broken]
    stop = pipeline._stop_rule(options, first)
    assert stop() is None  # two are not enough
    first.append(model.Failure("the re-check's server did not start (its log ends: y)"))
    assert "did not start" in stop()
    first[1] = model.Failure("grading it killed its worker 2 times", grader=False)
    assert stop() is None


def test_benchmark_breakdown_divides_each_phase_by_the_submissions():
    """Three submissions, two worker sessions: notebook phases summed over notebooks, session
    start-ups over sessions, each divided by the submissions; the re-check's time beside the
    autograde is reported on its own, not added to the phases (it overlaps them)."""
    from course_lib.grading import bench

    result = pipeline.Dispatch(
        timings={"a": {"kernel start": 0.0, "imports": 2.0, "student cells": 0.5, "checks": 1.0,
                       "autograde, other": 0.5, "recheck": 2.0, "feedback": 1.0},
                 "b": {"kernel start": 1.0, "imports": 2.0, "student cells": 0.5, "checks": 1.5,
                       "autograde, other": 0.25, "recheck": 2.5, "feedback": 1.0},
                 "c": {"kernel start": 0.0, "imports": 2.0, "student cells": 0.5, "checks": 0.5,
                       "autograde, other": 0.75, "recheck": 1.5, "feedback": 1.0,
                       "recheck, beside autograde": 4.5}},
        stages=[{"session start-up": 12.0}, {"session start-up": 6.0}, {"session start-up": 0.0}])
    phases = bench.breakdown(result, 3)
    assert phases["imports"] == 2.0 and phases["checks"] == 1.0
    assert phases["kernel start"] == round(1 / 3, 3)
    assert phases["recheck"] == 2.0 and phases["feedback"] == 1.0
    assert phases["autograde, other"] == 0.5
    assert phases["session start-up"] == 6.0
    assert abs(sum(phases.values()) - (1 + 6 + 1.5 + 3 + 1.5 + 6 + 3 + 18) / 3) < 0.01
    assert bench.overlapped(result, 3) == {"recheck, beside autograde": 1.5}


# ----------------------------------------------------------------------------- the pipeline
def _rows(csv_path: Path) -> dict[str, dict]:
    """grades.csv by student; timings in problem texts ("took 12 s") vary between runs."""
    import csv
    import re

    with open(csv_path, newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    for row in rows.values():
        row["problems"] = re.sub(r"\d+(\.\d+)? s\b", "N s", row["problems"])
        row.pop("from_earlier_run")  # compared on its own
    return rows


@pytest.mark.slow
def test_embedded_default_grades_the_mixed_class(mixed_class, class_graded_embedded):
    _, _, expected = mixed_class
    result = class_graded_embedded
    assert {s.student: s.score for s in result.submissions} == expected
    assert result.dispatch.graded == len(expected) - 1  # corrupt JSON: nothing to grade
    assert result.dispatch.failed == 0 and result.dispatch.resumed == 0
    assert sorted(_rows(result.csv)) == sorted(expected)


def _grade_cli(course: Path, submitted: Path, out: Path, *extra: str) -> subprocess.Popen:
    from test_grading_pipeline import CELL_TIMEOUT, MEM_MB

    return subprocess.Popen(
        [sys.executable, "-m", "course_lib.grade_class", "ex01_standard", str(submitted),
         "--course", str(course), "--out", str(out), "--cell-timeout", str(CELL_TIMEOUT),
         "--mem-mb", str(MEM_MB), "--db", f"sqlite:///{out.parent / 'gradebook.db'}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _worker_named(client, name: str) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return next(a for a, w in workers.items() if w.get("name") == name)


@pytest.mark.slow
def test_scheduler_grades_like_the_default_even_when_a_worker_dies(
        mixed_class, class_graded_embedded, two_workers, tmp_path):
    """`grade_class --scheduler` on `dask worker` processes, one of which (a third worker, added
    for this) is killed with its whole process group while it grades: every row is there, and
    grades.csv is the embedded default's. A second run with the same --out grades again only the
    one suspect stored result (kill_kernel: its kernel died)."""
    from distributed import Client

    course, submitted, expected = mixed_class
    victim = two_workers.add_worker("victim")
    two_workers.wait(3)
    out = tmp_path / "out"
    with Client(two_workers.address, timeout=60) as client:
        victim_address = _worker_named(client, "victim")
        proc = _grade_cli(course, submitted, out, "--scheduler", two_workers.address,
                          "--chunk-size", "2")
        deadline = time.monotonic() + 600
        while not client.processing(workers=[victim_address]).get(victim_address):
            assert proc.poll() is None, f"finished before the victim got a task:\n" \
                                        f"{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the victim never got a task"
            time.sleep(0.2)
        time.sleep(1.0)  # inside nbgrader by now
        stop(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=900)
        assert victim_address not in client.scheduler_info(n_workers=-1)["workers"]
    assert proc.returncode == 0, output
    got, reference = _rows(out / "grades.csv"), _rows(class_graded_embedded.csv)
    assert sorted(got) == sorted(expected)
    assert got == reference
    assert {s: float(r["score"]) for s, r in got.items()} == expected

    again = _grade_cli(course, submitted, out, "--scheduler", two_workers.address)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    # corrupt_json has no stored result; kill_kernel's is suspect (its kernel died: an incident of
    # its own), so it is graded again; every other one is reused.
    assert f"{len(expected) - 2} submissions were graded by an earlier run" in output
    assert "1 results of an earlier run were suspect and graded again: kill_kernel" in output
    assert _rows(out / "grades.csv") == reference
    import csv

    with open(out / "grades.csv", newline="") as f:
        reused = {r["student"]: r["from_earlier_run"] for r in csv.DictReader(f)}
    assert reused == {s: "" if s in ("corrupt_json", "kill_kernel") else "yes" for s in expected}
