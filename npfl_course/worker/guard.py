"""The guard against tampering with the grading environment, inside the student's kernel.

The worker's driver (:mod:`npfl_course.worker.driver`) calls :func:`install` in the
freshly started kernel, before the first cell, and :func:`check` after every cell (both as
silent requests: they leave no trace in the notebook, its history or its execution
counts).

:func:`install` makes the protected packages (:data:`PROTECTED_ROOTS`) importable only
from the Python installation (a submission's ``torch.py`` or ``npfl_lib/`` cannot shadow
them; its other files import as in JupyterLab), imports numpy, torch and npfl_lib, and
takes a snapshot of the grading environment: builtins, the protected modules and
namespaces, the code of their functions, the IPython shell's methods, hooks and
transformers, trace and profile functions. :func:`check` compares with it and names the
first difference (the driver then fails the cell with ``GradingTamperError`` and runs no
further cell). After a locked cell it also protects the names that cell bound, and adds
the protected modules it imported (e.g. ``npfl_lib.grading``) to the snapshot. Adding
audit hooks is refused.

The limit of this: student code runs in the same interpreter as the tests, so code that
patches memory directly (ctypes), or objects that misbehave when the tests inspect them,
can still mislead a test; the guard catches the routes above, not every conceivable one.
"""

from __future__ import annotations

import builtins
import contextlib
import sys
import threading
import types
from typing import Any

_MISSING = object()

PROTECTED_ROOTS = ("npfl_lib", "npfl_course", "torch", "numpy", "IPython", "ipykernel")
# Standard-library namespaces: the standard library rebinds their data as it works (e.g.
# time.tzset(), called by pandas and by the first datetime.strptime, rebinds time.tzname),
# so only their functions, classes and modules, which grading calls, are compared.
STDLIB_NAMESPACES = ("os", "sys", "json", "signal", "threading", "time", "io", "contextlib")
# Namespaces whose existing entries must keep their identity (besides builtins and npfl_*).
PROTECTED_NAMESPACES = (
    "torch", "torch.nn", "torch.nn.functional", "torch.autograd", "numpy", *STDLIB_NAMESPACES,
)  # fmt: skip
# Where stdlib modules' state changes legitimately (sys.stdout, sys.last_value, ...).
# ipykernel binds builtins.input anew for every request (to its stdin channel), IPython
# builtins.get_ipython (a new bound method) for every cell.
VOLATILE = {"builtins": {"input", "get_ipython"},
            "sys": {"stdout", "stderr", "stdin", "displayhook", "excepthook", "ps1", "ps2",
                    "last_type", "last_value", "last_traceback", "last_exc", "tracebacklimit",
                    "path_importer_cache", "_jit"}}  # fmt: skip
# IPython shell attributes whose replacement on the instance would change what a cell does.
SHELL_METHODS = (
    "run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "showtraceback",
    "_showtraceback", "showsyntaxerror", "showindentationerror", "transform_cell",
    "transform_ast", "should_run_async", "_get_exc_info", "get_exception_only", "excepthook",
)  # fmt: skip
# Event callbacks the shell's own machinery (e.g. matplotlib's inline backend) registers.
TRUSTED_CALLBACK_MODULES = ("IPython", "ipykernel", "matplotlib", "matplotlib_inline")

# Bound at import, before any student code.
_BUILTINS = builtins.__dict__


def _is_protected_value(value: Any) -> bool:
    """Modules, and functions or classes of the protected packages and builtins."""
    if isinstance(value, types.ModuleType):
        return True
    kinds = (types.FunctionType, types.BuiltinFunctionType, type)
    if not isinstance(value, kinds):
        return False
    module = getattr(value, "__module__", None) or ""
    return module.split(".")[0] in (*PROTECTED_ROOTS, "builtins")


def _functions(namespace: dict) -> list[types.FunctionType]:
    found = []
    for value in namespace.values():
        for inner in (value, getattr(value, "__func__", None), getattr(value, "fget", None)):
            if isinstance(inner, types.FunctionType):
                found.append(inner)
    return found


