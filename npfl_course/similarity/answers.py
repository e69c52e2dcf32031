"""The answers of a class: each student's solution cells, normalised, and the references.

:func:`read_class` finds the assignment's solution cells (code cells that nbgrader marks
``solution``, by grade id) in the released notebooks, the instructor's solution (the
source notebooks) and the variants of ``variants.py`` (the *references*), and reads
every submission in ``submitted/<student>/<assignment>/`` as ``autograde`` does:
an invalid student id, a folder holding a link (nothing is read through one) or a
notebook that cannot be read (not a notebook, not JSON, empty) skips that student with
a note; the rest of the class is compared.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from npfl_course.course import Course, student_id_problem
from npfl_course.similarity.normalize import answer

MAX_CELL_CHARS = 50_000  # longer cells are compared by their start (a pasted blob)
CellKey = tuple[str, str]  # (notebook name, grade id)


@dataclass
class Answer:
    """One student's answer in one solution cell.

    Attributes:
        source (str): The cell as submitted (shown in the report).
        text (str): What the student wrote, normalised, less the release's lines.
        parsed (bool): Whether the cell parsed as Python (else compared as text).
    """

    source: str
    text: str
    parsed: bool = True


@dataclass
class ClassAnswers:
    """What :func:`read_class` found (see the module docstring).

    Attributes:
        assignment (str): The assignment.
        cells (list[CellKey]): The solution cells, in notebook order.
        released (dict[CellKey, str]): Each solution cell as released.
        references (dict[CellKey, dict[str, Answer]]): ``{name: answer}`` per cell: the
            instructor's solution ("solution") and the variants ("ALTERNATIVE 1: ...").
        students (dict[str, dict[CellKey, Answer]]): Each readable student's answers
            (a cell missing from the notebook is missing here).
        skipped (dict[str, str]): Students who could not be compared, and why.
        notes (list[str]): What the instructor should know (no release, no variants).
    """

    assignment: str
    cells: list[CellKey] = field(default_factory=list)
    released: dict[CellKey, str] = field(default_factory=dict)
    references: dict[CellKey, dict[str, Answer]] = field(default_factory=dict)
    students: dict[str, dict[CellKey, Answer]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _solution_cells(notebook) -> dict[str, str]:
    """``{grade_id: source}`` of the code cells nbgrader marks as solutions (first of each)."""
    cells: dict[str, str] = {}
    for cell in notebook.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and isinstance(meta, dict) and meta.get("solution"):
            grade_id = meta.get("grade_id")
            if isinstance(grade_id, str) and grade_id not in cells:
                source = cell.get("source", "")
                cells[grade_id] = "".join(source) if isinstance(source, list) else str(source)
    return cells


def _answer(source: str, released: str) -> Answer:
    source = source[:MAX_CELL_CHARS]
    text, parsed = answer(source, released)
    return Answer(source, text, parsed)


def _notebooks(course: Course, assignment: str, answers: ClassAnswers) -> dict[str, tuple]:
    """``{notebook name: (released notebook, source notebook or None)}``."""
    from nbgrader.preprocessors import ClearSolutions

    from npfl_course.check import read_notebook

    release_dir = course.path("release", assignment)
    source_dir = course.path("source", assignment)
    released = sorted(release_dir.glob("*.ipynb")) if release_dir.is_dir() else []
    sources = {p.stem: p for p in sorted(source_dir.glob("*.ipynb"))} if source_dir.is_dir() else {}
    if not released and not sources:
        raise ValueError(
            f"ASSIGNMENT {assignment!r}: no notebooks in {release_dir} or {source_dir}"
        )
    result = {}
    if released:
        for path in released:
            source = sources.get(path.stem)
            result[path.stem] = (read_notebook(path), read_notebook(source) if source else None)
        if not sources:
            answers.notes.append(
                f"no source notebooks in {source_dir}: answers are not "
                "compared with the instructor's solution"
            )
        return result
    answers.notes.append(
        f"no release in {release_dir} (`npfl-course generate "
        f"{assignment}`): the release's code is taken from the source "
        "with nbgrader's ClearSolutions"
    )
    for name, path in sources.items():
        source = read_notebook(path)
        release, _ = ClearSolutions(parent=course.app).preprocess(copy.deepcopy(source), {})
        result[name] = (release, source)
    return result


def _references(course: Course, assignment: str, answers: ClassAnswers, sources: dict) -> None:
    from npfl_course.check import load_variants

    for key in answers.cells:
        answers.references[key] = {}
        source = sources.get(key[0])
        solution = _solution_cells(source).get(key[1]) if source is not None else None
        if solution is not None:
            answers.references[key]["solution"] = _answer(solution, answers.released[key])
    source_dir = course.path("source", assignment)
    if not (source_dir / "variants.py").is_file():
        return
    try:
        variants = load_variants(assignment, source_dir.parent)
    except Exception as exc:  # the instructor's file: say so, and go on without it
        answers.notes.append(
            f"{source_dir / 'variants.py'} could not be loaded "
            f"({type(exc).__name__}: {exc}); no variants are compared"
        )
        return
    by_id = {}
    for key in answers.cells:
        by_id.setdefault(key[1], key)
    for kind in ("WRONG", "ALTERNATIVE", "DELEGATING"):
        for number, variant in enumerate(getattr(variants, kind, None) or [], 1):
            key = by_id.get(variant.get("cell")) if isinstance(variant, dict) else None
            if key is not None and isinstance(variant.get("code"), str):
                name = f"{kind} {number}: {variant.get('name', '')}".rstrip(": ")
                answers.references[key][name] = _answer(variant["code"], answers.released[key])


def _read_student(task: tuple) -> tuple[str, dict | str]:
    """One student's answers ``{(notebook, grade_id): Answer}``, or why none (a string).

    Runs in a worker process: it gets and returns plain data. Whatever a submission
    holds, the rest of the class is read: a failure is that student's note.
    """
    from npfl_course.autograde.restore import first_line
    from npfl_course.autograde.submission import shown

    try:
        return _read_one(*task)
    except Exception as exc:
        return task[0], f"could not be read: {type(exc).__name__}: {shown(first_line(exc))}"


def _read_one(student: str, folder: str, root: str, released: dict) -> tuple[str, dict | str]:
    from npfl_course.autograde.restore import read_submitted
    from npfl_course.autograde.submission import link_problem, shown

    problem = student_id_problem(student)
    if problem is not None:
        return student, f"'{shown(student)}' is not a valid student id: {problem}"
    problem = link_problem(folder, root)
    if problem is not None:
        return student, problem
    result = {}
    for name in sorted({key[0] for key in released}):
        path = os.path.join(folder, f"{name}.ipynb")
        if not os.path.isfile(path):
            others = sorted(os.listdir(folder))[:5]
            listed = ", ".join(shown(other) for other in others) or "nothing"
            return student, f"no {shown(name)}.ipynb in the submission (it holds {listed})"
        try:
            cells = _solution_cells(read_submitted(path))
        except ValueError as exc:
            return student, f"{shown(name)}.ipynb cannot be read: {shown(str(exc))}"
        for (notebook, grade_id), release in released.items():
            if notebook == name and grade_id in cells:
                result[(notebook, grade_id)] = _answer(cells[grade_id], release)
    return student, result


def submitted_students(course: Course, assignment: str) -> list[str]:
    """The ids with a folder ``submitted/<student>/<assignment>/`` (as ``autograde``)."""
    from npfl_course.autograde import Autograder

    return Autograder(course, assignment, jobs=1).submitted_students()


def read_class(
    course: Course, assignment: str, jobs: int = 1, students: list[str] | None = None
) -> ClassAnswers:
    """Reads the references and every submission of ``assignment`` (module docstring).

    Args:
        course (Course): The loaded course.
        assignment (str): The assignment's name.
        jobs (int): Processes reading the submissions (1: this one).
        students (list[str] | None): Only these students (default: every submission).

    Raises:
        ValueError: The assignment has no notebooks, or no solution cells.
    """
    if not isinstance(assignment, str) or not assignment or os.sep in assignment:
        raise ValueError(f"ASSIGNMENT must be an assignment's name, got {assignment!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    answers = ClassAnswers(assignment)
    notebooks = _notebooks(course, assignment, answers)
    for name, (release, _) in notebooks.items():
        for grade_id, source in _solution_cells(release).items():
            answers.cells.append((name, grade_id))
            answers.released[(name, grade_id)] = source
    if not answers.cells:
        raise ValueError(f"ASSIGNMENT {assignment!r} has no solution cells to compare")
    _references(course, assignment, answers, {n: s for n, (_, s) in notebooks.items()})
    root = str(course.root)
    found = submitted_students(course, assignment)
    if students is not None:
        unknown = sorted(set(students) - set(found))
        if unknown:
            raise ValueError(f"--student: no submission of {', '.join(map(repr, unknown))}")
        found = [s for s in found if s in set(students)]
    tasks = [
        (s, str(course.path("submitted", assignment, s)), root, answers.released) for s in found
    ]
    if jobs > 1 and len(tasks) > 20:
        # fork: the workers need nothing imported again (this process has no threads of
        # its own here); where there is no fork, the platform's default.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            results = list(pool.map(_read_student, tasks, chunksize=16))
    else:
        results = [_read_student(task) for task in tasks]
    for student, result in results:
        if isinstance(result, str):
            answers.skipped[student] = result
        else:
            answers.students[student] = result
    return answers
