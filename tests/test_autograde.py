"""npfl_course.autograde (and its worker, npfl_course.worker): parallel, exactly-once,
idempotent autograding into a consistent gradebook.

The course is the tiny one of ``tests/tiny_course.py`` (three functions, tests
worth 1 + 2 + 1 points), generated once per module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.converters import NbGraderException
from tiny_course import generated_tiny_course, tiny_course

from npfl_course import autograde as ag
from npfl_course.autograde.merge import (
    MAX_EXECUTED_BYTES,
    REJECTED,
    infrastructure_failure,
    merge,
    read_executed,
)
from npfl_course.autograde.preflight import PreflightError, preflight
from npfl_course.autograde.restore import read_submitted
from npfl_course.course import generate_assignment, load_course
from npfl_course.sandbox import Limits, SandboxResult, isolation
from npfl_course.worker import ResultChannel, ResultWriter, worker_command

# Without bubblewrap autograde refuses unless told --no-sandbox; these tests then pass it,
# as an instructor on such a machine would (CI runs them both ways, see .ci/run).
UNSANDBOXED = isolation()[0] != "bwrap"

LIMITS = Limits(notebook_seconds=120, cell_seconds=20)
TESTS = {"test_add": 1.0, "test_mul": 2.0, "test_square": 1.0}
# student -> (replaced solution cells, expected score per test)
STUDENTS = {
    "full": ({}, TESTS),
    "release": (None, {t: 0.0 for t in TESTS}),
    "wrong_mul": ({"mul": "def mul(a, b):\n    return a + b"}, {**TESTS, "test_mul": 0.0}),
    "wrong_add": ({"add": "def add(a, b):\n    return a - b"}, {**TESTS, "test_add": 0.0}),
    "no_square": ({"square": "x = 1"}, {**TESTS, "test_square": 0.0}),
    # The standard library rebinds time.tzname in time.tzset() (pandas, datetime.strptime):
    # that is not tampering.
    "uses_strptime": (
        {
            "add": "import datetime, time\ndatetime.datetime.strptime('2024', '%Y')\ntime.tzset()\n"
            "def add(a, b):\n    return a + b"
        },
        TESTS,
    ),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The tiny course, generated, with the submissions of STUDENTS (not graded)."""
    submissions = {student: replace for student, (replace, _) in STUDENTS.items()}
    return generated_tiny_course(tmp_path_factory.mktemp("tiny") / "course", submissions)


def _copy(generated: Path, target: Path) -> Path:
    shutil.copytree(generated, target)
    return target


def _scores(course) -> dict[str, dict[str, float]]:
    with course.gradebook() as gradebook:
        return {
            s.student_id: {g.name: g.score for nb in s.notebooks for g in nb.grades}
            for s in gradebook.assignment_submissions("tiny")
        }


def _tree_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def parallel(generated, tmp_path_factory):
    """The course graded with two jobs: (course, report, executions)."""
    course = load_course(_copy(generated, tmp_path_factory.mktemp("parallel") / "course"))
    grader = ag.Autograder(course, "tiny", jobs=2, limits=LIMITS, unsandboxed=UNSANDBOXED)
    report = grader.run(progress=False)
    return course, report, grader.executions


@pytest.mark.slow
def test_scores_are_right_and_parallel_equals_sequential(parallel, generated, tmp_path):
    course, report, _ = parallel
    expected = {student: tests for student, (_, tests) in STUDENTS.items()}
    assert _scores(course) == expected, report.summary()
    sequential = load_course(_copy(generated, tmp_path / "course"))
    ag.autograde(sequential, "tiny", jobs=1, limits=LIMITS, progress=False, unsandboxed=UNSANDBOXED)
    assert _scores(sequential) == _scores(course)


@pytest.mark.slow
def test_every_submission_is_graded_exactly_once(parallel):
    course, report, executions = parallel
    assert executions == len(STUDENTS)
    assert sorted(o.student for o in report.outcomes) == sorted(STUDENTS)
    assert {o.status for o in report.outcomes} == {"graded"}
    assert report.count("graded") == len(STUDENTS)
    by_student = {o.student: o for o in report.outcomes}
    assert by_student["full"].score == 4 and by_student["full"].max_score == 4
    assert set(by_student["wrong_mul"].lost) == {"test_mul"}
    assert "AssertionError" in by_student["wrong_mul"].lost["test_mul"]
    assert set(by_student["release"].lost) == set(TESTS)
    assert "NotImplementedError" in by_student["release"].lost["test_add"]
    summary = report.summary()
    assert f"graded: {len(STUDENTS)}, failed: 0, skipped: 0" in summary and "wrong_mul" in summary


