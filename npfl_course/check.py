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
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType

import nbformat

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENTS = REPO / "assignments"

SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")

# The exact nbgrader metadata (schema 3) of each kind of cell, without grade_id/points.
CELL_KINDS = {
    "solution": {"grade": False, "locked": False, "solution": True},
    "test": {"grade": True, "locked": True, "solution": False},
    "readonly": {"grade": False, "locked": True, "solution": False},
    "manual": {"grade": True, "locked": False, "solution": True},
}


def discover(assignments: Path = ASSIGNMENTS) -> list[str]:
    """Names of the assignments: folders ``<assignments>/<name>/`` holding ``<name>.ipynb``."""
    if not assignments.is_dir():
        return []
    return sorted(p.name for p in assignments.iterdir() if (p / f"{p.name}.ipynb").is_file())


def source_path(name: str, assignments: Path = ASSIGNMENTS) -> Path:
    return assignments / name / f"{name}.ipynb"


def read_notebook(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def load_variants(name: str, assignments: Path = ASSIGNMENTS) -> ModuleType:
    """``<assignments>/<name>/variants.py`` as a module (WRONG, ALTERNATIVE, DELEGATING)."""
    path = assignments / name / "variants.py"
    spec = importlib.util.spec_from_file_location(f"_variants_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell_kind(cell: nbformat.NotebookNode) -> str | None:
    """ "solution", "test", "readonly" or "manual", or None without (valid) nbgrader data."""
    meta = cell.metadata.get("nbgrader")
    if not meta:
        return None
    flags = {key: meta.get(key) for key in ("grade", "locked", "solution")}
    for kind, expected in CELL_KINDS.items():
        if flags == expected:
            if kind == "solution" and cell.cell_type != "code":
                return "manual" if meta.get("grade") else None
            return kind
    return None


def expected_metadata(cell: nbformat.NotebookNode) -> dict | None:
    """The exact metadata nbgrader's schema 3 wants for this cell's kind, or None."""
    kind = cell_kind(cell)
    if kind is None:
        return None
    meta = cell.metadata["nbgrader"]
    expected = {**CELL_KINDS[kind], "grade_id": meta.get("grade_id"), "schema_version": 3}
    expected["task"] = False
    if kind in ("test", "manual"):
        expected["points"] = meta.get("points")
    return expected


def cells_by_kind(notebook: nbformat.NotebookNode, kind: str) -> dict[str, nbformat.NotebookNode]:
    """``{grade_id: cell}`` for the cells of one kind, in notebook order."""
    return {
        cell.metadata.nbgrader.grade_id: cell for cell in notebook.cells if cell_kind(cell) == kind
    }


def autograded_tests(notebook: nbformat.NotebookNode) -> dict[str, float]:
    """``{grade_id: points}`` of the autograded (code) test cells."""
    return {
        grade_id: float(cell.metadata.nbgrader.points)
        for grade_id, cell in cells_by_kind(notebook, "test").items()
        if cell.cell_type == "code"
    }


def graded_function(source: str) -> str | None:
    """The name of the single top-level function a solution cell defines, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    defs = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    return defs[0] if len(defs) == 1 else None


def marked_lines(source: str, markers: tuple[str, str], inside: bool = True) -> list[str]:
    """The stripped, non-empty lines between each pair of ``markers`` (or outside them)."""
    lines, within = [], False
    for line in source.splitlines():
        text = line.strip()
        if text.startswith(markers[0]):
            within = True
        elif text.startswith(markers[1]):
            within = False
        elif text and within == inside:
            lines.append(text)
    return lines


def calls_outside_guards(source: str, functions: set[str]) -> list[str]:
    """Calls of ``functions`` not inside both ``with forbid(...)`` and ``with time_limit(...)``.

    Returns a description (line and call) of each unguarded call.
    """
    tree = ast.parse(source)
    problems: list[str] = []

    def guards_of(node: ast.With) -> set[str]:
        names = set()
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call):
                func = call.func
                names.add(func.id if isinstance(func, ast.Name) else getattr(func, "attr", ""))
        return names & {"forbid", "time_limit"}

    def visit(node: ast.AST, guards: frozenset[str]) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in functions and guards != {"forbid", "time_limit"}:
                problems.append(f"line {node.lineno}: {node.func.id}(...)")
        inner = guards | guards_of(node) if isinstance(node, ast.With) else guards
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, frozenset())
    return problems


def make_submission(
    release: nbformat.NotebookNode,
    source: nbformat.NotebookNode,
    replace: dict[str, str] | None = None,
) -> nbformat.NotebookNode:
    """The release with every solution (code or written) filled in from the source.

    ``replace`` maps solution grade_ids to code that goes there instead.
    """
    replace = replace or {}
    answers = {**cells_by_kind(source, "solution"), **cells_by_kind(source, "manual")}
    missing = set(replace) - set(answers)
    if missing:
        raise KeyError(f"no solution cell with grade_id {sorted(missing)}")
    submission = copy.deepcopy(release)
    for cell in submission.cells:
        if cell_kind(cell) in ("solution", "manual"):
            grade_id = cell.metadata.nbgrader.grade_id
            cell.source = replace.get(grade_id, answers[grade_id].source)
    return submission


# ----------------------------------------------------------------------------------
# Which test cells can a solution cell affect? (to grade several variants at once)
# ----------------------------------------------------------------------------------

KINDS = ("WRONG", "ALTERNATIVE", "DELEGATING")


@functools.cache
def _names(source: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(names bound at the top level, names read anywhere) of a cell; None if unparsable."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    bound: set[str] = set()
    for node in tree.body:
        for sub in [node] if isinstance(node, scopes) else ast.walk(node):
            if isinstance(sub, scopes):
                bound.add(sub.name)
            elif isinstance(sub, ast.Name) and not isinstance(sub.ctx, ast.Load):
                bound.add(sub.id)
            elif isinstance(sub, ast.alias):
                bound.add((sub.asname or sub.name).split(".")[0])
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return frozenset(bound), frozenset(read)


def dependencies(
    notebook: nbformat.NotebookNode, replace: dict[str, str] | None = None
) -> dict[str, set[str]]:
    """``{test grade_id: solution grade_ids whose code the test cell may run}``.

    A cell depends on every solution or read-only code cell that binds (at its top
    level) a name it reads, transitively; ``replace`` gives other code for some
    solution cells (as in a submission). An unparsable cell is taken to depend on
    every solution cell. This over-approximates, which is the safe direction.
    """
    replace = replace or {}
    solutions = set(cells_by_kind(notebook, "solution"))
    providers: dict[str, set[int]] = {}  # name -> indices of the cells binding it
    reads: dict[int, frozenset[str] | None] = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or cell_kind(cell) not in ("solution", "readonly"):
            continue
        parsed = _names(replace.get(cell.metadata.nbgrader.grade_id, cell.source))
        reads[index] = None if parsed is None else parsed[1]
        for name in () if parsed is None else parsed[0]:
            providers.setdefault(name, set()).add(index)
    result = {}
    for cell in notebook.cells:
        if cell_kind(cell) != "test" or cell.cell_type != "code":
            continue
        parsed = _names(cell.source)
        seen: set[int] = set()
        todo = [] if parsed is None else [i for n in parsed[1] for i in providers.get(n, ())]
        everything = parsed is None
        while todo and not everything:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                everything = reads[current] is None
                todo += [i for n in reads[current] or () for i in providers.get(n, ())]
        ids = {notebook.cells[i].metadata.nbgrader.grade_id for i in seen}
        result[cell.metadata.nbgrader.grade_id] = solutions if everything else ids & solutions
    return result


@dataclass
class Plan:
    """Which submission grades which variant, and which test cells judge it.

    ``students``: ``{student: {solution grade_id: code}}`` (the source and release
    are separate). ``student_of[(kind, index)]`` and ``judged_by[(kind, index)]``: the
    submission holding a variant and the test cells that judge it: its "fails" for a
    WRONG or DELEGATING variant, and for an ALTERNATIVE one every test cell that may
    run its code (every test cell when each variant is graded alone).
    """

    students: dict[str, dict[str, str]] = field(default_factory=dict)
    student_of: dict[tuple[str, int], str] = field(default_factory=dict)
    judged_by: dict[tuple[str, int], set[str]] = field(default_factory=dict)


def _judged(notebook, members, deps) -> dict[tuple[str, int], set[str]] | None:
    """Each member's judging test cells, or None if a variant could sway another's."""
    cells = [variant["cell"] for _, _, variant in members]
    if len(set(cells)) < len(cells):
        return None
    judged = {}
    for kind, index, variant in members:
        if kind == "ALTERNATIVE":
            tests = {t for t, used in deps.items() if variant["cell"] in used}
        else:
            tests = set(variant.get("fails", ()))
        others = set(cells) - {variant["cell"]}
        if any(deps.get(t, set()) & others for t in tests):
            return None
        judged[(kind, index)] = tests
    return judged


def plan(notebook: nbformat.NotebookNode, variants: ModuleType, group: bool = True) -> Plan:
    """Puts the variants into as few submissions as can be judged independently.

    Variants share a submission only if they replace different cells and no test cell
    that judges one of them may run another's code (see :func:`dependencies`, computed
    for that very submission), so each judging test cell sees exactly one variant and
    otherwise the source, which gets full points. With ``group=False`` every variant
    gets its own submission, as in the plain recipe.
    """
    entries = [(kind, i, v) for kind in KINDS for i, v in enumerate(getattr(variants, kind, []))]
    groups: list[list] = []
    for entry in entries:
        for members in groups if group else []:
            candidate = [*members, entry]
            replace = {variant["cell"]: variant["code"] for _, _, variant in candidate}
            if _judged(notebook, candidate, dependencies(notebook, replace)) is not None:
                members.append(entry)
                break
        else:
            groups.append([entry])
    result = Plan()
    tests = set(autograded_tests(notebook))
    for number, members in enumerate(groups):
        replace = {variant["cell"]: variant["code"] for _, _, variant in members}
        judged = _judged(notebook, members, dependencies(notebook, replace))
        kind, index = members[0][:2]
        student = f"variants{number:02d}" if group else f"{kind.lower()}{index:02d}"
        result.students[student] = replace
        for kind, index, _ in members:
            result.student_of[(kind, index)] = student
            alone = kind == "ALTERNATIVE" and not group
            result.judged_by[(kind, index)] = tests if alone else judged[(kind, index)]
    return result


@dataclass
class Graded:
    """What nbgrader made of one assignment's submissions."""

    name: str
    release: nbformat.NotebookNode | None = None
    release_files: list[str] = field(default_factory=list)
    # student -> grade_id -> (auto_score, max_score)
    scores: dict[str, dict[str, tuple[float | None, float]]] = field(default_factory=dict)
    # student -> grade_id -> ["ErrorName: message", ...] of that cell's error outputs
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    exec_seconds: dict[str, float] = field(default_factory=dict)  # first input to last reply
    generate_seconds: float = 0.0
    autograde_seconds: float = 0.0
    log: str = ""

    def failure_log(self, student: str) -> str:
        return f"(student {student!r}; nbgrader log tail:\n{self.log[-3000:]})"


def jobs() -> int:
    """Notebooks graded at once in all: ``$NPFL_GRADING_JOBS``, else the CPUs (at most 4)."""
    return max(1, int(os.environ.get("NPFL_GRADING_JOBS") or min(os.cpu_count() or 1, 4)))


_slots: list[threading.BoundedSemaphore] = []  # shared by assignments graded side by side
_slots_lock = threading.Lock()


def _cli(course: Path, *args: str) -> str:
    """Runs ``npfl-course <args> --course-dir course`` in a process of its own; the log."""
    env = dict(os.environ)
    env.pop("NPFL_COURSE_OUTPUT", None)  # the course directory is the output folder
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "npfl_course.cli", *args, "--course-dir", str(course)]
    result = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True,
                            timeout=3600)  # fmt: skip
    return (
        f"$ npfl-course {' '.join(args)} (exit {result.returncode})\n{result.stdout}{result.stderr}"
    )


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _read_autograded(course: Path, name: str, student: str, graded: Graded) -> None:
    path = course / "autograded" / student / name / f"{name}.ipynb"
    if not path.exists():
        return
    notebook = read_notebook(path)
    errors, starts, ends = {}, [], []
    for cell in notebook.cells:
        timing = cell.metadata.get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            starts.append(_timestamp(timing["iopub.execute_input"]))
            ends.append(_timestamp(timing["shell.execute_reply"]))
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id and cell.cell_type == "code":
            errors[grade_id] = [
                f"{out.ename}: {out.evalue}" for out in cell.outputs if out.output_type == "error"
            ]
    graded.errors[student] = errors
    if starts:
        graded.exec_seconds[student] = max(ends) - min(starts)


