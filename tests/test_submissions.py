"""What a hostile or careless class puts into ``submitted/``: ids, links, odd files.

One batch of the tiny course (``tests/tiny_course.py``) holds honest submissions next to
the attacks; every honest one must get its right grade, every attack must be reported
without a score, and nothing outside the course's output folders may change.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import stat
from pathlib import Path

import nbformat
import pytest
from tiny_course import tiny_course

from npfl_course import autograde as ag
from npfl_course.autograde.submission import link_problem, shown
from npfl_course.check import make_submission
from npfl_course.course import export_csv, generate_assignment, load_course, student_id_problem
from npfl_course.export import neutralised
from npfl_course.sandbox import Limits, isolation, remove_tree

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's
UNSANDBOXED = isolation()[0] != "bwrap"
LIMITS = Limits(notebook_seconds=120, cell_seconds=20)
FULL = 4.0


def _all_pass(release) -> nbformat.NotebookNode:
    """The release with every cell replaced by ``pass``: what a glob id would smuggle in."""
    notebook = nbformat.from_dict(json.loads(nbformat.writes(release)))
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source = "pass"
    return notebook


def _v3(notebook) -> str:
    """``notebook`` saved in nbformat 3 (a worksheet, ``input`` instead of ``source``)."""
    copy = nbformat.from_dict(json.loads(nbformat.writes(notebook)))
    return nbformat.writes(nbformat.convert(copy, 3), version=3)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """(course, report, secret) after grading honest and hostile submissions at once."""
    base = tmp_path_factory.mktemp("submissions")
    directory = tiny_course(base / "course")
    course = load_course(directory)
    ok, log = generate_assignment(course, "tiny")
    assert ok, log
    release = nbformat.read(directory / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)
    full = make_submission(release, source)
    submitted = directory / "submitted"
    secret = base / "secret.txt"  # outside the course, readable by the grader only
    secret.write_text("instructor's secret")
    secret.chmod(0o600)

    def folder(student: str) -> Path:
        path = submitted / student / "tiny"
        path.mkdir(parents=True)
        return path

    nbformat.write(full, folder("honest_victim") / "tiny.ipynb")
    nbformat.write(_all_pass(release), folder("[h]onest_victim") / "tiny.ipynb")
    nbformat.write(full, folder("ann") / "tiny.ipynb")
    os.symlink(directory / "source" / "tiny" / "tiny.ipynb", folder("to_source") / "tiny.ipynb")
    os.symlink(submitted / "ann" / "tiny" / "tiny.ipynb", folder("to_ann") / "tiny.ipynb")
    linked = folder("with_data")
    nbformat.write(release, linked / "tiny.ipynb")
    os.symlink(directory / "gradebook.db", linked / "data.db")
    os.symlink(secret, linked / "notes.txt")
    (submitted / "whole_folder").symlink_to(submitted / "ann")
    os.mkfifo(folder("fifo") / "pipe")
    nbformat.write(full, submitted / "fifo" / "tiny" / "tiny.ipynb")
    (folder("old_format") / "tiny.ipynb").write_text(_v3(full))
    cp1250 = os.fsencode(submitted) + b"/Nov\xe1k_1"  # a name from a cp1250 LMS export
    os.makedirs(cp1250 + b"/tiny")
    nbformat.write(full, os.fsdecode(cp1250 + b"/tiny/tiny.ipynb"))
    nbformat.write(full, folder("=HYPERLINK(1)") / "tiny.ipynb")
    pasted = nbformat.from_dict(json.loads(nbformat.writes(full)))
    image = nbformat.v4.new_markdown_cell("![pasted](attachment:image.png)")
    image.attachments = {"image.png": {"image/png": base64.b64encode(os.urandom(52 << 20))
                                       .decode()}}  # fmt: skip
    pasted.cells.insert(2, image)
    nbformat.write(pasted, folder("pasted_image") / "tiny.ipynb")  # 70 MB
    before = {p: p.lstat().st_mtime_ns for p in base.rglob("*") if p.is_file() or p.is_symlink()}
    grader = ag.Autograder(course, "tiny", jobs=2, limits=LIMITS, unsandboxed=UNSANDBOXED,
                           preflight=False)  # fmt: skip
    report = grader.run(progress=False)
    return course, report, before, base


def _outcomes(report) -> dict:
    return {outcome.student: outcome for outcome in report.outcomes}


def test_the_honest_get_their_grades(graded):
    course, report, _, _ = graded
    outcomes = _outcomes(report)
    for student in ("honest_victim", "ann", "old_format", "pasted_image"):
        assert outcomes[student].status == "graded", outcomes[student].notes
        assert outcomes[student].score == FULL, (student, outcomes[student].notes)


def test_an_id_that_is_a_formula_is_not_graded(graded):
    outcome = _outcomes(graded[1])["=HYPERLINK(1)"]
    assert outcome.status == "failed" and "'='" in outcome.notes[0]


def test_a_glob_in_an_id_grades_nobody_else(graded):
    course, report, _, _ = graded
    outcome = _outcomes(report)["[h]onest_victim"]
    assert outcome.status == "failed" and outcome.score is None
    assert "is not a valid student id" in outcome.notes[0] and "'['" in outcome.notes[0]
    autograded = Path(course.root) / "autograded"
    assert not (autograded / "[h]onest_victim").exists()
    victim = nbformat.read(autograded / "honest_victim" / "tiny" / "tiny.ipynb", 4)
    assert all(cell.source != "pass" for cell in victim.cells)


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ("to_source", "tiny.ipynb is a symbolic link (to "),
        ("to_ann", "tiny.ipynb is a symbolic link (to "),
        ("with_data", "data.db is a symbolic link"),
        ("whole_folder", "submitted/whole_folder is a symbolic link"),
        ("fifo", "pipe is a named pipe"),
    ],
)
def test_links_and_special_files_are_reported_not_followed(graded, student, message):
    course, report, _, _ = graded
    outcome = _outcomes(report)[student]
    assert outcome.status == "failed" and outcome.score is None
    assert message in outcome.notes[0] and "not graded" in outcome.notes[0]
    assert not (Path(course.root) / "autograded" / student).exists()
    with course.gradebook() as gradebook:
        ids = {s.student_id for s in gradebook.assignment_submissions("tiny")}
    assert student not in ids  # no score, not a 0


def test_nothing_was_copied_through_a_link(graded):
    course, report, _, base = graded
    for path in (Path(course.root) / "autograded").rglob("*"):
        assert not path.is_symlink(), path
        if path.is_file():
            assert b"instructor's secret" not in path.read_bytes(), path
            assert not path.read_bytes().startswith(b"SQLite format"), path


def test_a_name_that_is_not_utf8_is_reported_readably(graded):
    _, report, _, _ = graded
    outcome = next(o for o in report.outcomes if o.student.startswith("Nov"))
    assert outcome.status == "failed"
    assert "'Nov\\xe1k_1' is not a valid student id" in outcome.notes[0]
    report.summary().encode("utf-8")  # printable: no lone surrogates


def test_nothing_outside_the_output_folders_changed(graded):
    course, _, before, base = graded
    outputs = {"autograded", "gradebook.db", "feedback"}
    for path, mtime in before.items():
        if not outputs & set(path.relative_to(base).parts):
            assert path.lstat().st_mtime_ns == mtime, path
    for path in (Path(course.root) / "autograded").rglob("*"):
        assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), path


def test_the_csv_export_is_safe_and_keeps_failures_apart(graded, tmp_path):
    course, _, _, _ = graded
    with course.gradebook() as gradebook:  # a student the LMS knows who never submitted
        gradebook.update_or_create_student("zoe", first_name="+SUM(A1)", last_name="Doe, Jr.")
        gradebook.update_or_create_student("to_ann")  # submitted, but not graded
        gradebook.update_or_create_student("=HYPERLINK(1)", email="@evil")  # via `nbgrader db`
    path = export_csv(course, tmp_path / "grades.csv")
    with open(path, encoding="utf-8", newline="") as handle:
        rows = {row["student_id"]: row for row in csv.DictReader(handle)}
    assert rows["'=HYPERLINK(1)"]["email"] == "'@evil"
    assert rows["zoe"]["first_name"] == "'+SUM(A1)" and rows["zoe"]["last_name"] == "Doe, Jr."
    assert rows["zoe"]["score"] == "0.0" and rows["zoe"]["status"] == "not submitted"
    assert rows["to_ann"]["score"] == "" and rows["to_ann"]["status"] == "not graded"
    assert rows["ann"]["score"] == "4.0"
    for row in rows.values():
        for value in row.values():
            assert not value.startswith(("=", "+", "@")), row


def test_neutralised_keeps_numbers():
    assert neutralised("-1.5") == "-1.5" and neutralised(3.0) == "3.0"
    assert neutralised("-cmd|' /C calc'!A0") == "'-cmd|' /C calc'!A0"
    assert neutralised("@SUM(1)") == "'@SUM(1)" and neutralised(None) == ""


@pytest.mark.parametrize(
    ("student_id", "problem"),
    [
        ("s001", None),
        ("jan.novak@cuni.cz", None),
        ("Novák", None),
        ("[h]onest", "'['"),
        ("a*", "'*'"),
        ("a b", "' '"),
        ("a/b", "'/'"),
        ("a+b", "'+'"),
        ("..", "starts with '.'"),
        ("x\x1b[2J", "'\\x1b'"),
        ("", "empty"),
        ("a" * 129, "longer than 128"),
    ],
)
def test_student_id_rule(student_id, problem):
    found = student_id_problem(student_id)
    assert (found is None) if problem is None else (problem in found), found


def _nest(folder: Path, depth: int) -> None:
    """``depth`` folders ``d/d/...`` below ``folder``, a file and a link at the bottom."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        for _ in range(depth):  # one level at a time: a path longer than PATH_MAX is fine
            os.mkdir("d")
            os.chdir("d")
        Path("ok.txt").write_text("x")
        os.symlink("/etc/passwd", "deep_link")
    finally:
        os.chdir(previous)


@pytest.mark.parametrize(
    ("depth", "problem"),
    [
        (30, "d/deep_link is a symbolic link (to /etc/passwd)"),
        (1500, "holds folders nested more than 64 deep"),  # beyond the recursion limit
    ],
)
def test_link_problem_walks_deep_trees_without_recursion(tmp_path, depth, problem):
    root = tmp_path / "course"
    folder = root / "submitted" / "s" / "a"
    folder.mkdir(parents=True)
    _nest(folder, depth)
    assert problem in link_problem(str(folder), str(root))
    remove_tree(root)
    assert not root.exists()


def test_shown_escapes_what_a_terminal_would_run():
    assert shown("a\x1b[2Jb") == "a\\x1b[2Jb"
