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
* a disk limit of ``limits.disk_mb`` MiB, enforced twice: no file may grow larger
  (``RLIMIT_FSIZE``: the write fails with ``EFBIG``), and a watchdog sums the space allocated
  to the files in ``workdir`` (and, without bubblewrap, the private /tmp) and to deleted
  files the processes still hold open, every DISK_POLL_SECONDS (less often when the walk
  takes long), and kills them all when together they take more. Its walk is bounded
  (MAX_DISK_ENTRIES files and folders, paths of MAX_WALK_PATH bytes, readable folders):
  a tree it cannot measure within these bounds counts as exceeding the limit. With
  bubblewrap the private /tmp and /dev/shm are tmpfs of ``memory_mb`` each (memory);
* no core dumps;
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

The parts: :mod:`npfl_course.sandbox.limits` (:class:`Limits`, :class:`SandboxResult` and
how an exit is read), :mod:`npfl_course.sandbox.bwrap` (bubblewrap's command line and
mounts), :mod:`npfl_course.sandbox.processes` (the launcher, the sandbox uids, killing
the command's processes), :mod:`npfl_course.sandbox.files` (the disk it takes, handing its
files back, removing trees of any depth: :func:`remove_tree`); this module runs the command.
"""

from npfl_course.sandbox.bwrap import is_within
from npfl_course.sandbox.files import remove_tree
from npfl_course.sandbox.limits import Limits, SandboxResult
from npfl_course.sandbox.processes import memory_mib
from npfl_course.sandbox.run import (
    INSTALL_HINT,
    NAMESPACE_HINT,
    isolation,
    run_sandboxed,
    sandbox_available,
    unavailable_reason,
)

__all__ = [
    "INSTALL_HINT", "NAMESPACE_HINT", "Limits", "SandboxResult", "is_within", "isolation",
    "memory_mib",
    "remove_tree", "run_sandboxed", "sandbox_available", "unavailable_reason",
]  # fmt: skip
