"""Tests of npfl_course.sandbox: limits, isolation, the fallback without bubblewrap.

Isolation tests are skipped where bwrap is unavailable; the fallback is tested everywhere by
forcing it with NPFL_COURSE_NO_BWRAP=1. Every hostile command carries a unique token in its
command line, so the tests can check in /proc that no process of it survived.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest

import npfl_lib
from npfl_course.sandbox import (
    Limits,
    SandboxResult,
    bwrap,
    files,
    processes,
    run_sandboxed,
    sandbox_available,
)
from npfl_course.sandbox import run as sandbox_run

REPO = Path(npfl_lib.__file__).resolve().parent.parent
BWRAP = sandbox_available()
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap is not available here")
FAST = Limits(notebook_seconds=20, memory_mb=512, max_processes=32)


def _procs_with(token: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``token``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state != "Z":
            pids.append(int(name))
    return pids


def _python_for(mode: str) -> str:
    """A Python the sandbox can run; the fallback as root needs one other uids can reach."""
    if mode == "bwrap" or os.geteuid() != 0:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and processes.reachable_by_others(candidate):
            return candidate
    pytest.skip("as root without bwrap the process limit needs a Python other uids can run")


@pytest.fixture
def workdir():
    # Not pytest's tmp_path: its parent is 0700, which the fallback's sandbox uid can't pass.
    base = tempfile.mkdtemp(prefix="npfl-sandbox-test-")
    os.chmod(base, 0o755)
    work = Path(base, "submission")
    work.mkdir()
    yield work
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["bwrap", "fallback"])
def mode(request, monkeypatch):
    """Runs a test isolated by bwrap (skipped without it) and in the forced fallback."""
    if request.param == "bwrap":
        if not BWRAP:
            pytest.skip("bubblewrap is not available here")
        monkeypatch.delenv("NPFL_COURSE_NO_BWRAP", raising=False)
    else:
        monkeypatch.setenv("NPFL_COURSE_NO_BWRAP", "1")
        warnings.filterwarnings("ignore", "npfl_course.sandbox", RuntimeWarning)
    return request.param


def _run(code: str, workdir: Path, mode: str = "bwrap", **kwargs) -> SandboxResult:
    kwargs.setdefault("limits", FAST)
    result = run_sandboxed([_python_for(mode), "-c", code], workdir=workdir, **kwargs)
    assert result.sandboxed == (mode == "bwrap")
    return result


def test_success_and_output(workdir, mode):
    result = _run("import sys; print('out'); print('err', file=sys.stderr)", workdir, mode)
    assert (result.returncode, result.reason) == (0, None)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert not (result.timed_out or result.memory_exceeded or result.process_limit_hit)


@pytest.mark.parametrize(
    "code, returncode, reason",
    [
        ("import sys; sys.exit(3)", 3, "exited with status 3"),
        ("import os; os._exit(7)", 7, "exited with status 7"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -15, "SIGTERM"),
        ("raise SystemExit('bye')", 1, "exited with status 1"),
    ],
)
def test_exit_codes(workdir, mode, code, returncode, reason):
    result = _run(code, workdir, mode)
    assert result.returncode == returncode
    assert reason in result.reason


def test_infinite_loop_is_killed_with_its_children(workdir, mode):
    token = f"loop_{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "while True: pass  # {token}"])
        subprocess.Popen(["sleep", "1000"], start_new_session=True)  # leaves the group
        while True: pass  # {token}
    """)
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=2))
    assert result.timed_out and result.returncode is None
    assert result.reason == "time limit exceeded (2 s)"
    assert 2 <= result.duration < 6
    assert _procs_with(token) == []


def test_interrupted_caller_leaves_nothing_running(workdir, mode):
    token = f"interrupted_{uuid.uuid4().hex}"

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(f"import time; time.sleep(1000)  # {token}", workdir, mode)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert _procs_with(token) == []


def test_memory_bomb(workdir, mode):
    code = "chunks = []\nwhile True: chunks.append(bytearray(10 ** 7))"
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=20, memory_mb=256))
    assert result.memory_exceeded and not result.timed_out
    assert result.reason == "memory limit exceeded (256 MB)"
    assert "MemoryError" in result.stderr


