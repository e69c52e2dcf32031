"""``npfl-course zip-collect``: submissions downloaded from an LMS -> ``submitted/``.

An LMS (Moodle, Canvas, ...) gives the instructor a folder with one entry per student,
named by the student's id: ``<id>.zip`` (or ``.tar.gz``, ``.tgz``, ``.gz``, ``.tar``),
``<id>.ipynb``, ``<id>_<anything>.ipynb`` or a folder ``<id>/`` (or
``<id>_<anything>/``). A pattern (``--pattern``, default :data:`DEFAULT_PATTERN`) is
matched at the start of each top-level name, less its ``.ipynb`` or archive suffix; its
``student_id`` group names the student, and must pass
:func:`~npfl_course.course.student_id_problem`. The student's notebooks, wherever they
are in the entry, go flat (by file name) into ``submitted/<id>/<assignment>/``; a
student's only notebook gets the name of the assignment's only released notebook (LMS
downloads rename files). Other files are not collected; hidden files and ``__MACOSX``
are ignored.

A class may be careless or hostile, so one bad entry never stops the others: it is
skipped with a line in :attr:`Collected.skipped` saying where and why, and

- nothing outside the download folder is read: symbolic links (in the folder or in an
  archive), hard links and devices in archives are neither followed nor created, and
  archive paths that are absolute or climb out with ``..`` are refused;
- archives are unpacked here, not by nbgrader: members are streamed in chunks through
  a counter that stops at :data:`MAX_ENTRY_BYTES` per file, :data:`MAX_STUDENT_BYTES`
  per entry, :data:`MAX_RUN_BYTES` per run and :data:`MAX_RATIO` of compression,
  whatever the archive's headers say; an archive inside an archive is not unpacked (an
  archive inside a student's folder is: one level);
- collected files get mode 0644 and folders 0755 (less what the umask takes), never
  the modes an archive records (no setuid programs, nothing world-writable);
- two notebooks of one entry with the same file name: the newer (by the time the
  archive or the file system records) is collected, ties going to the later one, and
  the report names both; two top-level entries giving one student id (``Jan Novak_1``
  and ``Jan Svoboda_2`` both give ``Jan`` with the default pattern) are ambiguous:
  neither is collected, and the report names both, so that the pattern can be fixed;
- names in the report are escaped (control characters as ``\\x1b``, bytes that are not
  UTF-8 as ``\\xe1``), so that it is safe to print on a terminal.

A student's existing submission is replaced only with ``force`` (as nbgrader's
``ZipCollectApp`` does); the check is made for the whole class before anything is
written. No ``timestamp.txt`` is written: nbgrader's ``ZipCollectApp`` writes one only
for a timestamp its collector finds in a file name, which ours never did.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from npfl_course.course import Course, CourseError, student_id_problem

# Everything up to the first "_", whitespace or "." of the top-level file or folder name.
DEFAULT_PATTERN = r"(?P<student_id>[^_\s.]+)"

MiB = 1 << 20
# One file: a notebook with many plots is a few MiB, so 100 MiB is generous, yet one
# upload cannot fill the disk or the memory of whoever opens it.
MAX_ENTRY_BYTES = 100 * MiB
# One top-level entry (one student): room for a few big notebooks; for a tar archive,
# everything in it counts, as it must be decompressed to be read.
MAX_STUDENT_BYTES = 200 * MiB
# One run (the temporary copy of the whole class): hundreds of students' notebooks.
MAX_RUN_BYTES = 4096 * MiB
# Notebooks (JSON, base64 images) compress by 3-20:1, long repetitive outputs by up to
# about 50:1; zip bombs by 1000:1 and more.
MAX_RATIO = 200
# Up to this size the ratio is not checked: a small repetitive file compresses well.
RATIO_FREE_BYTES = 1 * MiB
# Members of one top-level entry: a listing of a million files is an attack, not work.
MAX_FILES_PER_ENTRY = 10_000
# Folders nested deeper than this in a student's folder are an attack, not work.
MAX_DEPTH = 32
# The longest file name most file systems allow, in bytes of UTF-8.
MAX_NAME_BYTES = 255
# Report lines for one top-level entry; more are counted in one line.
MAX_LINES_PER_ENTRY = 20
# Archives unpacked at the top level or in a student's folder (longest suffix first).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".gz", ".tar")
# How much is read at a time; nothing is ever read whole.
CHUNK_BYTES = 1 * MiB

# What a damaged or unsupported archive raises (encrypted zips: RuntimeError;
# unknown compression methods: NotImplementedError; names not UTF-8: UnicodeError).
_ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    NotImplementedError,
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
)


@dataclass
class Collected:
    """What zip-collect did.

    Attributes:
        students (dict[str, list[str]]): Student id -> the notebooks collected for them.
        skipped (list[str]): What was not collected, and why: ``<where>: <reason>``, where
            is the path in the download folder (inside an archive: ``s1.zip/dir/x``),
            escaped to be printable.
        sources (dict[str, str]): Student id -> the top-level entry it was collected
            from (escaped like ``skipped``).
    """

    students: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


class _Refused(Exception):
    """A file is not collected (with ``whole_entry``: nothing of its top-level entry);
    ``where`` is the shown path of what caused it, when known."""

    def __init__(self, reason: str, *, whole_entry: bool = False, where: str = "") -> None:
        super().__init__(reason)
        self.reason, self.whole_entry, self.where = reason, whole_entry, where


class _TooLarge(Exception):
    """A stream holds more bytes than allowed."""


# Names and their display
# ----------------------------------------------------------------------------------


def _shown(text: str, limit: int = 100) -> str:
    """``text`` safe to print: bytes that are not UTF-8 (surrogate escapes, as Python
    names such files) as ``\\xe1``, non-printable characters as ``\\x1b`` or ``\\u202e``,
    the middle of a long text as ``...``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= limit else f"{text[: limit - 23]}...{text[-20:]}"


