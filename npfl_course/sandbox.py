"""Run one untrusted command (a student's notebook worker) with limits and isolation.

``run_sandboxed(argv, workdir=...)`` runs ``argv`` with:

* a wall-clock limit for the whole command; then every process it started is killed;
* a memory limit of ``limits.memory_mb`` MiB, enforced twice. Each process may allocate at
  most that much (``RLIMIT_DATA``: heap, anonymous mappings, writable data of libraries), so
  a cell that allocates too much gets a ``MemoryError`` and the notebook goes on; and a
  watchdog sums the anonymous memory (proportional set size) of all the command's
  processes every MEMORY_POLL_SECONDS and kills them all when together they use more.
  Address space that is only reserved is not counted (``RLIMIT_AS`` would count it: the
  CUDA build of torch maps some 3 GB at import and could not even be imported under
  2 GB). Works without root and without cgroups; the private /tmp and /dev/shm (tmpfs,
  ``memory_mb`` each) come on top;
* a process-count limit: ``RLIMIT_NPROC``. The kernel counts it per real user id and ignores
  it for root, so when we are root the command runs as an unprivileged uid of its own
  (``UID_BASE + slot``; a file lock per uid keeps concurrent sandboxes, also in other
  processes, on distinct uids, so each submission has its own count, and at the end every
  process of that uid is killed). Without root, bwrap's user namespace gives the sandbox
  a count of its own;
* a file-size limit (``RLIMIT_FSIZE``, FILE_SIZE_MB) and no core dumps;
* bounded capture of stdout and stderr (the first and last MAX_OUTPUT_BYTES / 2 of each).

With bubblewrap (``bwrap``, Debian package ``bubblewrap``) it is also isolated: only
``workdir`` is writable (plus a private tmpfs ``/tmp``); the system (``/usr``, ``/etc``
pieces), the Python installation (``sys.prefix``, ``sys.base_prefix``, site-packages, the
source of editable installs such as ``npfl_lib``) and ``readonly`` are visible read-only;
nothing else of the host is mounted (so the course directory, other submissions, the
gradebook, ``source/`` and ``release/`` do not exist inside); there is no network (only
its own loopback); it has its own PID, IPC and UTS namespaces, a new session, no
capabilities, no_new_privs, and dies with its parent. GPUs are not mounted: submissions
are graded on the CPU.

Without a working ``bwrap`` it falls back to the limits alone (in a new session, killed as
a process group and as a tree) and warns once that the file system and the network are
NOT isolated. In the fallback, root switches to the sandbox uid only when other users can
reach the command and the workdir's parent (otherwise there is no process limit), and a
non-root user's limit is approximate (its own uid's count plus ``max_processes``).
``require_sandbox=True`` raises RuntimeError instead of falling back; the environment
variable ``NPFL_COURSE_NO_BWRAP=1`` forces the fallback.

The parts: :mod:`npfl_course.sandbox_limits` (:class:`Limits`, :class:`SandboxResult` and
how an exit is read), :mod:`npfl_course.sandbox_bwrap` (bubblewrap's command line and
mounts), :mod:`npfl_course.sandbox_processes` (the launcher, the sandbox uids, killing
the command's processes); this module runs the command.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence

from npfl_course.sandbox_bwrap import _bwrap_argv
from npfl_course.sandbox_bwrap import _is_within as _is_within
from npfl_course.sandbox_bwrap import _python_paths as _python_paths
from npfl_course.sandbox_bwrap import _readonly_mounts as _readonly_mounts
from npfl_course.sandbox_limits import Limits, SandboxResult, _result
from npfl_course.sandbox_processes import (
    _LAUNCHER,
    MEMORY_POLL_SECONDS,
    _chown_tree,
    _is_root,
    _kill_all,
    _private_uid,
    _reachable_by_others,
    _real,
    _user_task_count,
    memory_mib,
)
from npfl_course.sandbox_processes import UID_BASE as UID_BASE
from npfl_course.sandbox_processes import UID_SLOTS as UID_SLOTS

__all__ = ["Limits", "SandboxResult", "isolation", "run_sandboxed", "sandbox_available"]

MAX_OUTPUT_BYTES = 1 << 20  # per stream: the first and the last half MiB are kept
FILE_SIZE_MB = 1024  # largest file the command may write
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: "
    "`dnf install bubblewrap`) to isolate them"
)
NAMESPACE_HINT = (
    "bwrap needs namespaces: as a normal user, unprivileged user namespaces (check with "
    "`unshare --user --map-root-user true`; enable with `sysctl -w "
    "kernel.unprivileged_userns_clone=1`, on Ubuntu >= 23.10 also `sysctl -w "
    "kernel.apparmor_restrict_unprivileged_userns=0`); as root in a container, mount "
    "namespaces (Docker: `--cap-add SYS_ADMIN --security-opt seccomp=unconfined "
    "--security-opt apparmor=unconfined`; Kubernetes: a pod security context that allows "
    "them)"
)


def _environment(workdir: str, tmp: str, env: Mapping[str, str] | None) -> dict[str, str]:
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    result = {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "LANG": "C.UTF-8",
        "TMPDIR": tmp,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        # Grading is on the CPU, with or without a GPU on the grading machine.
        "CUDA_VISIBLE_DEVICES": "",
        # The sandbox uid has no /etc/passwd entry; getpass.getuser() reads these first.
        "USER": "student",
        "LOGNAME": "student",
        # Caches and IPython/Jupyter state go to the private /tmp, not into the submission.
        "XDG_CACHE_HOME": f"{tmp}/.cache",
        "MPLCONFIGDIR": f"{tmp}/.matplotlib",
        "IPYTHONDIR": f"{tmp}/.ipython",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/.jupyter-runtime",
    }
    result.update({str(k): str(v) for k, v in (env or {}).items()})
    return result


class _BoundedReader(threading.Thread):
    """Drains a pipe, keeping its first and last ``MAX_OUTPUT_BYTES // 2`` bytes."""

    def __init__(self, pipe) -> None:
        super().__init__(daemon=True)
        self.pipe, self.head, self.tail, self.total = pipe, bytearray(), bytearray(), 0

    def run(self) -> None:
        half = MAX_OUTPUT_BYTES // 2
        with contextlib.suppress(OSError, ValueError):
            while chunk := self.pipe.read1(1 << 16):
                self.total += len(chunk)
                room = half - len(self.head)
                self.head += chunk[:room]
                self.tail += chunk[max(room, 0) :]
                del self.tail[:-half]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        middle = f"\n... [{dropped} bytes of output truncated] ...\n" if dropped else ""
        return (bytes(self.head).decode(errors="replace") + middle) + bytes(self.tail).decode(
            errors="replace"
        )


