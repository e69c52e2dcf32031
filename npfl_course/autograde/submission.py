"""What a submission folder may hold before the grader touches it.

nbgrader copies a submission's files as the grader (following symbolic links) into
``autograded/``, from where they reach the student's sandbox. A link to the instructor's
source, to another student's notebook, to the gradebook or to ``/etc/shadow`` would be
graded or handed to student code. A submission folder must therefore hold only regular
files and folders; :func:`link_problem` says what else it holds. Folder names must be
valid student ids (:func:`npfl_course.course.student_id_problem`), since nbgrader uses
them as file globs.
"""

from __future__ import annotations

import os
import stat

from npfl_course.autograde.outcome import printable

MAX_ENTRIES = 10_000  # a submission with more files than this is not inspected further
MAX_DEPTH = 64  # deeper folders: nbgrader copies recursively (RecursionError at ~1000)


def shown(name: str) -> str:
    """``name`` safe to print: undecodable bytes as ``\\xNN`` (the byte, not Python's
    surrogate), control characters escaped by :func:`printable`."""
    return printable(os.fsencode(name).decode("utf-8", "backslashreplace"), one_line=True)


def _describe(path: str, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link (to {shown(os.readlink(path))})"
        except OSError:
            return "a symbolic link"
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}  # fmt: skip
    return next((text for test, text in kinds.items() if test(mode)), "not a regular file")


def link_problem(folder: str, root: str) -> str | None:
    """Why ``folder`` (a submission) cannot be graded safely, or None when it can.

    Nothing is followed: every folder on the way from ``root`` to ``folder``, ``folder``
    itself and every entry below it must be a regular file or a folder (checked with
    ``lstat``, iteratively, so a deep tree is no problem).

    Args:
        folder (str): ``submitted/<student>/<assignment>``, within ``root``.
        root (str): The course root; it may itself be reached through links.
    """
    relative = os.path.relpath(folder, root)
    name = shown(relative)
    parts = relative.split(os.sep)
    for depth in range(1, len(parts)):
        step = os.path.join(root, *parts[:depth])
        if os.path.islink(step):
            what = _describe(step, os.lstat(step).st_mode)
            return f"{shown(os.path.relpath(step, root))} is {what}; links are not followed"
    try:
        mode = os.lstat(folder).st_mode
    except OSError as exc:
        return f"{name} cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(mode):
        return f"{name} is {_describe(folder, mode)}, not a folder; links are not followed"
    bad, pending, seen = [], [(folder, 0)], 0
    while pending and seen < MAX_ENTRIES:
        current, depth = pending.pop()
        if depth > MAX_DEPTH:
            return f"{name} holds folders nested more than {MAX_DEPTH} deep; not graded"
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            bad.append(f"{shown(os.path.relpath(current, folder))} cannot be read ({exc.strerror})")
            continue
        for entry in entries:
            seen += 1
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                pending.append((entry.path, depth + 1))
            elif not stat.S_ISREG(mode):
                bad.append(f"{shown(os.path.relpath(entry.path, folder))} is "
                           f"{_describe(entry.path, mode)}")  # fmt: skip
    if seen >= MAX_ENTRIES:
        return f"{name} holds more than {MAX_ENTRIES} files; not graded"
    if bad:
        listed = "; ".join(sorted(bad)[:5]) + ("; ..." if len(bad) > 5 else "")
        return (f"{name} holds what is not a regular file or folder, which the grader does "
                f"not follow: {listed}")  # fmt: skip
    return None
