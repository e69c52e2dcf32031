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
import contextlib
import ctypes
import datetime
import gc
import json
import os
import signal
import sys
import threading
import types
from typing import Any

from npfl_course.execute_capture import MAX_RICH_CHARS as MAX_RICH_CHARS
from npfl_course.execute_capture import MAX_STREAM_CHARS as MAX_STREAM_CHARS
from npfl_course.execute_capture import _make_shell, _Outputs, _State, _Stream, _text
from npfl_course.execute_guard import (
    _BUILTINS,
    _MISSING,
    _Guard,
    _refuse_audit_hooks,
    _tamper_message,
    bound_names,
)
from npfl_course.execute_guard import PROTECTED_NAMESPACES as PROTECTED_NAMESPACES
from npfl_course.execute_guard import PROTECTED_ROOTS as PROTECTED_ROOTS
from npfl_course.execute_guard import SHELL_METHODS as SHELL_METHODS
from npfl_course.execute_guard import TRUSTED_CALLBACK_MODULES as TRUSTED_CALLBACK_MODULES
from npfl_course.execute_guard import VOLATILE as VOLATILE
from npfl_course.execute_timeout import (
    CellTimeoutError,
    _on_sigusr1,
    _processes_again,
    _raise_in_cell,
    _Watchdog,
    kill_descendants,
)

META_KEY = "npfl_execute"
EXIT_CELL_TIMEOUT = 3  # a cell ignored its interrupt; OUT records it
EXIT_INTERNAL = 4  # the worker itself failed; OUT holds what ran before
# The modules of the worker besides this one (the output capture and IPython shell, the
# tamper guard, the cell timeout): their code, like this module's, is checked after every
# cell. The module docstring is the worker's --help, so it describes the worker as a whole.
_WORKER_MODULES = (
    "npfl_course.execute_capture", "npfl_course.execute_guard", "npfl_course.execute_timeout",
)  # fmt: skip


# Bound at import, before any student code: what the executor itself calls.
_getpid, _exit, _replace, _dumps, _open = os.getpid, os._exit, os.replace, json.dumps, open


def is_trusted(cell: dict) -> bool:
    """A cell whose source is the instructor's (nbgrader restored locked cells)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("locked") or meta.get("grade")) and not meta.get("solution")


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
            trusted = is_trusted(cell)
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


def _own_functions() -> list[tuple[Any, str, types.FunctionType, types.CodeType]]:
    """(owner, name, function, code) of every function of the worker's modules and classes."""
    found = []
    for module_name in (__name__, *_WORKER_MODULES):
        module = sys.modules[module_name]
        owners = [module] + [v for v in vars(module).values() if isinstance(v, type)]
        for owner in owners:
            for name, value in vars(owner).items():
                if isinstance(value, types.FunctionType) and value.__module__ == module_name:
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