def test_memory_below_the_limit_is_fine(workdir, mode):
    # The limit is in MiB of address space: 100 MB must fit under 256 MB.
    code = "x = bytearray(100 * 2 ** 20); print(len(x))"
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=20, memory_mb=256))
    assert (result.returncode, result.memory_exceeded) == (0, False)


def test_processes_together_are_held_to_the_limit(workdir, mode):
    # Each process stays under the per-process limit; together they exceed it, which only
    # the watchdog over all the command's processes sees.
    code = textwrap.dedent("""
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                break
        block = bytearray(120 * 2 ** 20)  # touched: resident, anonymous
        time.sleep(30)
    """)
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=20, memory_mb=256))
    assert result.memory_exceeded and not result.timed_out and result.duration < 15
    assert result.reason == "memory limit exceeded (256 MB for all its processes together)"
    assert result.peak_memory_mb > 256


def test_torch_imports_under_the_default_limits(workdir, mode):
    # RLIMIT_AS of 2048 MB made the CUDA build's import fail ("failed to map segment").
    code = "import torch; print(torch.ones(3).sum().item(), repr(torch.cuda.is_available()))"
    limits = Limits(notebook_seconds=120)
    result = run_sandboxed([sys.executable, "-c", code], workdir=workdir, limits=limits)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3.0", "False"]  # grading is on the CPU
    assert 0 < result.peak_memory_mb < Limits().memory_mb


def test_fork_bomb_is_contained(workdir, mode):
    token = f"fork_{uuid.uuid4().hex}"
    # Survives failed forks, so only the process limit and the wall clock stop it.
    code = f"import os\nwhile True:  # {token}\n    try: os.fork()\n    except OSError: pass"
    start = time.monotonic()
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=3, max_processes=16))
    assert time.monotonic() - start < 10
    assert result.timed_out and result.process_limit_hit
    assert _procs_with(token) == []


def test_fork_bomb_that_gives_up_fails_cleanly(workdir, mode):
    code = "import os\nwhile True: os.fork()"
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=10, max_processes=16))
    assert not result.timed_out and result.returncode != 0
    assert result.process_limit_hit and "process limit exceeded (16" in result.reason


def test_thread_limit(workdir, mode):
    code = "import threading, time\nfor _ in range(100): threading.Thread(target=time.sleep, args=(5,), daemon=True).start()"  # noqa: E501
    result = _run(code, workdir, mode, limits=Limits(notebook_seconds=10, max_processes=16))
    assert result.returncode != 0 and result.process_limit_hit


def test_huge_output_is_truncated(workdir, mode):
    code = "import sys; sys.stdout.write('a' * (20 * 2 ** 20) + 'THE END')"
    result = _run(code, workdir, mode)
    assert result.returncode == 0
    assert len(result.stdout) < sandbox_run.MAX_OUTPUT_BYTES + 100
    assert result.stdout.startswith("aaa") and result.stdout.endswith("THE END")
    assert "bytes of output truncated" in result.stdout


def test_environment_is_minimal(workdir, mode, monkeypatch):
    monkeypatch.setenv("NPFL_SECRET_TOKEN", "do-not-leak")
    code = "import os, json; print(json.dumps(dict(os.environ)))"
    result = _run(code, workdir, mode, env={"EXTRA": "1"})
    env = json.loads(result.stdout)
    assert "NPFL_SECRET_TOKEN" not in env
    assert env["HOME"] == str(workdir.resolve())
    assert (env["OMP_NUM_THREADS"], env["MPLBACKEND"], env["EXTRA"]) == ("1", "Agg", "1")
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and "LANG" in env and "PATH" in env
    # The sandbox uid has no passwd entry: getpass must still work (torch's caches use it).
    assert _run("import getpass; print(getpass.getuser())", workdir, mode).stdout == "student\n"
    given = _run(code, workdir, mode, env={"OMP_NUM_THREADS": "3"})
    assert json.loads(given.stdout)["OMP_NUM_THREADS"] == "3"


