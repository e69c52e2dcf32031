"""Modules the student's kernel cannot read while it is graded (the reference solutions).

An assignment may hide modules of ``npfl_lib`` from the kernel
(``c.NpflAutograde.hidden_modules``): a student's code cannot call, copy or read the
reference it is asked to write, however it goes about it (``forbid`` in the kernel swaps
the references' code objects, but a copy made with ``types.FunctionType`` before keeps
the original). The test cells run in the worker (:mod:`npfl_course.worker.trusted`),
which keeps every module.

Two parts, in force in the forked child that becomes the kernel
(:mod:`npfl_course.worker.zygote`) before any of the student's code runs:

* **Landlock** (Linux >= 5.13) makes the hidden modules' files (sources and bytecode)
  unreadable to the kernel and every process it starts (:func:`build_ruleset` in the
  worker, :func:`apply` in the child); this is the defence. Without Landlock nothing can
  be hidden, and the grader refuses to grade such an assignment (:func:`check_hideable`)
  rather than grade it without.
* An import hook (:class:`HiddenModules`) gives the kernel a stand-in for each hidden
  module, so that an import is harmless (a setup cell's ``import npfl_lib``, a student's
  unused ``import npfl_lib.functional as F``) and only a use fails, with
  :class:`npfl_lib.grading.ForbiddenCallError` naming why. The stand-ins are not a
  defence: they hold nothing.

``npfl_lib.grading`` is never hidden (the setup cells import its helpers, the kernel's
end of the grader's calls uses its ``forbid``); hiding ``npfl_lib`` hides every other
module of it. With any module hidden, the grader's own code that the kernel does not run
is hidden too (all of ``npfl_course`` but its worker: the similarity demo holds correct
answers). The files are hidden under every path that shows them in the kernel's view
(another mount of their folders included). That view is bubblewrap's, which holds
nothing else of the course; without bubblewrap (``--no-sandbox``) other copies (a git
checkout, the instructor's notebooks) may be readable.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterable, Sequence

from npfl_course.sandbox import is_within

ALWAYS_KEPT = ("npfl_lib.grading",)
HIDEABLE_ROOTS = ("npfl_lib",)
GRADER_PACKAGE = "npfl_course"

# Landlock's system calls, numbered alike on every architecture (they came after the
# numbering was unified), and the one access right it is asked to handle.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_ACCESS_READ_FILE = 1 << 2
_PR_SET_NO_NEW_PRIVS = 38


class HidingError(RuntimeError):
    """Modules cannot be hidden here (no Landlock, or a name that is not a module)."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers; 0 where it has none (or forbids it),
    or where ``NPFL_COURSE_NO_LANDLOCK`` is set (to try a machine without it)."""
    if not sys.platform.startswith("linux") or os.environ.get("NPFL_COURSE_NO_LANDLOCK"):
        return 0
    try:
        version = _libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0),
                                  ctypes.c_uint32(_CREATE_RULESET_VERSION))  # fmt: skip
    except (OSError, AttributeError):
        return 0
    return max(int(version), 0)


def check_hideable(modules: Sequence[str]) -> list[str]:
    """The files that hiding ``modules`` makes unreadable; raises :class:`HidingError`
    when they cannot be hidden here. Imports nothing of theirs."""
    if not modules:
        return []
    if landlock_abi() < 1:
        raise HidingError(
            f"cannot hide {', '.join(modules)} from the student's kernel: this machine's "
            "Linux kernel offers no Landlock (Linux 5.13 or newer, not disabled by the "
            "boot options or a container's seccomp profile). Grade on such a machine, or "
            "remove the assignment from c.NpflAutograde.hidden_modules (then a submission "
            "can copy the reference solutions it is asked to write)"
        )
    return hidden_files(modules)


def _top_locations(root: str) -> list[str]:
    try:
        spec = importlib.util.find_spec(root)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise HidingError(f"cannot hide {root!r}: it is not an installed package")
    return [os.path.realpath(p) for p in spec.submodule_search_locations]


def _module_paths(name: str) -> list[str]:
    """The file (``a/b.py``) or folder (``a/b/``) of a module, found without importing."""
    root, *rest = name.split(".")
    if name in ALWAYS_KEPT:
        raise HidingError(f"cannot hide {name!r}: the student's kernel needs it")
    if root not in HIDEABLE_ROOTS:
        raise HidingError(
            f"cannot hide {name!r}: only modules of {', '.join(HIDEABLE_ROOTS)} can be hidden"
        )
    if not rest:
        return _top_locations(root)
    for location in _top_locations(root):
        base = os.path.join(location, *rest)
        if os.path.isdir(base) and os.path.isfile(os.path.join(base, "__init__.py")):
            return [base]
        if os.path.isfile(base + ".py"):
            return [base + ".py"]
    raise HidingError(f"cannot hide {name!r}: no such module")


def _with_bytecode(path: str) -> set[str]:
    """A module's source and its compiled files in ``__pycache__``."""
    folder, file = os.path.split(path)
    stem = file.removesuffix(".py")
    found = {path}
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.join(folder, "__pycache__")):
            if entry.name.split(".")[0] == stem:
                found.add(entry.path)
    return found