class _Guard:
    """A snapshot of the grading environment, and the first difference from it."""

    def __init__(self, shell) -> None:
        self.shell = shell
        self.sys_modules = sys.modules
        self.meta_path = list(sys.meta_path)
        self.modules = {
            name: module
            for name, module in sys.modules.items()
            if name.split(".")[0] in PROTECTED_ROOTS
        }
        spaces: list[tuple[str, Any]] = [("builtins", builtins)]
        for name, module in self.modules.items():
            if name.split(".")[0] in ("npfl_lib", "npfl_course"):
                spaces.append((name, module))
        spaces += [(n, sys.modules[n]) for n in PROTECTED_NAMESPACES if n in sys.modules]
        for owner in ("torch.Tensor", "torch.nn.Module"):
            module, _, attr = owner.rpartition(".")
            if module in self.modules:
                spaces.append((owner, getattr(self.modules[module], attr)))
        spaces += [(cls.__qualname__, cls) for cls in type(shell).__mro__[:2]]
        self.spaces = [
            (name, obj, {k: v for k, v in vars(obj).items() if _watched(name, k, v)})
            for name, obj in spaces
        ]
        self.builtins = dict(_BUILTINS)
        functions: dict[int, types.FunctionType] = {}
        for name, _, saved in self.spaces:
            for function in _functions(saved):
                functions[id(function)] = function
            if name.split(".")[0] in ("npfl_lib", "npfl_course"):  # and their classes' methods
                for value in saved.values():
                    if isinstance(value, type) and value.__module__.startswith(name):
                        for function in _functions(dict(vars(value))):
                            functions[id(function)] = function
        self.functions = [(f, self._function_state(f)) for f in functions.values()]
        self.hooks = self._hooks()
        # ipykernel itself keeps some on the instance (e.g. _showtraceback, after start-up).
        self.shell_methods = {m: vars(shell).get(m, _MISSING) for m in SHELL_METHODS}
        # torch wraps torch.manual_seed with torch._disable_dynamo when torch._dynamo is
        # first imported (e.g. by an optimizer's step): such a wrapper calls the original.
        disable = getattr(self.modules.get("torch"), "_disable_dynamo", None)
        self.dynamo_code = disable(_noop).__code__ if callable(disable) else None
        self.names: dict[str, Any] = {}  # __main__ names the assignment's cells bound
        self.attempts: list[str] = []  # refused actions, reported by check()

    def _benign(self, old: Any, new: Any) -> bool:
        """Whether ``new`` is torch's own dynamo-disabling wrapper around ``old``."""
        if not isinstance(new, types.FunctionType) or new.__code__ is not self.dynamo_code:
            return False
        closure = [cell.cell_contents for cell in new.__closure__ or () if not _empty(cell)]
        return getattr(new, "__wrapped__", None) is old and any(c is old for c in closure)

    @staticmethod
    def _function_state(function: types.FunctionType) -> tuple:
        cells = tuple(
            _MISSING if _empty(cell) else cell.cell_contents for cell in function.__closure__ or ()
        )
        return function.__code__, function.__defaults__, function.__kwdefaults__, cells

    def _hooks(self) -> dict[str, Any]:
        shell = self.shell
        transformers = getattr(shell, "input_transformer_manager", None)
        return {
            "the shell's display publisher": shell.display_pub,
            "the shell's display hook": shell.displayhook,
            "the shell's compiler": shell.compile,
            "the shell's AST transformers": list(shell.ast_transformers),
            "the shell's input transformers": list(getattr(shell, "input_transformers_post", [])),
            "the shell's cleanup transformers": list(
                getattr(transformers, "cleanup_transforms", [])
            ),
            "the shell's line transformers": list(getattr(transformers, "line_transforms", [])),
            "the shell's custom exception handlers": tuple(shell.custom_exceptions),
        }

    def restore(self) -> None:
        """Puts everything in the snapshot back (after tampering, before the worker saves)."""
        sys.settrace(None)
        sys.setprofile(None)
        threading.settrace(None)
        threading.setprofile(None)
        sys.modules = self.sys_modules
        sys.modules.update(self.modules)
        for _, obj, saved in self.spaces:
            current = vars(obj)
            for key, value in saved.items():
                if current.get(key, _MISSING) is not value:
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(obj, key, value)
        shell_dict = vars(self.shell)
        for method, saved in self.shell_methods.items():
            if saved is _MISSING:
                shell_dict.pop(method, None)
            else:
                shell_dict[method] = saved
        for function, (code, defaults, kwdefaults, cells) in self.functions:
            function.__code__, function.__defaults__ = code, defaults
            function.__kwdefaults__ = kwdefaults
            for cell, value in zip(function.__closure__ or (), cells, strict=False):
                if value is not _MISSING:
                    cell.cell_contents = value

    def remember_names(self, namespace: dict, bound: set[str] | None) -> None:
        """Called after a trusted (locked) cell: protects what it bound."""
        for name in list(self.names) if bound is None else bound & set(self.names):
            if not _is_protected_value(namespace.get(name)):
                del self.names[name]
        for name, value in namespace.items():
            if (bound is None or name in bound) and _is_protected_value(value):
                self.names[name] = value

    def check(self, namespace: dict, allowed: set[str] | None) -> str | None:
        """The first difference from the snapshot, as a readable phrase, or None.

        ``allowed``: names the cell itself may rebind (a locked cell's own bindings;
        None: any).
        """
        if self.attempts:
            return self.attempts[0]
        if sys.modules is not self.sys_modules:
            return "sys.modules was replaced"
        for name, module in self.modules.items():
            if sys.modules.get(name, _MISSING) is not module:
                return f"the module {name} in sys.modules was replaced or removed"
        if sys.meta_path[: len(self.meta_path)] != self.meta_path:
            return "sys.meta_path (the import machinery) was changed"
        for name, obj, saved in self.spaces:
            current = vars(obj)
            for key, value in saved.items():
                now = current.get(key, _MISSING)
                if now is not value and not self._benign(value, now):
                    return f"{name}.{key} was replaced or removed"
        for function, state in self.functions:
            if self._function_state(function) != state:
                return f"the function {function.__module__}.{function.__qualname__} was modified"
        if sys.gettrace() is not None or sys.getprofile() is not None:
            return "a trace or profile function was installed (sys.settrace / sys.setprofile)"
        if getattr(threading, "_trace_hook", None) or getattr(threading, "_profile_hook", None):
            return "a trace or profile function was installed for threads"
        monitoring = getattr(sys, "monitoring", None)
        if monitoring is not None and any(monitoring.get_tool(i) for i in range(6)):
            return "a sys.monitoring tool was registered"
        hooks = self._hooks()
        for what, saved in self.hooks.items():
            now = hooks[what]
            same = now is saved if not isinstance(saved, (list, tuple)) else _same_items(now, saved)
            if not same:
                return f"{what} were replaced" if what.endswith("s") else f"{what} was replaced"
        shell_dict = vars(self.shell)
        for method, saved in self.shell_methods.items():
            if shell_dict.get(method, _MISSING) is not saved:
                return f"the shell's method {method} was replaced"
        for event, callbacks in self.shell.events.callbacks.items():
            for callback in callbacks:
                module = getattr(callback, "__module__", None) or ""
                if module.split(".")[0] not in TRUSTED_CALLBACK_MODULES:
                    return f"a callback was registered for the shell's {event!r} event"
        for name, value in self.names.items():
            if allowed is not None and name in allowed:
                continue
            if namespace.get(name, _MISSING) is not value:
                return f"the name {name!r}, bound by the assignment's own cells, was rebound"
        return None


