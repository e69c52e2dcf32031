"""The worker's driver: runs a prepared notebook in a real IPython kernel, with nbclient.

It runs inside the sandbox (see :mod:`npfl_course.worker.protocol` for its command line
and the files it writes) and executes the notebook the way ``nbgrader autograde`` does:
nbclient and a fresh ipykernel, with nbgrader's ``Execute`` settings (each cell at most
``--cell-timeout`` seconds, then interrupted and given a ``CellTimeoutError``; errors do
not stop the notebook). So a cell prints, displays, plots and fails in the grader as in
JupyterLab and in stock nbgrader. Besides, and unlike nbgrader:

* the test cells (cells with points) run here, in the worker, not in the kernel
  (:mod:`npfl_course.worker.trusted`), with a copy of the locked cells they read names
  from; the student's names are proxies whose calls run in the kernel
  (``--tests-in-kernel``: all cells in the kernel, as nbgrader; for comparisons only);
* before the first cell the kernel is prepared (:mod:`npfl_course.worker.prepare`: the
  course's packages from the installation only, preimported);
* a cell that ignores the interrupt for ``iopub_timeout`` seconds, or kills its kernel
  (``os._exit``, a crash), fails with the reason, and the cells after it are not run
  (nbgrader would abandon the whole submission);
* the outputs are bounded, per cell (``MAX_STREAM_CHARS``, ``MAX_RICH_CHARS``,
  ``MAX_OUTPUTS``, ``MAX_ERROR_CHARS`` per error) and in the whole notebook
  (``MAX_NOTEBOOK_OUTPUTS``, ``MAX_NOTEBOOK_CHARS``, ``MAX_NOTEBOOK_VALUES``;
  :mod:`npfl_course.worker.protocol`), updates of a display included; what is dropped is
  noted on stdout;
* the kernel's Jupyter and IPython configuration comes from nowhere the submission can
  write (its folder is the kernel's home).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

# jsonschema (through nbformat) would build an IRI grammar for a second at import; the
# worker never checks that format.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellTimeoutError, DeadKernelError  # noqa: E402
from nbclient.util import ensure_async  # noqa: E402
from nbformat import NotebookNode, from_dict  # noqa: E402
from nbformat.v4.rwbase import rejoin_lines  # noqa: E402

from npfl_course.worker import hiding  # noqa: E402
from npfl_course.worker.protocol import (  # noqa: E402
    EXIT_INTERNAL,
    MATPLOTLIB_CACHE,
    MAX_ERROR_CHARS,
    MAX_NOTEBOOK_CHARS,
    MAX_NOTEBOOK_OUTPUTS,
    MAX_NOTEBOOK_VALUES,
    MAX_OUTPUTS,
    MAX_RICH_CHARS,
    MAX_STREAM_CHARS,
    META_KEY,
    WORKER_NOTE_CHARS,
    ResultWriter,
    bound_names,
    is_trusted,
    json_values,
    rich_chars,
)
from npfl_course.worker.zygote import Zygote, ZygoteKernelManager, fork_zygote  # noqa: E402

# Per cell, by kind of output; errors from the kernel: room for two (one is usual).
CELL_CHARS = {"stream": MAX_STREAM_CHARS, "rich": MAX_RICH_CHARS, "error": 2 * MAX_ERROR_CHARS}
PREPARE = "__import__('npfl_course.worker.prepare', fromlist=['install'])"
_MEMORY_WORDS = (
    "MemoryError",
    "can't allocate memory",
    "out of memory",
    "Cannot allocate memory",
    "std::bad_alloc",
)
_DISK_WORDS = ("File too large", "EFBIG")


class WorkerError(RuntimeError):
    """The worker, not the notebook, failed (the kernel did not start or prepare)."""


def _error(ename: str, evalue: str, traceback: list[str] | None = None) -> NotebookNode:
    ename, evalue, traceback = _bounded_error(ename, evalue, traceback or [f"{ename}: {evalue}"])
    return from_dict({"output_type": "error", "ename": ename, "evalue": evalue,
                      "traceback": traceback})  # fmt: skip


def _bounded_error(ename, evalue, traceback) -> tuple[str, str, list[str]]:
    """An error's fields cut to MAX_ERROR_CHARS together, less room for the worker's remarks
    (a limit appended to the message); the traceback keeps its first lines."""
    ename, evalue = str(ename)[:200], str(evalue)[: MAX_ERROR_CHARS // 4]
    left = MAX_ERROR_CHARS - WORKER_NOTE_CHARS - len(ename) - len(evalue)
    kept = []
    for line in traceback if isinstance(traceback, list) else []:
        line = str(line)
        if len(line) > left:
            kept.append(line[: max(left, 0)] + "\n... [traceback truncated]")
            break
        kept.append(line)
        left -= len(line)
    return ename, evalue, kept


def _rich_size(content: dict) -> tuple[int, int]:
    """``(chars, JSON values)`` of a display's or result's data and metadata; data that
    cannot be serialized (nested too deeply) counts as too large."""
    data, metadata = content.get("data") or {}, content.get("metadata") or {}
    try:
        values = sum(json_values(v if isinstance(v, str) else json.dumps(v))
                     for v in [*data.values(), metadata])  # fmt: skip
        return rich_chars(data, metadata), values
    except (TypeError, ValueError, RecursionError):
        return MAX_RICH_CHARS + 1, 0


class GradingClient(NotebookClient):
    """nbclient's executor with nbgrader's ``Execute`` settings, test cells run here, and
    bounds."""

    def __init__(self, nb: NotebookNode, out: ResultWriter, cell_seconds: float,
                 memory_mb: int | None, disk_mb: int | None = None, split: bool = True,
                 zygote: Zygote | None = None, runtime: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        self.cell_seconds = cell_seconds
        timeout_error = {
            "ename": "CellTimeoutError",
            "evalue": self._timeout_message(),
            "traceback": [f"CellTimeoutError: {self._timeout_message()}"],
        }
        runtime = runtime or tempfile.mkdtemp(prefix="kernel-")
        km = ZygoteKernelManager(
            kernel_name=nb.metadata.get("kernelspec", {}).get("name") or "python3",
            transport="ipc",  # sockets in our private temporary folder, no ports
            ip=os.path.join(runtime, "ipc"),
            connection_file=os.path.join(runtime, "kernel.json"),
        )
        km.zygote = zygote
        super().__init__(
            nb,
            km=km,
            timeout=math.ceil(cell_seconds),
            interrupt_on_timeout=True,
            error_on_timeout=timeout_error,
            allow_errors=True,
            raise_on_iopub_timeout=True,
            record_timing=True,
            # After an interrupt, how long the cell has to stop (nbgrader: 4 s); a loaded
            # grading machine may need longer to deliver it.
            iopub_timeout=10,
            shutdown_kernel="immediate",
            resources={"metadata": {"path": os.getcwd()}},
            **kwargs,
        )
        self.out, self.memory_mb, self.disk_mb = out, memory_mb, disk_mb
        self.split = split
        self.calls: Any = None  # trusted.KernelCalls, once the kernel runs
        self.trusted: Any = None  # trusted.TrustedCells
        self.student_names: set[str] = set()
        self.setup_cells: set[int] = set()
        self._interrupter: asyncio.Future | None = None
        self._interrupted = False  # the running cell ran out of time (nbclient's timeout)
        self.cells_run = 0
        self.pid = os.getpid()
        # What the current cell and the notebook have kept; rich data per cell index, since
        # an update of a display changes the cell that showed it.
        self._cell = {"stream": 0, "error": 0, "count": 0}
        self._rich: dict[int, int] = {}
        self._notebook = {"outputs": 0, "chars": 0, "values": 0}
        self._dropped = {"stream": 0, "rich": 0}

    async def _async_handle_timeout(self, timeout, cell=None):  # type: ignore[override]
        # A cell spending its time in fork() (a fork bomb) never sees the interrupt: Python
        # ignores errors in fork's hooks. So the kernel may not start processes until the
        # cell has stopped.
        self._interrupted = True
        kernel = self._kernel_pid()
        _set_process_limit(kernel, 0)
        # Its children (a fork bomb's copies of the kernel) would get the interrupt too.
        _kill_descendants(keep={kernel}, below=kernel)
        reply = await super()._async_handle_timeout(timeout, cell)
        # An interrupt that arrives in fork()'s hooks is lost (Python ignores errors there):
        # repeat it until the cell has stopped (cancelled then, in _run_cell).
        self._interrupter = asyncio.ensure_future(_interrupt_again(kernel))
        return reply

    def _stop_interrupting(self) -> None:
        if self._interrupter is not None:
            self._interrupter.cancel()
            self._interrupter = None

    def _kernel_process(self):
        return getattr(getattr(self.km, "provisioner", None), "process", None)

    def _kernel_pid(self) -> int | None:
        return getattr(self._kernel_process(), "pid", None)

    def _after_timeout(self) -> None:
        """Processes the timed-out cell left behind are killed; the kernel may fork again."""
        kernel = self._kernel_pid()
        _kill_descendants(keep={kernel})
        _set_process_limit(kernel, _PROCESS_LIMIT)

    def _timeout_message(self) -> str:
        return f"the cell did not finish within the time limit of {self.cell_seconds:g} s"

    # -- what nbgrader's Execute does ------------------------------------------------

    def on_cell_executed(self, **kwargs: Any) -> None:  # type: ignore[override]
        """As nbgrader: an error reply without its error output (a timeout) is recorded."""
        cell, reply = kwargs["cell"], kwargs["execute_reply"]
        content = reply["content"]
        if content["status"] != "error":
            return
        if any(o.output_type == "error" and o.ename == content["ename"] for o in cell.outputs):
            return
        traceback = content.get("traceback") or [
            "ERROR: An error occurred while showtraceback was disabled"
        ]
        cell.outputs.append(_error(content["ename"], content["evalue"], traceback))

    # -- bounded outputs ---------------------------------------------------------------

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[override]
        content = msg.get("content", {})
        if msg["msg_type"] == "stream":
            kind, text = "stream", content.get("text", "")
            size, values = len(text), json_values(text)
        elif msg["msg_type"] == "error":
            kind = "error"
            fields = _bounded_error(content.get("ename", ""), content.get("evalue", ""),
                                    content.get("traceback", []))  # fmt: skip
            content.update(zip(("ename", "evalue", "traceback"), fields, strict=True))
            text = "".join([fields[0], fields[1], *fields[2]])
            size, values = len(text), json_values(text)
        else:
            kind = "rich"
            size, values = _rich_size(content)
        kept = self._rich.get(cell_index, 0) if kind == "rich" else self._cell[kind]
        if (kept + size > CELL_CHARS[kind] or self._cell["count"] >= MAX_OUTPUTS
                or not self._notebook_has_room(1, size, values)):  # fmt: skip
            self._dropped["stream" if kind == "stream" else "rich"] += (
                size if kind == "stream" else 1
            )
            return None
        if kind == "rich":
            self._rich[cell_index] = kept + size
        else:
            self._cell[kind] += size
        last = outs[-1] if outs else None
        if (kind == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == content.get("name")):  # fmt: skip
            last["text"] = last.get("text", "") + text  # one output per run of prints
            self._notebook_take(0, size, values)
            return None
        self._cell["count"] += 1
        self._notebook_take(1, size, values)
        return super().output(outs, msg, display_id, cell_index)

    def _update_display_id(self, display_id: str, msg: dict) -> None:
        """An update of a display (``display(..., display_id=...).update``), kept only where
        the cells that show it stay within their bounds."""
        shown = self._display_id_map.get(display_id, {})
        size, values = _rich_size(msg.get("content", {}))
        growth, updated = {}, 0
        for cell_index, indices in shown.items():
            outputs = self.nb.cells[cell_index].outputs
            old = sum(_rich_size(outputs[i])[0] for i in indices if i < len(outputs))
            growth[cell_index] = size * len(indices) - old
            updated += len(indices)
        fits = all(self._rich.get(c, 0) + g <= MAX_RICH_CHARS for c, g in growth.items())
        if not (fits and self._notebook_has_room(0, sum(growth.values()), values * updated)):
            self._dropped["rich"] += 1
            return
        for cell_index, more in growth.items():
            self._rich[cell_index] = self._rich.get(cell_index, 0) + more
        self._notebook_take(0, max(sum(growth.values()), 0), values * updated)
        super()._update_display_id(display_id, msg)

    def _notebook_has_room(self, outputs: int, chars: int, values: int) -> bool:
        return (self._notebook["outputs"] + outputs <= MAX_NOTEBOOK_OUTPUTS
                and self._notebook["chars"] + chars <= MAX_NOTEBOOK_CHARS
                and self._notebook["values"] + values <= MAX_NOTEBOOK_VALUES)  # fmt: skip

    def _notebook_take(self, outputs: int, chars: int, values: int) -> None:
        self._notebook["outputs"] += outputs
        self._notebook["chars"] += chars
        self._notebook["values"] += values

    def _finish_outputs(self, cell: NotebookNode) -> None:
        notes = []
        if self._dropped["stream"]:
            notes.append(f"{self._dropped['stream']} characters of printed output")
        if self._dropped["rich"]:
            notes.append(f"{self._dropped['rich']} displayed object(s)")
        if notes:
            text = f"\n... [output truncated: {' and '.join(notes)} dropped] ...\n"
            cell.outputs.append(from_dict({"output_type": "stream", "name": "stdout",
                                           "text": text}))  # fmt: skip
        for output in cell.outputs:
            if output.output_type != "error":
                continue
            text = f"{output.get('ename', '')} {output.get('evalue', '')}"
            limit = None
            if self.memory_mb and any(w in text for w in _MEMORY_WORDS):
                limit = f"memory limit exceeded ({self.memory_mb} MB)"
            elif self.disk_mb and any(w in text for w in _DISK_WORDS):
                limit = f"disk limit exceeded ({self.disk_mb} MB per file)"
            if limit:
                output.evalue = f"{output.evalue}: {limit}" if output.evalue else limit
        self._cell = {"stream": 0, "error": 0, "count": 0}
        self._dropped = {"stream": 0, "rich": 0}

    # -- the run -----------------------------------------------------------------------

    async def grade(self, kernel_env: dict[str, str]) -> None:
        """Runs every code cell, saving after each; raises WorkerError on our failures."""
        self.save(done=False)
        try:
            async with self.async_setup_kernel(env=kernel_env):
                reply = await self._silent(f"{PREPARE}.install()", timeout=300)
                if reply["content"]["status"] != "ok":
                    raise WorkerError(f"the kernel could not be prepared: {_reason(reply)}")
                if self.split:
                    self._start_trusted()
                for index, cell in enumerate(self.nb.cells):
                    stop = False
                    if cell.cell_type == "code":
                        stop = await self._run_code_cell(index, cell)
                    self.cells_run = index + 1
                    self.save(done=False)
                    if stop:
                        break
        except WorkerError:
            raise
        except Exception as exc:
            if self.cells_run == 0 and not self._started():
                raise WorkerError(f"the kernel did not start: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            if self.calls is not None:
                self.calls.close()
        self.cells_run = len(self.nb.cells)
        self.save(done=True)

    # -- the test cells, out of the kernel -----------------------------------------------

    def _start_trusted(self) -> None:
        """The test cells' side (:mod:`npfl_course.worker.trusted`): its imports are done
        before any of the student's code runs."""
        import npfl_lib  # noqa: F401 - imported before the student's code runs
        import npfl_lib.grading

        # forbid's targets are patched in the kernel, around each call, not here.
        npfl_lib.grading.intercept_forbidden(False)
        from npfl_course.worker import trusted

        trusted.allowed_globals()
        self.calls = trusted.KernelCalls(
            self.km.get_connection_info(),
            emit=lambda msg: None,
            kernel_pid=self._live_kernel_pid,
            before_interrupt=self._before_interrupt,
            after_interrupt=self._after_timeout,
            also_drain=self._iopub_shadow(),
        )
        self.trusted = trusted.TrustedCells(self.calls)
        self.student_names, self.setup_cells = _student_names_and_setup(self.nb.cells)

    def _iopub_shadow(self) -> list:
        """nbclient's iopub socket, as a synchronous socket (see trusted.KernelCalls)."""
        import zmq

        socket = getattr(getattr(self.kc, "iopub_channel", None), "socket", None)
        return [zmq.Socket.shadow(socket.underlying)] if socket is not None else []

    def _live_kernel_pid(self) -> int | None:
        process = self._kernel_process()
        return process.pid if process is not None and process.poll() is None else None

    def _before_interrupt(self) -> None:
        kernel = self._kernel_pid()
        _set_process_limit(kernel, 0)
        _kill_descendants(keep={kernel}, below=kernel)

    async def _run_code_cell(self, index: int, cell: NotebookNode) -> bool:
        """Runs one code cell where it belongs; True when no further cell may run."""
        if not self.split or not _is_test_cell(cell):
            await self._drain_iopub()
            stop = await self._run_cell(index, cell)
            if stop or not self.split or index not in self.setup_cells:
                return stop
            return self._run_trusted(index, cell, shown=False)
        cell.outputs = []
        cell.execution_count = None
        return self._run_trusted(index, cell, shown=True)

    async def _drain_iopub(self) -> None:
        """Drops what the test cells' calls published: nbclient's queue, full, would drop
        the next cell's messages."""
        socket = getattr(getattr(self.kc, "iopub_channel", None), "socket", None)
        if self.calls is None or socket is None:
            return
        while await socket.poll(0):
            await socket.recv_multipart()

    def _run_trusted(self, index: int, cell: NotebookNode, shown: bool) -> bool:
        """Runs a test cell (``shown``) or a setup cell's copy here, out of the kernel."""
        assert self.calls is not None and self.trusted is not None

        def emit(msg: dict) -> None:
            if shown:
                self.process_message(msg, cell, index)

        started = _now()
        error = self.trusted.run(index, cell.source, self.student_names, emit,
                                 self.cell_seconds, shared=not shown)  # fmt: skip
        if shown and self.record_timing:
            cell.metadata["execution"] = {
                "iopub.status.busy": started,
                "iopub.execute_input": started,
                "shell.execute_reply.started": started,
                "shell.execute_reply": _now(),
                "iopub.status.idle": _now(),
            }
        if error is not None:
            if error["ename"] == "CellTimeoutError":
                error["evalue"] = self._timeout_message()
            if not shown:
                error["evalue"] = f"in the grader's copy of this cell: {error['evalue']}"
            cell.outputs.append(_error(error["ename"], error["evalue"], error["traceback"]))
        if shown:
            self._finish_outputs(cell)
        if self.calls.dead is None:
            return False
        reason = self._death_reason()
        cell.outputs.append(_error("DeadKernelError", f"the kernel died in this cell: {reason}"))
        self._fail_rest(index + 1, f"the kernel died in cell {index} ({reason})")
        return True

    def _started(self) -> bool:
        return self.kc is not None

    async def _run_cell(self, index: int, cell: NotebookNode) -> bool:
        """Runs one cell; True when no further cell may run."""
        self._interrupted = False
        try:
            await self.async_execute_cell(cell, index, store_history=True)
        except CellTimeoutError:  # no answer to the interrupts, or no iopub after the reply
            if not self._interrupted:
                # The kernel replied within the limit, but the cell's iopub messages
                # (outputs, idle) did not come: ours to explain, not the student's.
                raise WorkerError(
                    f"cell {index}: the kernel replied, but its outputs did not reach the "
                    "grader (iopub messages lost); the grader cannot tell what it printed"
                ) from None
            self._stop_interrupting()
            _kill_descendants(keep=set())
            error = f"{self._timeout_message()} and ignored the interrupt"
            cell.outputs = [o for o in cell.outputs if o.output_type != "error"]
            cell.outputs.append(_error("CellTimeoutError", error))
            await self._kill_kernel()
            self._finish_outputs(cell)
            self._fail_rest(index + 1, f"cell {index} exceeded its time limit and ignored the "
                                       "interrupt")  # fmt: skip
            return True
        except DeadKernelError:
            self._stop_interrupting()
            reason = self._death_reason()
            cell.outputs.append(
                _error("DeadKernelError", f"the kernel died in this cell: {reason}")
            )
            self._finish_outputs(cell)
            self._fail_rest(index + 1, f"the kernel died in cell {index} ({reason})")
            return True
        self._stop_interrupting()
        if any(o.get("ename") == "CellTimeoutError" for o in cell.outputs):
            self._after_timeout()
        self._finish_outputs(cell)
        return False

    async def _silent(self, code: str, expressions: dict | None = None,
                      timeout: float = 60) -> dict:  # fmt: skip
        """Runs ``code`` without a trace in the notebook, its history or its counts."""
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=True, store_history=False,
                                 user_expressions=expressions or {}, allow_stdin=False)  # fmt: skip
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no reply within {timeout:g} s")
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=min(left, 1.0)))
            except Exception:  # queue.Empty
                if not await ensure_async(self.km.is_alive()):
                    raise DeadKernelError("Kernel died") from None
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    async def _kill_kernel(self) -> None:
        if self.km is not None and self.km.has_kernel:
            await ensure_async(self.km.shutdown_kernel(now=True))

    def _death_reason(self) -> str:
        process = self._kernel_process()
        status = process.poll() if process is not None else None
        if status is None:
            return "it stopped answering"
        if status < 0:
            name = _signal_name(-status)
            if -status in (signal.SIGSEGV, signal.SIGBUS, signal.SIGKILL):
                limit = f"; a memory limit ({self.memory_mb} MB) may have been hit" if (
                    self.memory_mb) else ""  # fmt: skip
                return f"killed by signal {name}{limit}"
            return f"killed by signal {name}"
        return f"the kernel's process exited with status {status}, e.g. os._exit or sys.exit"

    def _fail_rest(self, start: int, why: str, ename: str = "DeadKernelError") -> None:
        for cell in self.nb.cells[start:]:
            if cell.cell_type == "code":
                cell.outputs = [_error(ename, f"not run: {why}")]
                cell.execution_count = None

    def save(self, done: bool) -> None:
        """Writes OUT (a complete snapshot): the cells so far, and how far the run came."""
        if os.getpid() != self.pid:
            return
        notebook = dict(self.nb)
        metadata = dict(notebook.get("metadata", {}))
        metadata[META_KEY] = {"cells_run": self.cells_run, "done": done}
        if self.calls is not None and self.calls.calls:  # what the test cells' calls cost
            metadata[META_KEY].update(calls=self.calls.calls,
                                      call_seconds=round(self.calls.seconds, 3),
                                      overhead_seconds=round(self.calls.overhead, 3))  # fmt: skip
        notebook["metadata"] = metadata
        self.out.write(json.dumps(notebook, indent=1).encode("utf-8"))


