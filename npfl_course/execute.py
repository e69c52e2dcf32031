"""Executes one prepared notebook, cell by cell: the worker of ``npfl-course autograde``.

    python -I -m npfl_course.execute IN.ipynb OUT.ipynb [--cell-timeout S] [--memory-mb MB]

``npfl_course.autograde`` runs it inside the sandbox (``npfl_course.sandbox``), one process
per submission, in a scratch folder holding only that submission's files. ``IN`` is the
notebook nbgrader has already sanitized (locked and test cells restored from the
gradebook); ``OUT`` receives the same cells with their outputs, in nbformat 4 JSON.

Why not a Jupyter kernel: the cells run in an IPython shell in this very process (the shell
class ipykernel builds on, so magics, ``display``, rich results and tracebacks behave as in
a notebook), which saves starting a kernel and its ZeroMQ channels for every submission.

What a submission cannot do to the verdict here:

* hang: each cell has ``--cell-timeout`` seconds; then it is interrupted (a
  ``CellTimeoutError`` the student's ``except Exception`` does not catch) and the next
  cell runs. A cell that ignores the interrupt is abandoned after a grace period and the
  worker ends, recording the timeout. (The sandbox's notebook limit is the last resort.)
* flood: stream output is kept up to MAX_STREAM_CHARS per cell, rich output up to
  MAX_RICH_CHARS, the rest is dropped with a note.
* escape into the grader: a forked child that returns from a cell exits at once, and
  processes the cells started are killed at a timeout and before the final OUT is written.
* neuter the tests: after every cell a guard compares the grading environment with a
  snapshot taken before any student code ran: builtins, the modules in ``sys.modules``
  of npfl_lib, npfl_course, torch, numpy and IPython, the namespaces of npfl_lib, torch,
  ``torch.nn.functional``, numpy and ``torch.Tensor``, the code, defaults and closures of
  their Python functions, the IPython shell's methods, hooks and transformers, trace and
  profile functions, and the names the assignment's own (locked) cells bound to
  functions, classes and modules. On the first difference, the cell gets a
  ``GradingTamperError`` saying what changed and no further cell runs (all later test
  cells score 0). Adding audit hooks is refused.

The limit of this: student code runs in the same interpreter as the tests, so code that
patches memory directly (ctypes), or objects that misbehave when the tests inspect them,
can still mislead a test; the guard catches the routes above, not every conceivable one.

OUT's metadata ``npfl_execute`` = ``{"cells_run": n, "done": bool}``: the first ``n``
cells ran; ``done`` is False when the process died before the end, and the caller
reports why (memory, a signal, the notebook time limit). OUT is rewritten after every
cell, so what ran before a crash is kept.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import ctypes
import datetime
import gc
import io
import json
import os
import resource
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

_MISSING = object()

META_KEY = "npfl_execute"
EXIT_CELL_TIMEOUT = 3  # a cell ignored its interrupt; OUT records it
EXIT_INTERNAL = 4  # the worker itself failed; OUT holds what ran before
MAX_STREAM_CHARS = 100_000  # per cell, stdout and stderr together
MAX_RICH_CHARS = 2_000_000  # per cell, display data and results
PROTECTED_ROOTS = ("npfl_lib", "npfl_course", "torch", "numpy", "IPython")
# Namespaces whose existing entries must keep their identity (besides builtins and npfl_*).
PROTECTED_NAMESPACES = (
    "torch", "torch.nn", "torch.nn.functional", "torch.autograd", "numpy",
    "os", "sys", "json", "signal", "threading", "time", "io", "contextlib",
)  # fmt: skip
# Where stdlib modules' state changes legitimately (sys.stdout, sys.last_value, ...).
VOLATILE = {"sys": {"stdout", "stderr", "stdin", "displayhook", "excepthook", "ps1", "ps2",
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


# Bound at import, before any student code: what the executor itself calls.
_getpid, _exit, _replace, _dumps, _open = os.getpid, os._exit, os.replace, json.dumps, open
_BUILTINS = builtins.__dict__


class CellTimeoutError(BaseException):
    """A cell ran past its time limit (a BaseException: ``except Exception`` won't catch it)."""


# ----------------------------------------------------------------------------------
# Capturing a cell's outputs as nbformat outputs
# ----------------------------------------------------------------------------------


class _Outputs:
    """The outputs of the running cell, bounded."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.stream_chars = self.rich_chars = 0
        self.dropped_stream = self.dropped_rich = 0

    def stream(self, name: str, text: str) -> None:
        room = MAX_STREAM_CHARS - self.stream_chars
        if len(text) > room:
            self.dropped_stream += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if not text:
            return
        self.stream_chars += len(text)
        last = self.items[-1] if self.items else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def rich(self, output_type: str, data: dict, metadata: dict, count: int | None) -> None:
        data = {str(k): v for k, v in dict(data).items() if isinstance(v, (str, dict, list))}
        size = sum(len(json.dumps(v)) if not isinstance(v, str) else len(v) for v in data.values())
        if self.rich_chars + size > MAX_RICH_CHARS:
            self.dropped_rich += 1
            return
        self.rich_chars += size
        output = {"output_type": output_type, "data": data, "metadata": _jsonable(metadata)}
        if output_type == "execute_result":
            output["execution_count"] = count
        self.items.append(output)

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        traceback = [str(line)[:10_000] for line in list(traceback)[:200]]
        traceback = traceback or [f"{ename}: {evalue}"]  # feedback shows the traceback
        error = {"output_type": "error", "ename": ename, "evalue": evalue[:10_000]}
        self.items.append({**error, "traceback": traceback})

    def has_error(self) -> bool:
        return any(item["output_type"] == "error" for item in self.items)

    def finish(self) -> list[dict]:
        notes = []
        if self.dropped_stream:
            notes.append(f"{self.dropped_stream} characters of printed output")
        if self.dropped_rich:
            notes.append(f"{self.dropped_rich} displayed object(s)")
        if notes:
            text = f"\n... [output truncated: {' and '.join(notes)} dropped] ...\n"
            self.items.append({"output_type": "stream", "name": "stdout", "text": text})
        return self.items


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return {}


def _text(value: Any) -> str:
    """``str(value)``, also for objects whose ``__str__`` is broken or hostile."""
    try:
        text = str(value)
    except BaseException:  # noqa: BLE001 - a student's exception class may raise anything
        return f"<unprintable {type(value).__name__}>"
    return text if isinstance(text, str) else "<unprintable>"


class _State:
    """Mutable state of this module, in one object (the guard checks module globals)."""

    sink = _Outputs()  # where the running cell's outputs go
    executor = None  # the Executor, for the SIGUSR1 handler


class _Stream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a running cell."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        _State.sink.stream(self.name, text)
        return len(text)


# ----------------------------------------------------------------------------------
# The IPython shell
# ----------------------------------------------------------------------------------


def _make_shell():
    """An IPython shell whose displays, results and tracebacks go to ``_State.sink``."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):  # fmt: skip
            _State.sink.rich("display_data", data, metadata or {}, None)

        def clear_output(self, wait=False):
            sink = _State.sink
            sink.items = [item for item in sink.items if item["output_type"] == "error"]

    class Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            _State.sink.rich("execute_result", format_dict, md_dict or {}, self.prompt_count)

        def finish_displayhook(self):
            self._is_active = False

    class Shell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Publisher)

        def _showtraceback(self, etype, evalue, stb):
            _State.sink.error(_text(getattr(etype, "__name__", etype)), _text(evalue), stb)

        def enable_gui(self, gui=None):
            pass  # no event loop here; the inline backend needs none

        @contextlib.contextmanager
        def _tee(self, channel):
            yield  # IPython >= 9 would copy all output into the history: unbounded

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    return Shell.instance(config=config)