def _read_scores(course: Path, name: str, graded: Graded) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for student in gradebook.students:
            try:
                notebook = gradebook.find_submission_notebook(name, name, student.id)
            except MissingEntry:
                continue
            graded.scores[student.id] = {
                grade.name: (grade.auto_score, grade.max_score) for grade in notebook.grades
            }


def grade(
    name: str,
    workdir: Path,
    submissions_of,
    *,
    assignments: Path = ASSIGNMENTS,
    config: Path = REPO / "nbgrader_config.py",
    layout: str = "assignments",
) -> Graded:
    """Generates ``name`` in a course under ``workdir`` and autogrades its submissions.

    Args:
        name: The assignment, a folder of ``assignments``.
        workdir: An empty scratch folder.
        submissions_of: ``f(release, source) -> {student_id: notebook}``.
        assignments: Where the assignments are.
        config: The ``nbgrader_config.py`` to grade with.
        layout: Where, relative to the config, it takes the sources from (this
            repository's: ``assignments``).

    Returns:
        Graded: Scores, errors and timings; ``release`` is None if generation failed.
    """
    graded = Graded(name)
    course = workdir / "course"
    (course / layout).mkdir(parents=True)
    shutil.copy(config, course / "nbgrader_config.py")
    shutil.copytree(assignments / name, course / layout / name)
    start = time.perf_counter()
    graded.log = _cli(course, "generate", name, "--force")
    graded.generate_seconds = time.perf_counter() - start
    release_dir = course / "release" / name
    release_path = release_dir / f"{name}.ipynb"
    if not release_path.exists():
        return graded
    graded.release = read_notebook(release_path)
    graded.release_files = sorted(
        str(p.relative_to(release_dir)) for p in release_dir.rglob("*") if p.is_file()
    )
    submissions = submissions_of(graded.release, read_notebook(source_path(name, assignments)))
    for student, notebook in submissions.items():
        folder = course / "submitted" / student / name
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{name}.ipynb")
    with _slots_lock:
        if not _slots:
            _slots.append(threading.BoundedSemaphore(1))
    start = time.perf_counter()
    with _slots[0]:  # one assignment's workers at a time use all jobs() slots
        graded.log += _cli(course, "autograde", name, "--jobs", str(jobs()), "--quiet")
    graded.autograde_seconds = time.perf_counter() - start
    _read_scores(course, name, graded)
    for student in submissions:
        _read_autograded(course, name, student, graded)
    return graded


