"""The variant planner: which test cells can a solution cell affect?

:func:`dependencies` finds, from a static analysis, the solution cells whose code a test
cell may run; :func:`plan` puts the variants of ``variants.py`` into as few submissions
as can be judged independently.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from types import ModuleType

import nbformat

from npfl_course.check.notebook import autograded_tests, cell_kind, cells_by_kind

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
