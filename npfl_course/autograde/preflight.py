"""Preflight: the instructor's own solution and the untouched release, graded first.

Before ``npfl-course autograde`` touches a student's submission it grades, in a throwaway
copy of the course and through exactly the same sandbox, limits and worker, two
notebooks whose scores are known: the source notebook's solutions (full marks) and the
release as students got it (0). If either comes out differently, the machine cannot
grade this assignment right (torch does not import under the memory limit, a package is
missing, the sandbox cannot start, a test depends on something the grading machine
lacks), and grading every student would only record that failure as their zeros:
:func:`preflight` raises :class:`PreflightError` naming the failing cells instead.

A passed preflight is remembered in ``<course root>/.npfl-preflight.json`` under a key
made of the assignment's source files, the course's config, the limits, how student code
is isolated, this Python and its installed packages, and the code of npfl_lib and
npfl_course; while none of them changes, it is not run again. On a Dask cluster
(``--scheduler``) the two notebooks are graded on its workers, and the machine's side of
the key is that of every worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from npfl_course.autograde.outcome import Outcome
from npfl_course.course import CONFIG_NAME, Course, generate_assignment, scratch_copy
from npfl_course.sandbox import Limits, isolation

CACHE_NAME = ".npfl-preflight.json"
SOLUTION, RELEASE = "preflight-solution", "preflight-release"


class PreflightError(RuntimeError):
    """The solution lost autograded points or the release earned some: grading stopped."""


@dataclass
class Preflight:
    """A passed preflight: how long it took and whether it was remembered from before."""

    assignment: str
    seconds: float
    cached: bool


def _files_digest(digest, root: Path, pattern: str = "*") -> None:
    for path in sorted(root.rglob(pattern)):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())


def assignment_digest(course: Course, assignment: str) -> str:
    """The assignment's side of the verdict, hashed: its source files and the config."""
    digest = hashlib.sha256(assignment.encode() + b"\0")
    _files_digest(digest, course.path("source", assignment))
    digest.update((course.directory / CONFIG_NAME).read_bytes())
    return digest.hexdigest()


def environment_digest() -> str:
    """The grading machine's side of the verdict, hashed: how student code is isolated,
    this Python and its installed packages, the code of npfl_lib and npfl_course."""
    digest = hashlib.sha256()
    digest.update(isolation()[0].encode())
    digest.update(f"{sys.executable}\0{sys.version}".encode())
    distributions = importlib.metadata.distributions()
    packages = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions)
    digest.update("\n".join(packages).encode())
    for package in ("npfl_lib", "npfl_course"):  # found, not imported: torch takes seconds
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            _files_digest(digest, Path(folder), "*.py")
    return digest.hexdigest()


def cache_key(course: Course, assignment: str, limits: Limits,
              environment: str | None = None) -> str:  # fmt: skip
    """What the preflight's verdict depends on, hashed; ``environment``: the grading
    machines' :func:`environment_digest` (default: this machine's)."""
    digest = hashlib.sha256()
    digest.update(assignment_digest(course, assignment).encode())
    digest.update(json.dumps(asdict(limits), sort_keys=True).encode())
    digest.update((environment or environment_digest()).encode())
    return digest.hexdigest()


