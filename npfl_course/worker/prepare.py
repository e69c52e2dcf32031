"""The student's kernel, prepared before its first cell.

The worker's driver (:mod:`npfl_course.worker.driver`) calls :func:`install` in the
freshly started kernel, as a silent request (no trace in the notebook, its history or
its execution counts). It

* makes the packages the notebook's locked cells and the calls' agent import
  (:data:`PROTECTED_ROOTS`) importable only from the Python installation: a submission's
  ``torch.py`` or ``npfl_lib/`` beside the notebook cannot stand in for them (its other
  files import as in JupyterLab);
* imports numpy, torch and npfl_lib with the garbage collector off and freezes what they
  made (about 15 % less CPU for the imports, and collections skip those objects).

This is not a defence: the test cells do not run in this kernel
(:mod:`npfl_course.worker.trusted`), so what the student's code changes here changes
only what the student's own functions compute. Until issue 12 a guard here compared the
grading environment with a snapshot after every cell; the test cells' move out of the
kernel made it unnecessary.
"""

from __future__ import annotations

import contextlib
import sys

PROTECTED_ROOTS = ("npfl_lib", "npfl_course", "torch", "numpy", "IPython", "ipykernel")
PREIMPORTED = ("numpy", "torch", "npfl_lib")


class _State:
    roots: tuple[str, ...] = ()  # where protected modules may come from
    meta_path: list = []  # the import machinery at install, without our finder


def _within(path: str, root: str) -> bool:
    import os

    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _installed(path: str | None) -> bool:
    if not path:
        return False
    if path.startswith("<"):
        return path.startswith("<frozen ")  # the standard library's frozen modules
    return any(_within(path, r) for r in _State.roots)


class _ProtectedImports:
    """First on ``sys.meta_path``: protected packages come from the installation only.

    Their top-level modules are looked up with the finders and ``sys.path`` entries of the
    kernel's start, without the notebook's folder.
    """

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        import importlib.machinery

        if path is not None or fullname.split(".")[0] not in PROTECTED_ROOTS:
            return None
        for finder in _State.meta_path:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(fullname, list(_State.roots))
            else:
                spec = getattr(finder, "find_spec", lambda *a: None)(fullname, None)
            if spec is not None and (
                spec.origin in (None, "built-in", "frozen") or _installed(spec.origin)
            ):
                return spec
        raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)


def _trusted_roots() -> tuple[str, ...]:
    import os

    # The sandbox clears PYTHONPATH and the user site: of the kernel's sys.path, only the
    # notebook's folder is the student's.
    folder = os.getcwd()
    roots = [e for e in sys.path if e not in ("", ".") and not _within(e, folder)]
    for finder in sys.meta_path:  # setuptools' editable finders map package -> source dir
        module = sys.modules.get(getattr(finder, "__module__", ""))
        mapping = getattr(finder, "MAPPING", getattr(module, "MAPPING", None))
        if isinstance(mapping, dict):
            roots += [os.path.dirname(str(p)) for p in mapping.values()]
    return tuple(dict.fromkeys(roots))


def install() -> None:
    """Called once in the new kernel, before any cell (see the module docstring)."""
    from IPython import get_ipython

    if get_ipython() is None:
        raise RuntimeError("npfl_course.worker.prepare.install() runs in an IPython kernel")
    _State.roots = _trusted_roots()
    _State.meta_path = list(sys.meta_path)
    sys.meta_path.insert(0, _ProtectedImports)
    import gc

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in PREIMPORTED:
            with contextlib.suppress(ImportError):
                __import__(name)
    finally:
        if gc_was_enabled:
            gc.freeze()  # what the imports made stays: collections skip it
            gc.enable()