def _size(count: int) -> str:
    return f"{count / MiB:g} MiB"


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the file system gave other bytes
        return False
    return True


def _hidden(parts: list[str] | tuple[str, ...]) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in parts)


def _archive_suffix(name: str) -> str | None:
    lowered = name.lower()
    return next((suffix for suffix in ARCHIVE_SUFFIXES if lowered.endswith(suffix)), None)


def _safe_parts(path: str) -> list[str] | None:
    """The components of a member's path, or None when it is absolute or climbs out.

    Both ``/`` and ``\\`` separate (Windows tools write the latter into zips)."""
    if "\x00" in path or path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        return None
    parts = [part for part in re.split(r"[/\\]", path) if part not in ("", ".")]
    return None if not parts or ".." in parts else parts


def _file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name of a collected notebook, or None."""
    if not _is_utf8(name):
        return "the name is not valid UTF-8"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    if not name.isprintable():
        return "the name contains control or invisible characters"
    return None


# Reading: members of folders and archives, streamed with bounds
# ----------------------------------------------------------------------------------


@dataclass
class _Member:
    """A file, folder or link of a student's folder or archive, not yet read."""

    path: str  # as the folder or archive names it, "/"-separated
    kind: str  # "file", "dir", "link" or "special" (devices, pipes, sockets)
    open: Callable[[], IO[bytes]] | None = None
    size: int | None = None  # what the archive's header says: checked, never trusted
    ratio_limit: int | None = None  # the most bytes MAX_RATIO allows (zip members)
    mtime: float = 0.0
    problem: str | None = None  # why it cannot be read (e.g. encrypted)


def _kind_of_mode(mode: int) -> str:
    """The kind of a member from a Unix mode (zip's external attributes; 0 from DOS)."""
    kind = stat.S_IFMT(mode)
    if kind in (0, stat.S_IFREG):
        return "file"
    return {stat.S_IFDIR: "dir", stat.S_IFLNK: "link"}.get(kind, "special")


def _open_file(name: str, dir_fd: int) -> IO[bytes]:
    """Opens a regular file of the folder ``dir_fd`` for reading, never through a link."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(name, flags, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Refused("not a regular file")
    return os.fdopen(fd, "rb")


def _folder_members(dir_fd: int, prefix: tuple[str, ...] = ()) -> Iterator[_Member]:
    """The non-hidden members of the open folder ``dir_fd``, sorted, recursively; links
    are reported, not followed. Each file's ``open`` works until the next member."""
    if len(prefix) > MAX_DEPTH:
        raise _Refused(f"folders nested more than {MAX_DEPTH} deep", whole_entry=True)
    with os.scandir(dir_fd) as listing:
        items = sorted(listing, key=lambda item: item.name)
    for item in items:
        if _hidden([item.name]):
            continue
        path = "/".join((*prefix, item.name))
        if item.is_symlink():
            yield _Member(path, "link")
        elif item.is_dir(follow_symlinks=False):
            yield _Member(path, "dir")
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            sub_fd = os.open(item.name, flags, dir_fd=dir_fd)
            try:
                yield from _folder_members(sub_fd, (*prefix, item.name))
            finally:
                os.close(sub_fd)
        elif item.is_file(follow_symlinks=False):
            mtime = item.stat(follow_symlinks=False).st_mtime
            opener = lambda name=item.name: _open_file(name, dir_fd)  # noqa: E731
            yield _Member(path, "file", opener, mtime=mtime)
        else:
            yield _Member(path, "special")


