"""Benchmark: stock ``nbgrader autograde`` vs ``npfl-course autograde --jobs N``.

    python benchmarks/autograde.py [--assignment regularization] [--submissions 40] [--jobs 2]

Builds a throwaway course (this repository's ``nbgrader_config.py`` and one assignment),
generates it once, copies it for each side and puts the same submissions into both (every
other one the full solution, the others the unanswered release, so both the passing and
the failing paths run). Then, in the same run, it times

* stock nbgrader: ``python -m nbgrader autograde ASSIGNMENT``, one notebook after another,
  each in a fresh Jupyter kernel, in the instructor's process;
* ours: ``python -m npfl_course.cli autograde ASSIGNMENT --jobs N``: sandboxed workers,

checks that both gave every submission the same score, and prints both times and the
ratio. Our preflight (the instructor's solution and the release, graded before the
first student) runs once per assignment and is then remembered in the course, so it
runs once, before the rounds, and is reported apart. The two take turns on ``--rounds``
slices of the submissions (stock, ours, stock, ours), so that a change in the machine's
load during the run hits both alike. It also times what a notebook's start costs (a
Python process, ``import torch``, ``import npfl_lib``, a Jupyter kernel until it
answers), to show what dominates.

With ``--scheduler ADDRESS`` (or ``--scheduler local``: a ``LocalCluster`` of ``--jobs``
single-threaded worker processes started here) the rounds compare
``npfl-course autograde --jobs N`` with ``npfl-course autograde --scheduler ADDRESS``
instead (both ``--no-preflight``), to give the cluster path's overhead per notebook. It
then measures what the scaling model of ``docs/scaling.md`` needs: the coordinator's own
work per submission (phases 1 and 3 alone, with ``c.Execute.enabled = False``) and the
scheduler's cost per task (no-op tasks), and prints the model's wall time for 3,500
notebooks on N machines of C cores::

    python benchmarks/autograde.py --scheduler local --jobs 2 --submissions 12
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NPFL_COURSE_OUTPUT", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        output = result.stdout[-3000:] + result.stderr[-3000:]
        raise SystemExit(f"{' '.join(argv)} failed:\n{output}")
    return seconds


def build_course(workdir: Path, assignment: str, submissions: int) -> Path:
    """A generated course with ``submissions`` submissions; returns its directory."""
    course = workdir / "course"
    (course / "assignments").mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "assignments" / assignment, course / "assignments" / assignment)
    cli = [sys.executable, "-m", "npfl_course.cli"]
    _timed([*cli, "generate", assignment, "--course-dir", str(course)], course)
    release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", 4)
    source = nbformat.read(course / "assignments" / assignment / f"{assignment}.ipynb", 4)
    for number in range(submissions):
        folder = course / "submitted" / f"student{number:03d}" / assignment
        folder.mkdir(parents=True)
        nbformat.write(source if number % 2 == 0 else release, folder / f"{assignment}.ipynb")
    return course


def scores(course: Path, assignment: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        return {s.student_id: s.score for s in gradebook.assignment_submissions(assignment)}


def startup_costs(repeat: int = 3) -> dict[str, float]:
    """Median seconds of what every notebook pays before its first cell."""
    commands = {
        "python -c pass": "pass",
        "python -c 'import torch'": "import torch",
        "python -c 'import npfl_lib'": "import npfl_lib",
        "Jupyter kernel start until ready": (
            "from jupyter_client.manager import start_new_kernel\n"
            "km, kc = start_new_kernel(kernel_name='python3')\n"
            "kc.stop_channels(); km.shutdown_kernel(now=True)"
        ),
    }
    costs = {}
    for label, code in commands.items():
        times = []
        base = 0.0
        for _ in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=_env(), check=True,
                           capture_output=True)  # fmt: skip
            times.append(time.perf_counter() - start)
        costs[label] = sorted(times)[len(times) // 2] - base
    return costs


def _preflight(course_dir: Path, assignment: str, jobs: int) -> float:
    from npfl_course.autograde import Autograder
    from npfl_course.autograde.preflight import preflight
    from npfl_course.course import load_course
    from npfl_course.sandbox import isolation

    course = load_course(course_dir)
    grader = Autograder(course, assignment, jobs=jobs)
    result = preflight(course, assignment, limits=grader.limits, jobs=jobs,
                       unsandboxed=isolation()[0] != "bwrap")  # fmt: skip
    return result.seconds


def _round(base: Path, target: Path, students: list[str]) -> Path:
    """A copy of ``base`` holding only the submissions of ``students``."""
    shutil.copytree(base, target)
    for folder in (target / "submitted").iterdir():
        if folder.name not in students:
            shutil.rmtree(folder)
    return target


def _cli(course: Path, assignment: str, *flags: str) -> float:
    return _timed([sys.executable, "-m", "npfl_course.cli", "autograde", assignment, "--quiet",
                   "--no-preflight", "--course-dir", str(course), *flags], course)  # fmt: skip


def _task_costs(address: str, tasks: int = 400) -> tuple[float, float]:
    """Seconds per no-op task: in a batch (throughput), and one after another (latency)."""
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        client.submit(abs, -1, pure=False).result()  # connections up
        start = time.perf_counter()
        client.gather(client.map(abs, range(tasks), pure=False))
        batch = (time.perf_counter() - start) / tasks
        start = time.perf_counter()
        for number in range(50):
            client.submit(abs, number, pure=False).result()
        return batch, (time.perf_counter() - start) / 50


def wall_time(notebooks: int, machines: int, cores: int, execute_s: float, coordinator_s: float,
              task_s: float, start_s: float = 30.0) -> float:  # fmt: skip
    """The scaling model of docs/scaling.md: seconds to grade ``notebooks`` on ``machines``
    of ``cores`` (one notebook per core), the coordinator doing phases 1 and 3 alone."""
    slots = machines * cores
    rate = min(slots / execute_s, 1 / coordinator_s, 1 / task_s)  # notebooks per second
    return start_s + notebooks / rate + execute_s  # the last notebook's own time


def _coordinator_seconds(course_dir: Path, assignment: str, students: list[str]) -> float:
    """Seconds of phases 1 and 3 per submission (``c.Execute.enabled = False``), in this
    process, after a first submission that pays the imports and the gradebook's set-up."""
    from npfl_course.autograde import Autograder
    from npfl_course.course import load_course

    config = course_dir / "nbgrader_config.py"
    config.write_text(config.read_text() + "\nc.Execute.enabled = False\n")
    course = load_course(course_dir)
    Autograder(course, assignment, jobs=1, preflight=False, unsandboxed=True).run(
        students[:1], progress=False
    )
    grader = Autograder(course, assignment, jobs=1, preflight=False, unsandboxed=True)
    report = grader.run(students[1:], progress=False)
    return report.seconds / max(1, len(students) - 1)


