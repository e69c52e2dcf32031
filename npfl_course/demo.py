"""``npfl-course demo``: the instructor's whole job, end to end, in a temporary course.

1. copies the course's ``nbgrader_config.py`` and assignments into a fresh folder and
   generates every assignment (``nbgrader generate_assignment``);
2. builds an LMS-style download folder for one assignment: a full solution, the
   untouched release, partially wrong solutions (``variants.py``'s WRONG variants) and a
   few hostile submissions (an infinite loop, a process exit, tampering with the
   grading helpers, a file that is not a notebook) and two students who share one
   disguised solution (:mod:`npfl_course.similarity.demo`), as zips and loose notebooks;
3. collects them (``zip-collect``), autogrades them in parallel and sandboxed,
   generates the feedback, exports the CSV, prints the grade table and writes the PNG;
4. prints the most similar pairs of students (``npfl-course similarity``).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat

from npfl_course.course import Course, generate_assignment, scratch_copy
from npfl_course.feedback import generate_feedback

DEFAULT_ASSIGNMENT = "regularization"  # the fastest to grade of this course's assignments

HOSTILE = {
    "mallory_loop": "while True:\n    pass",
    "trudy_exit": "import os\nos._exit(0)",
    "eve_tamper": (  # with the untouched release: 0, as bob
        "import sys, types, contextlib\n"
        "fake = types.ModuleType('npfl_lib.grading')\n"
        "fake.check_close = lambda *args, **kwargs: None\n"
        "fake.forbid = fake.time_limit = lambda *args: contextlib.nullcontext()\n"
        "sys.modules['npfl_lib.grading'] = fake"
    ),
}


def _downloads(course: Course, assignment: str, folder: Path) -> list[str]:
    """An LMS download folder of submissions; returns the student ids."""
    from npfl_course import check, similarity

    source_dir = course.path("source", assignment)
    release = nbformat.read(course.path("release", assignment) / f"{assignment}.ipynb", 4)
    source = nbformat.read(source_dir / f"{assignment}.ipynb", 4)
    folder.mkdir(parents=True)
    notebooks = {
        "alice_full": check.make_submission(release, source),
        "bob_untouched": release,
    }
    variants_path = source_dir / "variants.py"
    if variants_path.exists():
        variants = check.load_variants(assignment, source_dir.parent)
        for student, variant in zip(("carol", "dave", "erin"), variants.WRONG, strict=False):
            replace = {variant["cell"]: variant["code"]}
            notebooks[f"{student}_wrong"] = check.make_submission(release, source, replace)
    notebooks.update(similarity.demo_submissions(release, source, assignment))
    for student, code in HOSTILE.items():
        base = "bob_untouched" if student == "eve_tamper" else "alice_full"
        notebook = copy.deepcopy(notebooks[base])
        first = next(i for i, c in enumerate(notebook.cells) if check.cell_kind(c) == "solution")
        notebook.cells.insert(first, nbformat.v4.new_code_cell(code))
        notebooks[student] = notebook
    for number, (student, notebook) in enumerate(notebooks.items()):
        if number % 2:  # as a zip, named by the student id
            with zipfile.ZipFile(folder / f"{student}.zip", "w") as archive:
                archive.writestr(f"{assignment}.ipynb", nbformat.writes(notebook))
        else:  # a loose notebook, renamed by the LMS
            nbformat.write(notebook, folder / f"{student}_{assignment}_submission.ipynb")
    (folder / f"oscar_broken_{assignment}.ipynb").write_text('{"cells": [', encoding="utf-8")
    return [*notebooks, "oscar"]


def run_demo(
    course: Course,
    output: str | os.PathLike | None = None,
    jobs: int | None = None,
    assignment: str | None = None,
) -> int:
    """Runs the demo (see the module docstring); returns the exit status."""
    from npfl_course.autograde import autograde
    from npfl_course.collect import zip_collect
    from npfl_course.course import export_csv
    from npfl_course.report import grade_table, write_report
    from npfl_course.sandbox import Limits, isolation
    from npfl_course.similarity import demo_report

    start = time.perf_counter()
    base = Path(output) if output else Path(tempfile.mkdtemp(prefix="npfl-demo-"))
    demo = base / "course"
    if demo.exists():
        shutil.rmtree(demo)
    names = course.source_assignments()
    demo_course = scratch_copy(course, demo, names)
    print(f"demo course: {demo}")
    for name in names:
        ok, log = generate_assignment(demo_course, name, force=True)
        print(f"  generate {name}: {'ok' if ok else 'FAILED'}")
        if not ok:
            print(log[-3000:])
            return 1
    assignment = assignment or (DEFAULT_ASSIGNMENT if DEFAULT_ASSIGNMENT in names else names[0])
    downloads = base / "downloads" / assignment
    if downloads.exists():
        shutil.rmtree(downloads)
    students = _downloads(demo_course, assignment, downloads)
    collected = zip_collect(demo_course, assignment, downloads)
    print(f"  zip-collect: {len(collected.students)} of {len(students)} students' notebooks")
    limits = Limits(notebook_seconds=120, cell_seconds=20)
    kind, description = isolation()
    if kind != "bwrap":
        # The demo grades only the submissions it just wrote (none touches files or the
        # network), so it may run without the sandbox that real grading insists on.
        print(f"  note: grading the demo's own submissions without a sandbox: {description}")
    report = autograde(demo_course, assignment, jobs=jobs, limits=limits,
                       unsandboxed=kind != "bwrap")  # fmt: skip
    print(report.summary())
    ok, _ = generate_feedback(demo_course, assignment)
    csv = export_csv(demo_course, demo / "grades.csv")
    png = write_report(demo_course, assignment, demo / "reports" / f"{assignment}.png")
    print(grade_table(demo_course, assignment))
    print(f"feedback: {demo_course.path('feedback', assignment, '<student>')} ({ok=})")
    print(f"grades:   {csv}\nreport:   {png}")
    print(demo_report(demo_course, assignment, demo / "reports"))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    problems = _self_check(report)
    if problems:
        print(f"DEMO FAILED: {'; '.join(problems)}")
        return 1
    print("demo OK: the full solution got full marks, the untouched release 0, "
          "every wrong solution lost points, no submission failed")  # fmt: skip
    return 0


def _self_check(report) -> list[str]:
    """What the demo's grades get wrong: the known answers of its generated submissions."""
    outcomes = {outcome.student: outcome for outcome in report.outcomes}
    problems = []
    full = outcomes.get("alice")  # full marks on every autograded test
    if full is None or full.score is None or full.lost:
        problems.append(f"the full solution (alice) got {_score(full)}, not full marks")
    for student in ("bob", "eve"):  # eve's release also replaces npfl_lib.grading
        release = outcomes.get(student)
        if student == "eve" and release is None:
            continue  # a report without the hostile submissions
        if release is None or release.score != 0:
            problems.append(f"the untouched release ({student}) got {_score(release)}, not 0")
    for student in ("carol", "dave", "erin"):
        wrong = outcomes.get(student)
        if wrong is not None and (wrong.score is None or not wrong.lost):
            problems.append(f"the wrong solution of {student} got {_score(wrong)}")
    failed = [o.student for o in report.outcomes if o.status == "failed"]
    if failed:
        problems.append(f"not graded: {', '.join(failed)}")
    return problems


def _score(outcome) -> str:
    if outcome is None:
        return "no outcome"
    if outcome.score is None:
        return f"no score ({outcome.status}: {'; '.join(outcome.notes)[:300]})"
    return outcome.score_text
