"""Parallel, sandboxed autograding built on nbgrader's own converter and gradebook.

``nbgrader autograde`` handles one submission after another in one process, and runs
each notebook in a kernel with the instructor's rights. Here every submission passes
through nbgrader's ``Autograde`` converter in three phases:

1. *prepare* (main thread): nbgrader's ``init_destination`` / ``init_assignment`` (student
   and submission in the gradebook, timestamps, files copied from the source) and its
   sanitizing preprocessors (``ClearOutput``, ``DeduplicateIds``, ``OverwriteKernelspec``,
   ``OverwriteCells``, ``CheckCellMetadata``), writing ``autograded/<student>/<assignment>/``.
   Before ``OverwriteCells``, :class:`RestoreCells` undoes what students do to cells
   (nbgrader's issues #1682, #1083, #1941): nbgrader metadata edited, locked or test
   cells deleted, cells reordered; and a notebook that cannot be read (invalid JSON, an
   empty file, not a notebook) or is missing becomes the released notebook whose code
   cells all fail with the reason, so it scores 0 instead of breaking the batch.
2. *execute* (``--jobs`` worker threads): the prepared notebook, copied into a scratch
   folder with only that submission's files, runs in ``python -m npfl_course.execute``
   under ``npfl_course.sandbox.run_sandboxed`` (time, memory and process limits, no
   network, no view of the course). A worker that dies (memory, ``os._exit``, a signal,
   the notebook time limit) keeps the outputs of the cells it finished; the others get
   a ``DeadKernelError`` saying why.
3. *save* (main thread, the only writer to the gradebook): the rest of nbgrader's
   autograde preprocessors (``IgnorePattern``, ``ClearMetadataPreprocessor``,
   ``LimitOutput``, ``SaveAutoGrades``, ``AssignLatePenalties``, ``CheckCellMetadata``),
   then nbgrader's permissions and post-convert hook.

The gradebook is whatever ``CourseDirectory.db_url`` names (SQLite or Postgres). As with
nbgrader, a submission already in ``autograded/`` is skipped unless ``force`` is set or
it was resubmitted (a newer ``timestamp.txt``), so running again is idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import nbformat.warnings
from nbconvert.preprocessors import ExecutePreprocessor
from nbconvert.writers import FilesWriter
from nbgrader import utils
from nbgrader.api import MissingEntry
from nbgrader.converters import Autograde, BaseConverter, NbGraderException
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import DeduplicateIds, NbGraderPreprocessor

from npfl_course.course import Course
from npfl_course.execute import META_KEY
from npfl_course.sandbox import Limits, SandboxResult, run_sandboxed, sandbox_available

PENDING = ".npfl-autograde-pending"  # in autograded/<student>/<assignment>/ until saved
MAX_EXECUTED_BYTES = 64 << 20  # a worker's output notebook larger than this is not read
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}
GRADER_ERRORS = {"CellTimeoutError", "DeadKernelError", "GradingTamperError"}


@dataclass
class Outcome:
    """What happened to one submission.

    Attributes:
        student (str): The student id.
        status (str): ``"graded"``, ``"failed"`` (could not be graded; see ``notes``) or
            ``"skipped"`` (already autograded).
        score (float | None): The total score in the gradebook after grading.
        max_score (float | None): The maximum score.
        lost (dict[str, str]): Test cells that lost points -> the reason (first error).
        notes (list[str]): Other readable remarks (restored cells, unreadable notebook, ...).
        seconds (float): Wall-clock time from preparing to saving.
    """

    student: str
    status: str
    score: float | None = None
    max_score: float | None = None
    lost: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Report:
    """The outcomes of one ``autograde`` run, one per submission considered."""

    assignment: str
    outcomes: list[Outcome]
    seconds: float
    jobs: int
    sandboxed: bool

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    def summary(self, details: bool = True) -> str:
        """A readable summary: counts, then one line per submission with its reasons."""
        isolation = "bubblewrap sandbox" if self.sandboxed else "limits only, NOT isolated"
        lines = [
            f"autograde {self.assignment}: {len(self.outcomes)} submission(s) in "
            f"{self.seconds:.1f} s with {self.jobs} job(s) ({isolation})",
            f"  graded: {self.count('graded')}, failed: {self.count('failed')}, "
            f"skipped: {self.count('skipped')}",
        ]
        for outcome in self.outcomes:
            if not details and outcome.status != "failed":
                continue  # the short summary still says why each failure failed
            score = f"{outcome.score:g}/{outcome.max_score:g}" if outcome.score is not None else "-"
            lines.append(f"  {outcome.student:<24} {outcome.status:<8} {score}")
            for grade_id, reason in outcome.lost.items():
                lines.append(f"      {grade_id}: {reason}")
            lines += [f"      note: {note}" for note in outcome.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------
# Phase 1 helpers: putting the cells back as the assignment has them
# ----------------------------------------------------------------------------------


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


class RestoreCells(NbGraderPreprocessor):
    """Makes the nbgrader cells of a submission match the gradebook, before OverwriteCells.

    Cells whose grade_id the gradebook does not know lose their nbgrader metadata (they
    are the student's own cells). Known cells get their kind (grade, solution, locked,
    task) and points back. Locked cells (read-only and test cells) that were deleted are
    added back, and the assignment's cells are put back in the assignment's order, each
    followed by the student's own cells that followed it. Every change is noted in
    ``resources["npfl_notes"]``. The order comes from ``resources["npfl_reference"]``
    (the released notebook) when given.
    """

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        notes = resources.setdefault("npfl_notes", [])
        with Gradebook(info["db_url"]) as gradebook:
            notebook = gradebook.find_notebook(info["notebook"], info["assignment"])
            kinds = {
                "grade": {cell.name for cell in notebook.grade_cells},
                "solution": {cell.name for cell in notebook.solution_cells},
                "task": {cell.name for cell in notebook.task_cells},
            }
            points = {c.name: c.max_score for c in notebook.grade_cells + notebook.task_cells}
            source = {c.name: (c.cell_type, c.locked, c.source) for c in notebook.source_cells}
        known = set(source).union(*kinds.values())
        reference = resources.get("npfl_reference")
        order = [_grade_id(c) for c in reference.cells] if reference else list(source)
        order = [name for name in order if name in known]
        order += [name for name in source if name not in order]
        by_name = {_grade_id(c): c for c in reference.cells if _grade_id(c)} if reference else {}
        for cell in nb.cells:
            name = _grade_id(cell)
            if name is None or name not in known:
                if name is not None:
                    notes.append(f"cell {name!r} is not part of the assignment: plain code")
                cell.metadata.pop("nbgrader", None)  # the student's own cell
                continue
            expected = {kind: name in names for kind, names in kinds.items()}
            expected["locked"] = bool(source.get(name, (None, False))[1])
            meta = cell.metadata["nbgrader"]
            changed = any(bool(meta.get(kind)) != value for kind, value in expected.items())
            if name in points:
                changed |= "points" in meta and meta["points"] != points[name]
                expected["points"] = points[name]
            else:
                meta.pop("points", None)
            meta.update(expected, schema_version=3)
            if changed:
                notes.append(f"the nbgrader settings of cell {name!r} were changed; restored")
            original = by_name.get(name)
            pristine = (original.source if original else None, source.get(name, (0, 0, None))[2])
            if expected["locked"] and original is not None and cell.source not in pristine:
                notes.append(f"locked cell {name!r} was edited; the original was restored")
        present = {_grade_id(cell) for cell in nb.cells}
        for name in order:
            if name in present:
                continue
            cell_type, locked, text = source.get(name, ("code", False, ""))
            if not locked:
                notes.append(f"cell {name!r} (the student's answer) was deleted")
                continue
            restored = copy.deepcopy(by_name.get(name))
            if restored is None:
                make = (
                    nbformat.v4.new_code_cell
                    if cell_type == "code"
                    else (nbformat.v4.new_markdown_cell)
                )
                restored = make(text)
                restored.metadata["nbgrader"] = {"grade_id": name, "schema_version": 3}
                flags = {kind: name in names for kind, names in kinds.items()}
                restored.metadata["nbgrader"].update(flags, locked=True)
                if name in points:
                    restored.metadata["nbgrader"]["points"] = points[name]
            nb.cells.append(restored)
            notes.append(f"locked cell {name!r} was deleted; the original was put back")
        self._reorder(nb, order, notes)
        return nb, resources

    @staticmethod
    def _reorder(nb, order: list[str], notes: list[str]) -> None:
        rank = {name: index for index, name in enumerate(order)}
        groups: list[list] = [[]]
        for cell in nb.cells:
            if _grade_id(cell) in rank:
                groups.append([cell])
            else:
                groups[-1].append(cell)  # the student's cell stays after its predecessor
        head, body = groups[0], groups[1:]
        ordered = sorted(body, key=lambda group: rank[_grade_id(group[0])])
        if ordered != body:
            notes.append("cells were moved; they ran in the assignment's order")
        nb.cells = head + [cell for group in ordered for cell in group]


class _Converter(Autograde):
    """nbgrader's Autograde converter, driven one submission and one phase at a time."""

    def _init_preprocessors(self) -> None:
        self.exporter._preprocessors = []
        if self._sanitizing:
            steps = list(self.sanitize_preprocessors)
            after = [i + 1 for i, step in enumerate(steps) if issubclass(step, DeduplicateIds)]
            steps.insert(after[0] if after else 0, RestoreCells)
        else:  # the notebook was executed in the sandbox already
            steps = [s for s in self.autograde_preprocessors if not _is_execute(s)]
        for step in steps:
            self.exporter.register_preprocessor(step)


