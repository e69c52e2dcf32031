"""Schedules the submissions through the three phases: :class:`Autograder`.

See the package :mod:`npfl_course.autograde` for the phases.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import nbformat.warnings
from nbconvert.writers import FilesWriter
from nbgrader.api import MissingEntry
from nbgrader.converters import Autograde, NbGraderException
from nbgrader.coursedir import CourseDirectory

from npfl_course.autograde.converter import NoteHandler, Phases
from npfl_course.autograde.execution import (
    Executed,
    Execution,
    SubmissionTooLargeError,
    submission_files,
    worker_input,
    write_files,
)
from npfl_course.autograde.merge import (
    death_reason,
    fail_all,
    infrastructure_failure,
    merge,
    read_executed,
)
from npfl_course.autograde.outcome import Outcome, Report, lost_tests, stopped_cells
from npfl_course.autograde.restore import first_line, read_submitted
from npfl_course.autograde.settings import NpflAutograde
from npfl_course.autograde.submission import link_problem, shown
from npfl_course.course import Course, student_id_problem
from npfl_course.feedback import sanitize_student_content
from npfl_course.sandbox import (
    INSTALL_HINT,
    Limits,
    SandboxResult,
    isolation,
    remove_tree,
    run_sandboxed,
)
from npfl_course.worker import (
    META_KEY,
    HidingError,
    ResultChannel,
    build_matplotlib_cache,
    check_hideable,
    copy_matplotlib_cache,
    worker_command,
)

PENDING = ".npfl-autograde-pending"  # in autograded/<student>/<assignment>/ until saved


class SandboxUnavailableError(RuntimeError):
    """Bubblewrap cannot isolate student code here, and unsandboxed grading was not asked for."""


class InfrastructureError(RuntimeError):
    """A submission could not be graded for a reason that is not its code."""


@dataclass
class _Job:
    """One submission on its way through the three phases."""

    student: str
    converter: Autograde
    phases: Phases
    prepared: dict[str, str] = field(default_factory=dict)  # notebook -> sanitized JSON
    unreadable: dict[str, str] = field(default_factory=dict)  # notebook -> why, not run
    results: dict[str, tuple] = field(default_factory=dict)  # notebook -> (executed, result)
    notes: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)

    @property
    def dest(self) -> Path:
        """``autograded/<student>/<assignment>/``."""
        return self.phases.dest


class Autograder:
    """Autogrades the submissions of one assignment in parallel (see the module docstring).

    Args:
        course (Course): The loaded course.
        assignment (str): The assignment id.
        jobs (int | None): Notebooks executed at once (default: ``c.NpflAutograde.jobs``,
            else the number of CPUs).
        limits (Limits | None): Sandbox limits; default: those configured
            (:class:`npfl_course.autograde.settings.NpflAutograde`, the cell limit from
            ``c.Execute.timeout``), else ``Limits()``.
        force (bool): Grade again what is already autograded.
        unsandboxed (bool): Grade even where bubblewrap cannot isolate student code
            (``--no-sandbox``; unsafe: see :func:`npfl_course.sandbox.isolation`). Without
            it, :meth:`run` raises :class:`SandboxUnavailableError` there.
        preflight (bool | None): Grade the instructor's solution and the release first and
            stop if they do not score full marks and 0 (:mod:`npfl_course.autograde.preflight`);
            default ``c.NpflAutograde.preflight`` (True).
    """

    def __init__(self, course: Course, assignment: str, *, jobs: int | None = None,
                 limits: Limits | None = None, force: bool = False,
                 unsandboxed: bool = False, preflight: bool | None = None) -> None:  # fmt: skip
        if jobs is not None and jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.course, self.assignment, self.force = course, assignment, force
        settings = NpflAutograde(parent=course.app)
        self.jobs = jobs or settings.job_count()
        self.limits = limits or settings.limits()
        self.unsandboxed = unsandboxed
        self.preflight = settings.preflight if preflight is None else preflight
        self.hidden = settings.hidden(assignment)
        self.executions = 0  # sandboxed notebook runs, for the tests' exactly-once check
        self._names: list[str] | None = None  # the assignment's notebooks
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        # NPFL_PROGRESS=0: npfl_lib's Trainer shows no progress bar (stderr costs points).
        self.env = {"NBGRADER_EXECUTION": "autograde", "NPFL_PROGRESS": "0",
                    "OMP_NUM_THREADS": threads,
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
        # The course's own path may hold glob characters: only the id is a wildcard.
        marker = "\0"
        pattern = coursedir.format_path(coursedir.submitted_directory, marker, self.assignment)
        pattern = glob.escape(pattern).replace(marker, "*")
        regex = coursedir.format_path(
            coursedir.submitted_directory, "(?P<student_id>[^/]+)", self.assignment, escape=True
        )
        students = []
        for path in sorted(glob.glob(pattern)):
            match = re.fullmatch(regex, path)
            if match and (os.path.isdir(path) or os.path.islink(path)):
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
        converter = Autograde(coursedir=coursedir, parent=self.course.app)
        # as Autograde.start() sets them up (init_destination asks the exporter)
        converter.writer = FilesWriter(parent=converter, config=converter.config)
        converter.exporter = converter.exporter_class(parent=converter, config=converter.config)
        phases = Phases(converter)
        source, dest = phases.source, phases.dest
        converter.force = self.force or (dest / PENDING).exists()
        excluded = coursedir.student_id_exclude.split(",") if coursedir.student_id_exclude else []
        if student in excluded:
            return Outcome(student, "skipped", notes=["excluded by student_id_exclude"])
        problem = student_id_problem(student)
        if problem is not None:
            why = f"not graded: '{shown(student)}' is not a valid student id: {problem}"
            return Outcome(student, "failed", notes=[why])
        problem = link_problem(str(source), str(self.course.root))
        if problem is not None:
            return Outcome(student, "failed", notes=[f"not graded: {problem}"])
        converter.notebooks = sorted(glob.glob(os.path.join(glob.escape(source), "*.ipynb")))
        if not converter.init_destination(self.assignment, student):
            return Outcome(student, "skipped", notes=["already autograded (--force grades again)"])
        job = _Job(student, converter, phases)
        handler = NoteHandler()
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
                found = ", ".join(sorted(os.listdir(job.phases.source))) or "nothing"
                self._placeholder(job, name, f"no {name}.ipynb was submitted (found: {found})")
                continue
            try:
                notebook = read_submitted(path)
            except ValueError as exc:
                self._placeholder(job, name, f"{name}.ipynb could not be read: {exc}")
                continue
            job.prepared[name] = self._sanitize(job, notebook, name)

    def _sanitize(self, job: _Job, notebook, name: str) -> str:
        reference = self._reference(name)
        output, resources = job.phases.sanitize(notebook, name, npfl_reference=reference)
        job.notes += resources.get("npfl_notes", [])  # nbconvert works on a copy of resources
        return output

    def _placeholder(self, job: _Job, name: str, reason: str) -> None:
        """The released notebook stands in for an unreadable or missing one; all fail."""
        reference = self._reference(name) or nbformat.v4.new_notebook()
        job.prepared[name] = self._sanitize(job, reference, name)
        job.unreadable[name] = reason
        job.notes.append(reason)

    # -- phase 2 ----------------------------------------------------------------------

    def execute(self, job: _Job) -> _Job:
        """Phase 2 (any thread): runs each readable notebook of the job in the sandbox.

        Each notebook becomes an :class:`Execution` (plain data, the submission's files
        read by :func:`submission_files`) that :meth:`run_execution` runs: here
        :func:`execute_notebook`, in this process; on a Dask worker in ``DaskAutograder``.
        """
        files = None
        for name in job.prepared:
            if name in job.unreadable:
                continue
            if not job.converter.config.get("Execute", {}).get("enabled", True):
                job.results[name] = (json.loads(job.prepared[name]), None)
                job.results[name][0]["metadata"][META_KEY] = {"cells_run": 10**9, "done": True}
                continue
            try:
                if files is None:
                    files = submission_files(job.dest, self.limits.disk_mb << 20, (PENDING,))
            except SubmissionTooLargeError as exc:  # as the disk watchdog would find at once
                result = SandboxResult(None, "", "", disk_exceeded=True, reason=str(exc))
                job.results[name] = (None, result)
                continue
            others = tuple(entry for entry in files[0] if entry[0] != f"{name}.ipynb")
            task = Execution(name, worker_input(job.prepared[name]), others, files[1],
                             self.limits, self.env, not self.unsandboxed,
                             self.assignment_digest, self.hidden)  # fmt: skip
            self.executions += 1
            done = self.run_execution(task, job)
            job.results[name] = (done.executed, done.result)
            job.notes += done.notes
        return job

    def run_execution(self, task: Execution, job: _Job) -> Executed:
        """Runs one notebook (any thread): here, in this process; see ``DaskAutograder``."""
        return execute_notebook(task)

    @functools.cached_property
    def assignment_digest(self) -> str:
        """What a worker's once-per-assignment checks are keyed by (source and config)."""
        from npfl_course.autograde.preflight import assignment_digest

        return assignment_digest(self.course, self.assignment)

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
                why = infrastructure_failure(notebook, executed, result, self.limits)
                if why is not None:
                    raise InfrastructureError(f"{name}: {why}")
                notebook = merge(notebook, executed, result, self.limits)
                if result is not None:
                    outcome.peak_memory_mb = max(outcome.peak_memory_mb, result.peak_memory_mb)
                done = (executed or {}).get("metadata", {}).get(META_KEY, {}).get("done")
                if not done:
                    outcome.notes.append(f"{name}: {death_reason(result, self.limits)}")
            path = job.dest / f"{name}.ipynb"
            nbformat.write(notebook, path)
            job.phases.grade(name)
            graded = nbformat.read(path, as_version=4)
            # The formgrader renders this file with the instructor's session: no student
            # HTML, script or link may be active in it (the gradebook is already saved).
            nbformat.write(sanitize_student_content(graded), path)
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
        """Not graded, and recorded nowhere as a score: the next run grades it again."""
        left = ""
        if dest is not None and dest.exists():
            try:
                remove_tree(dest)  # as nbgrader does: the next run tries again
            except OSError as exc:
                left = f"; remove {dest} before grading again ({exc})"
        with self.course.gradebook() as gradebook, contextlib.suppress(MissingEntry):
            gradebook.remove_submission(self.assignment, student)  # no score, not a 0
        if isinstance(exc, InfrastructureError):
            message = f"not graded, not the student's fault: {exc}"
        else:
            message = f"could not be graded: {type(exc).__name__}: {first_line(exc)}"
        return Outcome(student, "failed", notes=[message + left])

    def check_isolation(self) -> tuple[str, str]:
        """How student code will run here; raises when unsafe and not asked for, and when
        the modules the assignment hides cannot be hidden."""
        kind, description = isolation()
        if kind != "bwrap" and not self.unsandboxed:
            raise SandboxUnavailableError(
                f"refusing to grade: {description}. Please {INSTALL_HINT}, and check the "
                "result with `npfl-course doctor`. To grade without isolation anyway "
                "(only for code you trust), pass --no-sandbox."
            )
        try:
            check_hideable(self.hidden)
        except HidingError as exc:
            raise SandboxUnavailableError(
                f"refusing to grade {self.assignment} (c.NpflAutograde.hidden_modules): {exc}"
            ) from exc
        return kind, description + self.hidden_description()

    def hidden_description(self) -> str:
        """What the isolation line adds about the modules hidden from the kernel."""
        if not self.hidden:
            return ""
        return f"; hidden from the kernel: {', '.join(self.hidden)} (Landlock)"

    # -- the batch --------------------------------------------------------------------

    def run(self, students: list[str] | None = None, progress: bool = True) -> Report:
        """Autogrades ``students`` (default: every submission) and returns the report."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        self._notebook_names()  # fails early if the assignment was never generated
        threading.Thread(target=_matplotlib_cache, daemon=True).start()  # while we prepare
        _, description = self.check_isolation()
        available = self.submitted_students()
        wanted = available if students is None else list(dict.fromkeys(students))
        outcomes: dict[str, Outcome] = {}
        for student in wanted:
            if student not in available:
                outcomes[student] = Outcome(student, "failed", notes=["no submission found"])
        queue = [s for s in wanted if s not in outcomes]
        checked = None
        if self.preflight and queue:
            checked = self.run_preflight()
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
                with contextlib.suppress(OSError):
                    remove_tree(job.dest)
            raise
        finally:
            context.close()
            pool.shutdown(wait=False, cancel_futures=True)
            self.course.app.log.handlers = nbgrader_handlers
            bar.close()
        ordered = [outcomes[s] for s in wanted]
        return Report(self.assignment, ordered, time.monotonic() - start, self.jobs,
                      isolation=description, preflight=checked)  # fmt: skip

    def run_preflight(self):
        """Grades the solution and the release first (:func:`...preflight.preflight`)."""
        from npfl_course.autograde.preflight import preflight

        return preflight(self.course, self.assignment, limits=self.limits, jobs=self.jobs,
                         unsandboxed=self.unsandboxed)  # fmt: skip

    def _dest(self, student: str) -> Path:
        coursedir = self.course.coursedir
        return Path(coursedir.format_path(coursedir.autograded_directory, student, self.assignment))


def execute_notebook(task: Execution) -> Executed:
    """Phase 2 for one notebook, a pure function of plain data: here or on a Dask worker.

    Writes ``task``'s files and notebook into a fresh scratch folder, runs
    ``python -m npfl_course.worker`` there under :func:`run_sandboxed` and reads the
    executed notebook from its result channel; the scratch folder is removed.
    """
    notes = []
    workdir = tempfile.mkdtemp(prefix="npfl-autograde-")
    try:
        write_files(task, workdir)
        Path(workdir, f"{task.name}.ipynb").write_text(task.notebook, encoding="utf-8")
        copy_matplotlib_cache(_matplotlib_cache(), workdir)
        limits = task.limits
        with ResultChannel() as channel:
            argv = worker_command(f"{task.name}.ipynb", channel, limits.cell_seconds,
                                  limits.memory_mb, limits.disk_mb, task.hidden)  # fmt: skip
            result = run_sandboxed(argv, workdir=workdir, limits=limits, env=task.env,
                                   require_sandbox=task.require_sandbox,
                                   pass_fds=channel.fds)  # fmt: skip
            executed = read_executed(channel)
    finally:  # any depth, files of any mode (remove_tree); what stays is noted
        try:
            remove_tree(workdir)
        except OSError as exc:
            notes.append(f"the temporary work folder was not removed: {exc}")
    return Executed(executed, result, notes)


_MATPLOTLIB_LOCK = threading.Lock()


def _matplotlib_cache() -> Path | None:
    """matplotlib's font cache for the workers, built once per process."""
    with _MATPLOTLIB_LOCK:
        return _build_matplotlib_cache()


