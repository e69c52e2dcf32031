"""Phase 3 of autograding: the worker's executed outputs, merged into the prepared notebook.

Only outputs, execution counts and timings are taken from the worker's notebook (from
its :class:`~npfl_course.worker.ResultChannel`, which the submission cannot write); code
cells the worker did not run fail with a ``DeadKernelError`` saying why
(:func:`death_reason`).

The outputs in it come from the student's kernel, so it is read as hostile input, in
time and memory linear in its size. :func:`parse_executed` counts before it parses: more than
MAX_EXECUTED_BYTES bytes or MAX_EXECUTED_VALUES JSON values are not parsed (a 64 MiB file
of ``{},`` would take 1.8 GB as Python objects), and :func:`merge` fails every code cell
with an ``OutputError`` saying why. :func:`merge` rebuilds each output from the fields
nbformat allows, checking their types itself (nbformat's validator takes a millisecond
per output), and holds each cell to the bounds the worker keeps (MAX_OUTPUTS and the rest,
:mod:`npfl_course.worker.protocol`): a cell beyond one keeps the outputs within the bounds
and fails with an ``OutputError``, since only a broken worker gets there, and dropping an
error or a stderr output silently would turn a failed test into a passed one.
"""

from __future__ import annotations

import copy
import json

import nbformat

from npfl_course.sandbox import Limits, SandboxResult
from npfl_course.worker import EXIT_INTERNAL, META_KEY, ResultChannel, is_trusted
from npfl_course.worker.protocol import (
    MAX_ERROR_CHARS,
    MAX_NOTEBOOK_OUTPUTS,
    MAX_NOTEBOOK_VALUES,
    MAX_OUTPUTS,
    MAX_RICH_CHARS,
    MAX_STREAM_CHARS,
    WORKER_NOTE_CHARS,
    WORKER_OUTPUTS,
    is_json_mimetype,
    rich_chars,
)

MAX_EXECUTED_BYTES = 64 << 20  # a worker's output notebook larger than this is not parsed
# Nor one with more JSON values than this, counted as its bytes "," "{" "[" (an upper bound):
# parsed, each takes some 100 bytes. The worker keeps its outputs to half of it.
MAX_EXECUTED_VALUES = 2 * MAX_NOTEBOOK_VALUES
MAX_JSON_DEPTH = 64  # nesting of an output's JSON data and metadata
REJECTED = "npfl_rejected"  # in what read_executed returns for a file it did not parse


