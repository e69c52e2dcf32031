"""``npfl-course``: the instructor's command line (nbgrader underneath).

    npfl-course generate [ASSIGNMENT ...] [--force]
    npfl-course zip-collect ASSIGNMENT DIR [--pattern REGEX] [--force]
    npfl-course autograde ASSIGNMENT [--jobs N] [--timeout S] [--cell-timeout S]
                          [--memory MB] [--disk MB] [--student ID ...] [--force] [--no-sandbox]
                          [--no-preflight] [--scheduler ADDRESS]
    npfl-course feedback ASSIGNMENT
    npfl-course export [--csv PATH]
    npfl-course report ASSIGNMENT [--output PNG]
    npfl-course check [ASSIGNMENT ...] [--jobs N] [--no-mutants]
    npfl-course similarity ASSIGNMENT [--threshold F] [--noise N] [--top N]
                           [--report-pairs N] [--output DIR] [--jobs N] [--no-expected]
                           [--student ID ...]
    npfl-course demo [--output DIR] [--jobs N]
    npfl-course doctor

Every command takes ``--course-dir DIR`` (default: the current directory if it holds
``nbgrader_config.py``, else this repository).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from npfl_course.course import Course, CourseError, load_course


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``npfl-course``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--course-dir",
        metavar="DIR",
        help="the course directory (with nbgrader_config.py); default: the current "
        "directory if it has one, else the repository root",
    )
    parser = argparse.ArgumentParser(
        prog="npfl-course",
        description="Instructor tools: parallel, sandboxed autograding on nbgrader.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], help=help, description=help)

    sub = add("generate", "generate the student versions (nbgrader generate_assignment)")
    sub.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: all")
    sub.add_argument("--force", action="store_true", help="overwrite an existing release")

    sub = add("zip-collect", "collect LMS downloads (zips or notebooks named by student id)")
    sub.add_argument("assignment", metavar="ASSIGNMENT")
    sub.add_argument("directory", metavar="DIR", help="the folder of downloaded files")
    sub.add_argument(
        "--pattern",
        default=None,
        help="regular expression with a (?P<student_id>...) group, matched against the "
        "start of each top-level file or folder name (default: everything before the "
        "first '_', '-' followed by a space, or '.')",
    )
    sub.add_argument("--force", action="store_true", help="replace existing submissions")

    sub = add("autograde", "autograde the submissions in parallel, sandboxed")
    sub.add_argument("assignment", metavar="ASSIGNMENT")
    sub.add_argument("--jobs", type=_positive(int), default=None, metavar="N",
                     help="notebooks run at once (default: c.NpflAutograde.jobs in "
                     "nbgrader_config.py, else the number of CPUs)")  # fmt: skip
    sub.add_argument("--timeout", type=_positive(float), default=None, metavar="S",
                     help="wall-clock limit per notebook in seconds (default: "
                     "c.NpflAutograde.notebook_timeout, else 600)")  # fmt: skip
    sub.add_argument("--cell-timeout", type=_positive(float), default=None, metavar="S",
                     help="limit per cell (default: c.Execute.timeout, else 120)")  # fmt: skip
    sub.add_argument("--memory", type=_positive(int), default=None, metavar="MB",
                     help="memory per notebook in MiB: what each of its processes may "
                     "allocate and what all of them may use together (default: "
                     "c.NpflAutograde.memory_mb, else 2048; grading this course's "
                     "assignments peaks below 500)")  # fmt: skip
    sub.add_argument("--disk", type=_positive(int), default=None, metavar="MB",
                     help="disk per notebook in MiB: the largest file it may write and what "
                     "the files in its work folder may take together (default: "
                     "c.NpflAutograde.disk_mb, else 1024)")  # fmt: skip
    sub.add_argument("--student", nargs="+", default=None, metavar="ID",
                     help="grade only these students")  # fmt: skip
    sub.add_argument("--force", action="store_true", help="grade again what is graded")
    sub.add_argument("--no-sandbox", action="store_true",
                     help="UNSAFE: grade even where bubblewrap cannot isolate student code "
                     "(see `npfl-course doctor`); without it autograde refuses there")  # fmt: skip
    sub.add_argument("--no-preflight", action="store_true",
                     help="skip grading the instructor's solution (full marks expected) and "
                     "the release (0 expected) before the students (also: "
                     "c.NpflAutograde.preflight = False)")  # fmt: skip
    sub.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="execute the notebooks on the workers of this Dask scheduler "
                     "(tcp://host:8786, or a scheduler file .json; docs/scaling.md); "
                     "default: c.NpflAutograde.scheduler, else on this machine")  # fmt: skip
    sub.add_argument("--quiet", action="store_true", help="no progress bar, short summary")

    sub = add("feedback", "write the feedback HTML (nbgrader generate_feedback)")
    sub.add_argument("assignment", metavar="ASSIGNMENT")

    sub = add("export", "export the gradebook as CSV (nbgrader export)")
    sub.add_argument("--csv", default=None, metavar="PATH",
                     help="output file (default: grades.csv in the course root)")  # fmt: skip

    sub = add("report", "grade table and a PNG with the score histogram and pass rates")
    sub.add_argument("assignment", metavar="ASSIGNMENT")
    sub.add_argument("--output", default=None, metavar="PNG",
                     help="default: reports/<assignment>.png in the course root")  # fmt: skip

    sub = add("check", "tests of the tests: source full marks, release 0, variants as named, "
              "no surviving mutant")  # fmt: skip
    sub.description = (
        "Tests of the tests. Grades the source (full marks), the release (0), the variants of "
        "variants.py (WRONG and DELEGATING lose the points of their test cells, ALTERNATIVE "
        "keep all) and mutants: near-misses made from the solution (outputs off by 1.001, "
        "in float32, nan for inputs above 50, one element changed, an argument changed in "
        "place; a flipped comparison, an off-by-one index, a dropped term, swapped "
        "arguments). A mutant that changes nothing on the tests' inputs is equivalent and "
        "not graded; one that keeps full points survives and fails check unless "
        "variants.py lists it in ACCEPTED with a reason."
    )
    sub.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: all")
    sub.add_argument("--jobs", type=_positive(int), default=None, metavar="N")
    sub.add_argument("--no-mutants", action="store_true",
                     help="grade no mutants: the source, release and variants only")  # fmt: skip

    sub = add("similarity", "pairs of students with similar answers: a table, HTML and CSV")
    sub.add_argument("assignment", metavar="ASSIGNMENT")
    sub.add_argument("--threshold", type=_fraction, default=None, metavar="F",
                     help="list pairs at least this similar, 0 to 1 (default: "
                     "c.NpflSimilarity.threshold, else 0.7)")  # fmt: skip
    sub.add_argument("--noise", type=_positive(int), default=None, metavar="N",
                     help="shortest shared passage that counts, in characters of normalised "
                     "code (default: c.NpflSimilarity.noise_threshold, else 25)")  # fmt: skip
    sub.add_argument("--top", type=_positive(int), default=20, metavar="N",
                     help="pairs printed (default 20; all are in the CSV)")  # fmt: skip
    sub.add_argument("--report-pairs", type=_positive(int), default=None, metavar="N",
                     help="pairs shown side by side in the HTML (default: "
                     "c.NpflSimilarity.report_pairs, else 50)")  # fmt: skip
    sub.add_argument("--output", default=None, metavar="DIR",
                     help="where <assignment>_similarity.html and .csv go (default: "
                     "reports/ in the course root)")  # fmt: skip
    sub.add_argument("--jobs", type=_positive(int), default=None, metavar="N",
                     help="processes reading notebooks (default: c.NpflSimilarity.jobs, "
                     "else the number of CPUs)")  # fmt: skip
    sub.add_argument("--no-expected", action="store_true",
                     help="compare answers that match the instructor's solution or a "
                     "variant like any other (default: such cells are expected and not "
                     "counted; c.NpflSimilarity.expected)")  # fmt: skip
    sub.add_argument("--student", nargs="+", default=None, metavar="ID",
                     help="compare only these students")  # fmt: skip

    sub = add("demo", "generate, collect, autograde and report in a temporary course")
    sub.add_argument("--output", default=None, metavar="DIR",
                     help="keep the demo course here (default: a temporary folder)")  # fmt: skip
    sub.add_argument("--jobs", type=_positive(int), default=None, metavar="N")
    sub.add_argument("--assignment", default=None, help="the assignment graded in the demo")

    add("doctor", "what this machine offers the grader: sandbox, memory limit, torch, CUDA")
    return parser


def _generate(course: Course, args) -> int:
    from npfl_course.course import generate_assignment

    names = args.assignments or course.source_assignments()
    if not names:
        print(f"no assignments in {course.path('source', '.').parent}", file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        # As nbgrader does, an existing release is kept unless --force.
        skipped = course.path("release", name).exists() and not args.force
        ok, log = generate_assignment(course, name, force=args.force)
        print(f"{name}: {'skipped (exists; --force regenerates)' if skipped else 'generated'}"
              if ok else f"{name}: FAILED\n{log[-3000:]}")  # fmt: skip
        failed += not ok
    return 1 if failed else 0


def _zip_collect(course: Course, args) -> int:
    from npfl_course.collect import zip_collect

    collected = zip_collect(course, args.assignment, args.directory, pattern=args.pattern,
                            force=args.force)  # fmt: skip
    for student, files in collected.students.items():
        print(f"{student}: {', '.join(files)}")
    for line in collected.skipped:
        print(f"skipped: {line}")
    print(f"collected {len(collected.students)} submission(s) into "
          f"{course.path('submitted', args.assignment, '<student>')}")  # fmt: skip
    return 0 if collected.students else 1


def _autograde(course: Course, args) -> int:
    from npfl_course.autograde import ClusterUnavailableError, SandboxUnavailableError, autograde
    from npfl_course.autograde.preflight import PreflightError
    from npfl_course.autograde.settings import NpflAutograde
    from npfl_course.sandbox import isolation

    limits = NpflAutograde(parent=course.app).limits(cell_seconds=args.cell_timeout)
    flags = {"notebook_seconds": args.timeout, "memory_mb": args.memory, "disk_mb": args.disk}
    limits = dataclasses.replace(limits, **{k: v for k, v in flags.items() if v is not None})
    scheduler = args.scheduler  # "" grades here whatever the config says
    if scheduler is None:
        scheduler = NpflAutograde(parent=course.app).scheduler
    kind, description = isolation()
    if kind != "bwrap" and args.no_sandbox and not scheduler:  # the workers' are reported
        print(f"npfl-course: WARNING: --no-sandbox: {description}", file=sys.stderr)
    try:
        report = autograde(course, args.assignment, students=args.student, jobs=args.jobs,
                           limits=limits, force=args.force, progress=not args.quiet,
                           unsandboxed=args.no_sandbox, scheduler=scheduler,
                           preflight=False if args.no_preflight else None)  # fmt: skip
    except ClusterUnavailableError as exc:
        print(f"npfl-course: {exc}", file=sys.stderr)
        return 2
    except SandboxUnavailableError as exc:
        print(f"npfl-course: {exc}", file=sys.stderr)
        return 2
    except PreflightError as exc:
        print(f"npfl-course: {exc}", file=sys.stderr)
        return 3
    print(report.summary(details=not args.quiet))
    return 1 if report.count("failed") else 0


def _feedback(course: Course, args) -> int:
    from npfl_course.feedback import generate_feedback

    ok, log = generate_feedback(course, args.assignment)
    where = course.path("feedback", args.assignment, "<student>")
    print(f"feedback written to {where}" if ok else f"FAILED\n{log[-3000:]}")
    return 0 if ok else 1


def _export(course: Course, args) -> int:
    from npfl_course.course import export_csv

    path = export_csv(course, args.csv or course.root / "grades.csv")
    print(f"grades exported to {path}")
    return 0


def _report(course: Course, args) -> int:
    from npfl_course.report import grade_table, write_report

    output = Path(args.output) if args.output else course.root / "reports" / args.assignment
    output = output.with_suffix(".png")
    print(grade_table(course, args.assignment))
    print(f"report written to {write_report(course, args.assignment, output)}")
    return 0


def _check(course: Course, args) -> int:
    from npfl_course.check import check_assignments

    return check_assignments(course, args.assignments or None, jobs=args.jobs,
                             mutants=not args.no_mutants)  # fmt: skip


def _similarity(course: Course, args) -> int:
    from npfl_course.similarity import NpflSimilarity, find_similar, summary, table, write_reports

    settings = NpflSimilarity(parent=course.app).settings(
        threshold=args.threshold, noise_threshold=args.noise, report_pairs=args.report_pairs,
        jobs=args.jobs, expected=False if args.no_expected else None,
    )  # fmt: skip
    output = Path(args.output) if args.output else course.root / "reports"
    if output.exists() and not output.is_dir():
        print(f"npfl-course: --output {output} is not a folder", file=sys.stderr)
        return 2
    result = find_similar(course, args.assignment, settings, students=args.student)
    html, csv = write_reports(result, output)
    print(table(result, top=args.top))
    print("\n".join(summary(result)))
    print(f"report: {html}\ncsv:    {csv}\n({result.seconds:.1f} s to compare)")
    return 0


def _doctor(course: Course, args) -> int:
    from npfl_course.doctor import diagnose

    lines, ok = diagnose()
    print("\n".join(lines))
    return 0 if ok else 1


def _demo(course: Course | None, args) -> int:
    from npfl_course.demo import run_demo

    return run_demo(course, output=args.output, jobs=args.jobs, assignment=args.assignment)


COMMANDS = {
    "generate": _generate, "zip-collect": _zip_collect, "autograde": _autograde,
    "feedback": _feedback, "export": _export, "report": _report, "check": _check,
    "demo": _demo, "doctor": _doctor, "similarity": _similarity,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Runs ``npfl-course``; returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        course = load_course(args.course_dir)
        return COMMANDS[args.command](course, args)
    except CourseError as exc:
        print(f"npfl-course: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npfl-course: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)  # running sandboxes die with us (bwrap --die-with-parent)
    except Exception as exc:
        from nbgrader.converters import NbGraderException

        if isinstance(exc, (NbGraderException, FileNotFoundError, ValueError)):
            print(f"npfl-course: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