@pytest.mark.slow
def test_gradebook_and_autograded_folder_are_consistent(parallel):
    course, _, _ = parallel
    with course.gradebook() as gradebook:
        submissions = gradebook.assignment_submissions("tiny")
        assert len(submissions) == len(STUDENTS)
        for submission in submissions:
            grades = [g for nb in submission.notebooks for g in nb.grades]
            assert sum(g.score for g in grades) == submission.score
            assert not any(g.needs_manual_grade for g in grades)
    for student in STUDENTS:
        folder = course.root / "autograded" / student / "tiny"
        assert (folder / "tiny.ipynb").is_file()
        assert not (folder / ag.PENDING).exists()
        notebook = nbformat.read(folder / "tiny.ipynb", 4)
        timings = [c.metadata.get("execution") for c in notebook.cells if c.cell_type == "code"]
        assert all(t and "shell.execute_reply" in t for t in timings)


@pytest.mark.slow
def test_rerun_is_idempotent_and_force_regrades(parallel):
    course, _, _ = parallel
    before_scores, before_files = _scores(course), _tree_hash(course.root / "autograded")
    grader = ag.Autograder(course, "tiny", jobs=2, limits=LIMITS, unsandboxed=UNSANDBOXED)
    report = grader.run(progress=False)
    assert grader.executions == 0
    assert {o.status for o in report.outcomes} == {"skipped"}
    assert _scores(course) == before_scores
    assert _tree_hash(course.root / "autograded") == before_files
    grader = ag.Autograder(
        course, "tiny", jobs=2, limits=LIMITS, force=True, unsandboxed=UNSANDBOXED
    )
    report = grader.run(["wrong_add", "nobody"], progress=False)
    assert grader.executions == 1
    statuses = {o.student: o.status for o in report.outcomes}
    assert statuses == {"wrong_add": "graded", "nobody": "failed"}
    assert "no submission found" in report.outcomes[1].notes[0]
    assert _scores(course) == before_scores


@pytest.mark.slow
def test_a_resubmission_or_an_interrupted_grading_is_graded_again(parallel):
    course, _, _ = parallel
    # As in nbgrader: regraded when submitted/ has a newer timestamp.txt than autograded/.
    graded_at = course.root / "autograded" / "release" / "tiny" / "timestamp.txt"
    graded_at.write_text("2000-01-01 00:00:00 UTC")
    later = course.root / "submitted" / "release" / "tiny" / "timestamp.txt"
    later.write_text("2100-01-01 00:00:00 UTC")
    (course.root / "autograded" / "full" / "tiny" / ag.PENDING).touch()
    grader = ag.Autograder(course, "tiny", jobs=2, limits=LIMITS, unsandboxed=UNSANDBOXED)
    report = grader.run(progress=False)
    graded = sorted(o.student for o in report.outcomes if o.status == "graded")
    assert graded == ["full", "release"] and grader.executions == 2
    assert _scores(course)["full"] == TESTS
    later.unlink()


@pytest.mark.slow
def test_the_configured_db_url_is_used(generated, tmp_path):
    directory = _copy(generated, tmp_path / "course")
    (directory / "gradebook.db").unlink()
    database = tmp_path / "elsewhere" / "grades.sqlite"
    database.parent.mkdir()
    config = directory / "nbgrader_config.py"
    config.write_text(config.read_text() + f"c.CourseDirectory.db_url = 'sqlite:///{database}'\n")
    course = load_course(directory)
    assert course.db_url == f"sqlite:///{database}"
    ok, log = generate_assignment(course, "tiny", force=True)
    assert ok, log
    report = ag.autograde(
        course, "tiny", students=["full"], limits=LIMITS, progress=False, unsandboxed=UNSANDBOXED
    )
    assert report.outcomes[0].score == 4
    assert database.is_file() and not (directory / "gradebook.db").exists()


def test_an_assignment_that_was_not_generated_is_reported(tmp_path):
    course = load_course(tiny_course(tmp_path / "course"))
    with pytest.raises(NbGraderException, match="npfl-course generate tiny"):
        ag.autograde(course, "tiny", progress=False)
    with pytest.raises(ValueError, match="jobs"):
        ag.Autograder(course, "tiny", jobs=0)