def _tree(folder: str) -> set[str]:
    return {os.path.join(f, n) for f, _, names in os.walk(folder) for n in names}


def _kept_files() -> set[str]:
    kept: set[str] = set()
    for name in ALWAYS_KEPT:
        package, _, module = name.rpartition(".")
        for path in _module_paths(package):
            kept |= _with_bytecode(os.path.join(path, module + ".py"))
    return kept


def _grader_files() -> set[str]:
    """The grader's own code that the kernel does not run: all of ``npfl_course`` but
    its worker (the kernel's end of the calls, its preparation, this module). It holds
    correct answers too (the similarity demo's students)."""
    files: set[str] = set()
    for location in _top_locations(GRADER_PACKAGE):
        kept = _with_bytecode(os.path.join(location, "__init__.py"))
        kept |= _tree(os.path.join(location, "worker"))
        files |= _tree(location) - kept
    return files


def hidden_files(modules: Iterable[str]) -> list[str]:
    """Every file of ``modules``: their sources and bytecode (folders: all they hold),
    but for those of :data:`ALWAYS_KEPT` and the packages' folders themselves; with
    them, the grader's code that the kernel does not run."""
    files: set[str] = set()
    for name in modules:
        for path in _module_paths(name):
            files |= _tree(path) if os.path.isdir(path) else _with_bytecode(path)
    if files:
        files |= _grader_files()
    return sorted(files - _kept_files())


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str]]:
    """(device, root within it, mount point) of each mount this process sees."""
    mounts = []
    with (
        contextlib.suppress(OSError),
        open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info,
    ):
        for line in info:
            fields = line.split()
            if len(fields) > 4:
                mounts.append((fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _spellings(paths: set[str]) -> set[str]:
    """``paths`` and every other path that shows the same files through another mount of
    their folders (a bind mount elsewhere; bubblewrap mounts a symlinked Python path
    twice): Landlock's rules follow paths, and a folder granted above another mount of a
    hidden file would show it."""
    mounts = _mounts()
    found = set(paths)
    for path in paths:
        on = [m for m in mounts if is_within(path, m[2])]
        if not on:
            continue
        # The last of the mounts stacked on the deepest point is the one seen there.
        device, root, point = max(reversed(on), key=lambda m: len(m[2]))
        inside = os.path.join(root, os.path.relpath(path, point))
        for other_device, other_root, other_point in mounts:
            if other_device == device and is_within(inside, other_root):
                found.add(os.path.normpath(
                    os.path.join(other_point, os.path.relpath(inside, other_root))))  # fmt: skip
    return found


def build_ruleset(files: Sequence[str]) -> int:
    """A Landlock ruleset (its descriptor) under which ``files`` are unreadable; built
    in the worker, so that a failure names its cause, and applied in the forked kernel
    (:func:`apply`). Read access is granted beneath every other entry of the folders on
    the way to the files, as they are now: what appears later directly in one of those
    folders is unreadable too (so the kernel's connection file is made before). Raises
    :class:`HidingError` where Landlock refuses."""
    hidden = _spellings({os.path.realpath(f) for f in files})
    libc = _libc()
    attr = _RulesetAttr(_ACCESS_READ_FILE)
    size = ctypes.c_size_t(ctypes.sizeof(attr))
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), size, ctypes.c_uint32(0))
    if ruleset < 0:
        raise HidingError(f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    on_the_way = set()
    for path in hidden:
        while path != "/":
            path = os.path.dirname(path)
            on_the_way.add(path)
    for folder in sorted(on_the_way):
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not in this view (a mount covers it): nothing to grant there
            continue
        for entry in entries:
            if entry.path in hidden or entry.path in on_the_way or entry.is_symlink():
                continue  # a link's target is granted (or not) where it lies
            try:
                fd = os.open(entry.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = _PathBeneath(_ACCESS_READ_FILE, fd)
                libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule),
                             ctypes.c_uint32(0))  # fmt: skip
            finally:
                os.close(fd)
    return ruleset