# ----------------------------------------------------------------------------------
# The guard against tampering with the grading environment
# ----------------------------------------------------------------------------------


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


def bound_names(source: str) -> set[str] | None:
    """Names a cell binds at its top level (assignments, imports, defs), None if unparsable."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
    return names


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
            (name, obj, {k: v for k, v in vars(obj).items() if k not in VOLATILE.get(name, ())})
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
        for method in SHELL_METHODS:
            if method in shell_dict:
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


# ----------------------------------------------------------------------------------
# The cell timeout
# ----------------------------------------------------------------------------------


class _Watchdog(threading.Thread):
    """Interrupts the main thread when a cell runs too long; ends the process if that fails."""

    def __init__(self, on_abandon: Callable[[], None]) -> None:
        super().__init__(daemon=True, name="npfl-watchdog")
        self.main = threading.main_thread().ident
        self.on_abandon = on_abandon
        self.lock = threading.Condition()
        self.deadline: float | None = None
        self.expired = False
        self.seconds = 0.0
        self.monotonic = time.monotonic  # bound now: student code cannot patch it away

    def arm(self, seconds: float) -> None:
        with self.lock:
            self.seconds, self.deadline, self.expired = seconds, self.monotonic() + seconds, False
            self.lock.notify()

    def disarm(self) -> None:
        with self.lock:
            self.deadline = None
            self.lock.notify()

    def run(self) -> None:
        kill, monotonic = signal.pthread_kill, self.monotonic
        while True:
            with self.lock:
                while self.deadline is None or monotonic() < self.deadline:
                    left = None if self.deadline is None else self.deadline - monotonic()
                    self.lock.wait(left)
                self.expired = True
                deadline = self.deadline
                grace = min(10.0, max(5.0, self.seconds / 4))
            while True:  # interrupt once a second until the cell ends or the grace is over
                with self.lock:
                    if self.deadline is not deadline:
                        break
                    if monotonic() > deadline + grace:
                        self.on_abandon()
                        return
                _no_more_processes()  # a fork bomb would refill what we kill ...
                kill_descendants()  # ... and starve the interrupted cell of CPU
                with contextlib.suppress(OSError):
                    kill(self.main, signal.SIGUSR1)
                with self.lock:
                    self.lock.wait(1.0)


# ----------------------------------------------------------------------------------
# Running the notebook
# ----------------------------------------------------------------------------------


def _is_trusted(cell: dict) -> bool:
    """A cell whose source is the instructor's (nbgrader restored locked cells)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("locked") or meta.get("grade")) and not meta.get("solution")


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{name}/stat", "rb") as handle:
                        stat = handle.read().decode(errors="replace")
                    parents[int(name)] = int(stat.rpartition(")")[2].split()[1])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


