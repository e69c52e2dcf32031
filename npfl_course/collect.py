"""``npfl-course zip-collect``: submissions downloaded from an LMS -> ``submitted/``.

An LMS (Moodle, Canvas, ...) gives the instructor a folder with one entry per student,
named by the student's id: ``<id>.zip``, ``<id>.ipynb``, ``<id>_<anything>.ipynb`` or a
folder ``<id>/`` (or ``<id>_<anything>/``). This runs nbgrader's ``ZipCollectApp`` on a
copy of that folder: its ``ExtractorPlugin`` unpacks the archives, and
:class:`StudentIdCollector` (nbgrader's ``FileNameCollectorPlugin`` with a pattern
matched against the top-level name instead of the whole path) says whose each notebook
is. A student's only notebook gets the name of the assignment's only released notebook
(LMS downloads rename files), and ``submitted/<id>/<assignment>/`` receives it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.apps.zipcollectapp import ZipCollectApp
from nbgrader.plugins import FileNameCollectorPlugin
from traitlets import Dict, List, Unicode

from npfl_course.course import Course, CourseError

# Everything up to the first "_", whitespace or "." of the top-level file or folder name.
DEFAULT_PATTERN = r"(?P<student_id>[^_\s.]+)"


@dataclass
class Collected:
    """What zip-collect did.

    Attributes:
        students (dict[str, list[str]]): Student id -> the notebooks collected for them.
        skipped (list[str]): Entries that were not collected, and why.
    """

    students: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _hidden(parts: list[str]) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in parts)


class StudentIdCollector(FileNameCollectorPlugin):
    """The student id from the top-level name of each downloaded entry (see module doc)."""

    extracted = Unicode("", help="the folder the archives were extracted to")
    pattern = Unicode(DEFAULT_PATTERN, help="regex with a student_id group, matched at the start")
    released = List(Unicode(), help="file names of the released notebooks")
    counts = Dict(help="top-level entry -> how many notebooks it holds")
    skipped = List(Unicode())

    def prepare(self) -> None:
        """Counts the notebooks of each top-level entry (call after extraction)."""
        counts: dict[str, int] = {}
        for root, _, files in os.walk(self.extracted):
            for name in files:
                parts = os.path.relpath(os.path.join(root, name), self.extracted).split(os.sep)
                if name.endswith(".ipynb") and not _hidden(parts):
                    counts[parts[0]] = counts.get(parts[0], 0) + 1
        self.counts = counts

    def collect(self, submitted_file: str) -> dict | None:
        parts = os.path.relpath(submitted_file, self.extracted).split(os.sep)
        if _hidden(parts):
            return None
        if not submitted_file.endswith(".ipynb"):
            self.skipped.append(f"{'/'.join(parts)}: not a notebook")
            return None
        top = parts[0][: -len(".ipynb")] if len(parts) == 1 else parts[0]
        match = re.match(self.pattern, top)
        student = match.groupdict().get("student_id") if match else None
        if not student:
            self.skipped.append(f"{'/'.join(parts)}: no student id in {parts[0]!r}")
            return None
        file_id = parts[-1]
        if file_id not in self.released and len(self.released) == 1:
            if self.counts.get(parts[0], 0) == 1:
                file_id = self.released[0]
        return {"student_id": student, "file_id": file_id}


def _copy_downloads(source: Path, target: Path) -> list[str]:
    """Copies the downloads but hidden files and broken archives (which would stop
    nbgrader's extractor); returns why each archive was left out."""
    skipped = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if _hidden(list(relative.parts)) or not path.is_file():
            continue
        name = path.name.lower()
        if name.endswith((".zip", ".gz")):
            readable = zipfile.is_zipfile(path) if name.endswith(".zip") else _is_tar(path)
            if not readable:
                skipped.append(f"{relative}: not a readable archive")
                continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)
    target.mkdir(parents=True, exist_ok=True)
    return skipped


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def zip_collect(
    course: Course,
    assignment: str,
    directory: str | os.PathLike,
    *,
    pattern: str | None = None,
    force: bool = False,
) -> Collected:
    """Collects the downloaded submissions in ``directory`` into ``submitted/``.

    Args:
        course (Course): The loaded course.
        assignment (str): The assignment id; its release names the notebooks.
        directory (str | os.PathLike): The LMS download folder (left unchanged).
        pattern (str | None): Regex with a ``(?P<student_id>...)`` group, matched at the
            start of each top-level name (default :data:`DEFAULT_PATTERN`).
        force (bool): Replace submissions collected before.

    Returns:
        Collected: Whose notebooks were collected, and what was skipped.

    Raises:
        CourseError: If ``directory`` does not exist, the pattern lacks the group, or
            nbgrader refuses (e.g. a submission exists already and ``force`` is False).
    """
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.utils import find_all_notebooks

    source = Path(directory).expanduser().resolve()
    if not source.is_dir():
        raise CourseError(f"zip-collect: {source} is not a folder")
    pattern = pattern or DEFAULT_PATTERN
    if "(?P<student_id>" not in pattern:
        raise CourseError(f"zip-collect: the pattern needs a (?P<student_id>...) group: {pattern}")
    coursedir = CourseDirectory(parent=course.app)
    coursedir.root, coursedir.assignment_id = course.coursedir.root, assignment
    released = find_all_notebooks(str(course.path("release", assignment)))
    if not released:
        raise CourseError(f"zip-collect: no released notebooks of {assignment!r}; generate first")
    with tempfile.TemporaryDirectory(prefix="npfl-collect-") as work:
        broken = _copy_downloads(source, Path(work) / "archive")
        app = ZipCollectApp(config=course.config)
        app.coursedir = coursedir
        app.force = force
        app.collect_directory_structure = os.path.join(work, "{collect_step}")
        app.collector_plugin = StudentIdCollector
        messages = _Messages()
        handlers, app.log.handlers = app.log.handlers, [messages]  # quiet: errors are raised
        try:
            app.init_plugins()
            collector = app.collector_plugin_inst
            collector.extracted = os.path.join(work, "extracted")
            collector.pattern, collector.released = pattern, released
            app.extract_archive_files()
            collector.prepare()
            files = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(collector.extracted)
                for name in names
            )
            data = app._collect_files(files) if files else {}
            app._transfer_files(data)
        except SystemExit:  # nbgrader's apps exit on what they refuse
            raise CourseError(f"zip-collect: {(messages.messages or ['failed'])[-1]}") from None
        finally:
            app.log.handlers = handlers
    result = Collected(skipped=broken + list(collector.skipped))
    for student, info in sorted(data.items()):
        result.students[student] = sorted(info["file_ids"])
    return result