def _bwrap_executable() -> str | None:
    """``$NPFL_COURSE_BWRAP`` (a path or a name; empty: none), else ``bwrap`` on PATH."""
    name = os.environ.get("NPFL_COURSE_BWRAP")
    if name is None:
        return shutil.which("bwrap")
    return shutil.which(name) if name else None


@functools.lru_cache(maxsize=4)
def _self_test(bwrap: str) -> str | None:
    """None when ``bwrap`` runs Python under our exact configuration, else why not."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = _run([sys.executable, "-c", "print('ok')"], tmp, (), Limits(), None, bwrap)
        except OSError as exc:
            return f"bwrap failed to start: {exc}"
        if result.returncode != 0 or result.stdout.strip() != "ok":
            return f"bwrap self-test failed: {result.stderr.strip()[-500:]}; {NAMESPACE_HINT}"
    return None


def _bwrap_self_test() -> str | None:
    bwrap = _bwrap_executable()
    if bwrap is not None:
        return _self_test(bwrap)
    named = os.environ.get("NPFL_COURSE_BWRAP")
    if named is not None:
        return f"NPFL_COURSE_BWRAP={named!r} names no executable"
    return "bwrap is not installed"


def _forced_off() -> bool:
    return os.environ.get("NPFL_COURSE_NO_BWRAP", "") not in ("", "0")


def unavailable_reason() -> str | None:
    """Why bubblewrap cannot isolate commands here, or None when it can."""
    return "disabled by NPFL_COURSE_NO_BWRAP" if _forced_off() else _bwrap_self_test()


def _others_can_run(command: str, workdir_parent: str) -> bool:
    """Whether an unprivileged uid can run ``command`` (this Python: with its packages)."""
    needed = [command, workdir_parent]
    if _real(command) == _real(sys.executable):
        needed += _python_paths()
    return all(_reachable_by_others(path) for path in needed)


def isolation(command: str | None = None) -> tuple[str, str]:
    """How untrusted commands run here: ``(kind, description)`` for people.

    ``kind`` is ``"bwrap"`` (isolated), ``"uid"`` (no bubblewrap; as root the command runs
    as an unprivileged uid of its own, so it cannot change files that only the grader may
    write) or ``"none"`` (no bubblewrap and no other uid: it can do whatever the grader's
    user can).

    Args:
        command (str | None): The program that will run (default: this Python).
    """
    why = unavailable_reason()
    if why is None:
        return "bwrap", "bubblewrap sandbox (no view of the course, no network)"
    command = shutil.which(command or sys.executable) or command or sys.executable
    if _is_root() and _others_can_run(command, tempfile.gettempdir()):
        return "uid", (
            f"NO sandbox ({why}): student code runs as an unprivileged uid of its own with "
            "time, memory and process limits; it cannot change the course's files, but it "
            "can read every file that all users may read and it can use the network"
        )
    who = "root" if _is_root() else f"uid {os.getuid()}"
    hint = (
        " (this Python or its packages lie where other users cannot read them, e.g. under "
        "/root; a virtual environment made from the system's Python outside /root fixes "
        "that)"
        if _is_root()
        else ""
    )
    return "none", (
        f"NO sandbox ({why}) and no other user{hint}: student code runs as {who} and can "
        "read and change any file that the grader can, the gradebook included, and use "
        "the network"
    )


def sandbox_available() -> bool:
    """Whether bubblewrap is installed and isolates commands here (tested once, cached).

    Returns:
        bool: False when bwrap is missing, fails its self-test, or NPFL_COURSE_NO_BWRAP=1.
    """
    return unavailable_reason() is None


_warned = threading.Event()


def _warn_fallback() -> None:
    if _warned.is_set():
        return
    _warned.set()
    warnings.warn(f"npfl_course.sandbox: {isolation()[1]}. Please {INSTALL_HINT}.",
                  RuntimeWarning, stacklevel=3)  # fmt: skip


def run_sandboxed(
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike,
    readonly: Iterable[str | os.PathLike] = (),
    limits: Limits = Limits(),  # noqa: B008 - a frozen dataclass, immutable
    env: Mapping[str, str] | None = None,
    require_sandbox: bool = False,
) -> SandboxResult:
    """Runs ``argv`` in ``workdir`` under ``limits``, isolated by bubblewrap when possible.

    The command starts with a cleared environment: PATH (this Python's bin directory
    first), HOME=workdir, LANG=C.UTF-8, TMPDIR, PYTHONDONTWRITEBYTECODE=1, MPLBACKEND=Agg,
    OMP_NUM_THREADS=1 and cache directories in /tmp; ``env`` adds to or overrides these.

    Args:
        argv (Sequence[str]): The command and its arguments.
        workdir (str | os.PathLike): Existing directory, the only writable one and the
            current directory of the command. When we are root its files belong to the
            sandbox uid while it runs and to the directory's owner again afterwards.
        readonly (Iterable[str | os.PathLike]): More paths to show read-only, at the same
            place (the Python installation and editable sources are added automatically).
        limits (Limits): Time, memory and process limits and whether network is allowed.
        env (Mapping[str, str] | None): Extra environment variables.
        require_sandbox (bool): Raise instead of falling back when bwrap cannot isolate.

    Returns:
        SandboxResult: Exit status, bounded output, which limit was hit and why.

    Raises:
        ValueError: If ``argv`` is empty, ``workdir`` or a ``readonly`` path does not exist,
            or a limit is not positive.
        RuntimeError: If ``require_sandbox`` and bubblewrap is unavailable.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("argv must name a command, got an empty sequence")
    workdir = _real(workdir)
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir must be an existing directory, got {workdir!r}")
    readonly = [os.fspath(p) for p in readonly]
    for path in readonly:
        if not os.path.exists(path):
            raise ValueError(f"readonly paths must exist, got {path!r}")
    for name in ("notebook_seconds", "cell_seconds", "memory_mb", "max_processes"):
        if not getattr(limits, name) > 0:
            raise ValueError(f"limits.{name} must be positive, got {getattr(limits, name)!r}")
    if sandbox_available():
        return _run(argv, workdir, readonly, limits, env, _bwrap_executable())
    if require_sandbox:
        why = unavailable_reason()
        raise RuntimeError(f"require_sandbox=True but bubblewrap cannot isolate: {why}; "
                           f"{INSTALL_HINT}")  # fmt: skip
    _warn_fallback()
    return _run(argv, workdir, readonly, limits, env, None)