_NPROC = resource.getrlimit(resource.RLIMIT_NPROC)


def _no_more_processes() -> None:
    """Stops this process from starting processes (until :func:`_processes_again`)."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, _NPROC[1]))


def _processes_again() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, _NPROC)


def kill_descendants() -> None:
    """SIGKILLs every process this one started (a subreaper: orphans count too)."""
    for _ in range(20):  # a fork bomb forks between the scan and the kill: repeat
        pids = _descendants(_getpid())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.01)


class Executor:
    """Runs the code cells of ``notebook`` (a dict) in order, saving after each to ``out``."""

    def __init__(self, notebook: dict, out: str, cell_seconds: float, memory_mb: int | None):
        self.notebook, self.out = notebook, out
        self.cell_seconds, self.memory_mb = cell_seconds, memory_mb
        self.pid = _getpid()
        self.results: list[dict | None] = [None] * len(notebook["cells"])
        self.cells_run = 0
        self.lock = threading.Lock()  # the watchdog thread may save, too
        self.shell = _make_shell()
        self.guard = _Guard(self.shell)
        self.watchdog = _Watchdog(self._abandon)
        self.current = 0

    def save(self, done: bool) -> None:
        if _getpid() != self.pid:
            return
        cells = []
        for index, cell in enumerate(self.notebook["cells"]):
            cell = dict(cell)
            if cell.get("cell_type") == "code":
                cell.update(self.results[index] or {"outputs": [], "execution_count": None})
            cells.append(cell)
        metadata = dict(self.notebook.get("metadata", {}))
        metadata[META_KEY] = {"cells_run": self.cells_run, "done": done}
        text = _dumps({**self.notebook, "cells": cells, "metadata": metadata}, indent=1)
        temporary = f"{self.out}.{self.pid}.tmp"
        with _open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        _replace(temporary, self.out)

    def _fail_rest(self, start: int, ename: str, evalue: str) -> None:
        for index in range(start, len(self.notebook["cells"])):
            if self.notebook["cells"][index].get("cell_type") == "code":
                error = {"output_type": "error", "ename": ename, "evalue": evalue}
                self.results[index] = {
                    "outputs": [{**error, "traceback": [f"{ename}: {evalue}"]}],
                    "execution_count": None,
                }
        self.cells_run = len(self.notebook["cells"])

    def _abandon(self) -> None:
        """The watchdog's last resort: the cell ignores its interrupt."""
        with self.lock:
            index = self.current
            message = f"not run: cell {index} exceeded its time limit and ignored the interrupt"
            self._fail_rest(index + 1, "DeadKernelError", message)
            error = self._timeout_message() + " and ignored the interrupt"
            outputs = [{"output_type": "error", "ename": "CellTimeoutError", "evalue": error,
                        "traceback": [f"CellTimeoutError: {error}"]}]  # fmt: skip
            self.results[index] = {"outputs": outputs, "execution_count": None}
            kill_descendants()
            self.save(done=True)
        _exit(EXIT_CELL_TIMEOUT)

    def _timeout_message(self) -> str:
        return f"the cell did not finish within the time limit of {self.cell_seconds:g} s"

    def run(self) -> None:
        shell, guard = self.shell, self.guard
        run_cell = type(shell).run_cell  # bound before student code can patch the class
        # The code of this module, checked here (a running frame keeps its own code) before
        # the guard, whose methods student code might have swapped, is trusted.
        own = _own_functions()
        saved_builtins = list(guard.builtins.items())
        self.watchdog.start()
        self.save(done=False)
        for index, cell in enumerate(self.notebook["cells"]):
            self.current = index
            if cell.get("cell_type") != "code":
                self.cells_run = index + 1
                continue
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            outputs = _Outputs()
            _State.sink = outputs
            count = shell.execution_count
            started = _now()
            saved_streams = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = _Stream("stdout"), _Stream("stderr")
            try:
                self.watchdog.arm(self.cell_seconds)
                try:
                    result = run_cell(shell, source, store_history=True)
                finally:
                    self.watchdog.disarm()
            except CellTimeoutError:  # arrived between the cell's end and disarm()
                result = None
            finally:
                if sys.gettrace() is _raise_in_cell:  # set by the timeout, not by the student
                    sys.settrace(None)
                replaced = None  # builtins first, inline: everything below relies on them
                for key, value in saved_builtins:
                    if _BUILTINS.get(key, _MISSING) is not value:
                        _BUILTINS[key], replaced = value, replaced or key
                sys.stdout, sys.stderr = saved_streams
            if _getpid() != self.pid:
                _exit(0)  # a child forked by the cell must not run the notebook on
            problem = f"builtins.{replaced} was replaced" if replaced else None
            for owner, name, function, code in own:
                if vars(owner).get(name) is not function or function.__code__ is not code:
                    problem = problem or f"the grader's own code ({name}) was modified"
                    setattr(owner, name, function)
                    function.__code__ = code
            trusted = _is_trusted(cell)
            bound = bound_names(source) if trusted else set()
            problem = problem or guard.check(shell.user_ns, bound)
            if problem is None and _State.sink is not outputs:
                problem = "the worker's output capture was replaced"
            if problem is not None:
                guard.restore()
            self._record_errors(outputs, result)
            with self.lock:
                if problem is None and trusted:
                    guard.remember_names(shell.user_ns, bound)
                if problem is not None:
                    outputs.error("GradingTamperError", _tamper_message(problem, index), [])
                timing = {"iopub.execute_input": started, "shell.execute_reply": _now()}
                self.results[index] = {
                    "outputs": outputs.finish(),
                    "execution_count": count,
                    "metadata": {**cell.get("metadata", {}), "execution": timing},
                }
                self.cells_run = index + 1
                if problem is not None:
                    reason = f"not run: the grading environment was modified in cell {index}"
                    self._fail_rest(index + 1, "GradingTamperError", f"{reason} ({problem})")
                    break
                self.save(done=False)
        with self.lock:
            kill_descendants()
            self.save(done=True)

    def _record_errors(self, outputs: _Outputs, result) -> None:
        """Timeouts, errors whose display was suppressed, and memory errors, as outputs."""
        error = None if result is None else result.error_before_exec or result.error_in_exec
        if self.watchdog.expired:
            _processes_again()
            outputs.items = [o for o in outputs.items if o["output_type"] != "error"]
            outputs.error("CellTimeoutError", self._timeout_message(), [])
            kill_descendants()
        elif error is not None and not outputs.has_error():
            name = type(error).__name__  # the traceback display was disabled: still a failure
            outputs.error(name, _text(error), [f"{name}: {_text(error)}"])
        for item in outputs.items if self.memory_mb else ():
            text = f"{item.get('ename', '')} {item.get('evalue', '')}"
            if item["output_type"] == "error" and (
                "MemoryError" in text or "can't allocate memory" in text or "out of memory" in text
            ):
                limit = f"memory limit exceeded ({self.memory_mb} MB)"
                item["evalue"] = f"{item['evalue']}: {limit}" if item["evalue"] else limit


