"""The GPU check: proves npfl_lib's CUDA paths and measures W1, in one run on a GPU machine.

Run it as ``bash benchmarks/gpu_check.sh`` (see docs/benchmarks.md, "The GPU check").
With CUDA it does, within ``--budget`` seconds (default 300; each phase has a share,
and the summary is rewritten after each one, so a phase that runs long loses only
itself):

0. install: the packages of ``benchmarks/gpu_requirements.txt`` that the machine's
   Python lacks, offline, from the wheels ``benchmarks/gpu_wheels.sh`` downloaded
   (``pip install --no-index --find-links WHEELS --no-deps --target SITE``);
1. ``graph``: the Trainer's CUDA-graph path against eager training, on W1's model for
   ``GRAPH_STEPS`` steps, with torch's AdamW, npfl_lib's AdamW (its step counter moved
   to the GPU by the Trainer, and created capturable) and npfl_lib's SGD. Equal within
   float32 rounding (``rtol=1e-5, atol=1e-6``; bit-equal is expected where both runs
   run the same kernels, and reported), and against npfl_lib's AdamW with its host-side
   ``int`` step counter within ``steps * lr * 5e-5`` (the float32 bias corrections of
   the capturable path; see tests/test_optim.py);
2. ``train_epoch``: ``benchmarks/train_epoch.py --device cuda`` (the four W1 loops),
   with the issue's goals for one H100: (c) ``Trainer.fit`` <= 0.25 s per epoch, (d)
   with npfl_lib's AdamW <= 0.35 s;
3. ``pytest``: the CUDA cases of the test suite (``pytest -m cuda``, see
   tests/conftest.py), checking that every test taking the ``device`` fixture has one;
4. ``notebooks``: two lecture notebooks and one assignment's source notebook (with its
   solutions and hidden tests) in a Jupyter kernel, as a student on a GPU JupyterHub
   would, checking that they used the GPU.

Phases 3 and 4 run side by side, after the timings. Output (``--out``, default ``$OUT``
or artifacts/gpu_check): ``gpu_check.json`` (everything), ``gpu_check.txt`` (the same,
readable) and one log per phase. Exit status 0 when every check passed (or nothing ran
for want of CUDA), 1 otherwise. ``--rehearse-on-cpu`` runs every phase on the CPU, small,
to test this script on a machine without a GPU (its figures mean nothing).

The functions at the end are a pytest plugin (``-p gpu_check``) that records each test's
outcome as it happens, so a timed-out run still reports what it did.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
DEFAULT_WHEELS = ROOT / ".whl" / "gpu_check"
REQUIREMENTS = BENCH / "gpu_requirements.txt"
# Where the machine has one of these older than this (pyproject.toml's minimums), the
# pinned wheel is installed over it; any other package the machine has is used as it is.
MINIMUMS = {"pytest": "8", "hypothesis": "6.80", "torchmetrics": "1.3", "tqdm": "4.66"}
MINIMUMS.update({"nbclient": "0.9", "nbformat": "5", "ipykernel": "6.0"})
# The modules each phase needs, beyond torch (the machine's own) and npfl_lib (this tree).
NEEDS = {
    "graph": ["numpy", "tqdm"],
    "train_epoch": ["numpy", "tqdm"],
    "pytest": ["numpy", "tqdm", "pytest", "hypothesis", "torchmetrics", "sklearn", "expecttest"],
    "notebooks": [
        "numpy",
        "tqdm",
        "matplotlib",
        "sklearn",
        "torchmetrics",
        "nbclient",
        "ipykernel",
    ],
}
NOTEBOOKS = [
    "lectures/07_putting_it_together.ipynb",
    "lectures/08_convergence.ipynb",
    "assignments/regularized_training/regularized_training.ipynb",
]
# Shares of the budget (seconds at the default 300); pytest and notebooks share the rest.
SHARES = {"install": 90, "graph": 50, "train_epoch": 100}
GOALS_S = {"(c) Trainer.fit": 0.25, "(d) Trainer.fit, npfl_lib AdamW": 0.35}  # one H100
GRAPH_STEPS, GRAPH_LR = 200, 1e-3
RTOL, ATOL = 1e-5, 1e-6
RESULTS_ENV = "NPFL_GPU_CHECK_RESULTS"


# ------------------------------------------------------------------------ the summary
class Summary:
    """gpu_check.json and gpu_check.txt in ``out``, rewritten at every update."""

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.data = {
            "status": "running",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {},
            "phases": {},
        }

    def set(self, key, value) -> None:
        self.data[key] = value
        self.write()

    def phase(self, name: str, result: dict) -> None:
        self.data["phases"][name] = result
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "gpu_check.txt").write_text(render(self.data))


def render(data: dict) -> str:
    """The summary as text a person reads."""
    machine = data.get("machine", {})
    lines = [
        f"npfl_lib GPU check: {data['status'].upper()} ({data.get('elapsed_s', 0):.0f} s, "
        f"started {data['started']})",
        f"device: {machine.get('device_name', 'no CUDA device')}; "
        f"torch {machine.get('torch', '?')} (CUDA {machine.get('cuda', '?')}); "
        f"Python {machine.get('python', '?')}; "
        f"{machine.get('cpus', '?')} CPUs",
    ]
    if data.get("message"):
        lines.append(data["message"])
    install = data.get("install")
    if install:
        lines.append(
            f"install: {len(install.get('installed', []))} packages from wheels, "
            f"{len(install.get('present', []))} already there"
            + (f"; MISSING: {', '.join(install['missing'])}" if install.get("missing") else "")
            + (f"; {install['error']}" if install.get("error") else "")
        )
    for name, phase in data.get("phases", {}).items():
        lines += ["", f"[{name}] {phase.get('status', '?')} ({phase.get('elapsed_s', 0):.1f} s)"]
        if phase.get("error"):
            lines.append(f"  {phase['error']}")
        lines += [f"  {line}" for line in _render_phase(name, phase)]
    return "\n".join(lines) + "\n"


def _render_phase(name: str, phase: dict) -> list[str]:
    lines = []
    if name == "graph" and phase.get("results"):
        lines.append(
            f"{phase['steps']} steps of W1's model ({phase['rows']} rows, batch 50), graph vs "
            f"eager; pass: {phase['criterion']}"
        )
        for result in phase["results"]:
            lines.append(
                f"{result['optimizer']:44s} {'ok  ' if result['ok'] else 'FAIL'} max |diff| "
                f"{result['max_abs_diff']:.2e} (bound {result['atol']:.1e}), bit-equal: "
                f"{result['bit_equal']}, graph used: {result['graph_used']}"
            )
    if name == "train_epoch" and phase.get("loops"):
        lines.append(f"{phase.get('rows')} rows, median of {phase.get('epochs')} epochs:")
        for label, loop in phase["loops"].items():
            goal = phase.get("goals", {}).get(label)
            text = f"{label:34s} {loop['wall_s']:.3f} s"
            if goal:
                met = "met" if goal["met"] else "NOT met"
                text += f"  (goal <= {goal['goal_s']} s on one H100: {met})"
            lines.append(text)
        lines += phase.get("trainer_warnings", [])
    if name == "pytest" and "counts" in phase:
        counts = phase["counts"]
        lines.append(", ".join(f"{counts[key]} {key}" for key in sorted(counts)))
        if phase.get("device_cases"):
            cases = phase["device_cases"]
            lines.append(
                f"device-fixture tests: {cases['cpu']} with a CPU case, {cases['cuda']} with a "
                "CUDA case"
            )
        lines += [f"FAILED {failure}" for failure in phase.get("failures", [])]
    if name == "notebooks":
        for notebook in phase.get("notebooks", []):
            lines.append(
                f"{notebook['path']:62s} {notebook['status']:6s} "
                f"{notebook.get('elapsed_s', 0):6.1f} s, CUDA used: {notebook.get('cuda_used')}"
                + (f" ({notebook['error']})" if notebook.get("error") else "")
            )
    return lines


# ----------------------------------------------------------------- running the phases
def run_child(cmd, log: Path, timeout: float, env: dict, cwd: Path = ROOT):
    """Runs ``cmd`` with its output in ``log``; returns (exit code or None on timeout, s)."""
    start = time.monotonic()
    with open(log, "a") as file:
        file.write(f"$ {' '.join(map(str, cmd))}\n")
        file.flush()
        process = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            stdout=file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends it all
        )
        return _wait(process, timeout, file), time.monotonic() - start


def _wait(process, timeout, file):
    try:
        return process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        file.write(f"\n(gpu_check: stopped after {timeout:.0f} s, its share of the budget)\n")
        return None


def _kill_group(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def probe(python: str) -> dict:
    """torch's version and CUDA device, asked of a fresh interpreter."""
    code = (
        "import json, platform, torch\n"
        "info = {'torch': torch.__version__, 'cuda': torch.version.cuda, "
        "'python': platform.python_version(), 'cuda_available': torch.cuda.is_available()}\n"
        "if info['cuda_available']:\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    info.update(device_name=p.name, capability=f'{p.major}.{p.minor}', "
        "memory_gib=round(p.total_memory / 2**30, 1), devices=torch.cuda.device_count())\n"
        "print(json.dumps(info))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"cuda_available": False, "error": "importing torch took over 120 s"}
    if done.returncode != 0:
        error = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"cuda_available": False, "error": f"torch cannot be imported: {error}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def requirements() -> list[tuple[str, str]]:
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins.append((name, version))
    return pins


def install(python: str, wheels: Path, site: Path, log: Path, timeout: float) -> dict:
    """Installs, from ``wheels`` and offline, the pinned packages this Python lacks."""
    present, wanted = [], []
    for name, version in requirements():
        try:
            there = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            there = None
        if there is None or _older(there, MINIMUMS.get(name)):
            wanted.append(f"{name}=={version}")
        else:
            present.append(f"{name}=={there}")
    result = {"present": present, "installed": [], "site": str(site)}
    if not wanted:
        return result
    if not wheels.is_dir():
        result["error"] = f"no wheels in {wheels} (run benchmarks/gpu_wheels.sh and carry it)"
        result["missing"] = wanted
        return result
    cmd = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--no-index", "--find-links", wheels, "--no-deps", "--no-compile", "--no-cache-dir"]
    cmd += ["--upgrade", "--target", site, *wanted]
    code, _ = run_child(cmd, log, timeout, dict(os.environ))
    if code == 0:
        result["installed"] = wanted
    else:
        result["error"] = f"pip install failed (exit {code}), see {log.name}"
        result["missing"] = wanted
    return result


def _older(version: str, minimum: str | None) -> bool:
    """Whether ``version`` is below ``minimum`` (release numbers only: 8.3.1rc1 is 8.3.1)."""

    def numbers(text):
        return [int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3]]

    return minimum is not None and numbers(version) < numbers(minimum)