def _watched(namespace: str, key: str, value: Any) -> bool:
    """Whether the guard compares ``namespace.key`` (see STDLIB_NAMESPACES and VOLATILE)."""
    if key in VOLATILE.get(namespace, ()):
        return False
    if namespace in STDLIB_NAMESPACES:
        return callable(value) or isinstance(value, types.ModuleType)
    return True


def _noop() -> None:
    pass


def _empty(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError when the cell is empty
    except ValueError:
        return True
    return False


def _same_items(now, saved) -> bool:
    return len(now) == len(saved) and all(a is b for a, b in zip(now, saved, strict=True))


def _tamper_message(problem: str, index: int) -> str:
    return (
        f"the grading environment was modified in cell {index}: {problem}. Submissions must "
        "not change the tests, the grading helpers or the libraries they use; the cells "
        "after this one were not run"
    )


def _refuse_audit_hooks(attempts: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "sys.addaudithook":
            attempts.append("an audit hook was installed (sys.addaudithook)")
            raise RuntimeError("audit hooks are not allowed while grading")

    sys.addaudithook(hook)


# ----------------------------------------------------------------------------------
# In the kernel: install() before the first cell, check() after every cell
# ----------------------------------------------------------------------------------

PREIMPORTED = ("numpy", "torch", "npfl_lib")


class _State:
    """The guard's state in the kernel, in one object (the guard checks module globals)."""

    guard: _Guard | None = None
    attempts: list[str] = []
    own: list[tuple[Any, str, types.FunctionType, types.CodeType]] = []
    saved_builtins: list[tuple[str, Any]] = []
    roots: tuple[str, ...] = ()  # where protected modules may come from
    meta_path: list[Any] = []  # the import machinery at install, without our finder


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
    kernel's start, without the notebook's folder, so a
    submission's ``torch.py`` or ``npfl_lib/`` cannot stand in for them.
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
            if spec is not None and (spec.origin in (None, "built-in", "frozen")
                                     or _installed(spec.origin)):  # fmt: skip
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


def _own_functions() -> list[tuple[Any, str, types.FunctionType, types.CodeType]]:
    """(owner, name, function, code) of every function of this module and its classes."""
    module = sys.modules[__name__]
    found = []
    for owner in [module] + [v for v in vars(module).values() if isinstance(v, type)]:
        for name, value in vars(owner).items():
            if isinstance(value, types.FunctionType) and value.__module__ == __name__:
                found.append((owner, name, value, value.__code__))
    return found


def install() -> None:
    """Called once in the new kernel, before any cell: imports and snapshots (see above)."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("npfl_course.worker.guard.install() runs in an IPython kernel")
    _State.roots = _trusted_roots()
    _State.meta_path = list(sys.meta_path)
    sys.meta_path.insert(0, _ProtectedImports)
    import gc

    gc_was_enabled = gc.isenabled()
    gc.disable()  # importing torch with the collector off takes ~15 % less CPU
    try:
        for name in PREIMPORTED:
            with contextlib.suppress(ImportError):
                __import__(name)
    finally:
        if gc_was_enabled:
            gc.freeze()  # what the imports made stays: collections skip it
            gc.enable()
    _State.guard = _Guard(shell)
    _State.guard.attempts = _State.attempts
    volatile = VOLATILE["builtins"]
    _State.saved_builtins = [(k, v) for k, v in _State.guard.builtins.items() if k not in volatile]
    _State.own = _own_functions()
    _refuse_audit_hooks(_State.attempts)


def _new_protected_modules(guard: _Guard) -> list[str]:
    return [
        name
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in PROTECTED_ROOTS and name not in guard.modules and module
    ]


def _foreign_code(names: list[str]) -> str | None:
    """A newly imported protected module that is not the installed one, or holds code
    that is not (a student imported it first and patched it)."""
    for name in names:
        module = sys.modules[name]
        path = getattr(module, "__file__", None)
        if path is not None and not _installed(path):
            return f"the module {name} was not imported from the installation ({path})"
        for key, value in list(vars(module).items()):
            if isinstance(value, types.FunctionType) and not _installed(value.__code__.co_filename):
                return f"{name}.{key} was replaced (by code from {value.__code__.co_filename})"
    return None


def check(index: int, trusted: bool, bound: list[str] | None) -> str | None:
    """After cell ``index``: the first difference from the snapshot, or None.

    ``trusted``: the cell is the instructor's (locked); ``bound``: the names it binds at
    its top level (None: unknown, any).
    """
    replaced = None  # builtins first, inline: everything below relies on them
    for key, value in _State.saved_builtins:
        if _BUILTINS.get(key, _MISSING) is not value:
            _BUILTINS[key], replaced = value, replaced or key
    problem = f"builtins.{replaced} was replaced" if replaced else None
    for owner, name, function, code in _State.own:
        if vars(owner).get(name) is not function or function.__code__ is not code:
            problem = problem or f"the grader's own code ({name}) was modified"
            setattr(owner, name, function)
            function.__code__ = code
    guard = _State.guard
    if guard is None:
        return problem or "the guard was not installed"
    namespace = guard.shell.user_ns
    allowed = None if bound is None else set(bound)
    problem = problem or guard.check(namespace, allowed if trusted else set())
    if problem is not None:
        guard.restore()
        return problem
    if trusted:
        guard.remember_names(namespace, allowed)
        new = _new_protected_modules(guard)
        if new:
            problem = _foreign_code(new)
            if problem is not None:
                return problem
            fresh = _Guard(guard.shell)  # the snapshot grows by what the locked cell imported
            fresh.names, fresh.attempts = guard.names, guard.attempts
            _State.guard = fresh
    return None