def _read_cache(path: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _submit(course: Course, assignment: str, student: str, notebooks: dict) -> None:
    folder = course.path("submitted", assignment, student)
    shutil.copytree(course.path("release", assignment), folder)
    for name, notebook in notebooks.items():
        nbformat.write(notebook, folder / f"{name}.ipynb")


def _describe(outcome: Outcome) -> list[str]:
    lines = [f"    {grade_id}: {reason}" for grade_id, reason in outcome.lost.items()]
    return lines + [f"    note: {note}" for note in outcome.notes]


def preflight(course: Course, assignment: str, *, limits: Limits, jobs: int = 2,
              unsandboxed: bool = False, use_cache: bool = True, scheduler=None,
              environment: str | None = None) -> Preflight:  # fmt: skip
    """Grades the solution and the release of ``assignment`` as students will be graded.

    Args:
        course: The course (its config and source are copied; nothing of it is written
            but the cache file).
        assignment: The assignment id.
        limits: The sandbox limits the students will be graded with.
        jobs: Notebooks run at once (at most 2 are needed).
        unsandboxed: Grade without bubblewrap, as the batch will (``--no-sandbox``).
        use_cache: Skip it when a passed preflight with the same key is remembered.
        scheduler: A Dask scheduler's address or a ``distributed.Client``: grade the two
            notebooks on its workers (:class:`npfl_course.autograde.DaskAutograder`), as
            the batch will be.
        environment: The grading machines' side of the cache key (with ``scheduler``: the
            workers' :func:`environment_digest`, combined); default: this machine's.

    Returns:
        Preflight: It passed (else it raises).

    Raises:
        PreflightError: The solution did not get full marks, or the release got points,
            or the assignment could not be generated; the message says which cells and why.
    """
    from npfl_course.autograde import Autograder
    from npfl_course.check.notebook import make_submission

    start = time.monotonic()
    cache_path = course.root / CACHE_NAME
    key = cache_key(course, assignment, limits, environment)
    cache = _read_cache(cache_path)
    if use_cache and cache.get(assignment) == key:
        return Preflight(assignment, time.monotonic() - start, cached=True)
    with tempfile.TemporaryDirectory(prefix="npfl-preflight-") as tmp:
        scratch = scratch_copy(course, Path(tmp) / "course", [assignment])
        ok, log = generate_assignment(scratch, assignment, force=True)
        if not ok:
            raise PreflightError(
                f"preflight of {assignment}: nbgrader could not generate it:\n{log[-2000:]}"
            )
        release_dir = scratch.path("release", assignment)
        source_dir = scratch.path("source", assignment)
        releases = {p.stem: nbformat.read(p, 4) for p in sorted(release_dir.glob("*.ipynb"))}
        solutions = {
            name: make_submission(release, nbformat.read(source_dir / f"{name}.ipynb", 4))
            for name, release in releases.items()
        }
        _submit(scratch, assignment, SOLUTION, solutions)
        _submit(scratch, assignment, RELEASE, releases)
        if scheduler is None:
            grader = Autograder(scratch, assignment, jobs=min(jobs, 2), limits=limits,
                                unsandboxed=unsandboxed, preflight=False)  # fmt: skip
        else:
            from npfl_course.autograde.distributed import DaskAutograder

            grader = DaskAutograder(scratch, assignment, scheduler=scheduler, jobs=min(jobs, 2),
                                    limits=limits, unsandboxed=unsandboxed,
                                    preflight=False)  # fmt: skip
        report = grader.run(progress=False)
    outcomes = {outcome.student: outcome for outcome in report.outcomes}
    solution, release = outcomes[SOLUTION], outcomes[RELEASE]
    problems = []
    # Full marks on every autograded test (manually graded answers score 0 until graded).
    if solution.status != "graded" or solution.lost:
        problems += [f"  the instructor's solution got {solution.score_text} and lost points "
                     "on autograded tests:", *_describe(solution)]  # fmt: skip
    if release.status != "graded" or release.score != 0:
        problems += [f"  the untouched release got {release.score_text} instead of 0:",
                     *_describe(release)]  # fmt: skip
    if problems:
        raise PreflightError("\n".join([
            f"preflight of {assignment} failed: this machine does not grade it right, so no "
            f"student was graded ({report.summary(details=False).splitlines()[0]})",
            *problems,
            "  Fix the cause (see `npfl-course doctor`), or raise --memory/--timeout if a "
            "limit was hit, then run autograde again.",
        ]))  # fmt: skip
    cache[assignment] = key
    with contextlib.suppress(OSError):
        temporary = cache_path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        temporary.replace(cache_path)
    return Preflight(assignment, time.monotonic() - start, cached=False)
