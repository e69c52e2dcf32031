"""Grading an assignment in a throwaway course: generate it, autograde submissions.

:func:`grade` runs ``npfl-course generate`` and ``npfl-course autograde`` in processes
of their own and reads back the scores, errors and timings (:class:`Graded`); several
assignments may be graded side by side from threads, one autograde at a time, each with
:func:`jobs` notebooks at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import nbformat

from npfl_course.check.notebook import ASSIGNMENTS, REPO, read_notebook, source_path
from npfl_course.sandbox import isolation


@dataclass
class Graded:
    """What nbgrader made of one assignment's submissions."""

    name: str
    release: nbformat.NotebookNode | None = None
    release_files: list[str] = field(default_factory=list)
    # student -> grade_id -> (auto_score, max_score)
    scores: dict[str, dict[str, tuple[float | None, float]]] = field(default_factory=dict)
    # student -> grade_id -> ["ErrorName: message", ...] of that cell's error outputs
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    exec_seconds: dict[str, float] = field(default_factory=dict)  # first input to last reply
    generate_seconds: float = 0.0
    autograde_seconds: float = 0.0
    log: str = ""

    def failure_log(self, student: str) -> str:
        return f"(student {student!r}; nbgrader log tail:\n{self.log[-3000:]})"


def jobs() -> int:
    """Notebooks graded at once in all: ``$NPFL_GRADING_JOBS``, else the CPUs (at most 4)."""
    return max(1, int(os.environ.get("NPFL_GRADING_JOBS") or min(os.cpu_count() or 1, 4)))


_slots: list[threading.BoundedSemaphore] = []  # shared by assignments graded side by side
_slots_lock = threading.Lock()


def _cli(course: Path, *args: str) -> str:
    """Runs ``npfl-course <args> --course-dir course`` in a process of its own; the log."""
    env = dict(os.environ)
    env.pop("NPFL_COURSE_OUTPUT", None)  # the course directory is the output folder
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "npfl_course.cli", *args, "--course-dir", str(course)]
    result = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True,
                            timeout=3600)  # fmt: skip
    return (
        f"$ npfl-course {' '.join(args)} (exit {result.returncode})\n{result.stdout}{result.stderr}"
    )


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _read_autograded(course: Path, name: str, student: str, graded: Graded) -> None:
    path = course / "autograded" / student / name / f"{name}.ipynb"
    if not path.exists():
        return
    notebook = read_notebook(path)
    errors, starts, ends = {}, [], []
    for cell in notebook.cells:
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            starts.append(_timestamp(timing["iopub.execute_input"]))
            ends.append(_timestamp(timing["shell.execute_reply"]))
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id and cell.cell_type == "code":
            errors[grade_id] = [
                f"{out.ename}: {out.evalue}" for out in cell.outputs if out.output_type == "error"
            ]
    graded.errors[student] = errors
    if starts:
        graded.exec_seconds[student] = max(ends) - min(starts)


def _read_scores(course: Path, name: str, graded: Graded) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in gradebook.students:
            try:
                notebook = gradebook.find_submission_notebook(name, name, student.id)
            except MissingEntry:
                continue
            graded.scores[student.id] = {
                grade.name: (grade.auto_score, grade.max_score) for grade in notebook.grades
            }


def grade(
    name: str,
    workdir: Path,
    submissions_of,
    *,
    assignments: Path = ASSIGNMENTS,
    config: Path = REPO / "nbgrader_config.py",
    layout: str = "assignments",
) -> Graded:
    """Generates ``name`` in a course under ``workdir`` and autogrades its submissions.

    Args:
        name: The assignment, a folder of ``assignments``.
        workdir: An empty scratch folder.
        submissions_of: ``f(release, source) -> {student_id: notebook}``.
        assignments: Where the assignments are.
        config: The ``nbgrader_config.py`` to grade with.
        layout: Where, relative to the config, it takes the sources from (this
            repository's: ``assignments``).

    Returns:
        Graded: Scores, errors and timings; ``release`` is None if generation failed.
    """
    graded = Graded(name)
    course = workdir / "course"
    (course / layout).mkdir(parents=True)
    shutil.copy(config, course / "nbgrader_config.py")
    shutil.copytree(assignments / name, course / layout / name)
    start = time.perf_counter()
    graded.log = _cli(course, "generate", name, "--force")
    graded.generate_seconds = time.perf_counter() - start
    release_dir = course / "release" / name
    release_path = release_dir / f"{name}.ipynb"
    if not release_path.exists():
        return graded
    graded.release = read_notebook(release_path)
    graded.release_files = sorted(
        str(p.relative_to(release_dir)) for p in release_dir.rglob("*") if p.is_file()
    )
    submissions = submissions_of(graded.release, read_notebook(source_path(name, assignments)))
    for student, notebook in submissions.items():
        folder = course / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{name}.ipynb")
    with _slots_lock:
        if not _slots:
            _slots.append(threading.BoundedSemaphore(1))
    start = time.perf_counter()
    with _slots[0]:  # one assignment's workers at a time use all jobs() slots
        # The instructor's own notebooks and variants: they may run unsandboxed where no
        # sandbox exists (autograde refuses student code there without --no-sandbox).
        unsandboxed = ["--no-sandbox"] if isolation()[0] != "bwrap" else []
        # --no-preflight: grading the source and the release is what check does anyway.
        graded.log += _cli(course, "autograde", name, "--jobs", str(jobs()), "--quiet",
                           "--no-preflight", *unsandboxed)  # fmt: skip
    graded.autograde_seconds = time.perf_counter() - start
    _read_scores(course, name, graded)
    for student in submissions:
        _read_autograded(course, name, student, graded)
    return graded


def safe_id(text: str) -> str:
    """``text`` reduced to characters safe in a student id and a pytest id."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:40]
