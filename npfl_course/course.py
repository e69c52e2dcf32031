"""The course directory: where ``nbgrader_config.py`` is, and nbgrader's configuration.

Every ``npfl-course`` command works on one course directory: ``--course-dir DIR``, else
the current directory if it holds ``nbgrader_config.py``, else the repository this
package was installed from. The configuration is loaded the way ``nbgrader`` loads it
(Jupyter's config paths, then the directory's ``nbgrader_config.py``, then the one in
``CourseDirectory.root``), so whatever the instructor configured there, e.g. a
Postgres ``CourseDirectory.db_url`` or another ``root``, holds for these commands too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAME = "nbgrader_config.py"
REPO = Path(__file__).resolve().parent.parent


STUDENT_ID_RULE = (
    "letters, digits, '_', '-', '.' and '@', starting with a letter or a digit, "
    "at most 128 characters"
)


def student_id_problem(student_id: str) -> str | None:
    """Why ``student_id`` cannot be a student id, or None when it can.

    nbgrader uses ids in paths, in file globs (``submitted/<id>/...``) and in the
    exchange's file names (``<id>+<assignment>+<time>``), so an id may hold only
    :data:`STUDENT_ID_RULE`: no glob characters (``[h]onest`` would match ``honest``), no
    path separators, no ``+``, no whitespace or control characters.
    """
    if not isinstance(student_id, str) or not student_id:
        return "it is empty"
    if len(student_id) > 128:
        return f"it is longer than 128 characters ({len(student_id)})"
    bad = sorted({c for c in student_id if not (c.isalnum() or c in "_-.@")})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"it contains {shown}; allowed are {STUDENT_ID_RULE}"
    if not student_id[0].isalnum():
        return f"it starts with {student_id[0]!r}; allowed are {STUDENT_ID_RULE}"
    return None


class CourseError(Exception):
    """A problem with the course directory or its configuration, for the user."""


@contextlib.contextmanager
def working_directory(path: str | os.PathLike) -> Iterator[None]:
    """Changes the current directory inside the block (nbgrader reads config from it)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def find_course_dir(course_dir: str | os.PathLike | None = None) -> Path:
    """The course directory: ``course_dir``, the current directory, or the repository.

    Args:
        course_dir (str | os.PathLike | None): An explicit directory (``--course-dir``).

    Returns:
        Path: The resolved directory holding ``nbgrader_config.py``.

    Raises:
        CourseError: If the chosen directory has no ``nbgrader_config.py``.
    """
    if course_dir is not None:
        path = Path(course_dir).expanduser().resolve()
        if not (path / CONFIG_NAME).is_file():
            raise CourseError(f"--course-dir {path} has no {CONFIG_NAME}")
        return path
    for candidate in (Path.cwd(), REPO):
        if (candidate / CONFIG_NAME).is_file():
            return candidate.resolve()
    raise CourseError(
        f"no {CONFIG_NAME} in the current directory ({Path.cwd()}); run from the course "
        f"directory or pass --course-dir DIR"
    )


@dataclass
class Course:
    """A loaded course: nbgrader's application object (its config) and course directory.

    Attributes:
        directory (Path): Where ``nbgrader_config.py`` is.
        app (nbgrader.apps.baseapp.NbGrader): Parent of every nbgrader converter we
            create, so they read the same configuration.
    """

    directory: Path
    app: Any

    @property
    def coursedir(self):
        """nbgrader's ``CourseDirectory`` (paths, ``db_url``, ``course_id``, ...)."""
        return self.app.coursedir

    @property
    def root(self) -> Path:
        """``CourseDirectory.root``: where source/, release/, submitted/, ... live."""
        return Path(self.coursedir.root)

    @property
    def db_url(self) -> str:
        return self.coursedir.db_url

    @property
    def config(self):
        return self.app.config

    def gradebook(self):
        """A new ``nbgrader.api.Gradebook`` on the configured database (close it after use)."""
        from nbgrader.api import Gradebook

        return Gradebook(self.db_url, self.coursedir.course_id)

    def path(self, step: str, assignment: str, student: str = ".") -> Path:
        """``CourseDirectory.format_path`` for a step (``"source"``, ``"release"``, ...)."""
        directory = getattr(self.coursedir, f"{step}_directory")
        return Path(self.coursedir.format_path(directory, student, assignment))

    def source_assignments(self) -> list[str]:
        """Names of the assignments in the source directory (folders with a notebook)."""
        source = self.path("source", "*").parent
        if not source.is_dir():
            return []
        return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))

    def config_value(self, section: str, name: str, default: Any = None) -> Any:
        """A configured value (``c.<section>.<name>``), or ``default`` if not set."""
        if section in self.config and name in self.config[section]:
            return self.config[section][name]
        return default


