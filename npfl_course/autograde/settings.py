"""``npfl-course autograde``'s settings, configurable in ``nbgrader_config.py``.

As nbgrader's own options::

    c.NpflAutograde.jobs = 8              # notebooks run at once (0: the number of CPUs)
    c.NpflAutograde.memory_mb = 4096      # per notebook, all its processes together
    c.NpflAutograde.disk_mb = 2048        # per notebook, the files in its work folder
    c.NpflAutograde.notebook_timeout = 900
    c.NpflAutograde.max_processes = 64
    c.NpflAutograde.preflight = True
    c.NpflAutograde.scheduler = "tcp://grader1:8786"  # a Dask scheduler: docs/scaling.md
    c.NpflAutograde.hidden_modules = {"regularization": ["npfl_lib"]}  # see below

The per-cell limit is nbgrader's ``c.Execute.timeout`` (also used by nbgrader's own
autograde and Validate). The command line's flags (``--jobs``, ``--memory``, ``--disk``,
``--timeout``, ``--cell-timeout``, ``--no-preflight``, ``--scheduler``) override these.
"""

from __future__ import annotations

import os

from traitlets import Bool, Dict, Float, Integer, List, Unicode
from traitlets.config import Configurable

from npfl_course.sandbox import Limits

DEFAULT_CELL_SECONDS = Limits.cell_seconds  # when c.Execute.timeout is not set


class NpflAutograde(Configurable):
    """Resource limits and parallelism of ``npfl-course autograde``."""

    jobs = Integer(0, min=0, help="Notebooks executed at once; 0: the number of CPUs.").tag(
        config=True
    )
    notebook_timeout = Float(
        Limits.notebook_seconds,
        min=1.0,
        help="Wall-clock seconds for one notebook, a last resort behind the per-cell limit "
        "(c.Execute.timeout).",
    ).tag(config=True)
    memory_mb = Integer(
        Limits.memory_mb,
        min=64,
        help="Memory of one notebook in MiB: what each of its processes may allocate and "
        "what all of them may use together.",
    ).tag(config=True)
    disk_mb = Integer(
        Limits.disk_mb,
        min=16,
        help="Disk of one notebook in MiB: the largest file it may write and what all the "
        "files in its work folder may take together.",
    ).tag(config=True)
    max_processes = Integer(
        Limits.max_processes, min=8, help="Processes and threads one notebook may have at once."
    ).tag(config=True)
    preflight = Bool(
        True,
        help="Before the students, grade the instructor's solution (full marks expected) "
        "and the release (0 expected), and stop if they come out otherwise.",
    ).tag(config=True)

    scheduler = Unicode(
        "",
        help="A Dask scheduler's address (tcp://host:8786) or scheduler file (JSON) whose "
        "workers execute the notebooks (docs/scaling.md); empty: on this machine.",
    ).tag(config=True)

    hidden_modules = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="Per assignment, modules of npfl_lib that the student's kernel cannot read "
        "while it is graded (their files are made unreadable with Linux's Landlock, so a "
        "submission can neither call nor copy the reference solutions; the test cells, run "
        "outside the kernel, keep them). 'npfl_lib' hides all of it but npfl_lib.grading. "
        "An import of a hidden module works in the kernel; using it raises "
        "ForbiddenCallError. Where Landlock is missing, such an assignment is not graded. "
        "Example: {'regularization': ['npfl_lib']}.",
    ).tag(config=True)

    def hidden(self, assignment: str) -> tuple[str, ...]:
        """The modules hidden from ``assignment``'s kernels."""
        return tuple(self.hidden_modules.get(assignment, ()))

    def limits(self, cell_seconds: float | None = None) -> Limits:
        """The sandbox limits; the cell limit is ``cell_seconds``, else c.Execute.timeout."""
        if cell_seconds is None:
            execute = self.config.get("Execute", {})
            cell_seconds = execute.get("timeout", None) if "timeout" in execute else None
        return Limits(
            notebook_seconds=self.notebook_timeout,
            cell_seconds=float(cell_seconds or DEFAULT_CELL_SECONDS),
            memory_mb=self.memory_mb,
            max_processes=self.max_processes,
            disk_mb=self.disk_mb,
        )

    def job_count(self) -> int:
        return self.jobs or os.cpu_count() or 1
