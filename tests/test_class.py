"""A whole class through the instructor's commands: zip-collect, autograde, feedback, export.

Twenty honest students (in every form an LMS download takes) and a hostile or careless
rest: zip-slip and absolute paths, a setuid entry, a zip bomb, a nested zip, a link
out of the download folder, a folder name that is not UTF-8, ids with glob characters or
formulas, two students with one first name, notebooks with script payloads and terminal
escapes. The honest grades must be right, every odd entry reported, the feedback free
of hidden tests and of student scripts, the CSV safe, and nothing outside the course's
output folders changed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from tiny_course import tiny_course

from npfl_course import cli
from npfl_course.check import make_submission
from npfl_course.course import generate_assignment, load_course
from npfl_course.sandbox import isolation

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning"),  # nbgrader's
]
NO_SANDBOX = ["--no-sandbox"] if isolation()[0] != "bwrap" else []
ANSWERS = {  # kind -> (replaced solution cells, score out of 4)
    "full": ({}, 4.0),
    "wrong_mul": ({"mul": "def mul(a, b):\n    return a + b"}, 2.0),
    "wrong_add": ({"add": "def add(a, b):\n    return a - b"}, 3.0),
    "scripted": (
        {
            "add": "from IPython.display import HTML, Javascript, display\n"
            "display(HTML('<img src=x onerror=\"window.__npfl_xss=1\">'))\n"
            "display(Javascript('window.__npfl_xss = 2'))\n"
            "def add(a, b):\n    return a + b"
        },
        4.0,
    ),
    "escapes": (
        {"square": "def square(x):\n    raise ValueError('\\x1b]0;pwned\\x07\\x1b[2J')"},
        3.0,
    ),
}
OUTPUTS = {"submitted", "autograded", "feedback", "gradebook.db", "grades.csv", "reports",
           ".npfl-preflight.json"}  # fmt: skip


def _tree(directory: Path) -> dict[str, str]:
    """Relative path -> digest of every file, link and folder outside the outputs."""
    result = {}
    for root, folders, files in os.walk(directory):
        relative = Path(root).relative_to(directory)
        if relative.parts and relative.parts[0] in OUTPUTS:
            continue
        for name in folders + files:
            path = Path(root) / name
            if not relative.parts and name in OUTPUTS:
                continue
            if path.is_symlink():
                result[str(relative / name)] = "link:" + os.readlink(path)
            elif path.is_file():
                result[str(relative / name)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                result[str(relative / name)] = "dir"
    return result


class _ActiveContent(HTMLParser):
    """Finds the student's payload where a browser would run it: in a script element or
    an event-handler attribute (as escaped text in a code listing it is harmless)."""

    def __init__(self) -> None:
        super().__init__()
        self.found, self.in_script = [], False

    def handle_starttag(self, tag, attrs):
        self.in_script = tag == "script"
        for name, value in attrs:
            if name.startswith("on") and "__npfl_xss" in (value or ""):
                self.found.append(f"<{tag} {name}=...>")

    def handle_data(self, data):
        if self.in_script and "__npfl_xss" in data:
            self.found.append("<script> with the payload")


def _active_payload(html: str) -> list[str]:
    parser = _ActiveContent()
    parser.feed(html)
    return parser.found


def _zip(path: Path, entries: dict[str, bytes], mode: int = 0o644) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The class, collected, autograded and fed back: (course dir, outputs, expected)."""
    base = tmp_path_factory.mktemp("class")
    directory = tiny_course(base / "course")
    ok, log = generate_assignment(load_course(directory), "tiny")
    assert ok, log
    release = nbformat.read(directory / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)

    def notebook(kind: str) -> bytes:
        return nbformat.writes(make_submission(release, source, ANSWERS[kind][0])).encode()

    downloads = base / "downloads"
    downloads.mkdir()
    expected = {}
    kinds = ["full", "wrong_mul", "wrong_add", "full", "scripted"]
    for number in range(1, 21):
        student, kind = f"s{number:02d}", kinds[number % len(kinds)]
        expected[student] = ANSWERS[kind][1]
        form = number % 3
        if form == 0:
            _zip(downloads / f"{student}.zip", {"tiny.ipynb": notebook(kind)})
        elif form == 1:
            (downloads / f"{student}_homework.ipynb").write_bytes(notebook(kind))
        else:
            (downloads / f"{student}_folder").mkdir()
            (downloads / f"{student}_folder" / "my work.ipynb").write_bytes(notebook(kind))
    expected["escaper"] = ANSWERS["escapes"][1]
    (downloads / "escaper.ipynb").write_bytes(notebook("escapes"))
    expected["victim"] = 4.0
    (downloads / "victim.ipynb").write_bytes(notebook("full"))

    _zip(downloads / "slip.zip", {"../../../escaped.ipynb": notebook("full")})
    _zip(downloads / "absolute.zip", {"/tmp/npfl-absolute.ipynb": notebook("full")})
    _zip(downloads / "setuid.zip", {"tiny.ipynb": notebook("full"), "run": b"#!/bin/sh\n"},
         mode=0o4755)  # fmt: skip
    with zipfile.ZipFile(downloads / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("tiny.ipynb", "w", force_zip64=True) as entry:
            chunk = b"\0" * (8 << 20)
            for _ in range(160):  # 1.25 GiB of zeros, about 1.3 MB compressed
                entry.write(chunk)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("tiny.ipynb", notebook("full"))
    _zip(downloads / "nested.zip", {"inner.zip": inner.getvalue()})
    secret = base / "secret.ipynb"
    secret.write_bytes(notebook("full"))
    os.symlink(secret, downloads / "linker.ipynb")
    os.mkdir(os.fsencode(downloads) + b"/Nov\xe1k_1")
    Path(os.fsdecode(os.fsencode(downloads) + b"/Nov\xe1k_1/tiny.ipynb")).write_bytes(
        notebook("full")
    )
    (downloads / "[v]ictim.ipynb").write_bytes(notebook("full"))
    (downloads / "=HYPERLINK(0)_x.ipynb").write_bytes(notebook("full"))
    _zip(downloads / "twice.zip", {"a.ipynb": notebook("full"), "b.ipynb": notebook("full")})
    expected["setuid"] = 4.0  # collected, without the setuid bit
    expected["twice"] = 0.0  # neither notebook is the assignment's: 0, with the reason

    before = _tree(directory)
    args = ["--course-dir", str(directory)]
    collect_code = cli.main(["zip-collect", "tiny", str(downloads), *args])
    grade_code = cli.main(["autograde", "tiny", "--jobs", "2", "--quiet", *args, *NO_SANDBOX])
    feedback_code = cli.main(["feedback", "tiny", *args])
    export_code = cli.main(["export", *args])
    codes = {"collect": collect_code, "grade": grade_code, "feedback": feedback_code,
             "export": export_code}  # fmt: skip
    return directory, base, before, expected, codes


def test_the_honest_grades_are_right(graded):
    directory, _, _, expected, codes = graded
    assert codes["collect"] == 0 and codes["feedback"] == 0 and codes["export"] == 0, codes
    course = load_course(directory)
    with course.gradebook() as gradebook:
        scores = {s.student_id: s.score for s in gradebook.assignment_submissions("tiny")}
    for student, score in expected.items():
        assert scores.get(student) == score, (student, scores.get(student))
    assert set(scores) == set(expected), sorted(set(scores) ^ set(expected))


def test_hostile_entries_land_nowhere(graded):
    directory, base, _, _, _ = graded
    submitted = directory / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted(graded[3])
    for path in submitted.rglob("*"):
        assert not path.is_symlink(), path
        mode = path.lstat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH), path
        if path.is_file():
            assert path.stat().st_size < 1 << 20, path
    assert not (base / "escaped.ipynb").exists() and not Path("/tmp/npfl-absolute.ipynb").exists()


def test_feedback_has_no_hidden_tests_and_no_student_scripts(graded):
    directory = graded[0]
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)
    hidden = [
        line.strip()
        for cell in source.cells
        for block in re.findall(
            r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", cell.source, re.S
        )  # fmt: skip
        for line in block.splitlines()
        if line.strip()
    ]
    assert hidden
    pages = list((directory / "feedback").rglob("*.html"))
    assert len(pages) == len(graded[3])
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for line in hidden:
            assert line not in html, (page, line)
        assert not _active_payload(html), page
        assert "\x1b" not in html, page


def test_the_csv_is_safe_and_complete(graded):
    directory, _, _, expected, _ = graded
    with open(directory / "grades.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    scores = {row["student_id"]: row["score"] for row in rows}
    for student, score in expected.items():
        assert float(scores[student]) == score, student
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@")), row


def test_nothing_outside_the_output_folders_changed(graded):
    directory, _, before, _, _ = graded
    assert _tree(directory) == before