def _run(argv, workdir, readonly, limits, env, bwrap) -> SandboxResult:
    with _private_uid() as uid, contextlib.ExitStack() as cleanup:
        owner = os.stat(workdir)
        if bwrap is None:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="npfl-sandbox-"))
        else:
            tmp = "/tmp"
        full_env = _environment(workdir, tmp, env)
        # Resolved here: the sandbox's PATH directories are mounted at the same places.
        command = shutil.which(argv[0], path=full_env["PATH"]) or argv[0]
        # The workdir itself gets chowned; the rest must be reachable as it is.
        if uid >= 0 and bwrap is None and not _others_can_run(command, os.path.dirname(workdir)):
            uid = -1  # the sandbox uid could not run it: root, without a process limit
        nproc = limits.max_processes
        if uid < 0 and bwrap is None:
            # Our own uid, shared with everything else we run (approximate: concurrent
            # sandboxes share it too): leave room for that and our reader and timer threads.
            nproc = -1 if _is_root() else limits.max_processes + _user_task_count() + 3
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(uid), str(nproc)]
        launcher += [str(limits.memory_mb << 20), str(FILE_SIZE_MB << 20), command, *argv[1:]]
        if uid >= 0:
            _chown_tree(workdir, uid, uid)
            cleanup.callback(_chown_tree, workdir, owner.st_uid, owner.st_gid, uid)
            if bwrap is None:
                _chown_tree(tmp, uid, uid)
        if bwrap is not None:
            command_line = _bwrap_argv(bwrap, workdir, readonly, limits, full_env) + launcher
            popen_env = {}
        else:
            command_line, popen_env = launcher, full_env
        start = time.monotonic()
        proc = subprocess.Popen(
            command_line,
            cwd=workdir,
            env=popen_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        readers = [_BoundedReader(proc.stdout), _BoundedReader(proc.stderr)]
        for reader in readers:
            reader.start()
        counts = []  # processes found when killing: how close it came to the limit
        expired, over_memory, finished = threading.Event(), threading.Event(), threading.Event()
        peak = [0.0]

        def expire():
            expired.set()
            counts.append(_kill_all(proc.pid, uid, bwrap is not None))

        def watch_memory():
            while not finished.wait(MEMORY_POLL_SECONDS):
                used = memory_mib(proc.pid, uid)
                peak[0] = max(peak[0], used)
                if used > limits.memory_mb:
                    over_memory.set()
                    counts.append(_kill_all(proc.pid, uid, bwrap is not None))
                    return

        timer = threading.Timer(limits.notebook_seconds, expire)
        watchdog = threading.Thread(target=watch_memory, daemon=True)
        timer.start()
        watchdog.start()
        try:
            # Block without reaping (no polling delay); while unreaped, proc.pid cannot be
            # reused, so the timer and the cleanup below never signal a stranger.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        finally:  # also on KeyboardInterrupt: never leave a submission running
            timer.cancel()
            finished.set()
            timer.join()
            watchdog.join()
            counts.append(_kill_all(proc.pid, uid, bwrap is not None))  # what it left behind
        returncode = proc.wait()
        duration = time.monotonic() - start
        for reader in readers:
            reader.join(timeout=5)  # a stray grandchild may hold the pipe open
            reader.pipe.close()
        stdout, stderr = (r.text() for r in readers)
    if expired.is_set():
        returncode = None
    elif bwrap is not None and returncode > 128:
        returncode = 128 - returncode  # bwrap turns death by signal N into 128 + N
    timed_out, left = expired.is_set(), max(counts)
    result = _result(returncode, stdout, stderr, timed_out, limits, bwrap, duration, left)
    result.peak_memory_mb = peak[0]
    if over_memory.is_set() and not timed_out:
        result.memory_exceeded = True
        result.reason = (
            f"memory limit exceeded ({limits.memory_mb} MB for all its processes together)"
        )
    return result
