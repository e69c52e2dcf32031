"""Tests of the tests: does an assignment's grading judge solutions the way it should?

For instructors who edit an assignment (``npfl-course check [ASSIGNMENT ...]``) and for
``tests/test_assignments.py``. For one assignment it builds a throwaway course (the
course's ``nbgrader_config.py`` and a copy of the assignment), generates it, and
autogrades, with ``npfl-course autograde`` (nbgrader's converter, sandboxed workers):

1. the source notebook, which must get full points on every autograded test cell;
2. the unchanged release, which must score 0 (and show no solution or hidden test);
3. every WRONG and DELEGATING variant of ``variants.py`` (the release with every
   solution filled in from the source except the variant's cell), which must lose the
   points of each test cell it names, through an error of that cell (a DELEGATING one
   through ``ForbiddenCallError``);
4. every ALTERNATIVE variant, which must get full points.

Variants that cannot sway each other's judging test cells share one submission
(:func:`plan`, from a static analysis of which cells a test cell may run,
:func:`dependencies`); ``NPFL_GRADING_GROUP=0`` grades every variant alone. Several
assignments may be graded side by side from threads: each runs in its own processes,
at most :func:`jobs` notebooks at a time in all.

The parts: :mod:`npfl_course.check.notebook` (the notebooks' structure),
:mod:`npfl_course.check.plan` (the variant planner), :mod:`npfl_course.check.grade`
(grading in a throwaway course); this module is the ``check`` command.
"""

from __future__ import annotations

import ast
import os
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import nbformat

from npfl_course.check.grade import Graded, grade
from npfl_course.check.mutants import Mutation, accepted_entry_problems
from npfl_course.check.notebook import (
    HIDDEN_MARKERS,
    SOLUTION_MARKERS,
    autograded_tests,
    calls_outside_guards,
    cell_kind,
    cells_by_kind,
    discover,
    expected_metadata,
    graded_function,
    load_variants,
    make_submission,
    marked_lines,
    read_notebook,
    source_path,
)
from npfl_course.check.plan import KINDS, Plan, plan


def static_problems(notebook: nbformat.NotebookNode, variants: ModuleType | None) -> list[str]:
    """What is wrong with a source notebook and its variants before grading anything.

    The one rulebook of an assignment's static form: ``npfl-course check`` fails on any of
    these and so do the repository's tests (tests/test_assignments.py calls this).
    """
    problems = []
    if notebook.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append("the notebook's kernelspec must be python3")
    ids = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in notebook.cells]
    for index, cell in enumerate(notebook.cells):
        expected = expected_metadata(cell)
        if expected is None or dict(cell.metadata.nbgrader) != expected:
            problems.append(f"cell {index}: invalid or unusual nbgrader metadata")
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {index} has outputs: clear them")
        kind = cell_kind(cell)
        if expected is not None and kind in ("test", "manual") and not expected["points"] > 0:
            problems.append(f"cell {index} ({expected['grade_id']!r}) has no points")
        if kind == "solution":
            problems += solution_cell_problems(cell.source, f"solution cell {index}")
    problems += [f"grade_id {g!r} used twice" for g, n in Counter(ids).items() if g and n > 1]
    tests = autograded_tests(notebook)
    if not tests:
        problems.append("no autograded test cell")
    solutions = cells_by_kind(notebook, "solution")
    functions = {graded_function(c.source) for c in solutions.values()} - {None}
    for grade_id, cell in cells_by_kind(notebook, "test").items():
        if cell.cell_type == "code":
            if not marked_lines(cell.source, HIDDEN_MARKERS):
                problems.append(f"test cell {grade_id!r} has no hidden tests")
            for call in calls_outside_guards(cell.source, functions):
                problems.append(f"test cell {grade_id!r}: {call} outside forbid and time_limit")
    if variants is None:
        return [*problems, "no variants.py"]
    return problems + variant_problems(variants, solutions, tests)


def solution_cell_problems(source: str, where: str) -> list[str]:
    """A solution cell holds one documented function; its answer lies between the markers,
    after the signature and the docstring (the release keeps those)."""
    lines = source.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == SOLUTION_MARKERS[0]]
    ends = [i for i, line in enumerate(lines) if line.strip() == SOLUTION_MARKERS[1]]
    if not begins or len(begins) != len(ends):
        return [f"{where}: unbalanced solution markers"]
    if not graded_function(source):
        return [f"{where} must define exactly one function"]
    function = ast.parse(source).body[0]
    if not ast.get_docstring(function):
        return [f"{where}: the graded function needs a docstring"]
    if begins[0] < function.body[0].end_lineno:  # 1-based line of the docstring's end
        return [f"{where}: the signature and docstring must precede BEGIN SOLUTION"]
    return []


