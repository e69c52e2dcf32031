"""Autograding on a Dask cluster: phase 2 runs on ``dask.distributed`` workers.

``npfl-course autograde ASSIGNMENT --scheduler tcp://host:8786`` (or
``c.NpflAutograde.scheduler``) grades as locally (:class:`Autograder`), except that each
notebook's execution, an :class:`npfl_course.autograde.execution.Execution` (plain data:
the prepared notebook, the submission's files as bytes, the limits, the environment, the
assignment's digest), is sent to a Dask worker, which runs
:func:`npfl_course.autograde.runner.execute_notebook` in the same sandbox and kernel as
local grading (:func:`execute_on_worker`) and sends back the executed notebook and the
:class:`npfl_course.sandbox.SandboxResult`. Phases 1 and 3 stay on this machine, the
coordinator: it alone writes ``autograded/`` and the gradebook, each submission once.
Workers need npfl-course installed (and what the notebooks import), bubblewrap, and no
view of the course.

Nothing lost, nothing twice:

* a worker that dies mid-notebook: the scheduler runs the notebook again on another worker
  (up to ``distributed.scheduler.allowed-failures`` deaths, default 3); after that Dask
  raises ``KilledWorker`` and the coordinator sends it again, up to ``resubmissions``
  times. A task that raised (the machinery, not the notebook: a notebook's failures are
  results) is retried by Dask ``retries`` times. Only then is the submission "failed"
  (no score, not 0), and the next run grades it;
* each notebook's result is taken from its one future and merged once, on the
  coordinator, whatever ran twice on the workers;
* an interrupted coordinator leaves the pending marker (``PENDING``) in the submissions it
  had started; a new run grades exactly those and the ones not yet graded.

Before the batch every worker runs :func:`check_worker` (once per assignment and process:
the first task on a worker that joins later runs it too): a worker whose machine cannot
sandbox (:func:`npfl_course.sandbox.isolation`) refuses, unless the coordinator was told
``--no-sandbox``; then the batch stops before grading anyone, as locally. The preflight
(the solution and the release) runs on the cluster too. ``dask.distributed`` is imported
only when a cluster is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import sys
import threading
import uuid
from dataclasses import dataclass

from npfl_course.autograde.execution import Executed, Execution
from npfl_course.autograde.restore import first_line
from npfl_course.autograde.runner import (
    Autograder,
    InfrastructureError,
    SandboxUnavailableError,
    execute_notebook,
)
from npfl_course.sandbox import INSTALL_HINT, isolation
from npfl_course.worker import HidingError, check_hideable

RETRIES = 2  # a task that raised runs again (Dask's retries=)
RESUBMISSIONS = 2  # after Dask's KilledWorker, sent again (each after allowed-failures deaths)
CONNECT_SECONDS = 30  # to reach the scheduler
WORKER_WAIT_SECONDS = 120  # for the first worker to join
# Notebooks in flight by default: the workers' threads, at most this many (one coordinator
# thread waits for each; the coordinator's own phases 1 and 3 bound the rate long before).
MAX_IN_FLIGHT = 256
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class ClusterUnavailableError(RuntimeError):
    """The Dask scheduler cannot be reached, or no worker joined it."""


@dataclass(frozen=True)
class WorkerCheck:
    """A worker's preflight for one assignment (:func:`check_worker`).

    Attributes:
        address (str): The worker's address (empty outside a Dask worker).
        kind (str): :func:`npfl_course.sandbox.isolation`'s kind: ``"bwrap"``, ``"uid"``,
            ``"none"``.
        description (str): How student code runs there, for people.
        environment (str): Its :func:`npfl_course.autograde.preflight.environment_digest`.
        refusal (str | None): Why it refuses to grade, None when it grades.
        hiding (str | None): Why it cannot hide the assignment's hidden modules
            (``c.NpflAutograde.hidden_modules``), None when it can or none are hidden.
    """

    address: str
    kind: str
    description: str
    environment: str
    refusal: str | None
    hiding: str | None = None


_CHECKS: dict[tuple[str, bool, tuple[str, ...]], WorkerCheck] = {}
_CHECKS_LOCK = threading.Lock()


def check_worker(assignment: str, require_sandbox: bool,
                 hidden: tuple[str, ...] = ()) -> WorkerCheck:  # fmt: skip
    """This machine's checks for one assignment, made once per process and assignment.

    Args:
        assignment (str): The assignment's digest (:attr:`Execution.assignment`).
        require_sandbox (bool): Refuse when bubblewrap cannot isolate student code here.
        hidden (tuple[str, ...]): The modules the assignment hides (:attr:`Execution.hidden`).
    """
    from npfl_course.autograde.preflight import environment_digest

    with _CHECKS_LOCK:
        key = (assignment, require_sandbox, tuple(hidden))
        if key not in _CHECKS:
            kind, description = isolation()
            refusal = None
            if kind != "bwrap" and require_sandbox:
                refusal = (f"refusing to grade: {description}. Please {INSTALL_HINT} on this "
                           "machine and check it with `npfl-course doctor`")  # fmt: skip
            try:
                check_hideable(hidden)
                hiding = None
            except HidingError as exc:
                hiding = str(exc)
            _CHECKS[key] = WorkerCheck("", kind, description, environment_digest(), refusal,
                                       hiding)  # fmt: skip
        return _CHECKS[key]


async def _check_on_worker(assignment: str, require_sandbox: bool,
                           hidden: tuple[str, ...] = (), dask_worker=None):  # fmt: skip
    """:func:`check_worker` through ``Client.run``, in a thread (the bwrap self-test starts
    a process; the worker's event loop keeps answering meanwhile)."""
    loop = asyncio.get_running_loop()
    check = await loop.run_in_executor(None, check_worker, assignment, require_sandbox, hidden)
    return dataclasses.replace(check, address=dask_worker.address if dask_worker else "")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def execute_on_worker(task: Execution) -> Executed:
    """A Dask task: :func:`execute_notebook` on this worker, after :func:`check_worker`.

    The notebook's math libraries get the worker's own ``OMP_NUM_THREADS`` where it was set
    (several workers on one machine: ``dask worker --nworkers``, a ``LocalCluster``), else
    this machine's CPUs divided by the worker's threads.

    Raises:
        SandboxUnavailableError: This machine cannot sandbox and ``task`` requires it.
    """
    from distributed import get_worker

    worker = get_worker()
    check = check_worker(task.assignment, task.require_sandbox, task.hidden)
    if check.refusal is not None or check.hiding is not None:
        raise SandboxUnavailableError(f"Dask worker {worker.address}: "
                                      f"{check.refusal or check.hiding}")  # fmt: skip
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not threads.isdigit() or int(threads) < 1:
        threads = str(max(1, _cpus() // max(1, int(getattr(worker, "nthreads", 1) or 1))))
    env = {**task.env, **dict.fromkeys(THREAD_VARIABLES, threads)}
    done = execute_notebook(dataclasses.replace(task, env=env))
    done.worker = worker.address
    return done


class DaskAutograder(Autograder):
    """An :class:`Autograder` whose notebooks execute on the workers of a Dask cluster.

    Args:
        course, assignment: As :class:`Autograder`.
        scheduler (str | distributed.Client): The scheduler's address
            (``tcp://host:8786``), a scheduler file (``*.json``), or a connected client
            (kept open).
        jobs (int | None): Notebooks in flight at once; default: the workers' threads
            when the batch starts (at most MAX_IN_FLIGHT).
        retries (int): Dask's ``retries=``: runs again of a task that raised.
        resubmissions (int): Times a notebook is sent again after ``KilledWorker``.
        **kwargs: ``limits``, ``force``, ``unsandboxed``, ``preflight`` as
            :class:`Autograder`.

    Attributes (for the tests' exactly-once checks, besides ``executions``, the notebooks
    sent, once each): ``attempts`` (Dask tasks submitted), ``resubmitted`` (sent again after
    ``KilledWorker``), ``ran_on`` (``(student, notebook)`` -> the worker whose result was
    merged), ``in_flight`` (task key -> ``(student, notebook)``), ``workers`` (address ->
    :class:`WorkerCheck`).
    """

    def __init__(self, course, assignment: str, *, scheduler, jobs: int | None = None,
                 retries: int = RETRIES, resubmissions: int = RESUBMISSIONS,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(course, assignment, jobs=jobs, **kwargs)
        self.scheduler, self.retries, self.resubmissions = scheduler, retries, resubmissions
        self.jobs_given = jobs is not None
        self.client = None
        self.attempts = self.resubmitted = 0
        self.ran_on: dict[tuple[str, str], str] = {}
        self.in_flight: dict[str, tuple[str, str]] = {}
        self.workers: dict[str, WorkerCheck] = {}
        self.environment: str | None = None  # the workers' environment digests, combined
        self.futures: dict[str, object] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def connected(self):
        """A client of the scheduler with at least one worker (``self.client`` meanwhile)."""
        from distributed import Client

        if isinstance(self.scheduler, Client):
            client, own = self.scheduler, False
        else:
            address = str(self.scheduler)
            where = {"scheduler_file": address} if address.endswith(".json") else {}
            try:
                client = Client(None if where else address, timeout=CONNECT_SECONDS,
                                set_as_default=False, **where)  # fmt: skip
            except (OSError, ValueError) as exc:
                raise ClusterUnavailableError(
                    f"cannot reach the Dask scheduler {address}: {first_line(exc)}"
                ) from None
            own = True
        try:
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except (TimeoutError, asyncio.TimeoutError):
                raise ClusterUnavailableError(
                    f"no Dask worker joined the scheduler {client.scheduler.address} within "
                    f"{WORKER_WAIT_SECONDS} s: start some (docs/scaling.md)"
                ) from None
            if not self.jobs_given:
                self.jobs = min(MAX_IN_FLIGHT, max(1, sum(client.nthreads().values())))
            self.client = client
            yield client
        finally:
            self.client = None
            if own:
                client.close()

    def dashboard(self) -> str | None:
        """The Dask dashboard's address (it needs bokeh where the scheduler runs), None when
        the scheduler serves none (``--no-dashboard``)."""
        services = self.client.scheduler_info().get("services", {})
        return self.client.dashboard_link if "dashboard" in services else None

    def run(self, students: list[str] | None = None, progress: bool = True):
        """As :meth:`Autograder.run`, with the notebooks executed on the cluster."""
        with self.connected() as client:
            if progress:
                link = self.dashboard() or "none (the scheduler serves none)"
                print(f"Dask scheduler {client.scheduler.address}, {self.jobs} notebook(s) at "
                      f"once; dashboard: {link}", file=sys.stderr)  # fmt: skip
            try:
                return super().run(students, progress)
            finally:  # interrupted: what is still queued is not wanted any more
                with self.lock:
                    left = list(self.futures.values())
                if left:
                    with contextlib.suppress(Exception):
                        client.cancel(left)

    def check_isolation(self) -> tuple[str, str]:
        """Every worker's :func:`check_worker`; raises when one refuses (as locally)."""
        require = not self.unsandboxed
        answers = self.client.run(_check_on_worker, self.assignment_digest, require,
                                  self.hidden, on_error="return")  # fmt: skip
        where = f"Dask worker(s) of {self.client.scheduler.address}"
        broken = {a: r for a, r in answers.items() if not isinstance(r, WorkerCheck)}
        if broken:
            listed = "; ".join(f"{a}: {first_line(r)}" for a, r in sorted(broken.items()))
            raise ClusterUnavailableError(f"{len(broken)} {where} could not be checked: {listed}")
        self.workers = answers
        refusing = {a: c for a, c in answers.items() if c.refusal is not None}
        if refusing:
            listed = "; ".join(f"{a}: {c.description}" for a, c in sorted(refusing.items()))
            raise SandboxUnavailableError(
                f"refusing to grade: {len(refusing)} of {len(answers)} {where} cannot "
                f"sandbox student code ({listed}). Please {INSTALL_HINT} on every worker "
                "machine, and check the result with `npfl-course doctor` there. To grade "
                "without isolation anyway (only for code you trust), pass --no-sandbox."
            )
        unhiding = {a: c for a, c in answers.items() if c.hiding is not None}
        if unhiding:
            listed = "; ".join(f"{a}: {c.hiding}" for a, c in sorted(unhiding.items()))
            raise SandboxUnavailableError(
                f"refusing to grade {self.assignment} (c.NpflAutograde.hidden_modules): "
                f"{len(unhiding)} of {len(answers)} {where} cannot hide its modules ({listed})"
            )
        digests = sorted({check.environment for check in answers.values()})
        self.environment = hashlib.sha256("\n".join(digests).encode()).hexdigest()
        unsafe = [check for check in answers.values() if check.kind != "bwrap"]
        hidden = self.hidden_description()
        if not unsafe:
            sandbox = "bubblewrap sandbox (no view of the course, no network)"
            return "bwrap", f"{sandbox} on {len(answers)} {where}{hidden}"
        return unsafe[0].kind, (f"NO sandbox on {len(unsafe)} of {len(answers)} {where}: "
                                f"{unsafe[0].description}{hidden}")  # fmt: skip

    def run_preflight(self):
        """The preflight, graded on the cluster; remembered per set of worker environments."""
        from npfl_course.autograde.preflight import preflight

        return preflight(self.course, self.assignment, limits=self.limits, jobs=self.jobs,
                         unsandboxed=self.unsandboxed, scheduler=self.client,
                         environment=self.environment)  # fmt: skip

    def run_execution(self, task: Execution, job) -> Executed:
        """Sends ``task`` to a worker and waits for it (a coordinator thread per notebook)."""
        from distributed import KilledWorker

        died = None
        for attempt in range(self.resubmissions + 1):
            key = f"npfl-autograde-{uuid.uuid4().hex}"
            with self.lock:
                self.in_flight[key] = (job.student, task.name)
                self.attempts += 1
                self.resubmitted += attempt > 0
                future = self.client.submit(execute_on_worker, task, key=key, pure=False,
                                            retries=self.retries)  # fmt: skip
                self.futures[key] = future
            try:
                done = future.result()
            except KilledWorker as exc:  # the scheduler gave up on it: send it again
                died = exc
                continue
            except Exception as exc:
                why = f"{type(exc).__name__}: {first_line(exc)}"
                raise InfrastructureError(f"{task.name}: on the Dask cluster: {why}") from exc
            finally:
                with self.lock:
                    self.in_flight.pop(key, None)
                    self.futures.pop(key, None)
                future.release()
            with self.lock:
                self.ran_on[(job.student, task.name)] = done.worker
            return done
        raise InfrastructureError(
            f"{task.name}: Dask workers died while running it, {self.resubmissions + 1} "
            f"times ({first_line(died)})"
        )