@functools.cache
def _build_matplotlib_cache() -> Path | None:
    folder = tempfile.mkdtemp(prefix="npfl-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build_matplotlib_cache(folder)


def autograde(course: Course, assignment: str, *, students: list[str] | None = None,
              jobs: int | None = None, limits: Limits | None = None, force: bool = False,
              progress: bool = True, unsandboxed: bool = False,
              preflight: bool | None = None, scheduler=None) -> Report:  # fmt: skip
    """Autogrades the submissions of ``assignment``; see :class:`Autograder`.

    ``scheduler`` (default ``c.NpflAutograde.scheduler``; ``""``: here): a Dask scheduler's
    address, scheduler file or client, whose workers execute the notebooks
    (:class:`npfl_course.autograde.distributed.DaskAutograder`).

    Returns:
        Report: One outcome per submission (graded, failed or skipped, with reasons).

    Raises:
        SandboxUnavailableError: No bubblewrap sandbox and not ``unsandboxed``.
        npfl_course.autograde.preflight.PreflightError: The solution or the release was
            graded wrong; no student was graded.
        npfl_course.autograde.distributed.ClusterUnavailableError: ``scheduler`` cannot be
            reached or has no worker.
    """
    options = dict(jobs=jobs, limits=limits, force=force, unsandboxed=unsandboxed,
                   preflight=preflight)  # fmt: skip
    if scheduler is None:
        scheduler = NpflAutograde(parent=course.app).scheduler
    if scheduler:
        from npfl_course.autograde.distributed import DaskAutograder

        grader = DaskAutograder(course, assignment, scheduler=scheduler, **options)
    else:
        grader = Autograder(course, assignment, **options)
    return grader.run(students, progress=progress)