def _error(ename: str, evalue: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"])  # fmt: skip


def read_executed(channel: ResultChannel) -> dict | None:
    """The worker's output notebook from its result channel, parsed, or why it was not.

    Returns:
        dict | None: See :func:`parse_executed`; None also when the worker stored nothing.
    """
    try:
        data = channel.read(MAX_EXECUTED_BYTES)
    except ValueError as exc:
        return _rejected(str(exc))
    return None if data is None else parse_executed(data)


def parse_executed(data: bytes) -> dict | None:
    """The worker's output notebook, parsed as hostile input, or why it was not.

    Returns:
        dict | None: The notebook (a wrongly typed ``metadata`` or ``npfl_execute`` is left
        out); None if it is not JSON or not a notebook; ``{"cells": None, REJECTED: why}``
        if it exceeds MAX_EXECUTED_BYTES or MAX_EXECUTED_VALUES or nests too deeply to parse.
    """
    if len(data) > MAX_EXECUTED_BYTES:
        return _rejected(f"it is larger than {MAX_EXECUTED_BYTES >> 20} MiB")
    if data.count(b",") + data.count(b"{") + data.count(b"[") > MAX_EXECUTED_VALUES:
        return _rejected(f"it holds more than {MAX_EXECUTED_VALUES} JSON values")
    try:
        notebook = json.loads(data)
    except RecursionError:
        return _rejected("its JSON is nested too deeply")
    except ValueError:
        return None
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return None
    if not isinstance(notebook.get("metadata", {}), dict):
        del notebook["metadata"]
    elif not isinstance(notebook.get("metadata", {}).get(META_KEY, {}), dict):
        del notebook["metadata"][META_KEY]
    return notebook


def _rejected(why: str) -> dict:
    # "done": no death to explain besides; merge() puts the reason into every code cell.
    return {"cells": None, "metadata": {META_KEY: {"done": True}},
            REJECTED: f"the notebook's outputs were not read: {why}"}  # fmt: skip


def death_reason(result: SandboxResult | None, limits: Limits) -> str:
    """Why a worker stopped before the end, for the feedback."""
    if result is None:
        return "the notebook could not be run"
    if result.timed_out:
        return f"time limit exceeded ({limits.notebook_seconds:g} s for the whole notebook)"
    if result.disk_exceeded:
        return result.reason or f"disk limit exceeded ({limits.disk_mb} MB in the work folder)"
    if result.memory_exceeded:
        return f"memory limit exceeded ({limits.memory_mb} MB)"
    if result.process_limit_hit:
        return f"process limit exceeded ({limits.max_processes} processes)"
    if result.returncode is not None and result.returncode < 0:
        return f"the notebook's process was {result.reason or 'killed'}"
    status = result.returncode or 0
    return f"the notebook's process exited before the end (status {status}, e.g. os._exit)"


def infrastructure_failure(prepared, executed: dict | None, result: SandboxResult | None,
                           limits: Limits) -> str | None:  # fmt: skip
    """Why a run went wrong through no fault of the student's code, or None.

    The grader is to blame when the worker never started (no notebook came back), when it
    failed internally, and when a cell that students cannot edit (the assignment's locked
    set-up, e.g. its imports) failed or the worker died before any student code ran:
    such a notebook would score 0 for a reason that is ours.
    """
    if result is None:  # the notebook was not executed (Execute.enabled = False)
        return None
    tail = result.stderr.strip()[-300:]
    if executed is None:
        return f"the grading worker did not start or wrote no notebook ({result.reason}): {tail}"
    if result.returncode == EXIT_INTERNAL:
        return f"the grading worker failed: {tail}"
    cells = executed.get("cells")
    info = executed.get("metadata", {}).get(META_KEY, {})
    ran = info.get("cells_run", 0)
    if not isinstance(cells, list) or len(cells) != len(prepared.cells) or not isinstance(ran, int):
        return None  # unreadable: merge() fails every cell, as for any broken run
    first_student = next(
        (i for i, c in enumerate(prepared.cells) if c.cell_type == "code" and not is_trusted(c)),
        len(prepared.cells),
    )
    while ran < len(prepared.cells) and prepared.cells[ran].cell_type != "code":
        ran += 1  # the worker saves after code cells only: these ran, and cannot fail
    for index in range(min(ran, first_student)):
        outputs = cells[index].get("outputs") if isinstance(cells[index], dict) else None
        for output in outputs if isinstance(outputs, list) else []:
            if isinstance(output, dict) and output.get("output_type") == "error":
                error = f"{output.get('ename')}: {str(output.get('evalue'))[:300]}"
                return f"cell {index}, which students cannot edit, failed before any student code ran: {error}"  # noqa: E501
    if not info.get("done") and ran < first_student:
        return f"the worker stopped in cell {ran} before any student code ran: {death_reason(result, limits)}"  # noqa: E501
    return None


def merge(prepared, executed: dict | None, result: SandboxResult | None, limits: Limits):
    """The prepared notebook with the outputs of the cells the worker ran.

    Only outputs and execution counts are taken from the worker (whose files the
    submission could write to); sources and metadata stay the prepared ones. Code
    cells the worker did not run get a ``DeadKernelError`` naming why; outputs beyond the
    worker's bounds an ``OutputError`` (see the module). Linear in the size of ``executed``.
    """
    notebook = copy.deepcopy(prepared)
    rejected = executed.get(REJECTED) if executed else None
    if rejected is not None:
        return _fail_code_cells(notebook, "OutputError", str(rejected)[:300], "not read")
    cells = executed.get("cells") if executed else None
    info = (executed or {}).get("metadata", {}).get(META_KEY, {})
    ran = info.get("cells_run", 0) if isinstance(cells, list) else 0
    if not isinstance(cells, list) or len(cells) != len(notebook.cells) or not _count(ran):
        ran = 0
    reason = death_reason(result, limits)
    code_cells = sum(cell.cell_type == "code" for cell in notebook.cells)
    budget = _Budget(MAX_NOTEBOOK_OUTPUTS + WORKER_OUTPUTS * code_cells)
    stopped = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if index < ran:
            executed_cell = cells[index] if isinstance(cells[index], dict) else {}
            cell.outputs = budget.outputs(executed_cell.get("outputs"))
            count = executed_cell.get("execution_count")
            cell.execution_count = count if _count(count) else None
            timing = executed_cell.get("metadata")
            timing = timing.get("execution") if isinstance(timing, dict) else None
            if isinstance(timing, dict):  # nbclient's two timestamps, nothing else
                keys = ("iopub.execute_input", "shell.execute_reply")
                kept = {k: timing[k][:40] for k in keys if isinstance(timing.get(k), str)}
                cell.metadata["execution"] = kept
            continue
        if stopped is None:
            stopped = index
            cell.outputs = [_error("DeadKernelError", f"this cell did not finish: {reason}")]
        else:
            message = f"not run: the notebook stopped in cell {stopped} ({reason})"
            cell.outputs = [_error("DeadKernelError", message)]
    return notebook


def _count(value) -> bool:
    """Whether ``value`` is an execution count or a number of cells: an int >= 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Budget:
    """The outputs a notebook may still keep; :meth:`outputs` rebuilds those of one cell."""

    def __init__(self, outputs: int) -> None:
        self.left = outputs

    def outputs(self, outputs) -> list:
        """The outputs of one cell, rebuilt, within the bounds (an OutputError beyond)."""
        if not isinstance(outputs, list):
            return []
        kept, chars, invalid = [], {"stream": 0, "rich": 0, "error": 0}, 0
        bounds = {"stream": MAX_STREAM_CHARS + WORKER_NOTE_CHARS, "rich": MAX_RICH_CHARS,
                  "error": MAX_ERROR_CHARS * WORKER_OUTPUTS}  # fmt: skip
        beyond = None
        for output in outputs:
            if len(kept) >= MAX_OUTPUTS + WORKER_OUTPUTS:
                beyond = f"more than {MAX_OUTPUTS} outputs in a cell"
            elif self.left <= 0:
                beyond = f"more than {MAX_NOTEBOOK_OUTPUTS} outputs in the notebook"
            if beyond:
                break
            self.left -= 1
            rebuilt, kind, size = _rebuild(output)
            if rebuilt is None:
                invalid += 1
                continue
            chars[kind] += size
            if kind == "error" and size > MAX_ERROR_CHARS:
                beyond = f"an error of more than {MAX_ERROR_CHARS} characters"
            elif chars[kind] > bounds[kind]:
                beyond = f"more than {bounds[kind]} characters of {kind} outputs in a cell"
            if beyond:
                break
            kept.append(rebuilt)
        if invalid:
            message = "the cell produced an output that is not valid nbformat"
            count = "" if invalid == 1 else f" ({invalid} of them)"
            kept.append(_error("OutputError", message + count))
        if beyond:
            message = (f"the cell's outputs exceed what the grading worker writes ({beyond}): "
                       "the rest was dropped and the cell fails")  # fmt: skip
            kept.append(_error("OutputError", message))
        return kept


def _rebuild(output) -> tuple[nbformat.NotebookNode | None, str, int]:
    """``(output, kind, size)``: a valid nbformat 4 output made of ``output``'s fields, the
    bound it counts towards ("stream", "rich" or "error") and its size in characters as the
    worker counts it; ``(None, "", 0)`` when ``output`` is not a valid output."""
    invalid = None, "", 0
    kind = output.get("output_type") if isinstance(output, dict) else None
    if kind == "stream":
        name, text = output.get("name"), _text(output.get("text"))
        if name not in ("stdout", "stderr") or text is None:
            return invalid
        rebuilt = {"output_type": kind, "name": name, "text": text}
        return nbformat.from_dict(rebuilt), "stream", len(text)
    if kind in ("display_data", "execute_result"):
        data, metadata = _mimebundle(output.get("data")), output.get("metadata", {})
        if data is None or not isinstance(metadata, dict) or _deeper(metadata, MAX_JSON_DEPTH):
            return invalid
        rebuilt = {"output_type": kind, "data": data, "metadata": metadata}
        if kind == "execute_result":
            count = output.get("execution_count")
            if count is not None and not _count(count):
                return invalid
            rebuilt["execution_count"] = count
        return nbformat.from_dict(rebuilt), "rich", rich_chars(data, metadata)
    if kind == "error":
        ename, evalue, traceback = (output.get(k) for k in ("ename", "evalue", "traceback"))
        if not (isinstance(ename, str) and isinstance(evalue, str) and isinstance(traceback, list)
                and all(isinstance(line, str) for line in traceback)):  # fmt: skip
            return invalid
        size = len(ename) + len(evalue) + sum(len(line) for line in traceback)
        rebuilt = {"output_type": kind, "ename": ename, "evalue": evalue, "traceback": traceback}
        return nbformat.from_dict(rebuilt), "error", size
    return invalid


def _text(value) -> str | None:
    """nbformat's multiline string: a string, or a list of strings (joined); else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(value)
    return None


def _mimebundle(data) -> dict | None:
    """``data`` as nbformat allows it: text by mimetype, JSON data for JSON mimetypes."""
    if not isinstance(data, dict):
        return None
    bundle = {}
    for mimetype, value in data.items():
        if is_json_mimetype(mimetype):
            if _deeper(value, MAX_JSON_DEPTH):
                return None
            bundle[mimetype] = value
        elif (text := _text(value)) is not None:
            bundle[mimetype] = text
        else:
            return None
    return bundle


def _deeper(value, depth: int) -> bool:
    """Whether JSON ``value`` nests more than ``depth`` lists and objects (not recursive)."""
    pending = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            if level >= depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return False


def _fail_code_cells(notebook, ename: str, reason: str, later: str):
    """``notebook`` with its first code cell failing with ``reason`` and the others with
    ``later`` and where the reason is (``stopped_cells`` notes that first cell only)."""
    first = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            if first is None:
                first = index
                cell.outputs = [_error(ename, reason)]
            else:
                cell.outputs = [_error(ename, f"{later}: {reason} (see cell {first})")]
            cell.execution_count = None
    return notebook


def fail_all(notebook, ename: str, reason: str):
    """``notebook`` with every code cell failing with ``reason`` (nothing was run)."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [_error(ename, reason)]
    return notebook