def _is_execute(step) -> bool:
    return isinstance(step, type) and issubclass(step, ExecutePreprocessor)


@contextlib.contextmanager
def _faster_nbgrader() -> Iterator[None]:
    """Two caches for what nbgrader rebuilds for every submission, inside the block.

    nbgrader opens a new ``Gradebook`` (a new SQLAlchemy engine, whose SQL it then
    compiles afresh) a dozen times per submission, and validates cell metadata with
    ``jsonschema.validate``, which checks the schema itself every time. Here one engine
    per database URL is reused and the validator is built once; the results are the same.
    """
    import jsonschema
    from nbgrader import api
    from nbgrader.nbgraderformat import common

    engines: dict[tuple, object] = {}
    validators: dict[int, object] = {}
    create = api.create_engine

    def create_engine(url, *args, **kwargs):
        key = (str(url), *args, *sorted(kwargs.items()))
        if key not in engines:
            engines[key] = create(url, *args, **kwargs)
        return engines[key]

    def validate(instance, schema):
        if id(schema) not in validators:
            validators[id(schema)] = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validators[id(schema)].iter_errors(instance))
        if error is not None:
            raise error

    cached = types.SimpleNamespace(**{**vars(jsonschema), "validate": validate})
    api.create_engine, common.jsonschema = create_engine, cached
    try:
        yield
    finally:
        api.create_engine, common.jsonschema = create, jsonschema
        for engine in engines.values():
            engine.dispose()


