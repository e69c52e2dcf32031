"""Modules hidden from the student's kernel while it is graded (issue 12):
:mod:`npfl_course.worker.hiding`, ``c.NpflAutograde.hidden_modules``.

The attack they stop: copies of the reference functions made with ``types.FunctionType``
before ``forbid`` swaps the originals' code objects call the reference freely. Each
attack is run twice, with the modules hidden and without (where it must work, which
shows that the test would catch it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import nbformat
import pytest
from tiny_course import (
    TINY_CONFIG,
    generated_tiny_course,
    output_text,
    passed_tests,
    tiny_variant,
)

import npfl_course
import npfl_lib
from npfl_course.autograde import Autograder, SandboxUnavailableError
from npfl_course.autograde.merge import MAX_EXECUTED_BYTES
from npfl_course.course import load_course
from npfl_course.worker import HidingError, ResultChannel, check_hideable, hiding, worker_command

LANDLOCK = hiding.landlock_abi() >= 1
needs_landlock = pytest.mark.skipif(not LANDLOCK, reason="this Linux kernel offers no Landlock")
LIBRARY = os.path.dirname(os.path.realpath(npfl_lib.__file__))


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (["torch"], "only modules of npfl_lib can be hidden"),
        (["npfl_lib.no_such_module"], "no such module"),
        (["npfl_lib.grading"], "the student's kernel needs it"),
    ],
)
def test_what_cannot_be_hidden_is_refused_by_name(modules, message):
    with pytest.raises(HidingError, match=message) as error:
        check_hideable(modules)
    assert modules[0] in str(error.value)


def test_hiding_npfl_lib_hides_all_its_files_but_the_grading_helpers():
    if not LANDLOCK:
        pytest.skip("this Linux kernel offers no Landlock")
    files = check_hideable(["npfl_lib"])
    assert os.path.join(LIBRARY, "functional", "dropout.py") in files
    assert os.path.join(LIBRARY, "__init__.py") in files
    assert not [f for f in files if os.path.basename(f).startswith("grading.")]
    only = check_hideable(["npfl_lib.ensemble"])
    assert os.path.join(LIBRARY, "ensemble.py") in only
    assert all("ensemble" in os.path.basename(f) for f in only if f.startswith(LIBRARY))
    # With them, the grader's code that the kernel does not run.
    grader = os.path.dirname(os.path.realpath(npfl_course.__file__))
    assert os.path.join(grader, "similarity", "demo.py") in only
    assert not [f for f in only if f.startswith(os.path.join(grader, "worker"))]


# Run in a process of its own: Landlock cannot be undone, the import hook changes imports.
KERNEL_SIDE = textwrap.dedent("""
    import os, subprocess, sys
    from npfl_course.worker import hiding
    hiding.hide(sys.argv[1].split(","))
    library = sys.argv[2]
    def readable(path):
        try:
            open(path, "rb").read(1)
        except PermissionError:
            return False
        return True
    print("dropout.py", readable(os.path.join(library, "functional", "dropout.py")))
    print("grading.py", readable(os.path.join(library, "grading.py")))
    child = subprocess.run([sys.executable, "-c", "import torch, npfl_lib.functional"],
                           capture_output=True, text=True)
    print("child", "PermissionError" in child.stderr, "torch" not in child.stderr)
    import npfl_lib.functional as F  # an import alone works
    from npfl_lib.grading import ForbiddenCallError, check_close
    from npfl_lib.functional import *  # noqa: F403 - and star imports nothing
    try:
        F.dropout(1.0)
    except ForbiddenCallError as error:
        print("call", error)
    try:
        F.dropout.__code__
    except AttributeError:
        print("no code")
    check_close(1.0, 1.0)
    print("grading works")
""")


@needs_landlock
def test_a_hidden_module_is_unreadable_to_the_process_and_its_children():
    run = subprocess.run([sys.executable, "-c", KERNEL_SIDE, "npfl_lib", LIBRARY],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:3] == ["dropout.py False", "grading.py True", "child True True"], run.stdout
    assert lines[3].startswith("call npfl_lib.functional.dropout is not available while this "
                               "assignment is graded")  # fmt: skip
    assert lines[4:] == ["no code", "grading works"]


# A student cell that tries to reach the reference: its source file, a copy of its code,
# another process. Without hiding, each succeeds.
REACH = textwrap.dedent("""
    import os, subprocess, sys, types
    import npfl_lib.functional as F
    import npfl_lib.grading
    found = []
    try:
        library = os.path.dirname(npfl_lib.grading.__file__)
        source = open(f"{library}/functional/dropout.py").read()
        found.append("source" if "def dropout" in source else "")
    except PermissionError:
        pass
    try:
        relu = types.FunctionType(F.relu.__code__, F.relu.__globals__)
        found.append("copy")
    except AttributeError:
        pass
    child = subprocess.run([sys.executable, "-c", "import npfl_lib.functional"])
    found.append("child" if child.returncode == 0 else "")
    try:  # the grader's own code holds correct answers too (the similarity demo's)
        from npfl_course.similarity.demo import RING
        found.append("grader")
    except PermissionError:
        pass
    print("REACHED", [f for f in found if f])