def safe_id(text: str) -> str:
    """``text`` reduced to characters safe in a student id and a pytest id."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:40]


# ----------------------------------------------------------------------------------
# npfl-course check
# ----------------------------------------------------------------------------------


def static_problems(notebook: nbformat.NotebookNode, variants: ModuleType | None) -> list[str]:
    """What is wrong with a source notebook and its variants before grading anything."""
    problems = []
    ids = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in notebook.cells]
    for index, cell in enumerate(notebook.cells):
        expected = expected_metadata(cell)
        if expected is None or dict(cell.metadata.nbgrader) != expected:
            problems.append(f"cell {index}: invalid or unusual nbgrader metadata")
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {index} has outputs: clear them")
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
    for kind in KINDS:
        for variant in getattr(variants, kind, []):
            label = f"{kind} variant {variant.get('name')!r}"
            if variant.get("cell") not in solutions:
                problems.append(f"{label}: no solution cell {variant.get('cell')!r}")
            elif kind != "ALTERNATIVE" and not set(variant.get("fails") or ["?"]) <= set(tests):
                problems.append(f"{label}: bad fails {variant.get('fails')!r}")
    return problems


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


def check_assignments(course, names: list[str] | None = None, jobs: int | None = None) -> int:
    """``npfl-course check``: prints the problems of each assignment; 0 if there are none."""
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

        def submissions(release, source, the_plan=the_plan):
            students = {"source": source, "release": release}
            students.update(
                {s: make_submission(release, source, r) for s, r in the_plan.students.items()}
            )
            return students

        with tempfile.TemporaryDirectory(prefix=f"npfl-check-{name}-") as workdir:
            start = time.perf_counter()
            graded = grade(name, Path(workdir), submissions, assignments=assignments,
                           config=config, layout=layout)  # fmt: skip
            if graded.release is None:
                problems.append(f"generate failed:\n{graded.log[-2000:]}")
            else:
                problems += graded_problems(graded, source, variants, the_plan)
        seconds = time.perf_counter() - start
        count = len(graded.scores)
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{name}: {status} ({count} submissions graded in {seconds:.0f} s)")
        for problem in problems:
            print(f"  - {problem}")
        failed += bool(problems)
    return 1 if failed else 0
