"""Runs the command: :func:`run_sandboxed`, and which isolation this machine offers.

See the package :mod:`npfl_course.sandbox` for what the sandbox does.
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

from npfl_course.sandbox.bwrap import bwrap_argv, python_paths
from npfl_course.sandbox.files import (
    DISK_POLL_SECONDS,
    chown_tree,
    disk_usage,
    owned_entries,
    remove_tree,
)
from npfl_course.sandbox.limits import Limits, SandboxResult, read_result
from npfl_course.sandbox.processes import (
    LAUNCHER,
    MEMORY_POLL_SECONDS,
    deleted_file_bytes,
    is_root,
    kill_all,
    memory_mib,
    private_uid,
    reachable_by_others,
    real_path,
    user_task_count,
)

MAX_OUTPUT_BYTES = 1 << 20  # per stream: the first and the last half MiB are kept
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
    if real_path(command) == real_path(sys.executable):
        needed += python_paths()
    return all(reachable_by_others(path) for path in needed)


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
    if is_root() and _others_can_run(command, tempfile.gettempdir()):
        return "uid", (
            f"NO sandbox ({why}): student code runs as an unprivileged uid of its own with "
            "time, memory and process limits; it cannot change the course's files, but it "
            "can read every file that all users may read and it can use the network"
        )
    who = "root" if is_root() else f"uid {os.getuid()}"
    hint = (
        " (this Python or its packages lie where other users cannot read them, e.g. under "
        "/root; a virtual environment made from the system's Python outside /root fixes "
        "that)"
        if is_root()
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
    pass_fds: Sequence[int] = (),
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
        pass_fds (Sequence[int]): Open descriptors the command inherits (as
            ``subprocess.Popen``'s), e.g. a result channel that no path leads to.

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
    workdir = real_path(workdir)
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir must be an existing directory, got {workdir!r}")
    readonly = [os.fspath(p) for p in readonly]
    for path in readonly:
        if not os.path.exists(path):
            raise ValueError(f"readonly paths must exist, got {path!r}")
    for name in ("notebook_seconds", "cell_seconds", "memory_mb", "max_processes", "disk_mb"):
        if not getattr(limits, name) > 0:
            raise ValueError(f"limits.{name} must be positive, got {getattr(limits, name)!r}")
    if sandbox_available():
        return _run(argv, workdir, readonly, limits, env, _bwrap_executable(), pass_fds)
    if require_sandbox:
        why = unavailable_reason()
        raise RuntimeError(f"require_sandbox=True but bubblewrap cannot isolate: {why}; "
                           f"{INSTALL_HINT}")  # fmt: skip
    _warn_fallback()
    return _run(argv, workdir, readonly, limits, env, None, pass_fds)


def _run(argv, workdir, readonly, limits, env, bwrap, pass_fds=()) -> SandboxResult:
    with private_uid() as uid, contextlib.ExitStack() as cleanup:
        owner = os.stat(workdir)
        if bwrap is None:
            tmp = tempfile.mkdtemp(prefix="npfl-sandbox-")
            cleanup.callback(_remove, tmp)  # after the chown below: callbacks run last first
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
            nproc = -1 if is_root() else limits.max_processes + user_task_count() + 3
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(uid), str(nproc)]
        launcher += [str(limits.memory_mb << 20), str(limits.disk_mb << 20), command, *argv[1:]]
        if uid >= 0:
            chown_tree(workdir, uid, uid)
            cleanup.callback(chown_tree, workdir, owner.st_uid, owner.st_gid, uid)
            if bwrap is None:
                chown_tree(tmp, uid, uid)
        if bwrap is not None:
            command_line = bwrap_argv(bwrap, workdir, readonly, limits, full_env) + launcher
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
            pass_fds=tuple(pass_fds),
        )
        readers = [_BoundedReader(proc.stdout), _BoundedReader(proc.stderr)]
        for reader in readers:
            reader.start()
        counts = []  # processes found when killing: how close it came to the limit
        expired, finished = threading.Event(), threading.Event()
        stopped: list[tuple[str, str]] = []  # (limit, reason) of the watchdogs that killed it
        peak = {"memory": 0.0, "disk": 0.0}

        def expire():
            expired.set()
            counts.append(kill_all(proc.pid, uid, bwrap is not None))

        def stop(limit: str, reason: str) -> None:
            stopped.append((limit, reason))
            counts.append(kill_all(proc.pid, uid, bwrap is not None))

        def watch_memory():
            while not finished.wait(MEMORY_POLL_SECONDS):
                used = memory_mib(proc.pid, uid)
                peak["memory"] = max(peak["memory"], used)
                if used > limits.memory_mb:
                    return stop("memory", f"memory limit exceeded ({limits.memory_mb} MB for "
                                          "all its processes together)")  # fmt: skip

        # In bwrap's sandbox /tmp and /dev/shm are tmpfs of a fixed size (memory, not disk).
        # Without it the sandbox uid may also write to the host's shared folders (/tmp...):
        # what it put there counts, and goes at the end.
        folders = [workdir] if bwrap is not None else [workdir, tmp]
        devices = {os.stat(folder).st_dev for folder in folders}
        strays = bwrap is None and uid >= 0
        # The workdir and the private tmp belong to the sandbox uid while it runs and may
        # lie in /tmp themselves: they are measured once and are not strays.
        own = {real_path(folder) for folder in folders}
        if strays:
            cleanup.callback(_remove_owned, uid, own)

        def watch_disk():
            pause = DISK_POLL_SECONDS
            while not finished.wait(pause):
                began = time.monotonic()
                used, problem = disk_usage(folders + (_strays(uid, own) if strays else []))
                if problem is None:
                    held, problem = deleted_file_bytes(proc.pid, uid, devices)
                    used += held
                peak["disk"] = max(peak["disk"], used / 2**20)
                if problem is not None:
                    return stop("disk", f"disk limit exceeded ({problem} in the work folder)")
                if used > limits.disk_mb << 20:
                    return stop("disk", f"disk limit exceeded ({limits.disk_mb} MB in the "
                                        "work folder)")  # fmt: skip
                # A large tree takes long to walk: look less often, at most a fifth of the time.
                pause = max(DISK_POLL_SECONDS, 4 * (time.monotonic() - began))

        timer = threading.Timer(limits.notebook_seconds, expire)
        watchdogs = [threading.Thread(target=watch, daemon=True)
                     for watch in (watch_memory, watch_disk)]  # fmt: skip
        timer.start()
        for watchdog in watchdogs:
            watchdog.start()
        try:
            # Block without reaping (no polling delay); while unreaped, proc.pid cannot be
            # reused, so the timer and the cleanup below never signal a stranger.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        finally:  # also on KeyboardInterrupt: never leave a submission running
            timer.cancel()
            finished.set()
            timer.join()
            for watchdog in watchdogs:
                watchdog.join()
            counts.append(kill_all(proc.pid, uid, bwrap is not None))  # what it left behind
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
    result = read_result(returncode, stdout, stderr, timed_out, limits, bwrap, duration, left)
    result.peak_memory_mb, result.peak_disk_mb = peak["memory"], peak["disk"]
    if stopped and not timed_out:
        limit, result.reason = stopped[0]  # the first watchdog that fired
        result.memory_exceeded = limit == "memory"
        result.disk_exceeded = limit == "disk"
    return result


def _strays(uid: int, own: set[str]) -> list[str]:
    """What the sandbox uid put directly into the host's shared folders, but ``own``."""
    return [path for path in owned_entries(uid) if real_path(path) not in own]


def _remove_owned(uid: int, own: set[str]) -> None:
    """Removes what the sandbox uid left in the host's shared folders (no bubblewrap)."""
    for path in _strays(uid, own):
        _remove(path)


def _remove(folder: str) -> None:
    """Removes a folder the command wrote; warns, rather than fails, when something stays."""
    try:
        remove_tree(folder)
    except OSError as exc:
        warnings.warn(f"npfl_course.sandbox: {exc}", RuntimeWarning, stacklevel=2)
