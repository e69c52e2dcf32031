"""Phase 2's input and output as plain data, so that a notebook can run on another machine.

An :class:`Execution` holds everything one sandboxed run of one notebook needs: the
prepared notebook's JSON, the submission's other files as bytes (read by
:func:`submission_files`: bounded, links refused), the limits, the environment, whether
a sandbox is required and the assignment's digest. It names no path of the coordinator,
so it can be pickled and sent to a Dask worker
(:mod:`npfl_course.autograde.distributed`). :func:`npfl_course.autograde.runner.execute_notebook`
turns it into an :class:`Executed`: the executed notebook and the
:class:`npfl_course.sandbox.SandboxResult`. Local grading calls the same function.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

from npfl_course.autograde.submission import MAX_DEPTH, MAX_ENTRIES, shown
from npfl_course.sandbox import Limits, SandboxResult

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIRECTORY = _READ | os.O_DIRECTORY


class SubmissionTooLargeError(ValueError):
    """The submission's files take more than the disk limit of one notebook."""


@dataclass(frozen=True)
class Execution:
    """One notebook to execute: plain, picklable data (see the module docstring).

    Attributes:
        name (str): The notebook's name, without ``.ipynb``.
        notebook (str): The prepared notebook's JSON as the worker runs it
            (:func:`worker_input`).
        files (tuple): ``(relative path, mode, bytes)`` of the submission's other files.
        folders (tuple): ``(relative path, mode)`` of its folders, parents first.
        limits (Limits): The sandbox's limits.
        env (dict): Environment variables for the notebook.
        require_sandbox (bool): Refuse to run without bubblewrap (not ``--no-sandbox``).
        assignment (str): The assignment's digest: which assignment a worker's checks
            were made for (:func:`npfl_course.autograde.preflight.assignment_digest`).
        hidden (tuple): Modules the student's kernel cannot read
            (``c.NpflAutograde.hidden_modules``).
    """

    name: str
    notebook: str
    files: tuple[tuple[str, int, bytes], ...]
    folders: tuple[tuple[str, int], ...]
    limits: Limits
    env: dict[str, str]
    require_sandbox: bool = True
    assignment: str = ""
    hidden: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of the notebook and the files: what travels to a worker."""
        return len(self.notebook) + sum(len(data) for _, _, data in self.files)


@dataclass
class Executed:
    """What one :class:`Execution` gave.

    Attributes:
        executed (dict | None): The worker's output notebook, as
            :func:`npfl_course.autograde.merge.read_executed` reads it.
        result (SandboxResult): How the sandboxed worker ended.
        notes (list[str]): For the grader (e.g. a scratch folder that was not removed).
        worker (str): Where it ran: ``"local"`` or the Dask worker's address.
    """

    executed: dict | None
    result: SandboxResult
    notes: list[str] = field(default_factory=list)
    worker: str = "local"


def worker_input(prepared: str) -> str:
    """The notebook the worker runs: markdown and raw cells emptied (attachments too).

    The worker needs only the code; a pasted 50 MB image in a markdown cell would
    otherwise travel into the sandbox and back, and the cells keep their places, so the
    parent merges outputs by index as before.
    """
    notebook = json.loads(prepared)
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            cell["source"] = ""
            cell.pop("attachments", None)
    return json.dumps(notebook)


def submission_files(
    folder: str | os.PathLike, max_bytes: int, skip: tuple[str, ...] = ()
) -> tuple[tuple[tuple[str, int, bytes], ...], tuple[tuple[str, int], ...]]:
    """The files and folders below ``folder`` as :class:`Execution` carries them.

    Nothing is followed: every entry must be a regular file or a folder (as
    :func:`npfl_course.autograde.submission.link_problem` demands of submissions); the walk
    is iterative and bounded by MAX_ENTRIES entries and MAX_DEPTH levels.

    Args:
        folder: ``autograded/<student>/<assignment>/`` after phase 1.
        max_bytes: The most the files may take together (the notebook's disk limit).
        skip: Names left out wherever they occur (the pending marker).

    Returns:
        tuple: ``(files, folders)``, as :class:`Execution`'s fields.

    Raises:
        SubmissionTooLargeError: The files take more than ``max_bytes``.
        ValueError: A link or another kind of file, too many entries, too deep.
    """
    files, folders, total, seen = [], [], 0, 0
    pending = [("", 0)]
    root = os.fspath(folder)
    while pending:
        relative, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"folders nested more than {MAX_DEPTH} deep")
        fd = os.open(os.path.join(root, relative) if relative else root, _DIRECTORY)
        try:
            entries = sorted(os.listdir(fd))
            for name in entries:
                seen += 1
                if seen > MAX_ENTRIES:
                    raise ValueError(f"more than {MAX_ENTRIES} files")
                if name in skip:
                    continue
                path = f"{relative}/{name}" if relative else name
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    folders.append((path, stat.S_IMODE(info.st_mode)))
                    pending.append((path, depth + 1))
                elif stat.S_ISREG(info.st_mode):
                    total += info.st_size
                    if total > max_bytes:
                        raise SubmissionTooLargeError(
                            f"the submission's files take more than {max_bytes >> 20} MB, the "
                            "disk limit of a notebook"
                        )
                    files.append((path, stat.S_IMODE(info.st_mode), _read(fd, name, info)))
                else:
                    raise ValueError(f"{shown(path)} is not a regular file or folder")
        finally:
            os.close(fd)
    return tuple(sorted(files)), tuple(sorted(folders))


def _read(dir_fd: int, name: str, info: os.stat_result) -> bytes:
    fd = os.open(name, _READ, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(fd).st_ino != info.st_ino:
            raise ValueError(f"{shown(name)} changed while it was read")
        return handle.read(info.st_size + 1)[: info.st_size]


def _checked(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise ValueError(f"not a relative path below the work folder: {path!r}")
    return parts


def write_files(task: Execution, workdir: str | os.PathLike) -> None:
    """Puts ``task``'s folders and files into ``workdir`` (an empty folder of ours)."""
    workdir = os.fspath(workdir)
    for path, _ in task.folders:
        os.makedirs(os.path.join(workdir, *_checked(path)), exist_ok=True)
    for path, mode, data in task.files:
        target = os.path.join(workdir, *_checked(path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(target, mode & 0o7777 & ~stat.S_ISUID & ~stat.S_ISGID)
    for path, mode in reversed(task.folders):  # deepest last in the list: first here
        os.chmod(os.path.join(workdir, *_checked(path)), mode & 0o777)
