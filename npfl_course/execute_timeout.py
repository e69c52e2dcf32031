"""The worker's cell timeout: the watchdog, the interrupt, and the processes a cell started.

Part of the worker (:mod:`npfl_course.execute`): each cell has ``--cell-timeout``
seconds; then :class:`_Watchdog` interrupts it (SIGUSR1 raises a ``CellTimeoutError``
the student's ``except Exception`` does not catch) and the next cell runs. A cell that
ignores the interrupt is abandoned after a grace period. :func:`kill_descendants` kills
the processes the cells started; RLIMIT_NPROC (its value captured at import) stops a fork
bomb from refilling them meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable

from npfl_course.execute_capture import _State

# Bound at import, before any student code.
_getpid = os.getpid


class CellTimeoutError(BaseException):
    """A cell ran past its time limit (a BaseException: ``except Exception`` won't catch it)."""


class _Watchdog(threading.Thread):
    """Interrupts the main thread when a cell runs too long; ends the process if that fails."""

    def __init__(self, on_abandon: Callable[[], None]) -> None:
        super().__init__(daemon=True, name="npfl-watchdog")
        self.main = threading.main_thread().ident
        self.on_abandon = on_abandon
        self.lock = threading.Condition()
        self.deadline: float | None = None
        self.expired = False
        self.seconds = 0.0
        self.monotonic = time.monotonic  # bound now: student code cannot patch it away

    def arm(self, seconds: float) -> None:
        with self.lock:
            self.seconds, self.deadline, self.expired = seconds, self.monotonic() + seconds, False
            self.lock.notify()

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None
            self.lock.notify()

    def run(self) -> None:
        kill, monotonic = signal.pthread_kill, self.monotonic
        while True:
            with self.lock:
                while self.deadline is None or monotonic() < self.deadline:
                    left = None if self.deadline is None else self.deadline - monotonic()
                    self.lock.wait(left)
                self.expired = True
                deadline = self.deadline
                grace = min(10.0, max(5.0, self.seconds / 4))
            while True:  # interrupt once a second until the cell ends or the grace is over
                with self.lock:
                    if self.deadline is not deadline:
                        break
                    if monotonic() > deadline + grace:
                        self.on_abandon()
                        return
                _no_more_processes()  # a fork bomb would refill what we kill ...
                kill_descendants()  # ... and starve the interrupted cell of CPU
                with contextlib.suppress(OSError):
                    kill(self.main, signal.SIGUSR1)
                with self.lock:
                    self.lock.wait(1.0)


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{name}/stat", "rb") as handle:
                        stat = handle.read().decode(errors="replace")
                    parents[int(name)] = int(stat.rpartition(")")[2].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


_NPROC = resource.getrlimit(resource.RLIMIT_NPROC)


def _no_more_processes() -> None:
    """Stops this process from starting processes (until :func:`_processes_again`)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, _NPROC[1]))


def _processes_again() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, _NPROC)


def kill_descendants() -> None:
    """SIGKILLs every process this one started (a subreaper: orphans count too)."""
    for _ in range(20):  # a fork bomb forks between the scan and the kill: repeat
        pids = _descendants(_getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.01)


def _timing_out() -> bool:
    executor = _State.executor
    return executor is not None and executor.watchdog.expired and bool(executor.watchdog.deadline)


def _in_cell_code(frame) -> bool:
    return frame.f_code.co_filename.startswith("<")  # IPython names cells <ipython-input-...>


def _raise_in_cell(frame, event, arg):
    """A trace function: raises the timeout at the next line of the notebook's own code."""
    if _timing_out() and _in_cell_code(frame):
        sys.settrace(None)
        raise CellTimeoutError(_State.executor._timeout_message())
    return _raise_in_cell


def _on_sigusr1(signum, frame) -> None:
    """Interrupts a cell that ran out of time.

    Raised inside library code, the error could be swallowed (Python ignores errors in
    os.fork's at-fork hooks, where a fork bomb spends its time), so there it is deferred
    to the next line of the notebook's code.
    """
    if not _timing_out():
        return
    if _in_cell_code(frame):
        raise CellTimeoutError(_State.executor._timeout_message())
    while frame is not None:
        frame.f_trace = _raise_in_cell
        frame = frame.f_back
    sys.settrace(_raise_in_cell)
