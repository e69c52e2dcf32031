"""The limits of a sandboxed command, and what it did: :class:`Limits`, :class:`SandboxResult`.

:func:`read_result` reads which limit a finished command hit (memory, processes, time) from
its exit status and output, and words the reason for feedback.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

# Error texts of a failed allocation: Python, numpy, torch, C++, and the dynamic loader
# (importing a big extension module under RLIMIT_DATA fails in mmap).
_MEMORY_PATTERNS = re.compile(
    r"MemoryError|Cannot allocate memory|can't allocate memory|Unable to allocate"
    r"|std::bad_alloc|out of memory|failed to map segment from shared object"
)
_PROCESS_PATTERNS = re.compile(
    r"Resource temporarily unavailable|can't start new thread|fork: retry|Cannot fork"
)
# Under RLIMIT_DATA a failed stack or mmap growth ends in one of these signals.
_MEMORY_SIGNALS = (signal.SIGSEGV, signal.SIGBUS)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed command.

    Attributes:
        notebook_seconds (float): Wall clock for the whole command, in seconds.
        cell_seconds (float): Per-cell limit; not enforced here but passed on to the worker
            that executes the notebook cell by cell.
        memory_mb (int): Memory of the command, in MiB: what each process may allocate
            (RLIMIT_DATA) and what all its processes may use together (anonymous memory,
            watched); also the size of the private /tmp. The default, 2048, is more than four
            times what grading this course's assignments needs (453 MiB at most,
            measured with the CUDA build of torch; docs/benchmarks.md).
        max_processes (int): Processes and threads the command may have at once.
        network (bool): Whether the command may use the host's network.
        disk_mb (int): Disk space of the command, in MiB: the largest file it may write
            (RLIMIT_FSIZE) and what the files in its workdir (and, without bubblewrap, its
            private /tmp) may take together, deleted files it still holds open included
            (watched). The default, 1024, leaves room for datasets and checkpoints; this
            course's assignments write a few MiB.
    """

    notebook_seconds: float = 600.0
    cell_seconds: float = 120.0
    memory_mb: int = 2048
    max_processes: int = 64
    network: bool = False
    disk_mb: int = 1024


@dataclass
class SandboxResult:
    """What a sandboxed command did.

    Attributes:
        returncode (int | None): Exit status; ``-N`` when killed by signal N (bwrap reports
            a signal as ``128 + N``, so an exit status above 128 also reads as ``-N``);
            None when it was killed for exceeding the time limit.
        stdout (str): Its standard output, truncated in the middle to MAX_OUTPUT_BYTES.
        stderr (str): Its standard error, likewise.
        timed_out (bool): It ran past ``limits.notebook_seconds`` and was killed.
        memory_exceeded (bool): An allocation failed or it died of SIGSEGV/SIGBUS.
        disk_exceeded (bool): Its files took more than ``limits.disk_mb`` (or could not be
            measured: too many, nested too deep, unreadable) and it was killed; ``reason``
            says which.
        process_limit_hit (bool): A fork or thread failed for lack of processes (best effort).
        sandboxed (bool): Whether bwrap isolated it (False in the fallback).
        duration (float): Wall-clock seconds.
        peak_memory_mb (float): The most anonymous memory its processes used together,
            as sampled by the memory watchdog (MiB; 0 when it ended before the first look).
        peak_disk_mb (float): The most disk its files took, as sampled by the disk watchdog
            (MiB).
        reason (str | None): Readable reason for feedback, None when it exited with 0.
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    memory_exceeded: bool = False
    process_limit_hit: bool = False
    sandboxed: bool = False
    duration: float = 0.0
    reason: str | None = None
    peak_memory_mb: float = 0.0
    disk_exceeded: bool = False
    peak_disk_mb: float = 0.0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def read_result(returncode, stdout, stderr, timed_out, limits, bwrap, duration, left):
    output = stdout[-(1 << 16) :] + stderr[-(1 << 16) :]
    memory = bool(_MEMORY_PATTERNS.search(output)) or (
        returncode is not None and -returncode in _MEMORY_SIGNALS
    )
    processes = bool(_PROCESS_PATTERNS.search(output)) or left >= limits.max_processes
    if timed_out:
        reason = f"time limit exceeded ({limits.notebook_seconds:g} s)"
    elif memory:
        reason = f"memory limit exceeded ({limits.memory_mb} MB)"
    elif processes and returncode != 0:
        reason = f"process limit exceeded ({limits.max_processes} processes)"
    elif returncode is not None and returncode < 0:
        reason = f"killed by signal {_signal_name(-returncode)}"
    elif returncode:
        reason = f"exited with status {returncode}"
    else:
        reason = None
    return SandboxResult(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        memory_exceeded=memory,
        process_limit_hit=processes,
        sandboxed=bwrap is not None,
        duration=duration,
        reason=reason,
    )