def test_command_not_found(workdir, mode):
    result = run_sandboxed(["no-such-command-npfl"], workdir=workdir, limits=FAST)
    assert result.returncode == 127 and "cannot execute" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="uid switching only happens as root")
def test_root_runs_as_distinct_unprivileged_uids(workdir, mode):
    other = workdir.parent / "other"
    other.mkdir()
    code = "import os, time; print(os.getuid(), os.getgid(), os.getgroups()); time.sleep(1)"
    results = {}
    threads = [
        threading.Thread(target=lambda w=w: results.__setitem__(w, _run(code, w, mode)))
        for w in (workdir, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [results[w].stdout.split()[0] for w in (workdir, other)]
    assert len(set(ids)) == 2 and all(int(i) >= processes.UID_BASE for i in ids)
    # What it wrote belongs to the workdir's owner again afterwards.
    _run("open('made.txt', 'w').write('x')", workdir, mode)
    assert {p.stat().st_uid for p in [workdir, *workdir.iterdir()]} == {os.getuid()}


# --- disk: the limit, trees of any depth ------------------------------------------------

DISK = Limits(notebook_seconds=60, memory_mb=512, max_processes=32, disk_mb=500)
# Writes 4 files of 400 MB of zeros, in chunks of 8 MiB, into the folder FOLDER.
WRITE_1600_MB = textwrap.dedent("""
    import os
    chunk = bytes(8 << 20)
    for i in range(4):
        with open(os.path.join(FOLDER, f"big{i}"), "wb") as f:
            for _ in range(50):
                f.write(chunk)
    print("wrote it all")
""")


@pytest.fixture
def private_tmp(monkeypatch):
    """The folder the fallback's private /tmp is made in (other uids must enter it). Not
    tempfile.tempdir: the sandbox uids' locks lie there, shared with other processes."""
    folder = tempfile.mkdtemp(prefix="npfl-sandbox-test-tmp-")
    os.chmod(folder, 0o755)
    mkdtemp = tempfile.mkdtemp

    def mkdtemp_here(suffix=None, prefix=None, dir=None):  # noqa: A002 - tempfile's name
        return mkdtemp(suffix, prefix, folder if dir is None else dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_here)
    yield Path(folder)
    files.remove_tree(folder)


def _largest(folders: list[str], done: threading.Event, peak: list[int]) -> None:
    """Samples what ``folders`` take on disk every 5 ms until ``done`` (the watchdog: 100)."""
    while not done.is_set():
        peak[0] = max(peak[0], files.disk_usage(folders)[0])
        time.sleep(0.005)


@pytest.mark.parametrize("where", ["workdir", "tmp"])
def test_disk_limit(workdir, mode, where, private_tmp):
    if where == "tmp" and mode == "bwrap":
        pytest.skip("bwrap's /tmp is a tmpfs of memory_mb: memory, not disk")
    folder = "os.environ['TMPDIR']" if where == "tmp" else "'.'"
    peak, done = [0], threading.Event()
    monitor = threading.Thread(target=_largest, args=([str(workdir), str(private_tmp)], done, peak))
    monitor.start()
    try:
        result = _run(f"import os\nFOLDER = {folder}\n{WRITE_1600_MB}", workdir, mode, limits=DISK)
    finally:
        done.set()
        monitor.join()
    assert result.disk_exceeded and not result.memory_exceeded and not result.timed_out
    assert result.reason == "disk limit exceeded (500 MB in the work folder)"
    assert "wrote it all" not in result.stdout
    # What got through between two looks of the watchdog (100 ms apart) is bounded.
    assert 500 <= result.peak_disk_mb < 800 and peak[0] < 800 << 20, (peak, result)
    assert list(private_tmp.iterdir()) == []


def test_disk_limit_counts_deleted_files_held_open(workdir, mode):
    code = textwrap.dedent("""
        import os, time
        chunk, kept = bytes(8 << 20), []
        for i in range(4):
            f = open(f"big{i}", "wb")
            os.unlink(f"big{i}")  # no folder shows it, but it takes space until closed
            kept.append(f)
            for _ in range(50):
                f.write(chunk)
        print("wrote it all")
        time.sleep(30)
    """)
    result = _run(code, workdir, mode, limits=DISK)
    assert result.disk_exceeded and result.duration < 20, result
    assert "wrote it all" not in result.stdout and os.listdir(workdir) == []


def test_a_file_larger_than_the_disk_limit_cannot_be_written(workdir, mode):
    # Sparse, so it takes no space and the watchdog sees nothing: RLIMIT_FSIZE stops it.
    result = _run("open('sparse', 'wb').truncate(600 << 20)", workdir, mode, limits=DISK)
    assert result.returncode == 1 and "File too large" in result.stderr, result
    assert not result.disk_exceeded


def test_more_files_than_the_watchdog_counts_exceed_the_limit(workdir, mode, monkeypatch):
    monkeypatch.setattr(files, "MAX_DISK_ENTRIES", 1000)
    code = "import time\nfor i in range(3000): open(f'f{i}', 'w').close()\ntime.sleep(30)"
    result = _run(code, workdir, mode, limits=DISK)
    assert result.disk_exceeded and result.duration < 20
    assert result.reason == (
        "disk limit exceeded (more than 1000 files and folders in the work folder)"
    )


# Builds a tree DEPTH folders deep below the current folder, step by step (PATH_MAX limits
# what one call may name), with a file in each and a link at the bottom; read-only there.
DEEP_TREE = textwrap.dedent("""
    top = os.getcwd()
    for i in range(DEPTH):
        os.mkdir("d")
        with open("f", "w") as f:
            f.write("x" * 100)
        os.chdir("d")
    os.symlink("/etc/passwd", "passwd")
    os.chmod(".", 0o500)
    os.chdir(top)
    print("built")
""")


def test_a_deep_tree_is_handed_back_and_removed(workdir, mode, private_tmp):
    code = "import os\nDEPTH = 1500\n" + DEEP_TREE + "os.chdir(os.environ['TMPDIR'])\n"
    result = _run(code + DEEP_TREE, workdir, mode, limits=Limits(notebook_seconds=60))
    assert result.returncode == 0 and result.stdout == "built\nbuilt\n", result.stderr
    assert not result.disk_exceeded and result.peak_disk_mb > 0
    assert list(private_tmp.iterdir()) == []  # the fallback's private /tmp is gone
    if os.geteuid() == 0:  # every folder and file is the workdir's owner's again
        root = os.open(workdir, os.O_RDONLY)
        try:
            owners = {info.st_uid for _, _, info in files._walk(root)}
        finally:
            os.close(root)
        assert owners == {os.getuid()}
    files.remove_tree(workdir)
    assert not workdir.exists() and os.path.exists("/etc/passwd")


@pytest.mark.skipif(os.geteuid() != 0, reason="without root there is no sandbox uid")
def test_fallback_counts_and_removes_what_it_leaves_in_shared_folders(workdir, monkeypatch):
    monkeypatch.setenv("NPFL_COURSE_NO_BWRAP", "1")
    warnings.filterwarnings("ignore", "npfl_course.sandbox", RuntimeWarning)
    stray = f"/tmp/npfl-stray-{uuid.uuid4().hex}"
    code = f"import os\nos.mkdir({stray!r})\nFOLDER = {stray!r}\n{WRITE_1600_MB}"
    result = _run(code, workdir, "fallback", limits=DISK)
    assert result.disk_exceeded, result
    assert not os.path.exists(stray)


def test_trees_of_any_depth_are_measured_and_removed(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    folder = os.open(root, os.O_RDONLY)
    for _ in range(3000):  # 6000 bytes of path: more than one call may name (PATH_MAX)
        os.mkdir("d", dir_fd=folder)
        os.symlink(outside, "link", dir_fd=folder)
        deeper = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = deeper
    os.chmod(f"/proc/self/fd/{folder}", 0)
    os.close(folder)
    (root / "ro").mkdir()
    (root / "ro" / "file").write_text("x")
    (root / "ro").chmod(0o500)
    used, problem = files.disk_usage([str(root)])
    assert problem == f"a path longer than {files.MAX_WALK_PATH} bytes" and used > 0
    assert files.disk_usage([str(root / "ro")])[1] is None
    files.remove_tree(root)
    assert not root.exists() and outside.read_text() == "keep"
    files.remove_tree(root)  # gone: nothing to do
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "kept").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    files.remove_tree(tmp_path / "link")  # a link goes, what it points to stays
    assert not (tmp_path / "link").exists() and (tmp_path / "elsewhere" / "kept").exists()


def test_remove_tree_goes_on_and_says_what_it_could_not_remove(tmp_path, monkeypatch):
    for name in ("a", "b/c/stuck", "b/c/d/e"):
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / name).write_text("x")
    unlink = os.unlink

    def failing(name, *args, **kwargs):
        if name == "stuck":
            raise PermissionError(1, "Operation not permitted", name)
        return unlink(name, *args, **kwargs)

    monkeypatch.setattr(files.os, "unlink", failing)
    with pytest.raises(OSError, match="could not remove .*tree.*: 2 entries failed"):
        files.remove_tree(tmp_path / "tree")
    monkeypatch.undo()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["tree/.npfl-removing/0/stuck"]  # all else went
    files.remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists()


# --- isolation (bwrap only) -----------------------------------------------------------


@needs_bwrap
def test_network_is_unreachable_inside(workdir):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    with server:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # works outside
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
        blocked = _run(code, workdir)
        allowed = _run(code, workdir, limits=Limits(notebook_seconds=20, network=True))
    assert blocked.returncode == 1 and ("Connection refused" in blocked.stderr)
    assert allowed.returncode == 0, allowed.stderr
    # Its own loopback works (a Jupyter kernel talks to its client over it).
    code = "import socket; s = socket.create_server(('127.0.0.1', 0)); socket.create_connection(s.getsockname()).close()"  # noqa: E501
    assert _run(code, workdir).returncode == 0


@needs_bwrap
def test_files_outside_the_workdir_are_invisible(workdir):
    gradebook = workdir.parent / "gradebook.db"
    gradebook.write_text("grades")
    other = workdir.parent / "other_student" / "hw.ipynb"
    other.parent.mkdir()
    other.write_text("{}")
    hidden = [gradebook, other, REPO / "pyproject.toml", REPO / "nbgrader_config.py"]
    hidden += [REPO / "assignments", "/etc/shadow"]
    code = f"import os; print([os.path.exists(p) for p in {[str(p) for p in hidden]!r}])"
    result = _run(code, workdir)
    assert result.stdout.strip() == str([False] * len(hidden))
    read = _run(f"open({str(gradebook)!r}).read()", workdir)
    assert read.returncode == 1 and "FileNotFoundError" in read.stderr
    # The fallback does not isolate: the same read succeeds there (so this test can fail).
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setenv("NPFL_COURSE_NO_BWRAP", "1")
        warnings.simplefilter("ignore")
        leaked = _run(f"print(open({str(gradebook)!r}).read())", workdir, "fallback")
    assert leaked.stdout.strip() == "grades"


@needs_bwrap
def test_only_the_workdir_is_writable(workdir):
    outside = workdir.parent / "planted.txt"
    in_tmp = f"/tmp/npfl-sandbox-{uuid.uuid4().hex}"
    library = Path(npfl_lib.__file__).parent / "planted.py"
    for target in (outside, library, Path(sys.prefix) / "planted"):
        result = _run(f"open({str(target)!r}, 'w').write('x')", workdir)
        assert result.returncode == 1 and "Error" in result.stderr
        assert not target.exists()
    code = f"open('ok.txt', 'w').write('fine'); open({in_tmp!r}, 'w').write('private')"
    assert _run(code, workdir).returncode == 0
    assert (workdir / "ok.txt").read_text() == "fine"
    assert not os.path.exists(in_tmp)  # the sandbox's /tmp is its own


@needs_bwrap
def test_extra_readonly_path(workdir):
    data = workdir.parent / "data"
    data.mkdir()
    (data / "x.txt").write_text("42")
    code = f"print(open({str(data / 'x.txt')!r}).read()); open({str(data / 'y')!r}, 'w')"
    result = _run(code, workdir, readonly=[data])
    assert result.stdout.strip() == "42" and "Read-only file system" in result.stderr


@needs_bwrap
def test_torch_and_npfl_lib_import_inside(workdir):
    code = "import torch, npfl_lib; print(torch.ones(2).sum().item(), npfl_lib.__file__)"
    result = _run(code, workdir, limits=Limits(notebook_seconds=120))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2.0", npfl_lib.__file__]


@needs_bwrap
def test_sandbox_dies_with_its_parent(workdir):
    token = f"orphan_{uuid.uuid4().hex}"
    sleeper = [sys.executable, "-c", f"import time; time.sleep(1000)  # {token}"]
    parent_code = f"from npfl_course.sandbox import run_sandboxed as r; r({sleeper!r}, workdir={str(workdir)!r})"  # noqa: E501
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 20
    while len(_procs_with(token)) < 4:  # the parent, bwrap, bwrap's init, the sleeper
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while survivors := _procs_with(token):
        if time.monotonic() > deadline:
            for pid in survivors:  # leave nothing behind, even when failing
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the sandbox outlived its parent: {len(survivors)} processes")
        time.sleep(0.05)


# --- fallback, availability, bad input ------------------------------------------------


def test_fallback_warns_once_and_require_sandbox_raises(workdir, monkeypatch):
    monkeypatch.setenv("NPFL_COURSE_NO_BWRAP", "1")
    monkeypatch.setattr(sandbox_run, "_warned", threading.Event())
    assert not sandbox_available()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert run_sandboxed(["true"], workdir=workdir).sandboxed is False
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "NO sandbox" in messages[0] and "apt-get install bubblewrap" in messages[0]
    with pytest.raises(RuntimeError, match="require_sandbox"):
        run_sandboxed(["true"], workdir=workdir, require_sandbox=True)


def test_self_test_reports_missing_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox_run.shutil, "which", lambda name, *a, **k: None)
    monkeypatch.delenv("NPFL_COURSE_BWRAP", raising=False)
    assert sandbox_run._bwrap_self_test() == "bwrap is not installed"
    monkeypatch.setenv("NPFL_COURSE_BWRAP", "")
    assert sandbox_run._bwrap_self_test() == "NPFL_COURSE_BWRAP='' names no executable"
    assert sandbox_run.isolation()[1].startswith("NO sandbox (NPFL_COURSE_BWRAP='' names no")


