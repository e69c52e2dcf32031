"""npfl_course.autograde.distributed: autograding on a Dask cluster, nothing lost, nothing twice.

A ``LocalCluster`` on 127.0.0.1 with two single-threaded worker processes (the scheduler in
this process, each worker a process of its own under a nanny, as on separate machines)
grades the tiny course of ``tests/tiny_course.py``. One worker process is killed by its PID
while it runs a notebook (a solution cell sleeps); the scheduler's
``allowed-failures`` is 0 here, so Dask gives up on the task at once (``KilledWorker``)
and the coordinator's own resubmission is what grades it on another worker.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from tiny_course import generated_tiny_course, tiny_course

from npfl_course import autograde as ag
from npfl_course.autograde.execution import (
    Execution,
    SubmissionTooLargeError,
    submission_files,
    write_files,
)
from npfl_course.course import load_course
from npfl_course.sandbox import Limits, isolation

UNSANDBOXED = isolation()[0] != "bwrap"  # as in tests/test_autograde.py
LIMITS = Limits(notebook_seconds=120, cell_seconds=20)
TESTS = {"test_add": 1.0, "test_mul": 2.0, "test_square": 1.0}
SLEEPER = "sleeper"
STUDENTS = {  # student -> (replaced solution cells, expected score per test)
    "full": ({}, TESTS),
    "release": (None, {t: 0.0 for t in TESTS}),
    "wrong_mul": ({"mul": "def mul(a, b):\n    return a + b"}, {**TESTS, "test_mul": 0.0}),
    SLEEPER: ({"add": "import time\ntime.sleep(2)\ndef add(a, b):\n    return a + b"}, TESTS),
}


def _scores(course) -> dict[str, dict[str, float]]:
    with course.gradebook() as gradebook:
        return {
            s.student_id: {g.name: g.score for nb in s.notebooks for g in nb.grades}
            for s in gradebook.assignment_submissions("tiny")
        }


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The tiny course, generated, with the submissions of STUDENTS (not graded)."""
    submissions = {student: replace for student, (replace, _) in STUDENTS.items()}
    return generated_tiny_course(tmp_path_factory.mktemp("tiny") / "course", submissions)


def _cluster(**worker_options):
    import dask
    from distributed import LocalCluster

    # Dask gives up on a task when the first worker running it dies (default: the fourth):
    # the coordinator's resubmission after KilledWorker is then what the test sees.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        return LocalCluster(n_workers=worker_options.pop("n_workers", 2), threads_per_worker=1,
                            processes=True, host="127.0.0.1", dashboard_address=":0",
                            silence_logs=40, **worker_options)  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed")
    with _cluster() as local:
        yield local


def _executing(dask_worker) -> tuple[int, list[str]]:
    """On a worker: its process id and the keys of the tasks it is running."""
    running = [str(k) for k, task in dask_worker.state.tasks.items() if task.state == "executing"]
    return os.getpid(), running


def _kill_when_running(grader, scheduler: str, student: str, killed: dict) -> None:
    """Kills (SIGKILL) the worker process that runs ``student``'s notebook, mid-notebook."""
    import cloudpickle
    from distributed import Client

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _executing, on the workers
    with Client(scheduler, set_as_default=False) as monitor:
        end = time.monotonic() + 300
        while time.monotonic() < end and "address" not in killed:
            with grader.lock:
                keys = {k for k, (who, _) in grader.in_flight.items() if who == student}
            if keys:
                for address, (pid, running) in monitor.run(_executing).items():
                    if keys & set(running):
                        time.sleep(1.0)  # its sandbox and kernel are starting or running
                        os.kill(pid, signal.SIGKILL)
                        killed.update(address=address, pid=pid)
                        break
            time.sleep(0.05)


@pytest.fixture(scope="module")
def graded(generated, cluster, tmp_path_factory):
    """The class graded on the cluster, one worker killed mid-notebook: (course, report,
    grader, killed worker)."""
    course = load_course(shutil.copytree(generated, tmp_path_factory.mktemp("dask") / "course"))
    grader = ag.DaskAutograder(course, "tiny", scheduler=cluster.scheduler_address,
                               limits=LIMITS, unsandboxed=UNSANDBOXED)  # fmt: skip
    killed: dict = {}
    watched = (grader, cluster.scheduler_address, SLEEPER, killed)
    killer = threading.Thread(target=_kill_when_running, args=watched, daemon=True)
    killer.start()
    report = grader.run(progress=False)
    killer.join(timeout=30)
    return course, report, grader, killed