_PROCESS_LIMIT = resource.getrlimit(resource.RLIMIT_NPROC)


async def _interrupt_again(pid: int | None, every: float = 0.2) -> None:
    while pid is not None:
        await asyncio.sleep(every)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)


def _set_process_limit(pid: int | None, limit) -> None:
    if pid is None:
        return
    limit = (limit, _PROCESS_LIMIT[1]) if isinstance(limit, int) else limit
    with contextlib.suppress(OSError, ValueError):
        resource.prlimit(pid, resource.RLIMIT_NPROC, limit)


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def _kill_descendants(keep: set[int | None], below: int | None = None) -> None:
    """SIGKILLs the descendants of ``below`` (default: ours, orphans too: we are a
    subreaper) except ``keep`` (not their descendants)."""
    for _ in range(20):  # a fork bomb forks between the scan and the kill: repeat
        children, found, todo = _children(), [], [below or os.getpid()]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        victims = [pid for pid in found if pid not in keep]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.01)


def _now() -> str:
    """A timestamp as nbclient records them in a cell's execution metadata."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _is_test_cell(cell: NotebookNode) -> bool:
    """A cell with points that is not the student's answer: it runs out of the kernel."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution")


def _student_names_and_setup(cells: list) -> tuple[set[str], set[int]]:
    """The names the student's cells bind, and the locked cells the test cells build on
    (those that bind a name a later test cell, or such a cell, reads)."""
    from npfl_course.worker.trusted import bound_and_read

    student: set[str] = set()
    for cell in cells:
        if cell.cell_type == "code" and not is_trusted(cell):
            student |= bound_names(cell.source) or set()
    setup, needed = set(), set()
    for index in range(len(cells) - 1, -1, -1):
        cell = cells[index]
        if cell.cell_type != "code" or not is_trusted(cell):
            continue
        names = bound_and_read(cell.source)
        if names is None:
            continue
        bound, read = names
        if _is_test_cell(cell):
            needed |= read
        elif bound & needed:
            setup.add(index)
            needed |= read
    return student, setup