# ----------------------------------------------------------------------------------
# Phase helpers
# ----------------------------------------------------------------------------------


def _prepared():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# text"),
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_code_cell("b = 2"),
        nbformat.v4.new_code_cell("c = 3"),
    ]
    return notebook


def test_merge_keeps_finished_cells_and_explains_the_rest():
    prepared = _prepared()
    executed = json.loads(nbformat.writes(prepared))
    executed["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}]
    executed["cells"][1]["source"] = "forged = True"  # only outputs are taken
    executed["cells"][2]["outputs"] = [{"output_type": "bogus"}]
    executed["metadata"]["npfl_execute"] = {"cells_run": 3, "done": False}
    result = SandboxResult(returncode=-9, stdout="", stderr="", reason="killed by signal SIGKILL")
    merged = merge(prepared, executed, result, LIMITS)
    assert merged.cells[1].source == "a = 1" and merged.cells[1].outputs[0].text == "x"
    assert merged.cells[2].outputs[0].ename == "OutputError"
    assert merged.cells[3].outputs[0].ename == "DeadKernelError"
    assert "SIGKILL" in merged.cells[3].outputs[0].evalue
    nbformat.validate(merged)


@pytest.mark.parametrize(
    ("executed", "result", "reason"),
    [
        (None, SandboxResult(None, "", "", timed_out=True), "time limit exceeded (120 s"),
        (None, SandboxResult(-9, "", "", memory_exceeded=True), "memory limit exceeded (2048 MB)"),
        (None, SandboxResult(0, "", ""), "exited before the end"),
        ({"cells": []}, SandboxResult(1, "", ""), "status 1"),
        (None, None, "could not be run"),
    ],
)
def test_merge_without_usable_results_fails_every_code_cell(executed, result, reason):
    merged = merge(_prepared(), executed, result, LIMITS)
    errors = [c.outputs[0] for c in merged.cells if c.cell_type == "code"]
    assert [e.ename for e in errors] == ["DeadKernelError"] * 3
    assert reason in errors[0].evalue and errors[1].evalue.startswith("not run")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ('{"cells": [', "not valid JSON"),
        ("plain text", "not valid JSON"),
        ('{"a": 1}', "not a Jupyter notebook"),
        ('{"cells": [{"cell_type": "nonsense"}], "nbformat": 4, "nbformat_minor": 5}', "valid"),
    ],
)
def test_unreadable_submissions_get_a_reason(tmp_path, text, reason):
    path = tmp_path / "x.ipynb"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason):
        read_submitted(str(path))


def test_the_result_channel_gives_the_last_complete_snapshot():
    with ResultChannel() as channel:
        assert read_executed(channel) is None  # the worker stored nothing
        writer = ResultWriter(channel.fds)
        for count in range(3):
            writer.write(json.dumps({"cells": [], "metadata": {"n": count}}).encode())
        assert read_executed(channel)["metadata"] == {"n": 2}
        # The worker died while writing the next one: the last complete one counts.
        os.ftruncate(channel.fds[(writer.sequence + 1) % 2], 0)
        os.pwrite(channel.fds[(writer.sequence + 1) % 2], b"npfl-result 4 1000\n{", 0)
        assert read_executed(channel)["metadata"] == {"n": 2}
        writer.write(b"x" * 100)
        assert read_executed(channel) is None  # not a notebook
        writer.write(b" " * (MAX_EXECUTED_BYTES + 1))
        assert "larger than" in read_executed(channel)[REJECTED]
    with pytest.raises(ValueError, match="two descriptors"):
        ResultWriter([1])