@pytest.mark.slow
def test_the_cluster_grades_as_local_grading(graded, generated, tmp_path):
    course, report, grader, _ = graded
    expected = {student: tests for student, (_, tests) in STUDENTS.items()}
    assert _scores(course) == expected, report.summary()
    assert report.preflight is not None and not report.preflight.cached  # on the cluster
    assert "bubblewrap" in report.isolation or UNSANDBOXED
    assert "2 Dask worker(s) of tcp://127.0.0.1:" in report.isolation
    assert len(grader.workers) == 2  # each checked before the batch
    local = load_course(shutil.copytree(generated, tmp_path / "course"))
    ag.autograde(local, "tiny", jobs=2, limits=LIMITS, progress=False, unsandboxed=UNSANDBOXED,
                 preflight=False, scheduler="")  # fmt: skip
    assert _scores(local) == _scores(course)


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_and_grades_nothing_twice(graded):
    course, report, grader, killed = graded
    assert "address" in killed, "the sleeper's notebook was never seen running"
    # The sleeper's notebook ran again after its worker died, on another worker process.
    assert grader.ran_on[(SLEEPER, "tiny")] != killed["address"]
    assert grader.resubmitted >= 1 and grader.attempts == len(STUDENTS) + grader.resubmitted
    # Each notebook was sent once by the grader and merged once, from one worker.
    assert grader.executions == len(STUDENTS) and len(grader.ran_on) == len(STUDENTS)
    assert [o.status for o in report.outcomes] == ["graded"] * len(STUDENTS), report.summary()
    with course.gradebook() as gradebook:
        submissions = gradebook.assignment_submissions("tiny")
        assert sorted(s.student_id for s in submissions) == sorted(STUDENTS)
        for submission in submissions:
            grades = [g for nb in submission.notebooks for g in nb.grades]
            assert len(grades) == len(TESTS) and sum(g.score for g in grades) == submission.score
    for student in STUDENTS:
        assert not (course.root / "autograded" / student / "tiny" / ag.PENDING).exists()
    assert not grader.in_flight


@pytest.mark.slow
def test_a_rerun_grades_only_what_is_missing(graded, cluster):
    course, _, first, _ = graded
    before = _scores(course)
    again = ag.DaskAutograder(course, "tiny", scheduler=cluster.scheduler_address,
                              limits=LIMITS, unsandboxed=UNSANDBOXED)  # fmt: skip
    report = again.run(progress=False)
    assert again.executions == 0 and {o.status for o in report.outcomes} == {"skipped"}
    # Remembered while the workers' environment is the same (npfl_course's code is in it).
    assert report.preflight.cached == (again.environment == first.environment)
    # A coordinator interrupted while grading "full" left its pending marker.
    (course.root / "autograded" / "full" / "tiny" / ag.PENDING).touch()
    again = ag.DaskAutograder(course, "tiny", scheduler=cluster.scheduler_address,
                              limits=LIMITS, unsandboxed=UNSANDBOXED)  # fmt: skip
    report = again.run(progress=False)
    graded_now = [o.student for o in report.outcomes if o.status == "graded"]
    assert graded_now == ["full"] and again.executions == 1 and len(again.ran_on) == 1
    assert _scores(course) == before


