"""The processes of a sandboxed command: its launcher, its uid, and killing what it started.

The launcher (:data:`LAUNCHER`) runs first, sets the rlimits and drops to the sandbox
uid; as root each sandbox gets an unprivileged uid of its own (``UID_BASE + slot``, a
file lock per uid, :func:`private_uid`), its workdir is chowned to it while it runs,
and at the end every process of that uid is killed (:func:`kill_all`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import tempfile
import time

UID_BASE = 1_500_000_000  # unprivileged uids used when we are root: UID_BASE + slot
UID_SLOTS = 4096
MEMORY_POLL_SECONDS = 0.1
MAX_DESCRIPTORS = 100_000  # open files of all its processes the disk watchdog looks at

# Runs first inside the sandbox (or as the fallback's child): drops to the unprivileged
# uid, sets the limits, execs the command. Python rather than setpriv/prlimit so it works
# wherever Python does; -I -S keeps its start-up around 10 ms.
LAUNCHER = r"""
import ctypes, os, resource, sys  # all imports first: the uid below may not read them
uid, nproc, mem, fsize = (int(v) for v in sys.argv[1:5])
argv = sys.argv[5:]
def limit(res, val):
    hard = resource.getrlimit(res)[1]
    val = val if hard == resource.RLIM_INFINITY else min(val, hard)
    resource.setrlimit(res, (val, val))
limit(resource.RLIMIT_DATA, mem)
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


def is_root() -> bool:
    return os.geteuid() == 0


def real_path(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


@contextlib.contextmanager
def private_uid():
    """Yields an unprivileged uid no other sandbox uses now (a flock per uid), or -1."""
    if not is_root():
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


def _anonymous_kib(pid: int) -> int:
    """The proportional share of anonymous memory (heap, stacks, tensors) of ``pid``, in KiB.

    Shared library code and files mapped from disk do not count (the CUDA build of torch maps
    gigabytes of them and touches little); pages shared with a forked parent count by share.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1])
        with open(f"/proc/{pid}/status") as f:  # kernels before 5.5: no Pss_Anon
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _members(pid: int, uid: int) -> list[int]:
    """The processes of a sandboxed command: as root those of its uid (which includes any
    that left the tree), else its tree; one scan of /proc either way."""
    return _pids_of_uid(uid) if uid >= 0 else [pid, *_descendants(pid)]


def memory_mib(pid: int, uid: int) -> float:
    """Anonymous memory of the command ``pid`` and all its processes together, in MiB."""
    return sum(_anonymous_kib(p) for p in _members(pid, uid)) / 1024


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


def kill_all(pid: int, uid: int, bwrap: bool) -> int:
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


def deleted_file_bytes(
    pid: int, uid: int, devices: set[int], max_descriptors: int = MAX_DESCRIPTORS
) -> tuple[int, str | None]:
    """Disk held by files that the command's processes keep open after deleting them.

    Such a file takes space until it is closed, but no walk of a folder finds it: counted are
    the regular files on ``devices`` (``st_dev``) behind the processes' descriptors whose
    link ends in `` (deleted)``, each once, at ``st_blocks * 512`` bytes.

    Returns:
        tuple[int, str | None]: The bytes, and None, or why the count stopped early (more
        than ``max_descriptors`` descriptors in all); then only those seen so far count.
    """
    total, seen, looked = 0, set(), 0
    for member in _members(pid, uid):
        folder = f"/proc/{member}/fd"
        try:
            descriptors = os.listdir(folder)
        except OSError:
            continue
        looked += len(descriptors)
        if looked > max_descriptors:
            return total, f"more than {max_descriptors} open files"
        for fd in descriptors:
            try:
                if not os.readlink(f"{folder}/{fd}").endswith(" (deleted)"):
                    continue
                info = os.stat(f"{folder}/{fd}")
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            if info.st_dev in devices and stat.S_ISREG(info.st_mode) and key not in seen:
                seen.add(key)
                total += info.st_blocks * 512
    return total, None


def reachable_by_others(path: str) -> bool:
    """Whether an unprivileged uid can reach ``path``: execute a file, list a directory."""
    path = real_path(path)
    if not os.path.exists(path):
        return True  # nothing to reach: running it fails with "cannot execute" either way
    if os.path.isfile(path) and not os.stat(path).st_mode & 0o001:
        return False
    if os.path.isdir(path) and os.stat(path).st_mode & 0o005 != 0o005:
        return False
    parent = os.path.dirname(path) if os.path.isfile(path) else path
    while True:
        if not os.stat(parent).st_mode & 0o001:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def user_task_count() -> int:
    """Processes and threads of our real uid (what RLIMIT_NPROC counts for it)."""
    count = 0
    for pid in _pids_of_uid(os.getuid()):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count