# ----------------------------------------------------------------------------------
# The worker, run directly (without the sandbox)
# ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_worker_runs_a_real_kernel(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [
        nbformat.v4.new_code_cell("print('hello')\nimport sys\nprint('warn', file=sys.stderr)"),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell(
            "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n6 * 7"
        ),  # fmt: skip
        nbformat.v4.new_code_cell("%%time\nz = 1"),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell("print('x' * 300_000)"),
        nbformat.v4.new_code_cell("import time\ntime.sleep(60)"),
        nbformat.v4.new_code_cell("print(z)"),
        nbformat.v4.new_code_cell("print(type(get_ipython().kernel).__name__)"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"),
        nbformat.v4.new_code_cell("import os\nos._exit(3)"),
        nbformat.v4.new_code_cell("print('never')"),
    ]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    start = time.monotonic()
    with ResultChannel() as channel:
        command = worker_command("in.ipynb", channel, 3, 2048)
        subprocess.run(command, cwd=tmp_path, check=True, timeout=120, env={**os.environ},
                       pass_fds=channel.fds)  # fmt: skip
        assert time.monotonic() - start < 60
        out = json.loads(channel.read(MAX_EXECUTED_BYTES))
    assert out["metadata"]["npfl_execute"] == {"cells_run": 12, "done": True}
    cells = out["cells"]
    assert cells[0]["outputs"][0] == {"output_type": "stream", "name": "stdout", "text": "hello\n"}
    assert cells[0]["outputs"][1]["name"] == "stderr"
    kinds = [o["output_type"] for o in cells[2]["outputs"]]
    assert kinds == ["display_data", "execute_result"]
    assert cells[2]["outputs"][1]["data"]["text/plain"] == "42"
    assert cells[2]["outputs"][1]["execution_count"] == cells[2]["execution_count"]
    assert "Wall time" in "".join(o.get("text", "") for o in cells[3]["outputs"])
    assert cells[4]["outputs"][0]["ename"] == "ZeroDivisionError"
    text = "".join(o.get("text", "") for o in cells[5]["outputs"])
    assert len(text) < 150_000 and "output truncated" in text
    # As nbgrader: the interrupt's KeyboardInterrupt, then the timeout
    assert [o["ename"] for o in cells[6]["outputs"]] == ["KeyboardInterrupt", "CellTimeoutError"]
    assert cells[7]["outputs"][0]["text"] == "1\n"  # the kernel survived the timeout
    assert cells[8]["outputs"][0]["text"] == "IPythonKernel\n"
    # inline plots, as in JupyterLab (a busy machine may first say it builds the font cache)
    assert any("image/png" in o.get("data", {}) for o in cells[9]["outputs"]), cells[9]["outputs"]
    assert "exited with status 3" in cells[10]["outputs"][-1]["evalue"]
    assert "not run: the kernel died in cell 10" in cells[11]["outputs"][0]["evalue"]
    assert [c["execution_count"] for c in cells if c["cell_type"] == "code"][:3] == [1, 2, 3]
    nbformat.validate(nbformat.from_dict(out))
    # No kernel files left; the input (with the hidden tests) was removed once read.
    assert os.listdir(tmp_path) == []


def test_bound_names_of_a_cell():
    from npfl_course.worker import bound_names

    assert bound_names("import a.b as c, d\nx = 1\ndef f(): y = 2\nfor i in []: pass") == {
        "c",
        "d",
        "x",
        "f",
        "y",
        "i",
    }
    assert bound_names("def (") is None


# ----------------------------------------------------------------------------------
# The machine: no sandbox, a broken set-up, a worker that fails
# ----------------------------------------------------------------------------------


def _fresh(generated: Path, target: Path):
    return load_course(_copy(generated, target / "course"))


def test_without_a_sandbox_grading_refuses_unless_told(generated, tmp_path, monkeypatch):
    monkeypatch.setenv("NPFL_COURSE_BWRAP", "")  # as on a machine without bwrap
    course = _fresh(generated, tmp_path)
    with pytest.raises(ag.SandboxUnavailableError, match="--no-sandbox") as refused:
        ag.autograde(course, "tiny", limits=LIMITS, progress=False)
    assert "NPFL_COURSE_BWRAP" in str(refused.value) and "apt-get install bubblewrap" in str(
        refused.value
    )
    assert not (course.root / "autograded").exists()
    with course.gradebook() as gradebook:
        assert gradebook.assignment_submissions("tiny") == []


@pytest.mark.slow
def test_a_broken_setup_stops_the_batch_at_the_preflight(generated, tmp_path):
    course = _fresh(generated, tmp_path)
    source = course.root / "source" / "tiny" / "tiny.ipynb"
    notebook = nbformat.read(source, 4)
    notebook.cells[0].source = "import npfl_missing_module\n" + notebook.cells[0].source
    nbformat.write(notebook, source)
    with pytest.raises(PreflightError) as stopped:
        ag.autograde(course, "tiny", limits=LIMITS, progress=False, unsandboxed=UNSANDBOXED)
    message = str(stopped.value)
    assert "no student was graded" in message
    assert "the instructor's solution got no score (failed)" in message
    assert "No module named 'npfl_missing_module'" in message
    assert not (course.root / "autograded").exists()
    with course.gradebook() as gradebook:
        assert gradebook.assignment_submissions("tiny") == []


