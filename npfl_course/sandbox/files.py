"""The files of a sandboxed command: how much disk they take, whose they are, removing them.

Every function here walks a tree that untrusted code wrote, so none of them recurses
(Python 3.11's ``os.walk`` and ``shutil.rmtree`` do, and fail at about 1,000 levels), none
follows a symbolic link, and each reaches a folder relative to an open file descriptor of a
folder in the tree, never by an absolute path.

* :func:`disk_usage`: the space a tree takes on disk, bounded in entries and path length, for
  the disk watchdog of :func:`npfl_course.sandbox.run_sandboxed`;
* :func:`chown_tree`: hands a tree to another owner;
* :func:`owned_entries`: what a uid left in the folders every user may write to;
* :func:`remove_tree`: removes a tree of any depth.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

DISK_POLL_SECONDS = 0.1  # at least; a slow walk waits four times its own duration
MAX_DISK_ENTRIES = 200_000  # files and folders the disk watchdog looks at in one walk
# Longest path below the root that a walk follows: the kernel resolves at most PATH_MAX
# (4096) bytes in one call, and no honest program nests folders that deep.
MAX_WALK_PATH = 4000
# Folders every user may write to: without bubblewrap a sandbox uid can leave files there.
SHARED_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")

Stat = os.stat_result
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WalkLimitError(Exception):
    """A tree is too large or too deep to be walked within the limits; the message says how."""


def _unreadable(relative: str, exc: OSError) -> WalkLimitError:
    shown = relative if len(relative) <= 100 else f"{relative[:97]}..."
    return WalkLimitError(f"a folder that cannot be read, {shown!r} ({exc.strerror}),")


def _walk(root_fd: int, max_entries: int | None = None) -> Iterator[tuple[int, str, Stat]]:
    """Yields ``(dir_fd, name, lstat)`` for every entry below ``root_fd``, depth first.

    ``dir_fd`` is open only until the next step. Entries that vanish meanwhile are skipped.

    Raises:
        WalkLimitError: More than ``max_entries`` entries, a path longer than
            :data:`MAX_WALK_PATH` bytes, or a folder that cannot be read.
    """
    pending = ["."]  # folders still to list, relative to root_fd
    seen = 0
    while pending:
        relative = pending.pop()
        try:
            fd = os.open(relative, _DIRECTORY, dir_fd=root_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # replaced meanwhile: not a folder
                continue
            raise _unreadable(relative, exc) from exc
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    seen += 1
                    if max_entries is not None and seen > max_entries:
                        raise WalkLimitError(f"more than {max_entries} files and folders")
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise _unreadable(relative, exc) from exc
                    yield fd, entry.name, info
                    if stat.S_ISDIR(info.st_mode):
                        child = entry.name if relative == "." else f"{relative}/{entry.name}"
                        if len(os.fsencode(child)) > MAX_WALK_PATH:
                            raise WalkLimitError(f"a path longer than {MAX_WALK_PATH} bytes")
                        pending.append(child)
        finally:
            os.close(fd)


def disk_usage(roots: list[str], max_entries: int | None = None) -> tuple[int, str | None]:
    """Bytes allocated on disk (``st_blocks * 512``) to ``roots`` and everything below them.

    A file with several names counts once, so does a root given twice; symbolic links are
    not followed.

    Args:
        roots (list[str]): Folders or files.
        max_entries (int | None): Entries to look at, in all; default MAX_DISK_ENTRIES.

    Returns:
        tuple[int, str | None]: The bytes, and None, or what stopped the walk early
        (``max_entries`` entries, a path too long, a folder that cannot be read); then the
        bytes are only those seen so far.
    """
    total, linked = 0, set()
    remaining = MAX_DISK_ENTRIES if max_entries is None else max_entries
    for root in roots:
        try:
            root_fd = os.open(root, _DIRECTORY)
        except OSError:  # gone, or not a folder: a file counts by itself
            with contextlib.suppress(OSError):
                total += os.lstat(root).st_blocks * 512
            continue
        try:
            info = os.fstat(root_fd)
            if (info.st_dev, info.st_ino) in linked:
                continue
            linked.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
            for _, _, info in _walk(root_fd, remaining):
                remaining -= 1
                if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                    if (info.st_dev, info.st_ino) in linked:
                        continue
                    linked.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
        except WalkLimitError as exc:
            return total, str(exc)
        finally:
            os.close(root_fd)
    return total, None


def owned_entries(uid: int, folders: tuple[str, ...] = SHARED_FOLDERS) -> list[str]:
    """The paths of the entries directly in ``folders`` that belong to ``uid``."""
    found = []
    for folder in folders:
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        found.append(entry.path)
    return found


def chown_tree(root: str, uid: int, gid: int, only_uid: int | None = None) -> None:
    """Gives ``root`` and everything below it to ``uid``:``gid``, best effort.

    Args:
        root (str): A folder.
        uid (int): The new owner.
        gid (int): The new group.
        only_uid (int | None): Change only what belongs to this uid; when None, a file with
            more than one name is skipped, since its other names may lie outside ``root``.

    Symbolic links are changed themselves, never followed. What lies below a path longer
    than :data:`MAX_WALK_PATH` bytes, or in a folder that cannot be read, is left as it is.
    """

    def change(info: os.stat_result, name: str, dir_fd: int | None) -> None:
        if only_uid is not None and info.st_uid != only_uid:
            return
        if only_uid is None and info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
            return
        with contextlib.suppress(OSError):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    try:
        root_fd = os.open(root, _DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            change(os.fstat(root_fd), ".", root_fd)
        with contextlib.suppress(WalkLimitError):
            for dir_fd, name, info in _walk(root_fd):
                change(info, name, dir_fd)
    finally:
        os.close(root_fd)


def _open_writable_folder(name: str, dir_fd: int) -> int:
    """An fd of the folder ``name`` (not followed if a link), made ``u+rwx`` if it was not."""
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except PermissionError:  # not readable: open it without reading, then allow us
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IRWXU)
        finally:
            os.close(path_fd)
        fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    mode = os.fstat(fd).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        try:
            os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IRWXU)
        except OSError:
            os.close(fd)
            raise
    return fd


def remove_tree(path: str | os.PathLike) -> None:
    """Removes ``path`` and everything below it, however deep; a missing path is fine.

    Symbolic links are removed, never followed (``path`` itself too). Folders without
    permissions for their owner get ``u+rwx`` first. It never recurses, and however deep the
    tree, it holds five file descriptors at most and names no path longer than one entry:
    each nested folder is moved up into a staging folder directly below ``path`` (a rename
    within the tree) before it is emptied, so no folder is reached through another. It goes
    on past entries it cannot remove.

    Raises:
        OSError: Something could not be removed; the message says how many entries stayed
            and why the first one did.
    """
    path = os.path.abspath(os.fspath(path))
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    failures: list[OSError] = []
    parent_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        top = _open_writable_folder(os.path.basename(path), parent_fd)
        try:
            _empty_tree(top, failures)
        finally:
            os.close(top)
        if not failures:
            os.rmdir(os.path.basename(path), dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failures.append(exc)
    finally:
        os.close(parent_fd)
    if failures:
        first = failures[0]
        raise OSError(
            first.errno,
            f"could not remove {path!r}: {len(failures)} entries failed, the first with: {first}",
        )


def _empty_tree(top: int, failures: list[OSError]) -> None:
    """Removes everything below the open folder ``top`` (see :func:`remove_tree`)."""
    entries = _entries(top)
    stage_name = ".npfl-removing"
    while any(entry.name == stage_name for entry in entries):
        stage_name += "_"
    os.mkdir(stage_name, 0o700, dir_fd=top)
    stage = os.open(stage_name, _DIRECTORY, dir_fd=top)
    moved = 0  # the folders in the stage are called 0, 1, 2, ...
    pending = []  # folders still to empty and remove: (the fd they are in, name)
    try:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append((top, entry.name))
            else:
                _unlink(entry.name, top, failures)
        while pending:
            holder, name = pending.pop()
            try:
                folder = _open_writable_folder(name, holder)
                try:
                    for entry in _entries(folder):
                        if not entry.is_dir(follow_symlinks=False):
                            _unlink(entry.name, folder, failures)
                            continue
                        try:
                            _move_folder(entry.name, folder, str(moved), stage)
                        except FileNotFoundError:
                            continue
                        except OSError as exc:
                            failures.append(exc)
                            continue
                        pending.append((stage, str(moved)))
                        moved += 1
                finally:
                    os.close(folder)
                os.rmdir(name, dir_fd=holder)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append(exc)
    finally:
        os.close(stage)
    if not failures:
        os.rmdir(stage_name, dir_fd=top)


def _entries(folder: int) -> list[os.DirEntry]:
    """The entries of the open folder ``folder``, read before any of them is removed."""
    with os.scandir(folder) as entries:
        return list(entries)


def _unlink(name: str, dir_fd: int, failures: list[OSError]) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        failures.append(exc)


def _move_folder(name: str, dir_fd: int, target: str, stage: int) -> None:
    """Renames the folder ``name`` into the stage; moving a folder needs write access to it."""
    try:
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=stage)
    except PermissionError:
        os.close(_open_writable_folder(name, dir_fd))
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=stage)
