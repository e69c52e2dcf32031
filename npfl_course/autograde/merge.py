"""Phase 3 of autograding: the worker's executed outputs, merged into the prepared notebook.

Only outputs, execution counts and timings are taken from the worker's notebook (whose
file the submission could write to); code cells the worker did not run fail with a
``DeadKernelError`` saying why (:func:`death_reason`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import nbformat

from npfl_course.sandbox import Limits, SandboxResult
from npfl_course.worker import EXIT_INTERNAL, META_KEY, is_trusted

MAX_EXECUTED_BYTES = 64 << 20  # a worker's output notebook larger than this is not read
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}


def _error(ename: str, evalue: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"])  # fmt: skip


def _valid_output(output) -> bool:
    if not isinstance(output, dict) or output.get("output_type") not in OUTPUT_TYPES:
        return False
    try:
        nbformat.validator.validate(
            nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[output])])
        )
    except Exception:
        return False
    return True


def read_executed(path: Path) -> dict | None:
    """The worker's output notebook, or None if missing, too large or not a notebook."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not os.path.isfile(path) or os.fstat(handle.fileno()).st_size > MAX_EXECUTED_BYTES:
            return None
        try:
            data = json.loads(handle.read().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
    return data if isinstance(data, dict) and isinstance(data.get("cells"), list) else None


def death_reason(result: SandboxResult | None, limits: Limits) -> str:
    """Why a worker stopped before the end, for the feedback."""
    if result is None:
        return "the notebook could not be run"
    if result.timed_out:
        return f"time limit exceeded ({limits.notebook_seconds:g} s for the whole notebook)"
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
    cells the worker did not run get a ``DeadKernelError`` naming why.
    """
    notebook = copy.deepcopy(prepared)
    cells = executed.get("cells") if executed else None
    info = (executed or {}).get("metadata", {}).get(META_KEY, {})
    ran = info.get("cells_run", 0) if isinstance(cells, list) else 0
    if not isinstance(cells, list) or len(cells) != len(notebook.cells) or not isinstance(ran, int):
        ran = 0
    reason = death_reason(result, limits)
    stopped = None
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if index < ran:
            outputs = cells[index].get("outputs") if isinstance(cells[index], dict) else None
            outputs = outputs if isinstance(outputs, list) else []
            cell.outputs = [
                nbformat.from_dict(out) if _valid_output(out) else _error(
                    "OutputError", "the cell produced an output that is not valid nbformat"
                )
                for out in outputs
            ]  # fmt: skip
            count = cells[index].get("execution_count")
            cell.execution_count = count if isinstance(count, int) else None
            timing = (cells[index].get("metadata") or {}).get("execution")
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


def fail_all(notebook, ename: str, reason: str):
    """``notebook`` with every code cell failing with ``reason`` (nothing was run)."""
    notebook = copy.deepcopy(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [_error(ename, reason)]
    return notebook