def _zip_time(date_time: tuple[int, ...]) -> float:
    try:
        return datetime(*date_time).timestamp()
    except (ValueError, OverflowError):  # a zip may record month 0
        return 0.0


def _zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, span: int) -> _Member:
    """A zip member; ``span``: the bytes between its header and the next one, which
    its compressed data cannot exceed, whatever its header says."""
    kind = "dir" if info.is_dir() else _kind_of_mode(info.external_attr >> 16)
    return _Member(
        path=info.filename,
        kind=kind,
        open=lambda: archive.open(info),
        size=info.file_size,
        ratio_limit=max(RATIO_FREE_BYTES, min(info.compress_size, span) * MAX_RATIO),
        mtime=_zip_time(info.date_time),
        problem="encrypted; cannot be read" if info.flag_bits & 0x1 else None,
    )


def _tar_member(archive: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    if info.isdir():
        kind = "dir"
    elif info.issym() or info.islnk():
        kind = "link"
    else:
        kind = "file" if info.isfile() else "special"
    opener = (lambda: archive.extractfile(info)) if kind == "file" else None
    return _Member(info.name, kind, opener, size=info.size, mtime=float(info.mtime))


class _Bounded:
    """A read-only stream that refuses (with :class:`_Refused`) to read or seek past
    ``limit`` bytes: tarfile reads headers, and a pax header of any size, whole, so a
    read asks for at most ``limit`` bytes, whatever size tarfile asks for."""

    def __init__(self, stream: IO[bytes], limit: int, reason: str, where: str) -> None:
        self.stream, self.limit, self.reason, self.where = stream, limit, reason, where

    def _refuse(self) -> _Refused:
        return _Refused(self.reason, whole_entry=True, where=self.where)

    def tell(self) -> int:
        return self.stream.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self.tell()
        elif whence != os.SEEK_SET:
            raise OSError("a bounded stream seeks only from its start or position")
        if offset > self.limit:
            raise self._refuse()
        return self.stream.seek(offset)

    def read(self, size: int | None = -1) -> bytes:
        left = self.limit - self.tell()
        if size is None or size < 0 or size > left:
            data = self.stream.read(max(left, 0) + 1)  # a byte more tells "too long"
            if len(data) > left:
                raise self._refuse()
            return data if size is None or size < 0 else data[:size]
        return self.stream.read(size)


def _copy_bounded(source: IO[bytes], target: IO[bytes], limit: int) -> int:
    """Copies ``source`` to ``target`` in chunks; returns the bytes copied.

    Raises:
        _TooLarge: If ``source`` holds more than ``limit`` bytes (at most ``limit + 1``
            are read: a header's size is never trusted).
    """
    copied = 0
    while chunk := source.read(min(CHUNK_BYTES, limit - copied + 1)):
        copied += len(chunk)
        if copied > limit:
            raise _TooLarge
        target.write(chunk)
    return copied


# Gathering one top-level entry
# ----------------------------------------------------------------------------------


@dataclass
class _Notebook:
    where: str  # shown path, e.g. "s1.zip/work/x.ipynb"
    container: str  # the archive or folder it came from (where a file may shadow it)
    parts: list[str]  # its path in that container
    mtime: float
    order: int
    copy: Path  # the extracted copy in the temporary folder
    size: int

    @property
    def name(self) -> str:
        return self.parts[-1]


@dataclass
class _Budget:
    """Bytes still allowed: ``run`` for all entries, ``entry`` for the current one."""

    run: int
    entry: int = 0


class _Entry:
    """One top-level entry of the download folder: its student, notebooks and report.

    Notebooks are extracted into ``work`` (numbered, so their names never matter there).
    """

    def __init__(self, name: str, work: Path, budget: _Budget) -> None:
        self.name, self.shown, self.work, self.budget = name, _shown(name), work, budget
        self.student: str | None = None
        self.lines: list[str] = []
        self.notebooks: list[_Notebook] = []
        self.notebook_names: set[str] = set()  # all notebooks met, even those refused
        self.files: set[tuple[str, str]] = set()  # (container, path) of regular files
        self.members = 0
        self.failed = False

    def skip(self, where: str, reason: str) -> None:
        self.lines.append(f"{where}: {reason}")

    def fail(self, where: str, reason: str) -> None:
        """Nothing of this entry is collected: the one line says why (what was said of
        its members before no longer matters). Its copies give their bytes back to the
        run's budget."""
        for notebook in self.notebooks:
            notebook.copy.unlink(missing_ok=True)
            self.budget.run += notebook.size
        self.failed, self.notebooks, self.lines = True, [], []
        note = (
            "; nothing collected"
            if where == self.shown
            else f"; nothing of '{self.shown}' collected"
        )
        self.skip(where, reason + note)

    def add(self, member: _Member, container: str, *, in_archive: bool) -> None:
        """Checks a member of the folder or archive ``container`` (a shown path, ""
        for the download folder itself) and extracts it if it is a notebook."""
        where = f"{container}/{_shown(member.path)}" if container else _shown(member.path)
        parts = _safe_parts(member.path)
        if parts is None:
            return self.skip(where, "an absolute path or one climbing out with '..'")
        if _hidden(parts):
            return None
        self.members += 1
        if self.members > MAX_FILES_PER_ENTRY:
            raise _Refused(f"more than {MAX_FILES_PER_ENTRY} files", whole_entry=True)
        if member.kind == "dir":
            return None
        if member.kind == "link":
            return self.skip(where, "a link; links are not followed")
        if member.kind != "file":
            return self.skip(where, "not a regular file (a device, pipe or socket)")
        self.files.add((container, "/".join(parts)))
        if _archive_suffix(parts[-1]):
            if in_archive:
                return self.skip(where, "an archive inside an archive; not unpacked")
            return self.unpack(member.open, parts[-1], where)
        if not parts[-1].endswith(".ipynb"):
            return self.skip(where, "not a notebook")
        self.notebook_names.add(parts[-1])
        problem = member.problem or _file_name_problem(parts[-1])
        if problem:
            return self.skip(where, problem)
        return self.extract(member, where, container, parts)

    def extract(self, member: _Member, where: str, container: str, parts: list[str]) -> None:
        """Streams a notebook into ``work`` within the bounds (see module doc)."""
        bounds = [  # (bytes, why, whether the whole entry is refused); the smallest applies
            (
                MAX_ENTRY_BYTES,
                f"larger than {_size(MAX_ENTRY_BYTES)}, the limit for one file",
                False,
            ),
            (member.ratio_limit, f"compressed more than {MAX_RATIO}:1 (a zip bomb?)", False),
            (
                self.budget.entry,
                f"the entry unpacks to more than {_size(MAX_STUDENT_BYTES)}, "
                "the limit for one student",
                True,
            ),
            (self.budget.run, f"the limit of {_size(MAX_RUN_BYTES)} for one run is reached", True),
        ]
        limit, reason, whole_entry = min(
            (b for b in bounds if b[0] is not None), key=lambda b: b[0]
        )
        copy = self.work / f"{self.members}.ipynb"
        try:
            if member.size is not None and member.size > limit:
                raise _TooLarge  # the header says so: not even read
            with member.open() as source, open(copy, "xb") as target:
                copied = _copy_bounded(source, target, limit)
        except _TooLarge:
            copy.unlink(missing_ok=True)
            if whole_entry:
                raise _Refused(reason, whole_entry=True, where=where) from None
            return self.skip(where, f"{reason}; not extracted")
        except _Refused as refused:
            copy.unlink(missing_ok=True)
            if refused.whole_entry:
                raise
            return self.skip(where, refused.reason)
        except _ARCHIVE_ERRORS as error:
            copy.unlink(missing_ok=True)
            return self.skip(where, f"damaged, cannot be read ({_shown(str(error))})")
        self.budget.entry -= copied
        self.budget.run -= copied
        order = len(self.notebooks)
        notebook = _Notebook(where, container, parts, member.mtime, order, copy, copied)
        self.notebooks.append(notebook)
        return None

    def unpack(self, opener: Callable[[], IO[bytes]], name: str, where: str) -> None:
        """Extracts the notebooks of the archive file ``name`` (``where``: shown path)."""
        try:
            with opener() as raw:
                if _archive_suffix(name) == ".zip":
                    self._unpack_zip(raw, where)
                else:
                    self._unpack_tar(raw, where)
        except _Refused as refused:
            if refused.whole_entry:
                raise
            self.skip(where, refused.reason)
        except _ARCHIVE_ERRORS as error:
            self.skip(where, f"not a readable archive ({_shown(str(error))})")

    def _unpack_zip(self, raw: IO[bytes], where: str) -> None:
        if not zipfile.is_zipfile(raw):
            return self.skip(where, "not a readable archive")
        with zipfile.ZipFile(raw) as archive:  # reads the listing only
            infos = archive.infolist()
            if len(infos) > MAX_FILES_PER_ENTRY:
                raise _Refused(f"more than {MAX_FILES_PER_ENTRY} files", whole_entry=True)
            # Where each member's data ends: at the next header, or the central
            # directory (zipfile's start_dir); a compress_size beyond it is a lie.
            directory = getattr(archive, "start_dir", None) or os.fstat(raw.fileno()).st_size
            starts = sorted({info.header_offset for info in infos})
            ends = dict(zip(starts, [*starts[1:], directory], strict=True))
            for info in infos:
                span = max(ends[info.header_offset] - info.header_offset, 0)
                self.add(_zip_member(archive, info, span), where, in_archive=True)
        return None

    def _unpack_tar(self, raw: IO[bytes], where: str) -> None:
        """A tar archive, maybe gzipped: everything in it counts (it is decompressed to
        be read), so the stream is bounded by :data:`MAX_STUDENT_BYTES`, or by
        :data:`MAX_RATIO` times its compressed size when that is less."""
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        limit = MAX_STUDENT_BYTES
        reason = f"unpacks to more than {_size(limit)}, the limit for one student"
        by_ratio = max(RATIO_FREE_BYTES, os.fstat(raw.fileno()).st_size * MAX_RATIO)
        if gzipped and by_ratio < limit:
            limit, reason = by_ratio, f"compressed more than {MAX_RATIO}:1 (an archive bomb?)"
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        try:
            archive = tarfile.open(fileobj=_Bounded(stream, limit, reason, where), mode="r:")
        except tarfile.ReadError:
            return self.skip(where, "not a readable archive")
        with archive:
            for info in archive:  # one header at a time: the stream is read once
                self.add(_tar_member(archive, info), where, in_archive=True)
        return None

    def gather(self, dir_fd: int, kind: str) -> None:
        """Extracts the entry's notebooks; ``kind``: "folder", "archive" or "notebook"."""
        self.budget.entry = MAX_STUDENT_BYTES
        opener = lambda: _open_file(self.name, dir_fd)  # noqa: E731
        try:
            if kind == "folder":
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                fd = os.open(self.name, flags, dir_fd=dir_fd)
                try:
                    for member in _folder_members(fd):
                        self.add(member, self.shown, in_archive=False)
                finally:
                    os.close(fd)
            elif kind == "archive":
                self.unpack(opener, self.name, self.shown)
            else:
                mtime = os.stat(self.name, dir_fd=dir_fd, follow_symlinks=False).st_mtime
                self.add(_Member(self.name, "file", opener, mtime=mtime), "", in_archive=False)
        except _Refused as refused:
            self.fail(refused.where or self.shown, refused.reason)
        except OSError as error:  # e.g. the folder changed while it was read
            self.fail(self.shown, f"cannot be read ({_shown(str(error))})")

    def collected(self, released: list[str]) -> list[tuple[str, Path]]:
        """The notebooks to collect, (file name, extracted copy); reports the others."""
        kept: dict[str, _Notebook] = {}
        for notebook in self.notebooks:
            shadow = next(
                (
                    "/".join(notebook.parts[:depth])
                    for depth in range(1, len(notebook.parts))
                    if (notebook.container, "/".join(notebook.parts[:depth])) in self.files
                ),
                None,
            )
            if shadow is not None:
                self.skip(
                    notebook.where,
                    f"its folder '{_shown(shadow)}' is also a file in the archive",
                )
                continue
            rival = kept.get(notebook.name)
            if rival is not None:
                older, newer = sorted([rival, notebook], key=lambda n: (n.mtime, n.order))
                why = "newer" if older.mtime != newer.mtime else "as old, and read later"
                if older.where == newer.where:  # one name twice in one archive
                    self.skip(
                        older.where, f"in the archive twice; the later one ({why}) is collected"
                    )
                else:
                    self.skip(
                        older.where,
                        f"another notebook named '{_shown(notebook.name)}' is collected "
                        f"instead: {newer.where} ({why})",
                    )
                notebook = newer
            kept[notebook.name] = notebook
        names = sorted(kept)
        only = len(self.notebook_names) == 1 and len(names) == 1 and len(released) == 1
        if only and names[0] not in released:
            return [(released[0], kept[names[0]].copy)]
        return [(name, kept[name].copy) for name in names]

    def report(self) -> list[str]:
        """The entry's report lines, at most :data:`MAX_LINES_PER_ENTRY` of them."""
        if len(self.lines) <= MAX_LINES_PER_ENTRY:
            return self.lines
        more = len(self.lines) - MAX_LINES_PER_ENTRY + 1
        last = f"{self.shown}: {more} more lines like these left out"
        return [*self.lines[: MAX_LINES_PER_ENTRY - 1], last]


def _student(name: str, kind: str, pattern: re.Pattern) -> tuple[str | None, str | None]:
    """(student id, None) from a top-level name, or (None, why not)."""
    suffix = {"archive": _archive_suffix(name), "notebook": ".ipynb"}.get(kind)
    stem = name[: -len(suffix)] if suffix else name
    match = pattern.match(stem)
    student = match.group("student_id") if match else None
    if not student:
        return None, f"no student id in '{_shown(name)}'"
    problem = student_id_problem(student)
    if problem:
        return None, f"'{_shown(student)}' is not a valid student id: {problem}"
    return student, None


def _classify(item: os.DirEntry) -> tuple[str | None, str | None]:
    """(kind, None) of a top-level entry: "folder", "archive" or "notebook"; or (None,
    why it is not collected)."""
    if not _is_utf8(item.name):
        return None, (
            "the name is not valid UTF-8 (an export in another encoding?); rename it to collect it"
        )
    if item.is_symlink():
        return None, "a symbolic link; links are not followed"
    if item.is_dir(follow_symlinks=False):
        return "folder", None
    if not item.is_file(follow_symlinks=False):
        return None, "not a regular file or folder"
    if _archive_suffix(item.name):
        return "archive", None
    if item.name.endswith(".ipynb"):
        return "notebook", None
    return None, "not a notebook"


def _gather_all(source: Path, pattern: re.Pattern, work: Path) -> list[_Entry]:
    """Every non-hidden top-level entry of ``source``, sorted by name; those with a
    student id of their own gathered, those sharing one reported as ambiguous."""
    budget = _Budget(run=MAX_RUN_BYTES)
    entries, kinds, claims = [], {}, {}
    dir_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(dir_fd) as listing:
            items = sorted(listing, key=lambda item: item.name)
        for number, item in enumerate(items):
            if _hidden([item.name]):
                continue
            entry = _Entry(item.name, work / str(number), budget)
            entries.append(entry)
            kind, problem = _classify(item)
            if kind:
                entry.student, problem = _student(item.name, kind, pattern)
            if problem:
                entry.skip(entry.shown, problem)
                continue
            kinds[entry] = kind
            claims.setdefault(entry.student, []).append(entry)
        for student, sharing in claims.items():
            if len(sharing) > 1:  # never guess whose files are whose
                names = ", ".join(f"'{entry.shown}'" for entry in sharing)
                sharing[0].skip(
                    f"student id '{student}'",
                    f"{len(sharing)} entries give it: {names}; none of them collected "
                    "(change --pattern so that it tells them apart, or put one student's "
                    "files into one folder)",
                )
                for entry in sharing:
                    entry.student = None
                continue
            entry = sharing[0]
            entry.work.mkdir()
            entry.gather(dir_fd, kinds[entry])
    finally:
        os.close(dir_fd)
    return entries


# Writing into submitted/
# ----------------------------------------------------------------------------------


def _make_folders(path: Path) -> None:
    """Creates ``path`` and its missing parents with mode 0755 (less the umask)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        os.mkdir(folder, 0o755)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _install(files: list[tuple[str, Path]], target: Path) -> None:
    """Makes the folder ``target`` hold exactly ``files`` ((name, extracted copy)),
    mode 0644 (less the umask); an existing ``target`` is replaced only once the new
    one is complete."""
    _make_folders(target.parent)
    staging = target.parent / f".{target.name}.collecting-{secrets.token_hex(4)}"
    os.mkdir(staging, 0o755)
    try:
        for name, copy in files:
            destination = staging / name
            _make_folders(destination.parent)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with (
                open(copy, "rb") as source,
                os.fdopen(os.open(destination, flags, 0o644), "wb") as sink,
            ):
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
        if os.path.lexists(target):
            old = target.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
            os.rename(target, old)
            os.rename(staging, target)
            _remove(old)
        else:
            os.rename(staging, target)
    except BaseException:
        if os.path.lexists(staging):
            _remove(staging)
        raise


def _has_files(path: Path) -> bool:
    try:
        return bool(os.listdir(path))
    except FileNotFoundError:
        return False
    except OSError:  # not a folder: it is something, so it counts as existing
        return True


def zip_collect(
    course: Course,
    assignment: str,
    directory: str | os.PathLike,
    *,
    pattern: str | None = None,
    force: bool = False,
) -> Collected:
    """Collects the downloaded submissions in ``directory`` into ``submitted/``.

    Every entry is checked on its own (see the module doc): a bad one is skipped with
    a line in :attr:`Collected.skipped`, and the others are collected.

    Args:
        course (Course): The loaded course.
        assignment (str): The assignment id; its release names the notebooks.
        directory (str | os.PathLike): The LMS download folder (left unchanged).
        pattern (str | None): Regex with a ``(?P<student_id>...)`` group, matched at the
            start of each top-level name (default :data:`DEFAULT_PATTERN`).
        force (bool): Replace submissions collected before.

    Returns:
        Collected: Whose notebooks were collected, and what was skipped.

    Raises:
        CourseError: If ``directory`` is not a folder, the pattern is not a regex with
            the group, the assignment has no released notebooks, or a submission to
            collect exists already and ``force`` is False (then nothing is written).
    """
    from nbgrader.utils import find_all_notebooks

    source = Path(directory).expanduser().resolve()
    if not source.is_dir():
        raise CourseError(f"zip-collect: {source} is not a folder")
    pattern = pattern or DEFAULT_PATTERN
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise CourseError(f"zip-collect: the pattern is not a regex ({error}): {pattern}") from None
    if "student_id" not in compiled.groupindex:
        raise CourseError(f"zip-collect: the pattern needs a (?P<student_id>...) group: {pattern}")
    released = find_all_notebooks(str(course.path("release", assignment)))
    if not released:
        raise CourseError(f"zip-collect: no released notebooks of {assignment!r}; generate first")

    result = Collected()
    with tempfile.TemporaryDirectory(prefix="npfl-collect-") as work:
        entries = _gather_all(source, compiled, Path(work))
        chosen: dict[str, tuple[_Entry, list[tuple[str, Path]]]] = {}
        for entry in entries:
            if not entry.student or entry.failed:
                continue
            files = entry.collected(released)
            if files:
                chosen[entry.student] = (entry, files)
            elif not entry.lines:
                entry.skip(entry.shown, "no notebook in it")
        targets = {student: course.path("submitted", assignment, student) for student in chosen}
        existing = sorted(student for student, target in targets.items() if _has_files(target))
        if existing and not force:
            shown = ", ".join(existing[:10]) + (", ..." if len(existing) > 10 else "")
            raise CourseError(
                f"zip-collect: {len(existing)} submission(s) of {assignment!r} exist already "
                f"({shown}); use --force to replace them (nothing was collected)"
            )
        for student, (entry, files) in sorted(chosen.items()):
            try:
                _install(files, targets[student])
            except OSError as error:
                entry.skip(entry.shown, f"cannot write {targets[student]} ({_shown(str(error))})")
                continue
            result.students[student] = sorted(name for name, _ in files)
            result.sources[student] = entry.shown
    result.skipped = [line for entry in entries for line in entry.report()]
    return result