def apply(ruleset: int, modules: Sequence[str]) -> None:
    """In the child that becomes the kernel: restricts it (and every process it starts)
    by ``ruleset``, for good, and installs the import hook for ``modules``."""
    libc = _libc()
    try:
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    sys.meta_path.insert(0, HiddenModules(modules))


def _is_under(name: str, modules: Iterable[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _forbidden(name: str, modules: tuple[str, ...]) -> Exception:
    from npfl_lib.grading import ForbiddenCallError

    hidden = next((m for m in modules if _is_under(name, (m,))), name)
    return ForbiddenCallError(
        f"{name} is not available while this assignment is graded: the course hides "
        f"{hidden} (it holds the reference solutions) from submissions. Write it yourself; "
        "an import alone is harmless"
    )


class _Hidden:
    """Stands in for a name of a hidden module: every use raises."""

    __slots__ = ("_name", "_modules")

    def __init__(self, name: str, modules: tuple[str, ...]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_modules", modules)

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # Python's and IPython's protocols probe these
            raise AttributeError(attr)
        return _Hidden(f"{self._name}.{attr}", self._modules)

    def __call__(self, *args, **kwargs):
        raise _forbidden(self._name, self._modules)

    def __mro_entries__(self, bases):
        raise _forbidden(self._name, self._modules)

    def __instancecheck__(self, instance):
        raise _forbidden(self._name, self._modules)

    def __subclasscheck__(self, subclass):
        raise _forbidden(self._name, self._modules)

    def __iter__(self):
        raise _forbidden(self._name, self._modules)

    def __repr__(self) -> str:
        return f"<{self._name}: hidden while graded>"


class HiddenModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An import hook that gives a stand-in module for each hidden module (see the module
    docstring); kept modules inside a hidden package import as usual."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = tuple(modules)
        # A hidden package keeps its real folders, where its kept modules are found
        # (looked up now: the hook must not import while it is asked to).
        self.folders = {
            package: _module_paths(package)
            for kept in ALWAYS_KEPT
            if _is_under(package := kept.rpartition(".")[0], self.modules)
        }

    def find_spec(self, fullname, path=None, target=None):
        if not _is_under(fullname, self.modules) or fullname in ALWAYS_KEPT:
            return None
        # Every stand-in is a package, so that its submodules come from here too.
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        spec.submodule_search_locations = list(self.folders.get(fullname, []))
        return spec

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        name, modules = spec.name, self.modules

        def __getattr__(attr: str):  # noqa: N807 - a module's __getattr__ (PEP 562)
            if attr.startswith("__"):
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            return _Hidden(f"{name}.{attr}", modules)

        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module) -> None:
        pass


def hide(modules: Sequence[str]) -> None:
    """:func:`apply` of :func:`build_ruleset` in one process (for tests and tools)."""
    apply(build_ruleset(check_hideable(modules)), modules)


def is_hidden(name: str) -> bool:
    """Whether ``name`` is hidden in this kernel: it lies in a hidden module, or a kept
    module imported it from one (``npfl_lib.optim.param_groups_no_decay`` where
    ``npfl_lib.optim.groups`` is hidden)."""
    hooks = [f for f in sys.meta_path if isinstance(f, HiddenModules)]
    if any(_is_under(name, f.modules) and name not in ALWAYS_KEPT for f in hooks):
        return True
    module, _, attr = name.rpartition(".")
    owner = sys.modules.get(module)
    return bool(hooks) and isinstance(getattr(owner, attr, None), _Hidden)