@pytest.mark.slow
def test_a_worker_that_cannot_hide_the_references_refuses(generated, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    course_dir = shutil.copytree(generated, tmp_path / "course")
    with open(course_dir / "nbgrader_config.py", "a", encoding="utf-8") as config:
        config.write('c.NpflAutograde.hidden_modules = {"tiny": ["npfl_lib"]}\n')
    course = load_course(course_dir)
    with _cluster(n_workers=1, env={"NPFL_COURSE_NO_LANDLOCK": "1"}) as local:
        grader = ag.DaskAutograder(course, "tiny", scheduler=local.scheduler_address,
                                   limits=LIMITS, unsandboxed=UNSANDBOXED)  # fmt: skip
        with pytest.raises(ag.SandboxUnavailableError, match="no Landlock") as refused:
            grader.run(progress=False)
        assert "1 of 1 Dask worker(s)" in str(refused.value)
        assert "c.NpflAutograde.hidden_modules" in str(refused.value)
        assert grader.executions == 0 and not (course.root / "autograded").exists()
        # A task sent to it anyway (a worker that joined after the check) is refused too.
        task = Execution("tiny", "{}", (), (), LIMITS, {}, not UNSANDBOXED, "d", ("npfl_lib",))
        with Client(local.scheduler_address, set_as_default=False) as client:
            future = client.submit(ag.execute_on_worker, task, pure=False)
            with pytest.raises(ag.SandboxUnavailableError, match="no Landlock"):
                future.result()


@pytest.mark.slow
def test_a_worker_that_cannot_sandbox_refuses(generated, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client

    course = load_course(shutil.copytree(generated, tmp_path / "course"))
    with _cluster(n_workers=1, env={"NPFL_COURSE_NO_BWRAP": "1"}) as local:
        grader = ag.DaskAutograder(course, "tiny", scheduler=local.scheduler_address,
                                   limits=LIMITS)  # fmt: skip
        with pytest.raises(ag.SandboxUnavailableError, match="NPFL_COURSE_NO_BWRAP") as refused:
            grader.run(progress=False)
        assert "1 of 1 Dask worker(s)" in str(refused.value)
        assert "--no-sandbox" in str(refused.value) and grader.executions == 0
        assert not (course.root / "autograded").exists()
        # A task sent to it anyway (a worker that joined after the check) is refused too.
        task = Execution("tiny", "{}", (), (), LIMITS, {}, True, "digest")
        with Client(local.scheduler_address, set_as_default=False) as client:
            future = client.submit(ag.execute_on_worker, task, pure=False)
            with pytest.raises(ag.SandboxUnavailableError, match="refusing to grade"):
                future.result()
    with course.gradebook() as gradebook:
        assert gradebook.assignment_submissions("tiny") == []


def test_bad_schedulers_are_reported(tmp_path, monkeypatch, capsys):
    """--scheduler, else c.NpflAutograde.scheduler; one that cannot be reached stops the run."""
    from npfl_course import cli

    monkeypatch.setattr("npfl_course.autograde.distributed.CONNECT_SECONDS", 0.5)
    directory = tiny_course(tmp_path / "course")
    config = directory / "nbgrader_config.py"
    config.write_text(config.read_text() + 'c.NpflAutograde.scheduler = "tcp://127.0.0.1:9"\n')
    with pytest.raises(ag.ClusterUnavailableError, match="cannot reach the Dask scheduler"):
        ag.autograde(load_course(directory), "tiny", progress=False)
    argv = ["autograde", "tiny", "--course-dir", str(directory), "--scheduler", "tcp://127.0.0.1:7"]
    assert cli.main(argv) == 2
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:7" in capsys.readouterr().err


def test_an_execution_is_plain_data(tmp_path):
    """The submission's files travel as bytes (links refused, bounded) and come back out."""
    folder = tmp_path / "submission"
    (folder / "data" / "deep").mkdir(parents=True)
    (folder / "data" / "deep" / "x.bin").write_bytes(b"\0" * 100)
    (folder / "data" / "deep" / "x.bin").chmod(0o644)
    (folder / "run.sh").write_text("echo hi")
    (folder / "run.sh").chmod(0o755)
    (folder / ag.PENDING).touch()
    files, folders = submission_files(folder, 1 << 20, (ag.PENDING,))
    assert [(p, m) for p, m, _ in files] == [("data/deep/x.bin", 0o644), ("run.sh", 0o755)]
    assert [p for p, _ in folders] == ["data", "data/deep"]
    task = Execution("tiny", "{}", files, folders, LIMITS, {"A": "1"})
    task = pickle.loads(pickle.dumps(task))
    target = tmp_path / "work"
    target.mkdir()
    write_files(task, target)
    assert (target / "data" / "deep" / "x.bin").read_bytes() == b"\0" * 100
    assert os.access(target / "run.sh", os.X_OK) and task.size == 2 + 100 + 7
    with pytest.raises(SubmissionTooLargeError, match="disk limit"):
        submission_files(folder, 99)
    (folder / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="not a regular file"):
        submission_files(folder, 1 << 20)
    bad = Execution("tiny", "{}", (("../escape", 0o644, b""),), (), LIMITS, {})
    with pytest.raises(ValueError, match="relative path"):
        write_files(bad, target)
