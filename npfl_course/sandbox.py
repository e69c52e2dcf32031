"""Run one untrusted command (a student's notebook worker) with limits and isolation.

``run_sandboxed(argv, workdir=...)`` runs ``argv`` with:

* a wall-clock limit for the whole command; then every process it started is killed;
* a memory limit: ``RLIMIT_AS`` (address space) of ``limits.memory_mb`` on every process.
  Chosen because it works everywhere, without root and without cgroups (the CI machines
  have only cgroup v1 hierarchies owned by the host, and no delegated cgroup v2). It is a
  per-process bound: ``k`` processes may use ``k * memory_mb``, ``max_processes`` caps
  ``k``, and the private /tmp and /dev/shm (tmpfs, ``memory_mb`` each) come on top;
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
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Limits", "SandboxResult", "run_sandboxed", "sandbox_available"]

MAX_OUTPUT_BYTES = 1 << 20  # per stream: the first and the last half MiB are kept
FILE_SIZE_MB = 1024  # largest file the command may write
UID_BASE = 1_500_000_000  # unprivileged uids used when we are root: UID_BASE + slot
UID_SLOTS = 4096
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, Fedora: "
    "`dnf install bubblewrap`) to isolate them"
)

# Error texts of a failed allocation: Python, numpy, torch, C++, and the dynamic loader
# (importing a big extension module under RLIMIT_AS fails in mmap).
_MEMORY_PATTERNS = re.compile(
    r"MemoryError|Cannot allocate memory|can't allocate memory|Unable to allocate"
    r"|std::bad_alloc|out of memory|failed to map segment from shared object"
)
_PROCESS_PATTERNS = re.compile(
    r"Resource temporarily unavailable|can't start new thread|fork: retry|Cannot fork"
)
# Under RLIMIT_AS a failed stack or mmap growth ends in one of these signals.
_MEMORY_SIGNALS = (signal.SIGSEGV, signal.SIGBUS)

# Runs first inside the sandbox (or as the fallback's child): drops to the unprivileged
# uid, sets the limits, execs the command. Python rather than setpriv/prlimit so it works
# wherever Python does; -I -S keeps its start-up around 10 ms.
_LAUNCHER = r"""
import ctypes, os, resource, sys  # all imports first: the uid below may not read them
uid, nproc, mem, fsize = (int(v) for v in sys.argv[1:5])
argv = sys.argv[5:]
def limit(res, val):
    hard = resource.getrlimit(res)[1]
    val = val if hard == resource.RLIM_INFINITY else min(val, hard)
    resource.setrlimit(res, (val, val))
limit(resource.RLIMIT_AS, mem)
limit(resource.RLIMIT_FSIZE, fsize)
limit(resource.RLIMIT_CORE, 0)
if uid >= 0:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
if nproc >= 0:
    limit(resource.RLIMIT_NPROC, nproc)
try:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL, cleared by setresuid
except Exception:
    pass
try:
    os.execv(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"sandbox: cannot execute {argv[0]!r}: {exc}\n")
    os._exit(127)
"""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed command.

    Attributes:
        notebook_seconds (float): Wall clock for the whole command, in seconds.
        cell_seconds (float): Per-cell limit; not enforced here but passed on to the worker
            that executes the notebook cell by cell.
        memory_mb (int): Address-space limit (RLIMIT_AS) of every process, in MiB; also the
            size of the private /tmp.
        max_processes (int): Processes and threads the command may have at once.
        network (bool): Whether the command may use the host's network.
    """

    notebook_seconds: float = 600.0
    cell_seconds: float = 120.0
    memory_mb: int = 2048
    max_processes: int = 64
    network: bool = False


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
        process_limit_hit (bool): A fork or thread failed for lack of processes (best effort).
        sandboxed (bool): Whether bwrap isolated it (False in the fallback).
        duration (float): Wall-clock seconds.
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