""")


def _run(tmp_path, notebook, hide: tuple[str, ...], tmp: str | None = None):
    """The worker's exit status and executed notebook; ``tmp``: its TMPDIR."""
    folder = tmp_path / ("hidden" if hide else "visible")
    folder.mkdir(exist_ok=True)
    nbformat.write(notebook, folder / "in.ipynb")
    with ResultChannel() as channel:
        command = worker_command("in.ipynb", channel, 10, 4096, hide=hide)
        env = {**os.environ, "TMPDIR": tmp or str(tmp_path)}
        run = subprocess.run(command, cwd=folder, timeout=180, pass_fds=channel.fds, env=env,
                             stderr=subprocess.DEVNULL)  # fmt: skip
        data = channel.read(MAX_EXECUTED_BYTES)
        return run.returncode, json.loads(data) if data else None


@pytest.mark.slow
@needs_landlock
def test_a_student_cell_reaches_no_hidden_reference_and_honest_answers_pass(tmp_path):
    notebook = tiny_variant("full", REACH, after="setup")
    reached = {}
    for hide in ((), ("npfl_lib",)):
        status, executed = _run(tmp_path, notebook, hide)
        assert status == 0
        assert all(passed_tests(executed).values()), hide  # the honest answers
        cell = next(c for c in executed["cells"] if "REACHED" in c["source"])
        reached[hide] = output_text(cell)
    assert "REACHED ['source', 'copy', 'child', 'grader']" in reached[()], reached[()]
    assert "REACHED []" in reached[("npfl_lib",)], reached[("npfl_lib",)]


BIND_MOUNTED = textwrap.dedent("""
    import os, sys
    from npfl_course.worker import hiding
    hiding.hide(["npfl_lib"])
    for path in sys.argv[1:]:
        try:
            open(path, "rb").read(1)
            print("readable", os.path.basename(path))
        except PermissionError:
            print("hidden", os.path.basename(path))
""")


@needs_landlock
def test_another_mount_of_the_library_shows_nothing_hidden(tmp_path):
    """bubblewrap mounts a Python path reached through a symbolic link twice; a folder
    granted above the second mount must not show the hidden files."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a private bind mount")
    mount = tmp_path / "mnt"
    mount.mkdir()
    paths = [str(mount / "functional" / "dropout.py"), str(mount / "grading.py")]
    script = (f"mount --bind -o ro {shlex.quote(LIBRARY)} {shlex.quote(str(mount))} && "
              f"{shlex.quote(sys.executable)} -c {shlex.quote(BIND_MOUNTED)} "
              + " ".join(map(shlex.quote, paths)))  # fmt: skip
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if "mount:" in run.stderr:
        pytest.skip(f"no private bind mount here: {run.stderr.strip()[:200]}")
    assert run.stdout.split("\n")[:2] == ["hidden dropout.py", "readable grading.py"], run


# Writes a temporary file and reads it back, draws with matplotlib (its configuration and
# font cache), prints nothing else.
TEMPORARY = textwrap.dedent("""
    import tempfile
    import matplotlib.pyplot as plt
    with tempfile.NamedTemporaryFile("w+") as handle:
        handle.write("kept")
        handle.flush()
        print("TEMPORARY", open(handle.name).read())
    plt.plot([1, 2])
    plt.close()
