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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="regularization")
    parser.add_argument("--submissions", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternate stock and ours on this many slices of the submissions, "
                        "so a change in the machine's load hits both alike")  # fmt: skip
    parser.add_argument("--keep", default=None, help="keep the courses in this folder")
    args = parser.parse_args(argv)

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="npfl-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        n = args.submissions
        print(f"building a course with {n} submissions of {args.assignment} ...")
        base = build_course(workdir / "base", args.assignment, n)
        students = sorted(p.name for p in (base / "submitted").iterdir())
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