def _reason(reply: dict) -> str:
    content = reply.get("content", {})
    return f"{content.get('ename')}: {content.get('evalue')}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _kernel_environment(hiding: bool = False) -> dict[str, str]:
    """The kernel's environment, and ours: Jupyter's and IPython's state in private temporary
    folders (the notebook's folder is the home, and the student's), matplotlib's font
    cache from the parent, and matplotlib's default backend (inline, as in JupyterLab).

    ``hiding``: modules will be hidden from the kernel, whose Landlock ruleset makes what
    appears later directly in a folder on the way to them unreadable (that may be
    ``/tmp``, where the course lies under it): the temporary folder, the caches and
    matplotlib's configuration then go to private folders made now, before the ruleset."""
    private = tempfile.mkdtemp(prefix="jupyter-")
    for name in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "PYTHONSTARTUP", "MPLBACKEND"):
        os.environ.pop(name, None)
    folders = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
               "JUPYTER_RUNTIME_DIR": "runtime", "IPYTHONDIR": "ipython"}  # fmt: skip
    if hiding:
        folders.update(TMPDIR="tmp", XDG_CACHE_HOME="cache", MPLCONFIGDIR="matplotlib")
    for name, folder in folders.items():
        os.environ[name] = os.path.join(private, folder)
    if hiding:
        os.makedirs(os.environ["TMPDIR"])
        tempfile.tempdir = os.environ["TMPDIR"]
    if "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = os.path.join(private, "matplotlib")
    if os.path.isdir(MATPLOTLIB_CACHE) and not os.path.islink(MATPLOTLIB_CACHE):
        shutil.copytree(MATPLOTLIB_CACHE, os.environ["MPLCONFIGDIR"], dirs_exist_ok=True)
    if os.path.lexists(MATPLOTLIB_CACHE):  # not part of the student's folder
        shutil.rmtree(MATPLOTLIB_CACHE, ignore_errors=True)
    return dict(os.environ)