def _now() -> str:
    """The current time as nbclient records it in ``metadata.execution``."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _tamper_message(problem: str, index: int) -> str:
    return (
        f"the grading environment was modified in cell {index}: {problem}. Submissions must "
        "not change the tests, the grading helpers or the libraries they use; the cells "
        "after this one were not run"
    )


def _own_functions() -> list[tuple[Any, str, types.FunctionType, types.CodeType]]:
    """(owner, name, function, code) of every function of this module and its classes."""
    module = sys.modules[__name__]
    owners = [module] + [v for v in vars(module).values() if isinstance(v, type)]
    found = []
    for owner in owners:
        for name, value in vars(owner).items():
            if isinstance(value, types.FunctionType) and value.__module__ == __name__:
                found.append((owner, name, value, value.__code__))
    return found


def _prepare_imports() -> None:
    """Imports the grading modules before any student code runs, then lets the notebook's
    folder be imported from, after everything installed (so its files cannot shadow them)."""
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]
    for name in ("numpy", "torch", "npfl_lib", "npfl_lib.grading"):
        with contextlib.suppress(ImportError):
            __import__(name)
    sys.path.append(cwd)


def _refuse_audit_hooks(attempts: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "sys.addaudithook":
            attempts.append("an audit hook was installed (sys.addaudithook)")
            raise RuntimeError("audit hooks are not allowed while grading")

    sys.addaudithook(hook)


def _timing_out() -> bool:
    executor = _State.executor
    return executor is not None and executor.watchdog.expired and bool(executor.watchdog.deadline)


def _in_cell_code(frame) -> bool:
    return frame.f_code.co_filename.startswith("<")  # IPython names cells <ipython-input-...>


def _raise_in_cell(frame, event, arg):
    """A trace function: raises the timeout at the next line of the notebook's own code."""
    if _timing_out() and _in_cell_code(frame):
        sys.settrace(None)
        raise CellTimeoutError(_State.executor._timeout_message())
    return _raise_in_cell