def _read_submitted(path: str) -> nbformat.NotebookNode:
    """The submitted notebook, or ValueError with a readable reason."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not a text file (not a Jupyter notebook)") from None
    if not text.strip():
        raise ValueError("the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError("it is not a Jupyter notebook (no list of cells)")
    try:
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
    except Exception as exc:  # nbformat raises several kinds
        raise ValueError(f"it is not a valid Jupyter notebook ({_first_line(exc)})") from None
    return notebook


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


# ----------------------------------------------------------------------------------
# Phase 3 helpers: the executed outputs, merged into the prepared notebook
# ----------------------------------------------------------------------------------


def _error(ename: str, evalue: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"])  # fmt: skip


def _valid_output(output) -> bool:
    if not isinstance(output, dict) or output.get("output_type") not in OUTPUT_TYPES:
        return False
    try:
        nbformat.validator.validate(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[output])])
        )
    except Exception:
        return False
    return True


def _read_executed(path: Path) -> dict | None:
    """The worker's output notebook, or None if missing, too large or not a notebook."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not os.path.isfile(path) or os.fstat(handle.fileno()).st_size > MAX_EXECUTED_BYTES:
            return None
        try:
            data = json.loads(handle.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
    return data if isinstance(data, dict) and isinstance(data.get("cells"), list) else None


def death_reason(result: SandboxResult | None, limits: Limits) -> str:
    """Why a worker stopped before the end, for the feedback."""
    if result is None:
        return "the notebook could not be run"
    if result.timed_out:
        return f"time limit exceeded ({limits.notebook_seconds:g} s for the whole notebook)"
    if result.memory_exceeded:
        return f"memory limit exceeded ({limits.memory_mb} MB)"
    if result.process_limit_hit:
        return f"process limit exceeded ({limits.max_processes} processes)"
    if result.returncode is not None and result.returncode < 0:
        return f"the notebook's process was {result.reason or 'killed'}"
    status = result.returncode or 0
    return f"the notebook's process exited before the end (status {status}, e.g. os._exit)"


def merge(prepared, executed: dict | None, result: SandboxResult | None, limits: Limits):
    """The prepared notebook with the outputs of the cells the worker ran.

    Only outputs and execution counts are taken from the worker (whose files the
    submission could write to); sources and metadata stay the prepared ones. Code
    cells the worker did not run get a ``DeadKernelError`` naming why.
    """
    notebook = copy.deepcopy(prepared)
    cells = executed.get("cells") if executed else None
    info = (executed or {}).get("metadata", {}).get(META_KEY, {})
    ran = info.get("cells_run", 0) if isinstance(cells, list) else 0
    if not isinstance(cells, list) or len(cells) != len(notebook.cells) or not isinstance(ran, int):
        ran = 0
    reason = death_reason(result, limits)
    stopped = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if index < ran:
            outputs = cells[index].get("outputs") if isinstance(cells[index], dict) else None
            outputs = outputs if isinstance(outputs, list) else []
            cell.outputs = [
                nbformat.from_dict(out) if _valid_output(out) else _error(
                    "OutputError", "the cell produced an output that is not valid nbformat"
                )
                for out in outputs
            ]  # fmt: skip
            count = cells[index].get("execution_count")
            cell.execution_count = count if isinstance(count, int) else None
            timing = (cells[index].get("metadata") or {}).get("execution")
            if isinstance(timing, dict):  # nbclient's two timestamps, nothing else
                keys = ("iopub.execute_input", "shell.execute_reply")
                kept = {k: timing[k][:40] for k in keys if isinstance(timing.get(k), str)}
                cell.metadata["execution"] = kept
            continue
        if stopped is None:
            stopped = index
            cell.outputs = [_error("DeadKernelError", f"this cell did not finish: {reason}")]
        else:
            message = f"not run: the notebook stopped in cell {stopped} ({reason})"
            cell.outputs = [_error("DeadKernelError", message)]
    return notebook


def fail_all(notebook, ename: str, reason: str):
    """``notebook`` with every code cell failing with ``reason`` (nothing was run)."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [_error(ename, reason)]
    return notebook


def stopped_cells(notebook) -> list[str]:
    """Notes on cells other than tests that hit a limit or tampered (tests are in ``lost``)."""
    notes = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or utils.is_grade(cell):
            continue
        for output in cell.outputs:
            if output.output_type == "error" and output.ename in GRADER_ERRORS:
                if not output.evalue.startswith("not run"):
                    notes.append(f"cell {index}: {output.ename}: {output.evalue}"[:300])
    return notes


def lost_tests(notebook) -> dict[str, str]:
    """``{grade_id: reason}`` of the autograded test cells that did not get full points."""
    lost = {}
    for cell in notebook.cells:
        if cell.cell_type != "code" or not utils.is_grade(cell) or utils.is_solution(cell):
            continue
        score, max_score = utils.determine_grade(cell)
        if score is None or score >= max_score:
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            reason = f"{errors[-1].ename}: {errors[-1].evalue}"
        elif any(o.output_type == "stream" and o.name == "stderr" for o in cell.outputs):
            reason = "it wrote to stderr (nbgrader counts that as a failure)"
        else:
            reason = f"partial credit {score:g}/{max_score:g}"
        lost[cell.metadata.nbgrader.grade_id] = reason.strip().splitlines()[0][:300]
    return lost


# ----------------------------------------------------------------------------------
# The batch
# ----------------------------------------------------------------------------------


@dataclass
class _Job:
    """One submission on its way through the three phases."""

    student: str
    converter: _Converter
    dest: Path
    prepared: dict[str, str] = field(default_factory=dict)  # notebook -> sanitized JSON
    unreadable: dict[str, str] = field(default_factory=dict)  # notebook -> why, not run
    results: dict[str, tuple] = field(default_factory=dict)  # notebook -> (executed, result)
    notes: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)


class _NoteHandler(logging.Handler):
    """Collects nbgrader's warnings about one submission (edited cells, ...) as notes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Attribute 'checksum'" not in message:  # RestoreCells says which cells were edited
            self.notes.append(message.strip()[:300])


class Autograder:
    """Autogrades the submissions of one assignment in parallel (see the module docstring).

    Args:
        course (Course): The loaded course.
        assignment (str): The assignment id.
        jobs (int | None): Notebooks executed at once (default: the number of CPUs).
        limits (Limits | None): Sandbox limits; default ``Limits()`` with the cell limit
            from ``c.Execute.timeout`` when configured.
        force (bool): Grade again what is already autograded.
        require_sandbox (bool): Fail instead of running without bubblewrap.
    """

    def __init__(self, course: Course, assignment: str, *, jobs: int | None = None,
                 limits: Limits | None = None, force: bool = False,
                 require_sandbox: bool = False) -> None:  # fmt: skip
        if jobs is not None and jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.course, self.assignment, self.force = course, assignment, force
        self.jobs = jobs or os.cpu_count() or 1
        if limits is None:
            cell = course.config_value("Execute", "timeout", None) or Limits.cell_seconds
            limits = Limits(cell_seconds=float(cell))
        self.limits = limits
        self.require_sandbox = require_sandbox
        self.executions = 0  # sandboxed notebook runs, for the tests' exactly-once check
        self._names: list[str] | None = None  # the assignment's notebooks
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        self.env = {"NBGRADER_EXECUTION": "autograde", "OMP_NUM_THREADS": threads,
                    "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}  # fmt: skip

    # -- discovery --------------------------------------------------------------------

    def _coursedir(self, student: str) -> CourseDirectory:
        coursedir = CourseDirectory(parent=self.course.app)
        coursedir.root = self.course.coursedir.root
        coursedir.assignment_id, coursedir.student_id = self.assignment, student
        return coursedir

    def submitted_students(self) -> list[str]:
        """Student ids with a folder ``submitted/<student>/<assignment>/``."""
        coursedir = self.course.coursedir
        pattern = coursedir.format_path(coursedir.submitted_directory, "*", self.assignment)
        regex = coursedir.format_path(
            coursedir.submitted_directory, "(?P<student_id>[^/]+)", self.assignment, escape=True
        )
        students = []
        for path in sorted(glob.glob(pattern)):
            match = re.fullmatch(regex, path)
            if match and os.path.isdir(path):
                students.append(match.group("student_id"))
        return students

    def _notebook_names(self) -> list[str]:
        if self._names is not None:
            return self._names
        with self.course.gradebook() as gradebook:
            try:
                notebooks = gradebook.find_assignment(self.assignment).notebooks
                self._names = [notebook.name for notebook in notebooks]
                return self._names
            except MissingEntry:
                raise NbGraderException(
                    f"no assignment {self.assignment!r} in the gradebook: run "
                    f"`npfl-course generate {self.assignment}` first"
                ) from None

    def _reference(self, name: str):
        path = self.course.path("release", self.assignment) / f"{name}.ipynb"
        try:
            return nbformat.read(path, as_version=4)
        except Exception:  # no release: the gradebook's cells give the order
            return None

    # -- phase 1 ----------------------------------------------------------------------

    def prepare(self, student: str) -> _Job | Outcome:
        """Phase 1 for one submission: a job to execute, or the outcome if none is needed."""
        coursedir = self._coursedir(student)
        converter = _Converter(coursedir=coursedir, parent=self.course.app)
        converter.writer = FilesWriter(parent=converter, config=converter.config)
        converter.exporter = converter.exporter_class(parent=converter, config=converter.config)
        dest = Path(converter._format_dest(self.assignment, student))
        converter.force = self.force or (dest / PENDING).exists()
        excluded = coursedir.student_id_exclude.split(",") if coursedir.student_id_exclude else []
        if student in excluded:
            return Outcome(student, "skipped", notes=["excluded by student_id_exclude"])
        source = converter._format_source(self.assignment, student)
        converter.notebooks = sorted(glob.glob(os.path.join(source, "*.ipynb")))
        if not converter.init_destination(self.assignment, student):
            return Outcome(student, "skipped", notes=["already autograded (--force grades again)"])
        job = _Job(student, converter, dest)
        handler = _NoteHandler()
        self.course.app.log.addHandler(handler)
        try:
            self._prepare(job)
        finally:
            self.course.app.log.removeHandler(handler)
            job.notes = list(dict.fromkeys(handler.notes + job.notes))
        return job

    def _prepare(self, job: _Job) -> None:
        converter, student = job.converter, job.student
        converter.run_pre_convert_hook()
        job.dest.mkdir(parents=True, exist_ok=True)
        (job.dest / PENDING).touch()
        names = self._notebook_names()
        submitted = {Path(p).stem: p for p in converter.notebooks}
        try:
            converter.init_assignment(self.assignment, student)
        except NbGraderException:  # none of the submitted notebooks is known
            converter.notebooks = []
        unknown = sorted(set(submitted) - set(names))
        if unknown:
            job.notes.append(f"ignored notebooks that are not part of the assignment: {unknown}")
        for name in names:
            path = submitted.get(name)
            if path is None:
                folder = converter._format_source(self.assignment, student)
                found = ", ".join(sorted(os.listdir(folder))) or "nothing"
                self._placeholder(job, name, f"no {name}.ipynb was submitted (found: {found})")
                continue
            try:
                notebook = _read_submitted(path)
            except ValueError as exc:
                self._placeholder(job, name, f"{name}.ipynb could not be read: {exc}")
                continue
            job.prepared[name] = self._sanitize(job, notebook, path)

    def _sanitize(self, job: _Job, notebook, path: str) -> str:
        converter = job.converter
        converter._sanitizing = True
        converter._init_preprocessors()
        resources = converter.init_single_notebook_resources(path)
        resources["npfl_reference"] = self._reference(Path(path).stem)
        output, resources = converter.exporter.from_notebook_node(notebook, resources=resources)
        converter.write_single_notebook(output, resources)
        job.notes += resources.get("npfl_notes", [])  # nbconvert works on a copy of resources
        return output

    def _placeholder(self, job: _Job, name: str, reason: str) -> None:
        """The released notebook stands in for an unreadable or missing one; all fail."""
        reference = self._reference(name) or nbformat.v4.new_notebook()
        source = job.converter._format_source(self.assignment, job.student)
        job.prepared[name] = self._sanitize(job, reference, os.path.join(source, f"{name}.ipynb"))
        job.unreadable[name] = reason
        job.notes.append(reason)

    # -- phase 2 ----------------------------------------------------------------------

    def execute(self, job: _Job) -> _Job:
        """Phase 2 (any thread): runs each readable notebook of the job in the sandbox."""
        for name in job.prepared:
            if name in job.unreadable:
                continue
            if not job.converter.config.get("Execute", {}).get("enabled", True):
                job.results[name] = (json.loads(job.prepared[name]), None)
                job.results[name][0]["metadata"][META_KEY] = {"cells_run": 10**9, "done": True}
                continue
            workdir = tempfile.mkdtemp(prefix="npfl-autograde-")
            try:
                shutil.copytree(job.dest, workdir, symlinks=True, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(PENDING))  # fmt: skip
                out = f".{name}.executed.ipynb"
                argv = [sys.executable, "-I", "-m", "npfl_course.execute", f"{name}.ipynb", out,
                        "--cell-timeout", f"{self.limits.cell_seconds:g}",
                        "--memory-mb", str(self.limits.memory_mb)]  # fmt: skip
                self.executions += 1
                result = run_sandboxed(argv, workdir=workdir, limits=self.limits, env=self.env,
                                       require_sandbox=self.require_sandbox)  # fmt: skip
                job.results[name] = (_read_executed(Path(workdir) / out), result)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        return job

    # -- phase 3 ----------------------------------------------------------------------

    def finish(self, job: _Job) -> Outcome:
        """Phase 3 (main thread): saves the grades through nbgrader's preprocessors."""
        converter = job.converter
        outcome = Outcome(job.student, "graded", notes=job.notes)
        for name, prepared in job.prepared.items():
            notebook = nbformat.reads(prepared, as_version=4)
            if name in job.unreadable:
                notebook = fail_all(notebook, "SubmissionError", job.unreadable[name])
            else:
                executed, result = job.results.get(name, (None, None))
                notebook = merge(notebook, executed, result, self.limits)
                done = (executed or {}).get("metadata", {}).get(META_KEY, {}).get("done")
                if not done:
                    outcome.notes.append(f"{name}: {death_reason(result, self.limits)}")
            path = job.dest / f"{name}.ipynb"
            nbformat.write(notebook, path)
            converter._sanitizing = False
            converter._init_preprocessors()
            BaseConverter.convert_single_notebook(converter, str(path))
            graded = nbformat.read(path, as_version=4)
            outcome.lost.update(lost_tests(graded))
            outcome.notes += stopped_cells(graded)
        (job.dest / PENDING).unlink(missing_ok=True)
        converter.set_permissions(self.assignment, job.student)
        converter.run_post_convert_hook()
        with self.course.gradebook() as gradebook:
            submission = gradebook.find_submission(self.assignment, job.student)
            outcome.score, outcome.max_score = submission.score, submission.max_score
        outcome.notes = list(dict.fromkeys(outcome.notes))
        outcome.seconds = time.monotonic() - job.start
        return outcome

    def _failed(self, student: str, dest: Path | None, exc: BaseException) -> Outcome:
        if dest is not None and dest.exists():
            utils.rmtree(str(dest))  # as nbgrader does: the next run tries again
        message = f"could not be graded: {type(exc).__name__}: {_first_line(exc)}"
        return Outcome(student, "failed", notes=[message])

    # -- the batch --------------------------------------------------------------------

    def run(self, students: list[str] | None = None, progress: bool = True) -> Report:
        """Autogrades ``students`` (default: every submission) and returns the report."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        available = self.submitted_students()
        wanted = available if students is None else list(dict.fromkeys(students))
        self._notebook_names()  # fails early if the assignment was never generated
        outcomes: dict[str, Outcome] = {}
        for student in wanted:
            if student not in available:
                outcomes[student] = Outcome(student, "failed", notes=["no submission found"])
        queue = [s for s in wanted if s not in outcomes]
        bar = tqdm(total=len(wanted), desc=f"autograde {self.assignment}", unit="submission",
                   disable=not progress, file=sys.stderr)  # fmt: skip
        bar.update(len(outcomes))
        pending: dict = {}
        nbgrader_handlers = self.course.app.log.handlers[:]
        # nbgrader's chatter would break the progress bar; its warnings become notes.
        self.course.app.log.handlers = [logging.NullHandler()]
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="npfl-grade")
        context = contextlib.ExitStack()
        context.enter_context(warnings.catch_warnings())  # nbformat: duplicated cell ids
        warnings.simplefilter("ignore", nbformat.warnings.DuplicateCellId)
        warnings.simplefilter("ignore", nbformat.warnings.MissingIDFieldWarning)
        warnings.filterwarnings("ignore", module="sqlalchemy")  # nbgrader's autoflush noise
        warnings.filterwarnings("ignore", message=".*not in session", module="nbgrader")
        context.enter_context(_faster_nbgrader())
        try:
            while queue or pending:
                while queue and len(pending) < 2 * self.jobs:  # prepare a little ahead
                    student = queue.pop(0)
                    try:
                        job = self.prepare(student)
                    except Exception as exc:
                        job = self._failed(student, self._dest(student), exc)
                    if isinstance(job, Outcome):
                        outcomes[student] = job
                        bar.update()
                    else:
                        pending[pool.submit(self.execute, job)] = job
                if not pending:
                    continue
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    try:
                        future.result()
                        outcomes[job.student] = self.finish(job)
                    except Exception as exc:
                        outcomes[job.student] = self._failed(job.student, job.dest, exc)
                    bar.update()
                    bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes.values()))
        except BaseException:
            for job in pending.values():  # unfinished: remove, so that a rerun grades them
                shutil.rmtree(job.dest, ignore_errors=True)
            raise
        finally:
            context.close()
            pool.shutdown(wait=False, cancel_futures=True)
            self.course.app.log.handlers = nbgrader_handlers
            bar.close()
        ordered = [outcomes[s] for s in wanted]
        return Report(self.assignment, ordered, time.monotonic() - start, self.jobs,
                      sandboxed=sandbox_available())  # fmt: skip

    def _dest(self, student: str) -> Path:
        coursedir = self.course.coursedir
        return Path(coursedir.format_path(coursedir.autograded_directory, student, self.assignment))


def autograde(course: Course, assignment: str, *, students: list[str] | None = None,
              jobs: int | None = None, limits: Limits | None = None, force: bool = False,
              progress: bool = True, require_sandbox: bool = False) -> Report:  # fmt: skip
    """Autogrades the submissions of ``assignment``; see :class:`Autograder`.

    Returns:
        Report: One outcome per submission (graded, failed or skipped, with reasons).
    """
    grader = Autograder(course, assignment, jobs=jobs, limits=limits, force=force,
                        require_sandbox=require_sandbox)  # fmt: skip
    return grader.run(students, progress=progress)