def child_env(site: Path, rehearse: bool, tmp: Path) -> dict:
    env = dict(os.environ)
    paths = [str(site), str(ROOT), str(BENCH), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(PYTHONUNBUFFERED="1", NPFL_PROGRESS="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(MPLCONFIGDIR=str(tmp / "mpl"), IPYTHONDIR=str(tmp / "ipython"))
    env.update(
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter"), HYPOTHESIS_STORAGE_DIRECTORY=str(tmp / "hy")
    )
    env.pop("MPLBACKEND", None)  # the notebooks' inline backend draws their figures
    if rehearse:
        env["NPFL_COLLECT_CUDA"] = "1"  # collect the CUDA cases (skipped) to count them
        env["OMP_NUM_THREADS"] = "1"  # a busy small machine: spinning threads wait on each other
    return env


def missing_modules(names, env) -> list[str]:
    """The modules among ``names`` that the children's Python cannot import."""
    code = (
        "import importlib.util, json, sys\n"
        "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n) is None]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, cwd=ROOT
    )
    return json.loads(done.stdout) if done.returncode == 0 else list(names)


def cuda_test_files() -> list[str]:
    """The test modules with CUDA cases: those that use a device and not the course's tools
    (npfl_course's grading needs nbgrader, and grades on the CPU anyway)."""
    files = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        if "npfl_course" not in text and re.search(r"\bdevice\b|cuda", text):
            files.append(str(path.relative_to(ROOT)))
    return files


def tests_command(rehearse: bool, results: Path, env: dict) -> list:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "gpu_check"]
    cmd += ["-m", "cuda", "-q", "-o", "addopts=", "-rfE", "--durations=10"]
    if not rehearse and not missing_modules(["xdist"], env):
        cmd += ["-n", str(max(1, min(8, (os.cpu_count() or 2) // 2)))]
    env[RESULTS_ENV] = str(results)
    return cmd + cuda_test_files()


def tests_result(results: Path, code, elapsed: float, rehearse: bool) -> dict:
    outcomes, failures, cases = {}, [], {"cpu": 0, "cuda": 0}
    lines = results.read_text().splitlines() if results.exists() else []
    for line in lines:
        record = json.loads(line)
        if "device_cases" in record:  # one per collecting process: they agree
            cases = {k: max(cases[k], record["device_cases"][k]) for k in cases}
            continue
        nodeid, when, outcome = record["nodeid"], record["when"], record["outcome"]
        if when == "call" or outcome != "passed":
            previous = outcomes.get(nodeid)
            if previous not in ("failed", "error"):
                outcomes[nodeid] = "error" if outcome == "failed" and when != "call" else outcome
            failure = f"{nodeid} ({when}): {record.get('message', '')}"[:300]
            if outcome == "failed" and failure not in failures:  # xdist: worker and controller
                failures.append(failure)
    counts = {key: 0 for key in ("passed", "failed", "skipped", "error")}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    ok = code == 0 and counts["failed"] == counts["error"] == 0 and bool(outcomes)
    if rehearse:  # every CUDA case is skipped on the CPU: check the machinery only
        ok = code in (0, 5) and counts["failed"] == counts["error"] == 0
    complete = cases["cpu"] == cases["cuda"]
    result = {
        "status": "passed" if ok and complete else ("timeout" if code is None else "failed"),
        "elapsed_s": round(elapsed, 1),
        "exit_code": code,
        "counts": counts,
        "device_cases": cases,
        "failures": failures[:40],
    }
    if not complete:
        result["error"] = "some tests with a CPU case have no CUDA case (tests/conftest.py)"
    return result


def json_tail(log: Path) -> dict | None:
    """The JSON object a phase printed last (a line starting with GPU_CHECK_RESULT)."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("GPU_CHECK_RESULT "):
            return json.loads(line[len("GPU_CHECK_RESULT ") :])
    return None


def train_epoch_result(log: Path, data_file: Path, code, elapsed: float, rehearse: bool) -> dict:
    result = {"status": "passed" if code == 0 else ("timeout" if code is None else "failed")}
    result["elapsed_s"] = round(elapsed, 1)
    if data_file.exists():
        data = json.loads(data_file.read_text())
        result.update(data)
        result["goals"] = {
            label: {"goal_s": goal, "met": data["loops"][label]["wall_s"] <= goal}
            for label, goal in GOALS_S.items()
            if label in data["loops"] and not rehearse
        }
    elif code == 0:
        result.update(status="failed", error="train_epoch.py wrote no figures")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (default: $OUT, else artifacts/gpu_check)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds (default: 300)")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="folder of wheels")
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="test this script")
    parser.add_argument(
        "--only", help="comma-separated phases (graph,train_epoch,pytest,notebooks)"
    )
    parser.add_argument("--notebooks", help="comma-separated notebooks (default: NOTEBOOKS)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # a child: one phase
    args = parser.parse_args(argv)
    if args.notebooks:
        os.environ["NPFL_GPU_CHECK_NOTEBOOKS"] = args.notebooks  # the children inherit it
    if args.phase:
        return run_phase(args.phase, args.rehearse_on_cpu)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "artifacts" / "gpu_check")
    summary = Summary(out)
    rehearse = args.rehearse_on_cpu
    nodes = ("nvidia*", "kfd", "dxg")  # NVIDIA's, ROCm's and WSL's device files
    if rehearse or any(next(Path("/dev").glob(node), None) for node in nodes):
        info = probe(sys.executable)
    else:  # no GPU at all: say so at once, without importing torch (seconds)
        info = {"cuda_available": False, "error": "no GPU device here (no /dev/nvidia*)"}
    info["cpus"] = os.cpu_count()
    summary.set("machine", info)
    if not info.get("cuda_available") and not rehearse:
        why = info.get("error") or f"torch {info.get('torch')} sees no CUDA device"
        message = f"gpu_check: SKIPPED, nothing was run: {why} (the check needs a GPU)."
        print(message)
        summary.data["message"] = message
        summary.set("status", "skipped")
        return 0
    if rehearse:
        summary.data["message"] = "REHEARSAL ON THE CPU: tests this script; no figure counts."
    phases = args.only.split(",") if args.only else ["graph", "train_epoch", "pytest", "notebooks"]
    scale = args.budget / 300.0
    deadline = time.monotonic() + args.budget
    tmp = Path(tempfile.mkdtemp(prefix="npfl-gpu-check-"))
    try:
        site = tmp / "site"
        start = time.monotonic()
        installed = install(
            sys.executable, Path(args.wheels), site, out / "install.log", SHARES["install"] * scale
        )
        installed["elapsed_s"] = round(time.monotonic() - start, 1)
        summary.set("install", installed)
        env = child_env(site, rehearse, tmp)
        status = _run_phases(phases, summary, env, out, tmp, deadline, scale, rehearse)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.set("status", status)
    print((out / "gpu_check.txt").read_text(), end="")
    print(f"gpu_check: summary in {out / 'gpu_check.json'} and {out / 'gpu_check.txt'}")
    return 0 if status == "passed" else 1


def _run_phases(phases, summary, env, out, tmp, deadline, scale, rehearse) -> str:
    def left(share=None):
        remaining = deadline - time.monotonic() - 5
        return remaining if share is None else min(share * scale, remaining)

    def blocked(name):
        missing = missing_modules(NEEDS[name], env)
        if missing:
            summary.phase(name, {"status": "not run", "error": f"missing: {', '.join(missing)}"})
        return missing

    me = [sys.executable, str(BENCH / "gpu_check.py")] + (["--rehearse-on-cpu"] if rehearse else [])
    for name in [p for p in ("graph", "train_epoch") if p in phases]:
        if blocked(name):
            continue
        log = out / f"{name}.log"
        if name == "graph":
            code, elapsed = run_child([*me, "--phase", "graph"], log, left(SHARES["graph"]), env)
            result = json_tail(log) or {"status": "failed", "error": f"no result, see {log.name}"}
            if code is None:
                result["status"] = "timeout"
            elif code != 0:
                result["status"] = "failed"
        else:
            data_file = tmp / "train_epoch.json"
            cmd = [sys.executable, BENCH / "train_epoch.py", "--json", data_file]
            cmd += ["--device", "cpu", "--rows", "1000", "--epochs", "1"] if rehearse else []
            cmd += [] if rehearse else ["--device", "cuda", "--epochs", "3"]
            code, elapsed = run_child(cmd, log, left(SHARES["train_epoch"]), env)
            result = train_epoch_result(log, data_file, code, elapsed, rehearse)
        result["elapsed_s"] = round(elapsed, 1)
        summary.phase(name, result)
    # The CUDA test cases and the notebooks side by side: the timings are done.
    running = {}
    if "pytest" in phases and not blocked("pytest"):
        results = tmp / "pytest.jsonl"
        cmd = tests_command(rehearse, results, env)
        log = open(out / "pytest.log", "a")  # noqa: SIM115 (closed below)
        log.write(f"$ {' '.join(map(str, cmd))}\n")
        log.flush()
        process = subprocess.Popen(
            [str(c) for c in cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        running["pytest"] = (process, log, time.monotonic(), results)
    if "notebooks" in phases and not blocked("notebooks"):
        log = out / "notebooks.log"
        code, elapsed = run_child([*me, "--phase", "notebooks"], log, left(), env)
        result = json_tail(log) or {"status": "failed", "error": f"no result, see {log.name}"}
        result["status"] = "timeout" if code is None else result.get("status", "failed")
        result["elapsed_s"] = round(elapsed, 1)
        summary.phase("notebooks", result)
    if "pytest" in running:
        process, log, start, results = running["pytest"]
        code = _wait(process, left(), log)
        log.close()
        summary.phase("pytest", tests_result(results, code, time.monotonic() - start, rehearse))
    ran = [summary.data["phases"].get(name, {}) for name in phases]
    return "passed" if all(phase.get("status") == "passed" for phase in ran) else "failed"


# ------------------------------------------------------------------- the child phases
def run_phase(name: str, rehearse: bool) -> int:
    result = {"graph": graph_phase, "notebooks": notebooks_phase}[name](rehearse)
    print("GPU_CHECK_RESULT " + json.dumps(result), flush=True)
    return 0 if result["status"] == "passed" else 1


def graph_phase(rehearse: bool) -> dict:
    """Trainer.fit with and without the CUDA graph, on W1's model: the same parameters?"""
    import warnings

    import torch

    import npfl_lib
    import npfl_lib.optim

    sys.path.insert(0, str(BENCH))
    import train_epoch  # W1: make_data, make_model, loss_fn

    device = torch.device("cpu" if rehearse else "cuda")
    rows = 500 if rehearse else GRAPH_STEPS * train_epoch.BATCH
    inputs, targets = train_epoch.make_data(rows)
    steps = rows // train_epoch.BATCH

    def adamw(params, **kwargs):
        return torch.optim.AdamW(params, lr=GRAPH_LR, weight_decay=0.1, **kwargs)

    def ours(params, **kwargs):
        return npfl_lib.optim.AdamW(params, lr=GRAPH_LR, weight_decay=0.1, **kwargs)

    def sgd(params):
        return npfl_lib.optim.SGD(params, lr=0.01, momentum=0.9)

    # (label, optimizer in the graph run, in the eager run, absolute bound)
    rounding_bound = steps * GRAPH_LR * 5e-5  # float32 bias corrections, tests/test_optim.py
    cases = [
        ("torch AdamW (fused, capturable in the graph)", adamw, adamw, None),
        ("npfl_lib AdamW, capturable=True in both", lambda p: ours(p, capturable=True),
         lambda p: ours(p, capturable=True), None),
        ("npfl_lib AdamW, eager with its int counter", ours, ours, rounding_bound),
        ("npfl_lib SGD, momentum 0.9", sgd, sgd, None),
    ]  # fmt: skip

    def train(make_optimizer, graph):
        model = train_epoch.make_model()
        optimizer = make_optimizer(model.parameters())
        trainer = npfl_lib.Trainer(
            model, optimizer, train_epoch.loss_fn, device=device, cuda_graph=graph
        )
        torch.manual_seed(7)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = train_epoch.BATCH
            history = trainer.fit((inputs, targets), epochs=1, batch_size=batch, verbose=0)
        used = trainer._graphed is not None and trainer._graphed.graph is not None
        notes = [str(w.message) for w in caught if str(w.message).startswith("Trainer")]
        return [p.detach().cpu() for p in model.parameters()], history[-1]["loss"], used, notes

    results = []
    for label, graph_optimizer, eager_optimizer, bound in cases:
        graph_params, graph_loss, used, notes = train(graph_optimizer, True)
        eager_params, eager_loss, _, _ = train(eager_optimizer, False)
        pairs = list(zip(graph_params, eager_params, strict=True))
        diffs = [(a - b).abs().max().item() for a, b in pairs]
        scale = max(b.abs().max().item() for b in eager_params)
        if bound is None:
            ok = all(
                torch.allclose(a, b, rtol=RTOL, atol=ATOL)
                for a, b in zip(graph_params, eager_params, strict=True)
            )
        else:
            ok = max(diffs) <= bound
        ok = ok and (used or rehearse)
        results.append(
            {
                "optimizer": label,
                "ok": bool(ok),
                "graph_used": used,
                "bit_equal": all(
                    torch.equal(a, b) for a, b in zip(graph_params, eager_params, strict=True)
                ),
                "max_abs_diff": max(diffs),
                "max_abs_param": scale,
                "atol": ATOL if bound is None else bound,
                "loss_graph": graph_loss,
                "loss_eager": eager_loss,
                "warnings": notes,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return {
        "status": "passed" if all(r["ok"] for r in results) else "failed",
        "steps": steps,
        "rows": rows,
        "criterion": (
            f"torch.allclose(rtol={RTOL}, atol={ATOL}) (float32 rounding; bit-equal "
            "expected where both runs use the same kernels), or |diff| <= steps * lr * 5e-5 "
            "against the int step counter; and the graph was used"
        ),
        "results": results,
    }


def notebooks_phase(rehearse: bool) -> dict:
    """Executes NOTEBOOKS in a Jupyter kernel each; did they run, and on the GPU?"""
    import nbclient
    import nbformat

    probe_cell = (
        "import json as _json, torch as _torch\n"
        "print('GPU_CHECK_NOTEBOOK', _json.dumps({'cuda_used': _torch.cuda.is_initialized() "
        "and _torch.cuda.max_memory_allocated() > 0, 'max_memory_allocated': "
        "_torch.cuda.max_memory_allocated() if _torch.cuda.is_initialized() else 0}))"
    )
    results = []
    chosen = os.environ.get("NPFL_GPU_CHECK_NOTEBOOKS")
    for relative in chosen.split(",") if chosen else NOTEBOOKS:
        path = ROOT / relative
        entry = {"path": relative}
        results.append(entry)
        if not path.exists():
            entry.update(status="failed", error="no such notebook")
            continue
        notebook = nbformat.read(path, as_version=4)
        notebook.cells.append(nbformat.v4.new_code_cell(probe_cell))
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as workdir:
            client = nbclient.NotebookClient(
                notebook,
                timeout=240,
                kernel_name="python3",
                resources={"metadata": {"path": workdir}},
            )
            try:
                client.execute()
                entry["status"] = "passed"
            except Exception as error:  # CellExecutionError, a timeout, a dead kernel
                entry.update(status="failed", error=f"{type(error).__name__}: {error}"[:600])
        entry["elapsed_s"] = round(time.monotonic() - start, 1)
        for output in notebook.cells[-1].get("outputs", []):
            text = output.get("text", "")
            if "GPU_CHECK_NOTEBOOK" in text:
                entry.update(json.loads(text.split("GPU_CHECK_NOTEBOOK", 1)[1]))
        if entry["status"] == "passed" and not rehearse and not entry.get("cuda_used"):
            entry.update(status="failed", error="it ran, but not on the GPU")
        print(json.dumps(entry), flush=True)
    ok = all(entry["status"] == "passed" for entry in results)
    return {"status": "passed" if ok else "failed", "notebooks": results}


# --------------------------------------------------- pytest plugin (-p gpu_check)
try:  # pytest's hook marker, where pytest is installed (this file is also a plain script)
    import pluggy

    _hookimpl = pluggy.HookimplMarker("pytest")
except ImportError:  # pragma: no cover

    def _hookimpl(**_):
        return lambda function: function


def _record(record: dict) -> None:
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as file:  # one short line per write: appends stay whole
            file.write(json.dumps(record) + "\n")


@_hookimpl(tryfirst=True)  # before ``-m cuda`` deselects the CPU cases
def pytest_collection_modifyitems(items):
    """Counts the tests of the ``device`` fixture with a CPU and with a CUDA case."""
    cases = {"cpu": 0, "cuda": 0}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") in cases:
            cases[callspec.params["device"]] += 1
    _record({"device_cases": cases})


def pytest_runtest_logreport(report):
    record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome}
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        record["message"] = crash.message if crash is not None else str(report.longrepr)[-300:]
    _record(record)


if __name__ == "__main__":
    sys.exit(main())
