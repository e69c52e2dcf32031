"""Parallel, sandboxed autograding built on nbgrader's own converter and gradebook.

``nbgrader autograde`` handles one submission after another in one process, and runs
each notebook in a kernel with the instructor's rights. Here every submission passes
through nbgrader's ``Autograde`` converter in three phases:

1. *prepare* (main thread): nbgrader's ``init_destination`` / ``init_assignment`` (student
   and submission in the gradebook, timestamps, files copied from the source) and its
   sanitizing preprocessors (``c.Autograde.sanitize_preprocessors``: ``ClearOutput``,
   ``DeduplicateIds``, ``OverwriteKernelspec``, ``OverwriteCells``, ``CheckCellMetadata``),
   writing ``autograded/<student>/<assignment>/``.
   Before ``OverwriteCells``, :class:`RestoreCells` undoes what students do to cells
   (nbgrader's issues #1682, #1083, #1941): nbgrader metadata edited, locked or test
   cells deleted, cells reordered; and a notebook that cannot be read (invalid JSON, an
   empty file, not a notebook) or is missing becomes the released notebook whose code
   cells all fail with the reason, so it scores 0 instead of breaking the batch.
2. *execute* (``--jobs`` worker threads): the prepared notebook, copied into a scratch
   folder with only that submission's files, runs in a Jupyter kernel driven by
   ``python -m npfl_course.worker`` (:mod:`npfl_course.worker`: nbclient with nbgrader's
   settings, so cells behave as in JupyterLab and in stock nbgrader) under
   ``npfl_course.sandbox.run_sandboxed`` (time, memory and process limits, no
   network, no view of the course). A worker that dies (memory, ``os._exit``, a signal,
   the notebook time limit) keeps the outputs of the cells it finished; the others get
   a ``DeadKernelError`` saying why. The phase is a pure function of plain data
   (``execute_notebook``: an ``Execution`` in, an ``Executed`` out), so that with
   ``--scheduler`` it runs on the workers of a Dask cluster instead (``DaskAutograder``;
   docs/scaling.md).
3. *save* (main thread, the only writer to the gradebook): the rest of nbgrader's
   autograde preprocessors (``c.Autograde.autograde_preprocessors`` without ``Execute``:
   ``IgnorePattern``, ``ClearMetadataPreprocessor``,
   ``LimitOutput``, ``SaveAutoGrades``, ``AssignLatePenalties``, ``CheckCellMetadata``),
   then nbgrader's permissions and post-convert hook.

The gradebook is whatever ``CourseDirectory.db_url`` names (SQLite or Postgres). As with
nbgrader, a submission already in ``autograded/`` is skipped unless ``force`` is set or
it was resubmitted (a newer ``timestamp.txt``), so running again is idempotent.
Only nbgrader's public API is used (the converter's public methods and configurable
preprocessor lists, the gradebook, ``CourseDirectory``): no private name is called,
overridden or patched (``tests/test_autograde.py`` checks it), so nbgrader is not pinned
below its next minor release.

The parts: :mod:`npfl_course.autograde.restore` (phase 1's ``RestoreCells`` and reading
submissions), :mod:`npfl_course.autograde.converter` (nbgrader's converter, phase by
phase), :mod:`npfl_course.autograde.merge` (phase 3's merging of the executed outputs),
:mod:`npfl_course.autograde.outcome` (``Outcome``, ``Report``),
:mod:`npfl_course.autograde.preflight` (the solution and the release, graded first),
:mod:`npfl_course.autograde.execution` (phase 2's input and output as plain data),
:mod:`npfl_course.autograde.distributed` (phase 2 on the workers of a Dask cluster:
``DaskAutograder``, ``--scheduler``),
:mod:`npfl_course.autograde.settings` (``c.NpflAutograde.*`` in ``nbgrader_config.py``)
and :mod:`npfl_course.autograde.runner`, which schedules the submissions through the
phases (``Autograder``). This package's namespace is their public surface.
"""

from npfl_course.autograde.distributed import (
    ClusterUnavailableError,
    DaskAutograder,
    WorkerCheck,
    check_worker,
    execute_on_worker,
)
from npfl_course.autograde.execution import Executed, Execution
from npfl_course.autograde.outcome import Outcome, Report
from npfl_course.autograde.preflight import Preflight, PreflightError, preflight
from npfl_course.autograde.runner import (
    PENDING,
    Autograder,
    InfrastructureError,
    SandboxUnavailableError,
    autograde,
    execute_notebook,
)
from npfl_course.autograde.settings import NpflAutograde

__all__ = [
    "PENDING", "Autograder", "ClusterUnavailableError", "DaskAutograder", "Executed",
    "Execution", "InfrastructureError", "NpflAutograde", "Outcome", "Preflight",
    "PreflightError", "Report", "SandboxUnavailableError", "WorkerCheck", "autograde",
    "check_worker", "execute_notebook", "execute_on_worker", "preflight",
]  # fmt: skip