def variant_problems(variants: ModuleType, solutions: dict, tests: dict) -> list[str]:
    """variants.py lists WRONG, ALTERNATIVE and DELEGATING variants: at least two WRONG ones
    per solution cell, one of each other kind, uniquely named, each one function of the
    cell it replaces, the failing ones naming the autograded tests they must fail."""
    problems = [f"variants.py needs a list {kind}" for kind in KINDS
                if not isinstance(getattr(variants, kind, None), list)]  # fmt: skip
    if problems:
        return problems
    for kind in KINDS:
        for variant in getattr(variants, kind):
            label = f"{kind} variant {variant.get('name')!r}"
            if not variant.get("name"):
                problems.append(f"{label} needs a name")
            if variant.get("cell") not in solutions:
                problems.append(f"{label}: no solution cell {variant.get('cell')!r}")
                continue
            function = graded_function(solutions[variant["cell"]].source)
            if graded_function(variant.get("code", "")) != function:
                problems.append(f"{label} must define exactly one function, {function}")
            if kind != "ALTERNATIVE" and not set(variant.get("fails") or ["?"]) <= set(tests):
                problems.append(f"{label}: bad fails {variant.get('fails')!r}")
    wrong = Counter(variant.get("cell") for variant in variants.WRONG)
    thin = [cell for cell in solutions if wrong[cell] < 2]
    if thin:
        problems.append(f"fewer than two WRONG variants for {thin}")
    problems += [f"at least one {kind} variant is needed" for kind in ("ALTERNATIVE", "DELEGATING")
                 if not getattr(variants, kind)]  # fmt: skip
    names = [v.get("name") for kind in KINDS for v in getattr(variants, kind)]
    problems += [f"variant name {n!r} used twice" for n, c in Counter(names).items() if c > 1]
    return problems + accepted_entry_problems(variants, solutions)


def graded_problems(graded: Graded, source, variants: ModuleType | None, the_plan) -> list[str]:
    """What the grades of the source, the release and the variants say is wrong."""
    tests = autograded_tests(source)
    problems = []

    def lost(student: str, judged) -> dict[str, tuple] | None:
        scores = graded.scores.get(student)
        if scores is None:
            problems.append(f"{student}: not graded")
            return None
        return {g: scores[g] for g in judged if g in scores and (scores[g][0] or 0) < scores[g][1]}

    for grade_id, score in (lost("source", tests) or {}).items():
        errors = graded.errors.get("source", {}).get(grade_id)
        problems.append(f"the source lost points on {grade_id!r} {score}: {errors}")
    release = graded.scores.get("release", {})
    problems += [f"the release scored on {g!r}" for g in tests if (release.get(g) or (0,))[0]]
    text = nbformat.writes(graded.release) if graded.release else ""
    problems += [
        f"the release shows {m!r}" for m in (*SOLUTION_MARKERS, *HIDDEN_MARKERS) if m in text
    ]
    for kind in KINDS if variants is not None else ():
        for index, variant in enumerate(getattr(variants, kind, [])):
            student = the_plan.student_of[(kind, index)]
            judged = the_plan.judged_by[(kind, index)]
            label = f"{kind} variant {variant['name']!r}"
            lost_points = lost(student, judged)
            if lost_points is None:
                continue
            if kind == "ALTERNATIVE":
                problems += [f"correct {label} lost points on {g!r}" for g in lost_points]
                continue
            for grade_id in variant["fails"]:
                raised = " | ".join(graded.errors.get(student, {}).get(grade_id, []))
                if grade_id not in lost_points:
                    problems.append(f"{label} kept full points on {grade_id!r}")
                elif not raised or raised.startswith(("DeadKernelError", "CellTimeoutError")):
                    problems.append(f"{label} lost {grade_id!r} without an error of its own")
                elif kind == "DELEGATING" and "ForbiddenCallError" not in raised:
                    problems.append(f"{label} failed {grade_id!r} but not through forbid")
    return problems


def check_assignments(
    course, names: list[str] | None = None, jobs: int | None = None, mutants: bool = True
) -> int:
    """``npfl-course check``: prints the problems of each assignment; 0 if there are none.

    With ``mutants`` (the default) it also grades the assignment's mutants
    (:mod:`npfl_course.check.mutants`) and fails on every survivor not in ACCEPTED.
    """
    import tempfile

    if jobs is not None:
        os.environ["NPFL_GRADING_JOBS"] = str(jobs)
    assignments = course.path("source", "x").parent
    names = names or discover(assignments)
    config = course.directory / "nbgrader_config.py"
    layout = os.path.relpath(assignments, course.directory)
    if layout.startswith(".."):
        raise ValueError(f"check needs the sources inside the course directory, not {assignments}")
    failed = 0
    for name in names:
        if not source_path(name, assignments).is_file():
            print(f"{name}: no {source_path(name, assignments)}")
            failed += 1
            continue
        source = read_notebook(source_path(name, assignments))
        try:
            variants = load_variants(name, assignments)
        except (OSError, SyntaxError, ImportError):
            variants = None
        problems = static_problems(source, variants)
        the_plan = plan(source, variants) if variants is not None else Plan()
        mutation = None
        if mutants and not problems:
            mutation = Mutation(name, source, source_path(name, assignments))
            mutation.start()  # the probe runs while nbgrader generates the release

        def submissions(release, source, the_plan=the_plan, mutation=mutation):
            students = {"source": source, "release": release}
            students.update(
                {s: make_submission(release, source, r) for s, r in the_plan.students.items()}
            )
            if mutation is not None:
                students.update(mutation.students(release, source))
            return students

        with tempfile.TemporaryDirectory(prefix=f"npfl-check-{name}-") as workdir:
            start = time.perf_counter()
            graded = grade(name, Path(workdir), submissions, assignments=assignments,
                           config=config, layout=layout)  # fmt: skip
            if graded.release is None:
                problems.append(f"generate failed:\n{graded.log[-2000:]}")
            else:
                problems += graded_problems(graded, source, variants, the_plan)
                if mutation is not None:
                    problems += mutation.finish(graded, variants)
        seconds = time.perf_counter() - start
        count = len(graded.scores)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{name}: {status} ({count} submissions graded in {seconds:.0f} s)")
        if mutation is not None and graded.release is not None:
            print(f"  mutants: {mutation.summary()}")
            for note in mutation.notes():
                print(f"  - not exercised: {note}")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0