def cluster(args, workdir: Path, base: Path, students: list[str]) -> int:
    """Local ``--jobs N`` against ``--scheduler`` on the same submissions (see the docstring)."""
    local_cluster = None
    address = args.scheduler
    if address == "local":
        from distributed import LocalCluster

        # the workers share this machine: each notebook gets its share of the cores, as
        # with --jobs (a worker alone on its machine would take them all)
        threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
        local_cluster = LocalCluster(n_workers=args.jobs, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address=":0",
                                     silence_logs=40, env={"OMP_NUM_THREADS": threads})  # fmt: skip
        address = local_cluster.scheduler_address
    jobs = ("--jobs", str(args.jobs))
    try:
        n, same = len(students), True
        total = {"local": 0.0, "cluster": 0.0, "local idle": 0.0, "cluster idle": 0.0}
        for index in range(args.rounds):
            part = students[index :: args.rounds]
            here = _round(base, workdir / f"local{index}", part)
            there = _round(base, workdir / f"cluster{index}", part)
            print(f"round {index + 1}/{args.rounds}: {len(part)} submissions; --jobs "
                  f"{args.jobs}, then --scheduler {address}; then both again, with "
                  "nothing left to grade ...", flush=True)  # fmt: skip
            times = {
                "local": _cli(here, args.assignment, *jobs),
                "cluster": _cli(there, args.assignment, "--scheduler", address),
                "local idle": _cli(here, args.assignment, *jobs),
                "cluster idle": _cli(there, args.assignment, "--scheduler", address),
            }
            print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()), flush=True)
            total = {key: total[key] + times[key] for key in total}
            got = scores(here, args.assignment)
            same &= got == scores(there, args.assignment) and len(got) == len(part)
        batch_s, latency_s = _task_costs(address)
    finally:
        if local_cluster is not None:
            local_cluster.close()
    coordinator_s = _coordinator_seconds(_round(base, workdir / "alone", students),
                                         args.assignment, students)  # fmt: skip
    local_s = total["local"] - total["local idle"]  # the notebooks only, without fixed costs
    remote_s = total["cluster"] - total["cluster idle"]
    start_s = (total["cluster idle"] - total["local idle"]) / args.rounds
    execute_s = local_s * args.jobs / n  # one notebook on one core, here
    print()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    label = f"npfl-course autograde --jobs {args.jobs}:"
    print(f"{label:<46} {total['local']:7.1f} s, {local_s / n:.2f} s per notebook beyond "
          f"a run with nothing to grade ({total['local idle'] / args.rounds:.1f} s)")  # fmt: skip
    label = f"npfl-course autograde --scheduler ({args.jobs} workers):"
    print(f"{label:<46} {total['cluster']:7.1f} s, {remote_s / n:.2f} s per notebook beyond "
          f"a run with nothing to grade ({total['cluster idle'] / args.rounds:.1f} s)")  # fmt: skip
    print(f"{'cluster overhead per notebook:':<46} {(remote_s - local_s) / n:7.2f} s")
    print(f"{'cluster overhead per run (connect, checks):':<46} {start_s:7.2f} s")
    print(f"{'coordinator alone (phases 1 and 3):':<46} {coordinator_s:7.3f} s per submission")
    print(f"{'scheduler, no-op tasks:':<46} {batch_s * 1000:7.2f} ms per task in a batch, "
          f"{latency_s * 1000:.2f} ms one after another")  # fmt: skip
    print(f"same scores for all {n} submissions: {same}")
    print(f"\nmodel: 3,500 notebooks of {execute_s:.1f} s each (one core), the coordinator "
          f"{coordinator_s:.3f} s each:")  # fmt: skip
    for machines, cores in ((1, 2), (1, 16), (4, 16), (16, 16), (32, 32), (64, 64)):
        seconds = wall_time(3500, machines, cores, execute_s, coordinator_s, batch_s,
                            start_s + 2 * execute_s)  # fmt: skip
        print(f"  {machines:>3} machine(s) x {cores:>2} cores: {seconds / 60:7.1f} min")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="regularization")
    parser.add_argument("--submissions", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate stock and ours on this many slices of the submissions, "
                        "so a change in the machine's load hits both alike")  # fmt: skip
    parser.add_argument("--keep", default=None, help="keep the courses in this folder")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="compare local --jobs N with this Dask scheduler ('local': a "
                        "LocalCluster of --jobs single-threaded workers) instead of stock "
                        "nbgrader")  # fmt: skip
    args = parser.parse_args(argv)

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="npfl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        n = args.submissions
        print(f"building a course with {n} submissions of {args.assignment} ...")
        base = build_course(workdir / "base", args.assignment, n)
        students = sorted(p.name for p in (base / "submitted").iterdir())
        if args.scheduler:
            return cluster(args, workdir, base, students)
        # The preflight (the instructor's solution and the release, graded first) runs once
        # per assignment and is then remembered in the course; every round's copy has it.
        print("preflight, once per assignment (then remembered) ...", flush=True)
        preflight_s = _preflight(base, args.assignment, args.jobs)
        stock_s = ours_s = 0.0
        same = True
        for index in range(args.rounds):
            part = students[index :: args.rounds]
            stock = _round(base, workdir / f"stock{index}", part)
            ours = _round(base, workdir / f"ours{index}", part)
            print(f"round {index + 1}/{args.rounds}: {len(part)} submissions; stock nbgrader "
                  f"autograde, then npfl-course autograde --jobs {args.jobs} ...",
                  flush=True)  # fmt: skip
            stock_s += _timed([sys.executable, "-m", "nbgrader", "autograde", args.assignment],
                              stock)  # fmt: skip
            ours_s += _timed([sys.executable, "-m", "npfl_course.cli", "autograde",
                              args.assignment, "--jobs", str(args.jobs), "--quiet",
                              "--course-dir", str(ours)], ours)  # fmt: skip
            stock_scores = scores(stock, args.assignment)
            same &= stock_scores == scores(ours, args.assignment) and len(stock_scores) == len(part)
        print()
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        ours_label = f"npfl-course autograde --jobs {args.jobs}:"
        stock_label = "stock nbgrader autograde:"
        print(f"{stock_label:<36} {stock_s:7.1f} s ({stock_s / n:.2f} s per notebook)")
        print(f"{ours_label:<36} {ours_s:7.1f} s ({ours_s / n:.2f} s per notebook)")
        print(f"{'ratio (stock / ours):':<36} {stock_s / ours_s:7.2f}x")
        print(
            f"{'our preflight, once per assignment:':<36} {preflight_s:7.1f} s (not in the above)"
        )
        print(f"same scores for all {n} submissions: {same}")
        print("\nwhat a notebook pays before its first cell (median of 3):")
        for label, seconds in startup_costs().items():
            print(f"  {label:<36} {seconds:6.2f} s")
        return 0 if same else 1
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