def test_readonly_mounts_never_expose_the_course(workdir):
    course_workdir = REPO / "autograded" / "student" / "hw1"  # need not exist
    for target in (str(workdir), str(course_workdir)):
        mounts = [dst for _, dst in bwrap.readonly_mounts(target, [])]
        assert str(Path(npfl_lib.__file__).parent) in mounts
        assert sys.prefix in mounts or any(sys.prefix.startswith(m) for m in mounts)
        for dst in mounts:  # no mount at or above the workdir or the course root
            assert not bwrap.is_within(target, dst)
            assert not bwrap.is_within(str(REPO), dst)


def test_no_mount_above_the_workdir(workdir, monkeypatch):
    # e.g. a sys.path entry that holds the submissions: mounting it would show the others.
    above = {str(workdir.parent), str(workdir.parent.parent), sys.prefix}
    monkeypatch.setattr("npfl_course.sandbox.bwrap.python_paths", lambda: above)
    mounts = [dst for _, dst in bwrap.readonly_mounts(str(workdir), [])]
    assert sys.prefix in mounts and str(workdir.parent) not in mounts
    assert str(workdir.parent.parent) not in mounts


def test_bad_input(workdir):
    with pytest.raises(ValueError, match="argv"):
        run_sandboxed([], workdir=workdir)
    with pytest.raises(ValueError, match="workdir"):
        run_sandboxed(["true"], workdir=workdir / "missing")
    with pytest.raises(ValueError, match="readonly"):
        run_sandboxed(["true"], workdir=workdir, readonly=[workdir / "missing"])
    for field in ("notebook_seconds", "cell_seconds", "memory_mb", "max_processes", "disk_mb"):
        with pytest.raises(ValueError, match=f"limits.{field}"):
            run_sandboxed(["true"], workdir=workdir, limits=Limits(**{field: 0}))