def _import_shared_libraries() -> None:
    """numpy, torch and ipykernel, with the garbage collector off and what they made
    frozen (about 15 % less CPU; collections skip it; the forked kernel shares it).

    Not npfl_lib: its import decides things from the process it runs in (tqdm.auto picks
    the notebook's progress bar in a kernel, npfl_lib.grading sends warnings to stdout),
    so the kernel imports it itself (npfl_course.worker.prepare), as does the worker."""
    import gc

    gc.disable()
    try:
        for name in ("numpy", "torch", "ipykernel.kernelapp"):
            with contextlib.suppress(ImportError):
                __import__(name)
    finally:
        gc.freeze()
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    """Runs the worker; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m npfl_course.worker",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("input", help="the prepared notebook")
    parser.add_argument(
        "--result-fds",
        required=True,
        metavar="A,B",
        help="the two descriptors of the parent's ResultChannel",
    )
    parser.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per cell")
    parser.add_argument("--memory-mb", type=int, default=None, help="for error messages")
    parser.add_argument("--disk-mb", type=int, default=None, help="for error messages")
    parser.add_argument(
        "--tests-in-kernel",
        action="store_true",
        help="run the test cells in the student's kernel too (as nbgrader does), not here",
    )
    parser.add_argument(
        "--hide",
        default="",
        metavar="MODULE,...",
        help="modules the student's kernel cannot read (npfl_course.worker.hiding)",
    )
    args = parser.parse_args(argv)
    if not args.cell_timeout > 0:
        parser.error(f"--cell-timeout must be positive, got {args.cell_timeout}")
    hide = [name for name in args.hide.split(",") if name]
    if hide and args.tests_in_kernel:
        parser.error("--hide: the test cells in the kernel need the modules it hides")
    try:
        out = ResultWriter([int(fd) for fd in args.result_fds.split(",")])
    except (ValueError, OSError) as exc:
        parser.error(f"--result-fds: {exc}")
    # torch, imported once: the kernel is forked from here before the notebook is read
    # (npfl_course.worker.zygote), and shares it.
    _import_shared_libraries()
    # Before the ruleset, which makes what appears later directly in a folder on the way
    # to the hidden files unreadable to the kernel: its environment's folders and the one
    # of its connection file.
    runtime = tempfile.mkdtemp(prefix="kernel-")  # short: its sockets' paths have a limit
    environment = _kernel_environment(hiding=bool(hide))
    ruleset = None
    try:
        if hide:
            ruleset = hiding.build_ruleset(hiding.check_hideable(hide))
    except hiding.HidingError as exc:
        sys.stderr.write(f"npfl_course.worker: internal error: {exc}\n")
        return EXIT_INTERNAL
    zygote = fork_zygote(close=out.fds, hide=hide, ruleset=ruleset)
    if ruleset is not None:
        os.close(ruleset)  # the child has its own
    if hide and zygote is None:
        sys.stderr.write(f"npfl_course.worker: internal error: cannot hide {args.hide}: "
                         "the kernel could not be forked from the worker\n")  # fmt: skip
        return EXIT_INTERNAL
    # Not dumpable: the kernel (our uid) can neither ptrace us nor open /proc/<us>/fd, so
    # the result descriptors stay out of its reach.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE
    with open(args.input, encoding="utf-8") as handle:
        data = json.load(handle)
    with contextlib.suppress(OSError):  # it holds the hidden tests
        os.unlink(args.input)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        parser.error(f"{args.input} is not a notebook (no list of cells)")
    notebook = rejoin_lines(from_dict(data))  # sources as strings, as nbformat.read gives
    with contextlib.suppress(Exception):  # Linux: orphans of the cells become our children
        ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    client = GradingClient(notebook, out, args.cell_timeout, args.memory_mb, args.disk_mb,
                           split=not args.tests_in_kernel, zygote=zygote,
                           runtime=runtime)  # fmt: skip
    try:
        asyncio.run(client.grade(environment))
    except BaseException as exc:  # noqa: BLE001 - keep what ran; the parent reports the rest
        sys.stderr.write(f"npfl_course.worker: internal error: {type(exc).__name__}: {exc}\n")
        client.save(done=False)
        return EXIT_INTERNAL
    return 0