@pytest.mark.slow
def test_a_passed_preflight_is_remembered(generated, tmp_path):
    course = _fresh(generated, tmp_path)
    first = preflight(course, "tiny", limits=LIMITS, unsandboxed=UNSANDBOXED)
    again = preflight(course, "tiny", limits=LIMITS, unsandboxed=UNSANDBOXED)
    assert (first.cached, again.cached) == (False, True) and again.seconds < 1
    changed = preflight(course, "tiny", limits=Limits(memory_mb=1500), unsandboxed=UNSANDBOXED)
    assert not changed.cached  # other limits: graded again


@pytest.mark.slow
def test_a_failing_locked_cell_is_a_failure_not_a_zero(generated, tmp_path):
    # The set-up cell (locked, before any student code) fails for every submission, as when
    # torch cannot be imported on the grading machine: nobody may get a 0 for it. The
    # instructor's copy of the cell (gradebook, release) and the students' agree.
    course = _fresh(generated, tmp_path)
    from nbgrader.utils import compute_checksum

    broken = "import npfl_missing_module"
    paths = [course.root / "release" / "tiny" / "tiny.ipynb"]
    paths += [course.root / "submitted" / s / "tiny" / "tiny.ipynb" for s in ("full", "wrong_mul")]
    for path in paths:
        notebook = nbformat.read(path, 4)
        setup = next(
            c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "setup"
        )
        setup.source = broken
        setup.metadata.nbgrader["checksum"] = checksum = compute_checksum(setup)
        nbformat.write(notebook, path)
    with course.gradebook() as gradebook:
        cell = gradebook.find_source_cell("setup", "tiny", "tiny")
        cell.source, cell.checksum = broken, checksum
        gradebook.db.commit()
    report = ag.autograde(course, "tiny", students=["full", "wrong_mul"], limits=LIMITS,
                          progress=False, unsandboxed=UNSANDBOXED, preflight=False)  # fmt: skip
    assert [o.status for o in report.outcomes] == ["failed", "failed"]
    for outcome in report.outcomes:
        assert outcome.score is None
        assert "not the student's fault" in outcome.notes[0]
        assert (
            "cell 0, which students cannot edit, failed before any student code ran"
            in (outcome.notes[0])
        )
        assert "No module named 'npfl_missing_module'" in outcome.notes[0]
    assert "failed submissions have no score (not 0)" in report.summary()
    with course.gradebook() as gradebook:
        assert gradebook.assignment_submissions("tiny") == []  # no score recorded
    assert not (course.root / "autograded" / "full" / "tiny").exists()  # a rerun grades it


@pytest.mark.slow
def test_a_worker_crash_is_a_failure_not_a_zero(generated, tmp_path, monkeypatch):
    course = _fresh(generated, tmp_path)

    def crashed(argv, **kwargs):  # the worker dies before writing anything
        return SandboxResult(returncode=4, stdout="", stderr="npfl_course.worker: internal error")

    monkeypatch.setattr("npfl_course.autograde.runner.run_sandboxed", crashed)
    report = ag.autograde(course, "tiny", students=["full"], limits=LIMITS, progress=False,
                          unsandboxed=UNSANDBOXED, preflight=False)  # fmt: skip
    (outcome,) = report.outcomes
    assert outcome.status == "failed" and outcome.score is None
    assert "the grading worker did not start" in outcome.notes[0]
    monkeypatch.undo()  # the machine is fixed: the same submission is graded on a rerun
    report = ag.autograde(course, "tiny", students=["full"], limits=LIMITS, progress=False,
                          unsandboxed=UNSANDBOXED, preflight=False)  # fmt: skip
    assert report.outcomes[0].status == "graded" and report.outcomes[0].score == 4


