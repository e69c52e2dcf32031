"""The bubblewrap command line of a sandboxed command: its namespaces and read-only mounts.

Only the workdir is writable; the system, the Python installation (prefixes, site
directories, the sources of editable installs) and the requested paths are mounted
read-only, never a directory at or above the workdir (:func:`readonly_mounts`).
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Iterable, Mapping

from npfl_course.sandbox.limits import Limits
from npfl_course.sandbox.processes import is_root, real_path


def is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_paths() -> set[str]:
    """Directories the Python installation needs: prefixes, site dirs, editable sources."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(os.path.dirname(real_path(sys.executable)))
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
        if any(is_within(real_path(entry), real_path(p)) for p in paths if os.path.exists(p)):
            continue
        for name in os.listdir(entry):
            full = os.path.join(entry, name)
            if os.path.isfile(os.path.join(full, "__init__.py")):
                paths.add(full)
    return {p for p in paths if p and os.path.exists(p)}


def readonly_mounts(workdir: str, extra: Iterable[str]) -> list[tuple[str, str]]:
    """(source, destination) pairs to mount read-only, outermost first, deduplicated."""
    wanted: set[tuple[str, str]] = set()
    for path in python_paths():
        # A mount above the workdir would show its siblings: other students' submissions.
        if not is_within(workdir, real_path(path)):
            wanted.add((real_path(path), real_path(path)))
            if os.path.abspath(path) != real_path(path):  # keep symlinked spellings working
                wanted.add((real_path(path), os.path.abspath(path)))
    for path in extra:
        wanted.add((real_path(path), os.path.abspath(path)))
    result = []
    for src, dst in sorted(wanted, key=lambda m: (m[1].count("/"), m[1])):
        if not any(is_within(dst, d) and is_within(src, s) for s, d in result):
            result.append((src, dst))
    return result


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives",
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "fonts", "mime.types",
    "os-release", "matplotlibrc",
)  # fmt: skip


def bwrap_argv(
    bwrap: str, workdir: str, readonly: Iterable[str], limits: Limits, env: Mapping[str, str]
) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session", "--clearenv"]
    args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not limits.network:
        args.append("--unshare-net")
    if is_root():
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
    mounts = readonly_mounts(workdir, readonly)
    # bwrap creates missing parents as 0700 root: make them traversable by the sandbox uid.
    points = [d for _, d in mounts] + [workdir]
    parents = {os.path.dirname(p) for p in points}
    for p in list(parents):
        while p not in ("/", ""):
            parents.add(p)
            p = os.path.dirname(p)
    for parent in sorted(parents, key=lambda p: p.count("/")):
        if parent != "/" and not any(is_within(parent, d) for d in [*points, "/usr"]):
            args += ["--perms", "0755", "--dir", parent]
    for src, dst in mounts:
        args += ["--ro-bind", src, dst]
    args += ["--bind", workdir, workdir, "--chdir", workdir]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args + ["--"]
