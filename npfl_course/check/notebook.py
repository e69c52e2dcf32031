"""The structure of an assignment's notebooks, for ``npfl-course check`` and the tests.

Where the assignments and their ``variants.py`` are, nbgrader's kinds of cells and the
exact metadata of each, the solution and hidden-test markers, static checks of test
cells, and :func:`make_submission` (the release with the solutions filled in).
"""

from __future__ import annotations

import ast
import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat

from npfl_course.course import REPO

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