def _on_sigusr1(signum, frame) -> None:
    """Interrupts a cell that ran out of time.

    Raised inside library code, the error could be swallowed (Python ignores errors in
    os.fork's at-fork hooks, where a fork bomb spends its time), so there it is deferred
    to the next line of the notebook's code.
    """
    if not _timing_out():
        return
    if _in_cell_code(frame):
        raise CellTimeoutError(_State.executor._timeout_message())
    while frame is not None:
        frame.f_trace = _raise_in_cell
        frame = frame.f_back
    sys.settrace(_raise_in_cell)


def main(argv: list[str] | None = None) -> int:
    """Runs the worker; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m npfl_course.execute", description=__doc__)
    parser.add_argument("input", help="the prepared notebook")
    parser.add_argument("output", help="where the executed notebook goes")
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell")
    parser.add_argument("--memory-mb", type=int, default=None, help="for error messages")
    args = parser.parse_args(argv)
    if not args.cell_timeout > 0:
        parser.error(f"--cell-timeout must be positive, got {args.cell_timeout}")
    with open(args.input, encoding="utf-8") as handle:
        notebook = json.load(handle)
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        parser.error(f"{args.input} is not a notebook (no list of cells)")
    with contextlib.suppress(Exception):  # Linux: orphans of the cells become our children
        ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    gc.disable()  # importing torch with the collector off takes some 15 % less CPU
    _prepare_imports()
    executor = Executor(notebook, args.output, args.cell_timeout, args.memory_mb)
    gc.freeze()  # what the imports made stays: later collections skip it
    gc.enable()
    _State.executor = executor
    _refuse_audit_hooks(executor.guard.attempts)
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    try:
        executor.run()
    except BaseException as exc:  # noqa: BLE001 - keep what ran; the caller reports the rest
        sys.__stderr__.write(f"npfl_course.execute: internal error: {_text(exc)!r}\n")
        with contextlib.suppress(BaseException):
            executor.save(done=False)
        os._exit(EXIT_INTERNAL)
    return 0


if __name__ == "__main__":
    # Run the module under its real name, so that the guard and pickling see one copy.
    from npfl_course import execute as _module

    sys.stdout.flush()
    _status = _module.main()
    sys.stdout.flush()
    os._exit(_status)  # student threads must not keep the process alive