def test_infrastructure_failure_tells_the_grader_from_the_student():
    setup = nbformat.v4.new_code_cell("import torch")
    setup.metadata["nbgrader"] = {"locked": True, "grade": False, "solution": False}
    student = nbformat.v4.new_code_cell("import os\nos._exit(0)")
    prepared = nbformat.v4.new_notebook(cells=[setup, nbformat.v4.new_markdown_cell("x"), student])
    executed = json.loads(nbformat.writes(prepared))
    ok = SandboxResult(0, "", "")

    def run(cells_run, done, setup_outputs=()):
        executed["cells"][0]["outputs"] = list(setup_outputs)
        executed["metadata"]["npfl_execute"] = {"cells_run": cells_run, "done": done}
        return infrastructure_failure(prepared, executed, ok, LIMITS)

    assert run(3, True) is None
    error = {"output_type": "error", "ename": "ImportError", "evalue": "no torch", "traceback": []}
    assert "ImportError: no torch" in run(3, True, [error])
    assert "before any student code ran" in run(0, False)  # died in the set-up cell
    assert run(1, False) is None  # died in the student's cell (the markdown cell ran too)
    assert "did not start" in infrastructure_failure(prepared, None, ok, LIMITS)


def test_limits_and_jobs_come_from_nbgrader_config(generated, tmp_path):
    """c.NpflAutograde.* in nbgrader_config.py, as nbgrader's own options; c.Execute.timeout
    is the cell limit; arguments override them; bad values name the option."""
    course_dir = tmp_path / "course"
    shutil.copytree(generated, course_dir)
    config = course_dir / "nbgrader_config.py"
    config.write_text(
        config.read_text()
        + "c.NpflAutograde.jobs = 3\nc.NpflAutograde.memory_mb = 3000\n"
        + "c.NpflAutograde.notebook_timeout = 321.0\nc.NpflAutograde.preflight = False\n"
        + "c.Execute.timeout = 17\n"
    )
    grader = ag.Autograder(load_course(course_dir), "tiny")
    assert grader.jobs == 3 and grader.preflight is False
    assert (grader.limits.memory_mb, grader.limits.notebook_seconds) == (3000, 321.0)
    assert grader.limits.cell_seconds == 17.0
    grader = ag.Autograder(load_course(course_dir), "tiny", jobs=1, preflight=True)
    assert grader.jobs == 1 and grader.preflight is True
    config.write_text(config.read_text() + "c.NpflAutograde.memory_mb = 10\n")
    with pytest.raises(Exception, match="memory_mb"):
        ag.Autograder(load_course(course_dir), "tiny")


# Private names of the libraries we build on, with the reason each is still used.
PRIVATE_USES_ALLOWED = {
    "os._exit",  # the documented way to leave a forked or worker process at once
    # nbclient's hooks for a cell timeout and display_id updates (no public counterpart)
    "super()._async_handle_timeout",
    "super()._update_display_id",
    # jupyter_client's documented point for launching a kernel differently ("override in a
    # subclass to launch kernel subprocesses differently"): the kernel forked from the worker
    "super()._async_launch_kernel",
}


def test_nbgrader_is_driven_through_its_public_api():
    """No private nbgrader name is called, overridden or patched (so its minor releases
    cannot silently change our grades, and the pin can stay open)."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import npfl_course

    used, patched = [], []
    for path in sorted(Path(npfl_course.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()  # names bound to nbgrader's modules (or objects) by an import
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {
                    alias.asname or alias.name.split(".")[0]
                    for alias in node.names
                    if alias.name.startswith("nbgrader")
                }
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nbgrader"):
                imported |= {alias.asname or alias.name for alias in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner = node.value
                if node.attr.startswith("__") or (
                    isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                ):
                    continue
                if ast.unparse(node) not in PRIVATE_USES_ALLOWED:
                    used.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    parts = target.elts if isinstance(target, ast.Tuple) else [target]
                    for part in parts:
                        if (
                            isinstance(part, ast.Attribute)
                            and isinstance(part.value, ast.Name)
                            and part.value.id in imported
                        ):
                            patched.append(f"{path.name}:{node.lineno} {ast.unparse(part)}")
    assert not used, f"private names of other modules used: {used}"
    assert not patched, f"nbgrader's attributes assigned (monkeypatching): {patched}"

    overridden = []
    for info in pkgutil.walk_packages(npfl_course.__path__, "npfl_course."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for base in cls.__mro__[1:]:
                if not base.__module__.startswith("nbgrader"):
                    continue
                for name, value in vars(cls).items():
                    own = inspect.isfunction(value) or isinstance(value, property)
                    if own and name[:1] == "_" and name[:2] != "__" and hasattr(base, name):
                        overridden.append(f"{cls.__qualname__}.{name} (of {base.__qualname__})")
    assert not overridden, f"private nbgrader methods overridden: {overridden}"