""")


@pytest.mark.slow
@needs_landlock
def test_a_worker_whose_temporary_folder_is_on_the_way_to_the_hidden_files_works(tmp_path):
    """The course may lie under /tmp (CI's clones do), which is the sandbox's temporary
    folder: what appears there after the kernel is restricted is unreadable to it, so the
    kernel's own folders must be made before."""
    on_the_way = os.path.dirname(LIBRARY)
    if not os.access(on_the_way, os.W_OK):
        pytest.skip(f"cannot write to {on_the_way}")
    before = set(os.listdir(on_the_way))
    try:
        status, executed = _run(tmp_path, tiny_variant("full", TEMPORARY), ("npfl_lib",),
                                tmp=on_the_way)  # fmt: skip
    finally:
        for name in set(os.listdir(on_the_way)) - before:
            path = os.path.join(on_the_way, name)
            if name.startswith(("jupyter-", "kernel-", "tmp")):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
    assert status == 0
    assert all(passed_tests(executed).values())
    cell = next(c for c in executed["cells"] if "TEMPORARY" in c["source"])
    assert output_text(cell) == "TEMPORARY kept\n", cell["outputs"]


def test_grading_stops_where_the_modules_cannot_be_hidden(tmp_path, monkeypatch):
    config = TINY_CONFIG + 'c.NpflAutograde.hidden_modules = {"tiny": ["npfl_lib"]}\n'
    course_dir = generated_tiny_course(tmp_path / "course", {})
    (course_dir / "nbgrader_config.py").write_text(config, encoding="utf-8")
    monkeypatch.setattr(hiding, "landlock_abi", lambda: 0)
    grader = Autograder(load_course(course_dir), "tiny", unsandboxed=True)
    with pytest.raises(SandboxUnavailableError, match="no Landlock") as error:
        grader.check_isolation()
    assert "refusing to grade tiny (c.NpflAutograde.hidden_modules)" in str(error.value)
    bad = TINY_CONFIG + 'c.NpflAutograde.hidden_modules = {"tiny": ["npfl_lib.nope"]}\n'
    (course_dir / "nbgrader_config.py").write_text(bad, encoding="utf-8")
    monkeypatch.setattr(hiding, "landlock_abi", lambda: 7)
    grader = Autograder(load_course(course_dir), "tiny", unsandboxed=True)
    with pytest.raises(SandboxUnavailableError, match="'npfl_lib.nope': no such module"):
        grader.check_isolation()


# regularization's smooth_labels, copied from the reference (with the npfl_lib functions
# it calls) before forbid swaps their code objects: a copy forbid cannot catch.
COPIED = textwrap.dedent("""
    import types

    import npfl_lib.functional


    def _copy(function, copies={}):
        if id(function) not in copies:
            namespace = dict(function.__globals__)
            copy = types.FunctionType(function.__code__, namespace, function.__name__,
                                      function.__defaults__, function.__closure__)
            copy.__kwdefaults__ = function.__kwdefaults__
            copies[id(function)] = copy
            for key, value in list(namespace.items()):
                if isinstance(value, types.FunctionType) and "npfl_lib" in value.__module__:
                    namespace[key] = _copy(value)
        return copies[id(function)]


    smooth_labels = _copy(npfl_lib.functional.smooth_labels)
""")


@pytest.mark.slow
@needs_landlock
def test_copies_of_the_references_score_nothing_where_they_are_hidden(tmp_path):
    """Graded by ``npfl-course autograde`` with this repository's nbgrader_config.py (which
    hides npfl_lib from regularization), then without hiding: a submission with an honest
    l2_penalty, a copied smooth_labels and the other answers as released."""
    from npfl_course.check import grade, make_submission
    from npfl_course.check.notebook import REPO

    def submissions(release, source):
        released = {c.metadata.nbgrader.grade_id: c.source for c in release.cells
                    if c.metadata.get("nbgrader", {}).get("solution")}  # fmt: skip
        replace = {g: released[g] for g in ("dropout", "l1_step", "mixup")}
        return {"copies": make_submission(release, source, {**replace, "smooth_labels": COPIED})}

    visible = tmp_path / "visible_config.py"
    visible.write_text((REPO / "nbgrader_config.py").read_text(encoding="utf-8")
                       + "\nc.NpflAutograde.hidden_modules = {}\n", encoding="utf-8")  # fmt: skip
    scores = {}
    for label, config in (("hidden", REPO / "nbgrader_config.py"), ("visible", visible)):
        (tmp_path / label).mkdir()
        graded = grade("regularization", tmp_path / label, submissions, config=config)
        scores[label] = {g: score for g, (score, _) in graded.scores["copies"].items()}
    assert scores["visible"]["test_smooth_labels"] == 1, scores  # the attack works there
    assert scores["hidden"] == {"test_dropout": 0, "test_l2_penalty": 2, "test_l1_step": 0,
                                "test_smooth_labels": 0, "test_mixup": 0}, scores  # fmt: skip
    assert scores["visible"]["test_l2_penalty"] == 2, scores