def load_course(course_dir: str | os.PathLike | None = None, log_level: int = logging.WARNING):
    """Loads nbgrader's configuration for a course directory.

    Args:
        course_dir (str | os.PathLike | None): See :func:`find_course_dir`.
        log_level (int): The level of nbgrader's log (WARNING hides its per-file chatter).

    Returns:
        Course: The directory and the configured nbgrader application.

    Raises:
        CourseError: If there is no ``nbgrader_config.py``, or loading it fails.
    """
    from nbgrader.apps.baseapp import NbGrader

    directory = find_course_dir(course_dir)
    # nbgrader runs `alembic` (installed next to this Python) when it creates a gradebook.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    app = NbGrader()
    app.log_level = log_level
    with working_directory(directory):
        try:
            app.initialize([])
        except SystemExit as exc:  # traitlets exits on a broken config file
            raise CourseError(f"could not load {directory / CONFIG_NAME}") from exc
        app.coursedir.root = str(Path(app.coursedir.root).resolve())
    app.log.setLevel(log_level)
    return Course(directory, app)


def run_converter(converter) -> tuple[bool, str]:
    """Runs an nbgrader converter as ``NbGraderAPI`` does: (success, log and error)."""
    from nbgrader.utils import capture_log

    result = capture_log(converter)
    return bool(result["success"]), (result.get("log", "") + result.get("error", "")).strip()


def assignment_coursedir(course: Course, assignment: str):
    """nbgrader's ``CourseDirectory`` of ``course`` with ``assignment_id`` set."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(parent=course.app)
    coursedir.root = course.coursedir.root
    coursedir.assignment_id = assignment
    return coursedir


def generate_assignment(course: Course, assignment: str, force: bool = False) -> tuple[bool, str]:
    """``nbgrader generate_assignment``: source -> release, and the assignment's gradebook entry.

    Returns:
        tuple[bool, str]: Whether it succeeded, and nbgrader's log.
    """
    from nbgrader.converters import GenerateAssignment

    coursedir = assignment_coursedir(course, assignment)
    converter = GenerateAssignment(coursedir=coursedir, parent=course.app)
    converter.force, converter.create_assignment = force, True
    return run_converter(converter)


def export_csv(course: Course, path: str | os.PathLike) -> Path:
    """The whole gradebook as CSV (:class:`npfl_course.export.SafeCsvExport`) to ``path``."""
    from npfl_course.export import SafeCsvExport

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    plugin = SafeCsvExport(parent=course.app)
    plugin.to = str(path)
    with course.gradebook() as gradebook:
        plugin.export(gradebook)
    return path


def scratch_copy(course: Course, target: str | os.PathLike, names: list[str] | None = None):
    """A new course in ``target``: the course's config and source assignments ``names``.

    The copy keeps the source layout the config names (e.g. ``assignments/<name>/``) and its
    outputs (release/, gradebook, ...) go into ``target`` itself, whatever
    ``NPFL_COURSE_OUTPUT`` says. Nothing is generated yet.

    Returns:
        Course: The loaded copy.
    """
    target = Path(target)
    source = course.path("source", "x").parent
    target.mkdir(parents=True)
    shutil.copy(course.directory / CONFIG_NAME, target / CONFIG_NAME)
    relative = os.path.relpath(source, course.directory)
    if relative.startswith(".."):
        relative = "assignments"  # a source outside the course: this config must agree
    for name in course.source_assignments() if names is None else names:
        shutil.copytree(source / name, target / relative / name)
    previous = os.environ.pop("NPFL_COURSE_OUTPUT", None)
    try:
        return load_course(target)
    finally:
        if previous is not None:
            os.environ["NPFL_COURSE_OUTPUT"] = previous
