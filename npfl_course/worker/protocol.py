"""What the parent (``npfl_course.autograde``) and the worker agree on.

The parent runs::

    python -I -m npfl_course.worker IN.ipynb OUT.ipynb --cell-timeout S --memory-mb MB

inside the sandbox, in a scratch folder holding only the submission's files (and
:data:`MATPLOTLIB_CACHE`, which the worker moves out of the folder before any cell runs).
``IN`` is the notebook nbgrader has sanitized; ``OUT`` receives the same cells with their
outputs, in nbformat 4 JSON, and in its metadata :data:`META_KEY` =
``{"cells_run": n, "done": bool}``: the first ``n`` cells ran; ``done`` is False when the
worker died before the end (then the parent says why: memory, a signal, the notebook time
limit). OUT is rewritten after every cell, so what ran before a crash is kept. The worker
exits with :data:`EXIT_INTERNAL` when it, not the notebook, failed (the kernel did not
start, the guard could not be installed): the parent reports an infrastructure failure,
never a score.

The worker keeps the outputs in OUT within the bounds below (``MAX_*``), dropping what is
beyond with a note. The submission can write OUT itself, so the parent holds OUT to the
same bounds (:mod:`npfl_course.autograde.merge`): a cell whose outputs exceed them fails.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

META_KEY = "npfl_execute"
EXIT_INTERNAL = 4  # the worker itself failed; OUT holds what ran before
# matplotlib's font cache, built once by the parent (:func:`build_matplotlib_cache`) and
# handed to each worker in the scratch folder: without it the first `import matplotlib`
# in every notebook spends a second building it and logs "generated new fontManager".
MATPLOTLIB_CACHE = ".npfl-matplotlib"

MAX_OUTPUTS = 2_000  # per cell: outputs kept from the kernel
MAX_STREAM_CHARS = 100_000  # per cell: printed text, stdout and stderr together
MAX_RICH_CHARS = 2_000_000  # per cell: displayed data and results with their metadata
MAX_ERROR_CHARS = 20_000  # per error output: its name, message and traceback together
MAX_NOTEBOOK_OUTPUTS = 20_000  # in all cells together: outputs kept from the kernel
MAX_NOTEBOOK_CHARS = 8_000_000  # in all cells together: text, data and errors
# In all cells together: the characters "," "{" "[" in the outputs' text and data, which
# bound the JSON values the parent has to parse (see merge.MAX_EXECUTED_VALUES).
MAX_NOTEBOOK_VALUES = 500_000
# Per cell, besides MAX_OUTPUTS: what the worker adds itself (the truncation note, the
# error of a timeout, a dead kernel or a tampering) and the size of that note.
WORKER_OUTPUTS = 8
WORKER_NOTE_CHARS = 1_000


def is_json_mimetype(mimetype: str) -> bool:
    """Whether nbformat keeps a mimetype's data as any JSON value (else it is text)."""
    return re.fullmatch(r"application/(.*\+)?json", mimetype) is not None


def rich_chars(data: dict, metadata: dict | None) -> int:
    """The size of a display or result, as MAX_RICH_CHARS counts it: the text of its data
    (JSON data as serialized) and its serialized metadata."""
    size = sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in data.values())
    return size + (len(json.dumps(metadata)) if metadata else 0)


def json_values(text: str) -> int:
    """The characters of ``text`` that MAX_NOTEBOOK_VALUES counts: "," "{" and "["."""
    return text.count(",") + text.count("{") + text.count("[")


def is_trusted(cell: dict) -> bool:
    """A cell whose source is the instructor's (nbgrader restored locked cells)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("locked") or meta.get("grade")) and not meta.get("solution")


def worker_command(notebook: str, out: str, cell_seconds: float, memory_mb: int,
                   disk_mb: int | None = None) -> list[str]:  # fmt: skip
    """The worker's command line (run with the scratch folder as current directory); the
    limits in MiB only word its error messages."""
    command = [sys.executable, "-I", "-m", "npfl_course.worker", notebook, out,
               "--cell-timeout", f"{cell_seconds:g}", "--memory-mb", str(memory_mb)]  # fmt: skip
    return command + (["--disk-mb", str(disk_mb)] if disk_mb is not None else [])


def build_matplotlib_cache(directory: str | os.PathLike) -> Path | None:
    """matplotlib's font cache in ``directory``; None when matplotlib is missing.

    Copied from this user's own cache when it has one (what stock nbgrader's kernels use
    here), else built once in a child process, so the parent never imports matplotlib.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for own in (os.environ.get("MPLCONFIGDIR"), os.path.join(home, "matplotlib")):
        found = sorted(Path(own).glob("fontlist-*.json")) if own else []
        if found:
            for path in found:
                shutil.copy(path, directory / path.name)
            return directory
    env = {**os.environ, "MPLCONFIGDIR": str(directory)}
    code = "import matplotlib.font_manager"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False)
    return directory if done.returncode == 0 and any(directory.glob("fontlist*.json")) else None


def copy_matplotlib_cache(cache: Path | None, workdir: str | os.PathLike) -> None:
    """Puts the font cache into the worker's scratch folder (see :data:`MATPLOTLIB_CACHE`)."""
    if cache is not None:
        shutil.copytree(cache, Path(workdir) / MATPLOTLIB_CACHE, dirs_exist_ok=True)


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
