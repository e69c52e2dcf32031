"""What the parent (``npfl_course.autograde``) and the worker agree on.

The parent runs::

    python -I -m npfl_course.worker IN.ipynb --result-fds A,B --cell-timeout S --memory-mb MB \
        [--hide MODULE,...]

inside the sandbox, in a scratch folder holding only the submission's files (and
:data:`MATPLOTLIB_CACHE`, which the worker moves out of the folder before any cell runs).
``IN`` is the notebook nbgrader has sanitized (the worker removes it once read). The
result, OUT, goes to a :class:`ResultChannel` (descriptors ``A,B``, out of the student's
reach): the same cells with their outputs, in nbformat 4 JSON, and in its metadata
:data:`META_KEY` = ``{"cells_run": n, "done": bool}``: the first ``n`` cells ran; ``done``
is False when the worker died before the end (then the parent says why: memory, a
signal, the notebook time limit). OUT is rewritten after every cell, so what ran before
a crash is kept. The worker
exits with :data:`EXIT_INTERNAL` when it, not the notebook, failed (the kernel did not
start or could not be prepared): the parent reports an infrastructure failure,
never a score.

The worker keeps the outputs in OUT within the bounds below (``MAX_*``), dropping what is
beyond with a note. The kernel controls what it sends the worker, so the parent holds OUT
to the same bounds (:mod:`npfl_course.autograde.merge`): a cell whose outputs exceed them
fails.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def worker_command(notebook: str, channel: ResultChannel, cell_seconds: float, memory_mb: int,
                   disk_mb: int | None = None,
                   hide: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The worker's command line (run with the scratch folder as current directory); the
    limits in MiB only word its error messages; ``hide``: modules the student's kernel
    cannot read (:mod:`npfl_course.worker.hiding`). Start it with ``pass_fds=channel.fds``."""
    fds = ",".join(str(fd) for fd in channel.fds)
    command = [sys.executable, "-I", "-m", "npfl_course.worker", notebook, "--result-fds", fds,
               "--cell-timeout", f"{cell_seconds:g}", "--memory-mb", str(memory_mb)]  # fmt: skip
    if hide:
        command += ["--hide", ",".join(hide)]
    return command + (["--disk-mb", str(disk_mb)] if disk_mb is not None else [])


_HEADER = b"npfl-result"


class ResultChannel:
    """Where the worker puts the executed notebook, out of the student's reach.

    Two files that the parent creates outside the sandbox and unlinks at once (no path
    leads to them), inherited by the worker as open descriptors (``pass_fds``). The worker
    keeps them from the kernel (not inherited, and the worker is not dumpable, so
    ``/proc/<worker>/fd`` and ptrace are closed to the kernel's uid), and writes each
    snapshot to the file the previous one is not in, behind a header
    ``npfl-result <sequence> <length>``: a worker killed while writing leaves the previous
    snapshot complete. Nothing the notebook's code writes to files reaches the parent.
    Use it as a context manager (the files are closed at the end).
    """

    def __init__(self) -> None:
        self.files = [tempfile.TemporaryFile() for _ in range(2)]  # noqa: SIM115

    @property
    def fds(self) -> list[int]:
        """The descriptors to pass to the worker."""
        return [handle.fileno() for handle in self.files]

    def read(self, limit: int) -> bytes | None:
        """The latest complete snapshot, None if there is none.

        Raises:
            ValueError: It is longer than ``limit`` bytes (then it is not read).
        """
        best: tuple[int, int, int] | None = None  # (sequence, length, descriptor)
        for fd in self.fds:
            head = os.pread(fd, 64, 0)
            parts = head.split(b"\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] != _HEADER or b"\n" not in head:
                continue
            try:
                sequence, length = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            start = len(parts[0]) + len(parts[1]) + len(parts[2]) + 3
            if os.fstat(fd).st_size != start + length:
                continue  # cut short: the worker died while writing it
            if best is None or sequence > best[0]:
                best = (sequence, length, fd)
        if best is None:
            return None
        _, length, fd = best
        if length > limit:
            raise ValueError(f"it is larger than {limit >> 20} MiB")
        header = os.pread(fd, 64, 0)
        start = header.index(b"\n") + 1
        chunks, offset = [], start
        while offset < start + length:
            chunk = os.pread(fd, min(1 << 24, start + length - offset), offset)
            if not chunk:
                return None
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for handle in self.files:
            handle.close()

    def __enter__(self) -> ResultChannel:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ResultWriter:
    """The worker's end of a :class:`ResultChannel`."""

    def __init__(self, fds: list[int]) -> None:
        if len(fds) != 2:
            raise ValueError(f"--result-fds must name two descriptors, got {fds}")
        for fd in fds:
            os.fstat(fd)  # fails now if the parent passed no such descriptor
            os.set_inheritable(fd, False)
        self.fds, self.sequence = fds, 0

    def write(self, data: bytes) -> None:
        """Stores one snapshot (the notebook's JSON)."""
        self.sequence += 1
        fd = self.fds[self.sequence % 2]
        payload = b"%s %d %d\n" % (_HEADER, self.sequence, len(data)) + data
        os.ftruncate(fd, 0)
        view, offset = memoryview(payload), 0
        while offset < len(payload):
            offset += os.pwrite(fd, view[offset:], offset)


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
