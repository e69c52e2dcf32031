"""npfl_course.collect: LMS downloads (zips, loose notebooks, folders) -> submitted/."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import nbformat
import pytest
from tiny_course import tiny_course

from npfl_course.collect import DEFAULT_PATTERN, zip_collect
from npfl_course.course import CourseError, generate_assignment, load_course


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory) -> Path:
    directory = tiny_course(tmp_path_factory.mktemp("collect") / "course")
    ok, log = generate_assignment(load_course(directory), "tiny")
    assert ok, log
    return directory


@pytest.fixture
def course(course_dir, tmp_path):
    """A fresh copy of the generated course (collecting writes into it)."""
    import shutil

    return load_course(shutil.copytree(course_dir, tmp_path / "course"))


def _notebook(marker: str) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"# {marker}")]
    return nbformat.writes(notebook)


def _downloads(folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(folder / "s1.zip", "w") as archive:
        archive.writestr("tiny.ipynb", _notebook("s1"))
    with zipfile.ZipFile(folder / "s5_attempt2.zip", "w") as archive:
        archive.writestr("tiny/renamed by student.ipynb", _notebook("s5"))
        archive.writestr("__MACOSX/tiny/._renamed by student.ipynb", "junk")
    (folder / "s2_homework.ipynb").write_text(_notebook("s2"))
    (folder / "s3_folder").mkdir()
    (folder / "s3_folder" / "my work.ipynb").write_text(_notebook("s3"))
    (folder / "s4.pdf").write_bytes(b"%PDF-1.4")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._s1.zip").write_bytes(b"junk")
    (folder / "s6.zip").write_bytes(b"not a zip at all")
    return folder


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_zips_loose_notebooks_and_folders_are_collected(course, tmp_path):
    downloads = _downloads(tmp_path / "downloads")
    before = _digest(downloads)
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {
        "s1": ["tiny.ipynb"],
        "s2": ["tiny.ipynb"],
        "s3": ["tiny.ipynb"],
        "s5": ["tiny.ipynb"],
    }
    for student in collected.students:
        path = course.root / "submitted" / student / "tiny" / "tiny.ipynb"
        assert nbformat.read(path, 4).cells[0].source == f"# {student}"
    assert collected.skipped == ["s6.zip: not a readable archive", "s4.pdf: not a notebook"]
    assert _digest(downloads) == before  # the download folder is left as it was


def test_collecting_again_needs_force(course, tmp_path):
    downloads = _downloads(tmp_path / "downloads")
    zip_collect(course, "tiny", downloads)
    with pytest.raises(CourseError, match="--force"):
        zip_collect(course, "tiny", downloads)
    (downloads / "s2_homework.ipynb").write_text(_notebook("s2 again"))
    zip_collect(course, "tiny", downloads, force=True)
    path = course.root / "submitted" / "s2" / "tiny" / "tiny.ipynb"
    assert nbformat.read(path, 4).cells[0].source == "# s2 again"


def test_a_pattern_for_moodle_style_names(course, tmp_path):
    downloads = tmp_path / "moodle"
    folder = downloads / "Jan Novak_12345_assignsubmission_file_"
    folder.mkdir(parents=True)
    (folder / "ukol.ipynb").write_text(_notebook("jan"))
    (downloads / "unrelated.ipynb").write_text(_notebook("x"))
    pattern = r".*_(?P<student_id>\d+)_assignsubmission"
    collected = zip_collect(course, "tiny", downloads, pattern=pattern)
    assert collected.students == {"12345": ["tiny.ipynb"]}
    assert collected.skipped == ["unrelated.ipynb: no student id in 'unrelated.ipynb'"]


def test_two_notebooks_keep_their_names(course, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "s7.zip", "w") as archive:
        archive.writestr("tiny.ipynb", _notebook("main"))
        archive.writestr("scratch.ipynb", _notebook("other"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s7": ["scratch.ipynb", "tiny.ipynb"]}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"directory": "missing"}, "is not a folder"),
        ({"pattern": r"(?P<id>\w+)"}, "student_id"),
        ({"assignment": "nope"}, "no released notebooks of 'nope'"),
    ],
)
def test_bad_input_is_reported(course, tmp_path, arguments, message):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    call = {"assignment": "tiny", "directory": downloads, **arguments}
    if arguments.get("directory") == "missing":
        call["directory"] = tmp_path / "missing"
    with pytest.raises(CourseError, match=message):
        zip_collect(course, call.pop("assignment"), call.pop("directory"), **call)


def test_default_pattern():
    import re

    for name, student in [("s1", "s1"), ("s2_homework", "s2"), ("x-9 extra", "x-9")]:
        assert re.match(DEFAULT_PATTERN, name).group("student_id") == student
