"""Benchmark: ``npfl-course similarity`` on a generated class, and how it grows.

    python benchmarks/similarity.py [--assignment optimizers] [--students 500] [--jobs 2]
                                    [--sizes 125,250,500,1000]

Builds a throwaway course with one assignment (its source, ``variants.py`` and the
release as nbgrader's ClearSolutions makes it) and a class of ``max(sizes)`` students.
In each of a student's solution cells the answer is, at random, the instructor's
solution (35%), a variant of ``variants.py`` (20%), the untouched release (10%) or one
of these edited (35%: local variables renamed, comments and blank lines added, one to
three statements inserted, deleted or duplicated, so that many answers match no
reference and every pair of them is compared); ten rings of three students share one
edited solution. Then it times the whole command (``python -m npfl_course.cli
similarity``, a fresh process: start, reading, comparing, the HTML and the CSV) for
``--students``, and reading and comparing alone for each of ``--sizes``.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
CONFIG = 'c = get_config()  # noqa: F821\nc.CourseDirectory.source_directory = "source"\n'
NAMES = ["tmp", "value", "acc", "out", "res", "x1", "buf", "step_val", "z", "w_"]


def _edited(code: str, rng: random.Random) -> str:
    """``code`` as a student who started from it might hand it in."""
    lines = code.splitlines()
    assigned = sorted({m.group(1) for line in lines for m in [re.match(r"\s+(\w+) = ", line)] if m})
    for name in rng.sample(assigned, min(len(assigned), 2)):
        new = rng.choice(NAMES) + str(rng.randrange(100))
        lines = [re.sub(rf"\b{name}\b", new, line) for line in lines]
    body = [i for i, line in enumerate(lines) if line.startswith("    ") and line.strip()]
    for _ in range(rng.randint(1, 3)):
        if not body:
            break
        where = rng.choice(body)
        indent = re.match(r"\s*", lines[where]).group()
        kind = rng.randrange(3)
        if kind == 0:
            lines.insert(where + 1, f"{indent}check_{rng.randrange(99)} = {rng.random():.3f}")
        elif kind == 1 and len(body) > 2:
            lines[where] = f"{indent}pass"
        else:
            lines.insert(where, lines[where])
        body = [i for i, line in enumerate(lines) if line.startswith("    ") and line.strip()]
    for i in rng.sample(range(len(lines)), min(len(lines), 3)):
        if lines[i].strip() and not lines[i].rstrip().endswith(("\\", ",", "(")):
            lines[i] += "  # " + rng.choice(["step", "see lecture", "TODO", "ok"])
    return "\n".join(lines) + "\n"


def build_class(root: Path, assignment: str, students: int, seed: int = 0) -> None:
    """The course of the module docstring in ``root``."""
    from nbgrader.preprocessors import ClearSolutions

    from npfl_course import check

    rng = random.Random(seed)
    (root / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    shutil.copytree(REPO / "assignments" / assignment, root / "source" / assignment)
    source = check.read_notebook(root / "source" / assignment / f"{assignment}.ipynb")
    release, _ = ClearSolutions().preprocess(copy.deepcopy(source), {})
    (root / "release" / assignment).mkdir(parents=True)
    nbformat.write(release, root / "release" / assignment / f"{assignment}.ipynb")
    variants = check.load_variants(assignment, root / "source")
    solutions = {g: c.source for g, c in check.cells_by_kind(source, "solution").items()}
    released = {g: c.source for g, c in check.cells_by_kind(release, "solution").items()}
    others: dict[str, list[str]] = {g: [] for g in solutions}
    for kind in check.KINDS:
        for variant in getattr(variants, kind, []):
            others[variant["cell"]].append(variant["code"])
    rings = {r: {g: _edited(solutions[g], rng) for g in solutions} for r in range(10)}
    for number in range(students):
        replace = {}
        for cell, solution in solutions.items():
            draw = rng.random()
            base = rng.choice(others[cell]) if others[cell] and draw < 0.55 else solution
            if number < 30:
                replace[cell] = rings[number // 3][cell]
            elif draw < 0.35:
                replace[cell] = solution
            elif draw < 0.55:
                replace[cell] = base
            elif draw < 0.65:
                replace[cell] = released[cell]
            else:
                replace[cell] = _edited(base, rng)
        folder = root / "submitted" / f"s{number:04d}" / assignment
        folder.mkdir(parents=True)
        notebook = check.make_submission(release, source, replace)
        nbformat.write(notebook, folder / f"{assignment}.ipynb")


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the reading workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assignment", default="optimizers")
    parser.add_argument("--students", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sizes", default="125,250,500,1000")
    parser.add_argument("--keep", default=None, metavar="DIR", help="build the course here")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {args.students})
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="npfl-similar-"))
    root = base / "course"
    if not root.exists():
        start = time.perf_counter()
        root.mkdir(parents=True)
        build_class(root, args.assignment, max(sizes))
        print(f"built a class of {max(sizes)} in {time.perf_counter() - start:.0f} s: {root}")
    from npfl_course.course import load_course
    from npfl_course.similarity import Settings, compare, read_class, write_reports

    students = sorted(p.name for p in (root / "submitted").iterdir())
    command = [sys.executable, "-m", "npfl_course.cli", "similarity", args.assignment,
               "--course-dir", str(root), "--jobs", str(args.jobs), "--top", "5",
               "--student", *students[: args.students]]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(done.stdout[-1500:], done.stderr[-1500:], sep="\n")
    print(f"npfl-course similarity, {args.students} students, --jobs {args.jobs}: {wall:.1f} s "
          f"wall, {cpu:.1f} s CPU (the whole command in a fresh process; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip
    course = load_course(root)
    read_class(course, args.assignment, jobs=1, students=students[:5])  # imports, once
    print(f"{'students':>8} {'read s':>7} {'read CPU s':>10} {'compare s':>9} "
          f"{'compare CPU s':>13} {'pairs bounded':>13} {'listed':>6}")  # fmt: skip
    for size in sizes:
        start, cpu = time.perf_counter(), _cpu()
        answers = read_class(course, args.assignment, jobs=args.jobs, students=students[:size])
        read, read_cpu = time.perf_counter() - start, _cpu() - cpu
        cpu = _cpu()
        result = compare(answers, Settings())
        cpu = _cpu() - cpu
        write_reports(result, base / "reports")
        print(f"{size:>8} {read:>7.1f} {read_cpu:>10.1f} {result.seconds:>9.1f} {cpu:>13.1f} "
              f"{result.bounded:>13} {len(result.pairs):>6}")  # fmt: skip
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
