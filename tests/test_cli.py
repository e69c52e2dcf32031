"""npfl_course.cli (and course.py): every ``npfl-course`` command, end to end.

The course is ``tests/tiny_course.py``; ``demo`` runs on this repository.
"""

from __future__ import annotations

import zipfile

import nbformat
import pytest
from tiny_course import TINY_VARIANTS as VARIANTS
from tiny_course import tiny_course

from npfl_course import cli
from npfl_course.check import make_submission
from npfl_course.course import REPO, CourseError, find_course_dir, load_course
from npfl_course.sandbox import isolation

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's
# Without bubblewrap autograde refuses unless told --no-sandbox (CI runs both ways).
NO_SANDBOX = ["--no-sandbox"] if isolation()[0] != "bwrap" else []
COMMANDS = ["generate", "zip-collect", "autograde", "feedback", "export", "report", "check",
            "demo"]  # fmt: skip


# ----------------------------------------------------------------------------------
# Arguments and the course directory
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_course_dir(command, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([command, "--help"])
    assert exit.value.code == 0
    assert "--course-dir" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["autograde", "tiny", "--jobs", "0"], "must be positive"),
        (["autograde", "tiny", "--memory", "lots"], "expected a number"),
        (["autograde"], "ASSIGNMENT"),
        (["zip-collect", "tiny"], "DIR"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_the_course_directory(tmp_path, monkeypatch, capsys):
    assert cli.main(["export", "--course-dir", str(tmp_path)]) == 2
    assert "has no nbgrader_config.py" in capsys.readouterr().err
    with pytest.raises(CourseError, match="has no nbgrader_config.py"):
        find_course_dir(tmp_path)
    course = tiny_course(tmp_path / "course")
    monkeypatch.chdir(course)
    assert find_course_dir() == course.resolve()
    monkeypatch.chdir(tmp_path)
    assert find_course_dir() == REPO  # the repository's config is the default
    loaded = load_course(course)
    assert loaded.root == course.resolve() and loaded.source_assignments() == ["tiny"]
    assert loaded.db_url == f"sqlite:///{course.resolve() / 'gradebook.db'}"
    assert loaded.config_value("Execute", "timeout") == 30


# ----------------------------------------------------------------------------------
# The instructor's commands, one after another
# ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_collect_autograde_feedback_export_report(tmp_path, capsys):
    course = tiny_course(tmp_path / "course")
    args = ["--course-dir", str(course)]
    assert cli.main(["generate", *args]) == 0
    assert "tiny: generated" in capsys.readouterr().out
    assert cli.main(["generate", "tiny", *args]) == 0
    assert "skipped" in capsys.readouterr().out

    release = nbformat.read(course / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(course / "source" / "tiny" / "tiny.ipynb", 4)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    nbformat.write(make_submission(release, source), downloads / "ann_tiny.ipynb")
    with zipfile.ZipFile(downloads / "bob.zip", "w") as archive:
        archive.writestr("tiny.ipynb", nbformat.writes(release))
    assert cli.main(["zip-collect", "tiny", str(downloads), *args]) == 0
    assert "collected 2 submission(s)" in capsys.readouterr().out

    assert (
        cli.main(["autograde", "tiny", "--jobs", "2", "--cell-timeout", "20", *args, *NO_SANDBOX])
        == 0
    )
    captured = capsys.readouterr()
    assert "graded: 2, failed: 0, skipped: 0" in captured.out
    assert "NotImplementedError" in captured.out  # bob's reasons
    assert "autograde tiny" in captured.err  # the progress bar
    assert (
        cli.main(["autograde", "tiny", "--student", "ann", "zed", "--quiet", *args, *NO_SANDBOX])
        == 1
    )
    assert "skipped: 1" in capsys.readouterr().out  # ann: done; zed: no submission

    assert cli.main(["feedback", "tiny", *args]) == 0
    assert (course / "feedback" / "ann" / "tiny" / "tiny.html").is_file()
    assert cli.main(["export", "--csv", str(tmp_path / "grades.csv"), *args]) == 0
    lines = (tmp_path / "grades.csv").read_text().splitlines()
    assert lines[0].startswith("assignment,") and len(lines) == 3
    assert cli.main(["report", "tiny", "--output", str(tmp_path / "report"), *args]) == 0
    assert "ann" in capsys.readouterr().out
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")


def test_generate_reports_failures(tmp_path, capsys):
    course = tiny_course(tmp_path / "course")
    assert cli.main(["generate", "missing", "--course-dir", str(course)]) == 1
    assert "missing: FAILED" in capsys.readouterr().out
    assert cli.main(["autograde", "tiny", "--course-dir", str(course)]) == 1
    assert "npfl-course generate tiny" in capsys.readouterr().err


# ----------------------------------------------------------------------------------
# check and demo
# ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_check_passes_a_sound_assignment_and_flags_a_wrong_variant(tmp_path, capsys):
    course = tiny_course(tmp_path / "course")
    variants = course / "source" / "tiny" / "variants.py"
    variants.write_text(VARIANTS)
    assert cli.main(["check", "--course-dir", str(course)]) == 0, capsys.readouterr().out
    assert "tiny: ok" in capsys.readouterr().out
    # A "wrong" solution that is in fact right must be reported.
    variants.write_text(VARIANTS.replace("return a - b", "return b + a"))
    # (--no-mutants: the mutants were graded above; tests/test_mutants.py tests them)
    assert cli.main(["check", "tiny", "--no-mutants", "--course-dir", str(course)]) == 1
    output = capsys.readouterr().out
    assert "WRONG variant 'add subtracts' kept full points on 'test_add'" in output
    assert "mutants:" not in output


@pytest.mark.slow
def test_demo_runs_the_whole_job(tmp_path, capsys):
    assert cli.main(["demo", "--output", str(tmp_path), "--jobs", "2"]) == 0
    output = capsys.readouterr().out
    course = tmp_path / "course"
    assert "zip-collect" in output and "failed: 0" in output
    for student in ("alice", "bob", "carol", "eve", "mallory", "oscar", "trudy"):
        assert (course / "autograded" / student / "regularization").is_dir(), student
    assert "SubmissionError" in output  # eve's tampering: 0 for her release (the self-check)
    assert output.strip().splitlines()[-1].startswith("demo OK: the full solution got full marks")
    assert (course / "reports" / "regularization.png").is_file()
    assert (course / "grades.csv").is_file()
    assert (course / "feedback" / "alice" / "regularization" / "regularization.html").is_file()


def test_demo_checks_its_own_grades():
    from npfl_course.autograde.outcome import Outcome, Report
    from npfl_course.demo import _self_check

    def report(**scores):
        outcomes = [
            Outcome(s, "graded", score=v, max_score=10, lost={} if v == 10 else {"t": "x"})
            for s, v in scores.items()
        ]
        return Report("regularization", outcomes, 1.0, 2, isolation="test")

    assert _self_check(report(alice=10, bob=0, carol=7)) == []
    problems = _self_check(report(alice=0, bob=3, carol=10))
    assert len(problems) == 3
    assert "the full solution (alice) got 0/10, not full marks" in problems[0]
    assert "release (bob) got 3/10" in problems[1] and "carol got 10/10" in problems[2]


def test_autograde_refuses_without_a_sandbox(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NPFL_COURSE_BWRAP", "")
    course = tiny_course(tmp_path / "course")
    assert cli.main(["generate", "--course-dir", str(course)]) == 0
    assert cli.main(["autograde", "tiny", "--course-dir", str(course)]) == 2
    err = capsys.readouterr().err
    assert "refusing to grade: NO sandbox" in err and "--no-sandbox" in err


def test_doctor_says_what_the_grader_has(capsys):
    status = cli.main(["doctor"])
    out = capsys.readouterr().out
    for label in ("python:", "torch:", "sandbox:", "hiding:", "memory:", "grading:"):
        assert label in out
    assert "grading: OK: torch" in out, out  # torch imports under the default limits
    assert status == (0 if "sandbox: OK" in out else 1)