def _is_root() -> bool:
    return os.geteuid() == 0


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _python_paths() -> set[str]:
    """Directories the Python installation needs: prefixes, site dirs, editable sources."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(os.path.dirname(_real(sys.executable)))
    paths.update(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        paths.add(site.getusersitepackages())
    for finder in sys.meta_path:  # setuptools' editable finders map package -> source dir
        module = sys.modules.get(getattr(finder, "__module__", ""))
        mapping = getattr(finder, "MAPPING", getattr(module, "MAPPING", None))
        if isinstance(mapping, dict):
            paths.update(str(p) for p in mapping.values())
    for entry in sys.path:
        # Entries added by .pth files, PYTHONPATH or the script's directory may be a whole
        # repository or the course itself: mount only the packages in them, never data or
        # loose modules (nbgrader_config.py may hold the gradebook's database password).
        if not entry or not os.path.isdir(entry) or not os.access(entry, os.R_OK):
            continue
        if any(_is_within(_real(entry), _real(p)) for p in paths if os.path.exists(p)):
            continue
        for name in os.listdir(entry):
            full = os.path.join(entry, name)
            if os.path.isfile(os.path.join(full, "__init__.py")):
                paths.add(full)
    return {p for p in paths if p and os.path.exists(p)}


def _readonly_mounts(workdir: str, extra: Iterable[str]) -> list[tuple[str, str]]:
    """(source, destination) pairs to mount read-only, outermost first, deduplicated."""
    wanted: set[tuple[str, str]] = set()
    for path in _python_paths():
        # A mount above the workdir would show its siblings: other students' submissions.
        if not _is_within(workdir, _real(path)):
            wanted.add((_real(path), _real(path)))
            if os.path.abspath(path) != _real(path):  # keep symlinked spellings working
                wanted.add((_real(path), os.path.abspath(path)))
    for path in extra:
        wanted.add((_real(path), os.path.abspath(path)))
    result = []
    for src, dst in sorted(wanted, key=lambda m: (m[1].count("/"), m[1])):
        if not any(_is_within(dst, d) and _is_within(src, s) for s, d in result):
            result.append((src, dst))
    return result


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives",
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "fonts", "mime.types",
    "os-release", "matplotlibrc",
)  # fmt: skip


def _bwrap_argv(
    bwrap: str, workdir: str, readonly: Iterable[str], limits: Limits, env: Mapping[str, str]
) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not limits.network:
        args.append("--unshare-net")
    if _is_root():
        # Root keeps the host's user namespace so the launcher can switch to a real
        # unprivileged uid (a mapped uid inside a user namespace would still be root to
        # RLIMIT_NPROC); only the two capabilities that switch needs survive, until it.
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args.append("--unshare-user")
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for name in _ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = str(limits.memory_mb << 20)
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    mounts = _readonly_mounts(workdir, readonly)
    # bwrap creates missing parents as 0700 root: make them traversable by the sandbox uid.
    points = [d for _, d in mounts] + [workdir]
    parents = {os.path.dirname(p) for p in points}
    for p in list(parents):
        while p not in ("/", ""):
            parents.add(p)
            p = os.path.dirname(p)
    for parent in sorted(parents, key=lambda p: p.count("/")):
        if parent != "/" and not any(_is_within(parent, d) for d in [*points, "/usr"]):
            args += ["--perms", "0755", "--dir", parent]
    for src, dst in mounts:
        args += ["--ro-bind", src, dst]
    args += ["--bind", workdir, workdir, "--chdir", workdir]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args + ["--"]


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


@contextlib.contextmanager
def _private_uid():
    """Yields an unprivileged uid no other sandbox uses now (a flock per uid), or -1."""
    if not _is_root():
        yield -1
        return
    lockdir = os.path.join(tempfile.gettempdir(), "npfl-course-sandbox-uids")
    os.makedirs(lockdir, mode=0o700, exist_ok=True)
    for slot in range(UID_SLOTS):
        fd = os.open(os.path.join(lockdir, str(UID_BASE + slot)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            yield UID_BASE + slot
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"all {UID_SLOTS} sandbox uids are in use")


def _pids_of_uid(uid: int) -> list[int]:
    """Live processes of ``uid``; zombies are left out (they hold no resources but a pid)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(name))
    return pids


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_uid(uid: int) -> None:
    """SIGKILLs every process of ``uid`` until none is left."""
    for _ in range(100):  # a fork bomb may fork between the scan and the kill: repeat
        pids = _pids_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _kill_all(pid: int, uid: int, bwrap: bool) -> int:
    """SIGKILLs the command ``pid`` and everything it started; returns how many it found.

    The tree (bwrap's PID namespace dies with its init anyway), the process group, and as
    root every process of the sandbox uid, even ones that left the tree and the group.
    Without a uid of its own, what RLIMIT_NPROC counts is the command and its descendants,
    or with bwrap the descendants of bwrap (its init and the command's tree).
    """
    tree = _descendants(pid)
    found = len(_pids_of_uid(uid)) if uid >= 0 else len(tree) + (not bwrap)
    for target in [pid, *tree]:
        with contextlib.suppress(OSError):
            os.kill(target, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    if uid >= 0:
        _kill_uid(uid)
    return found


def _chown_tree(root: str, uid: int, gid: int, only_uid: int | None = None) -> None:
    # lchown never follows the symlinks a submission may plant; a hard-linked file is
    # skipped, since its other names may lie outside the workdir.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            with contextlib.suppress(OSError):
                st = os.lstat(name)
                if only_uid is not None and st.st_uid != only_uid:
                    continue
                if only_uid is None and st.st_nlink > 1 and not os.path.isdir(name):
                    continue
                os.lchown(name, uid, gid)


def _reachable_by_others(path: str) -> bool:
    """Whether an unprivileged uid can reach (and, for files, execute) ``path``."""
    path = _real(path)
    if not os.path.exists(path):
        return True  # nothing to reach: running it fails with "cannot execute" either way
    if os.path.isfile(path) and not os.stat(path).st_mode & 0o001:
        return False
    parent = os.path.dirname(path) if os.path.isfile(path) else path
    while True:
        if not os.stat(parent).st_mode & 0o001:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _user_task_count() -> int:
    """Processes and threads of our real uid (what RLIMIT_NPROC counts for it)."""
    count = 0
    for pid in _pids_of_uid(os.getuid()):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count


@functools.lru_cache(maxsize=1)
def _bwrap_self_test() -> str | None:
    """None when bwrap runs Python under our exact configuration, else why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = _run([sys.executable, "-c", "print('ok')"], tmp, (), Limits(), None, bwrap)
        except OSError as exc:
            return f"bwrap failed to start: {exc}"
        if result.returncode != 0 or result.stdout.strip() != "ok":
            return f"bwrap self-test failed: {result.stderr.strip()[-500:]}"
    return None


def _forced_off() -> bool:
    return os.environ.get("NPFL_COURSE_NO_BWRAP", "") not in ("", "0")


def sandbox_available() -> bool:
    """Whether bubblewrap is installed and isolates commands here (tested once, cached).

    Returns:
        bool: False when bwrap is missing, fails its self-test, or NPFL_COURSE_NO_BWRAP=1.
    """
    return not _forced_off() and _bwrap_self_test() is None


_warned = threading.Event()


def _warn_fallback() -> None:
    if _warned.is_set():
        return
    _warned.set()
    why = "disabled by NPFL_COURSE_NO_BWRAP" if _forced_off() else _bwrap_self_test()
    root_note = (
        " Running as root without bwrap, the process limit holds only when the command's "
        "interpreter and workdir are reachable by other users."
        if _is_root()
        else ""
    )
    warnings.warn(
        f"npfl_course.sandbox: bubblewrap unavailable ({why}); untrusted code runs with time, "
        f"memory and process limits only: the file system and the network are NOT isolated. "
        f"Please {INSTALL_HINT}.{root_note}",
        RuntimeWarning,
        stacklevel=3,
    )


def run_sandboxed(
    argv: Sequence[str],
    *,
    workdir: str | os.PathLike,
    readonly: Iterable[str | os.PathLike] = (),
    limits: Limits = Limits(),
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
        return _run(argv, workdir, readonly, limits, env, shutil.which("bwrap"))
    if require_sandbox:
        why = "disabled by NPFL_COURSE_NO_BWRAP" if _forced_off() else _bwrap_self_test()
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
        if uid >= 0 and bwrap is None:
            reach = (command, os.path.dirname(workdir))  # workdir itself gets chowned
            if not all(map(_reachable_by_others, reach)):
                uid = -1  # the sandbox uid could not run it: root without a process limit
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
        expired = threading.Event()

        def expire():
            expired.set()
            counts.append(_kill_all(proc.pid, uid, bwrap is not None))

        timer = threading.Timer(limits.notebook_seconds, expire)
        timer.start()
        try:
            # Block without reaping (no polling delay); while unreaped, proc.pid cannot be
            # reused, so the timer and the cleanup below never signal a stranger.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        finally:  # also on KeyboardInterrupt: never leave a submission running
            timer.cancel()
            timer.join()
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
    return _result(returncode, stdout, stderr, timed_out, limits, bwrap, duration, left)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _result(returncode, stdout, stderr, timed_out, limits, bwrap, duration, left):
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
