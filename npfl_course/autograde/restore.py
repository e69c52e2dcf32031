"""Phase 1 of autograding: a submission's cells put back as the assignment has them.

:class:`RestoreCells` (an nbgrader preprocessor, run before ``OverwriteCells``) undoes
what students do to cells; :func:`read_submitted` reads a submitted notebook or says
why it cannot be read.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor


def _grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


class RestoreCells(NbGraderPreprocessor):
    """Makes the nbgrader cells of a submission match the gradebook, before OverwriteCells.

    Cells whose grade_id the gradebook does not know lose their nbgrader metadata (they
    are the student's own cells). Known cells get their kind (grade, solution, locked,
    task) and points back. Locked cells (read-only and test cells) that were deleted are
    added back, and the assignment's cells are put back in the assignment's order, each
    followed by the student's own cells that followed it. Every change is noted in
    ``resources["npfl_notes"]``. The order comes from ``resources["npfl_reference"]``
    (the released notebook) when given.
    """

    def preprocess(self, nb, resources):
        from nbgrader.api import Gradebook

        info = resources["nbgrader"]
        notes = resources.setdefault("npfl_notes", [])
        with Gradebook(info["db_url"]) as gradebook:
            notebook = gradebook.find_notebook(info["notebook"], info["assignment"])
            kinds = {
                "grade": {cell.name for cell in notebook.grade_cells},
                "solution": {cell.name for cell in notebook.solution_cells},
                "task": {cell.name for cell in notebook.task_cells},
            }
            points = {c.name: c.max_score for c in notebook.grade_cells + notebook.task_cells}
            source = {c.name: (c.cell_type, c.locked, c.source) for c in notebook.source_cells}
        known = set(source).union(*kinds.values())
        reference = resources.get("npfl_reference")
        order = [_grade_id(c) for c in reference.cells] if reference else list(source)
        order = [name for name in order if name in known]
        order += [name for name in source if name not in order]
        by_name = {_grade_id(c): c for c in reference.cells if _grade_id(c)} if reference else {}
        for cell in nb.cells:
            name = _grade_id(cell)
            if name is None or name not in known:
                if name is not None:
                    notes.append(f"cell {name!r} is not part of the assignment: plain code")
                cell.metadata.pop("nbgrader", None)  # the student's own cell
                continue
            expected = {kind: name in names for kind, names in kinds.items()}
            expected["locked"] = bool(source.get(name, (None, False))[1])
            meta = cell.metadata["nbgrader"]
            changed = any(bool(meta.get(kind)) != value for kind, value in expected.items())
            if name in points:
                changed |= "points" in meta and meta["points"] != points[name]
                expected["points"] = points[name]
            else:
                meta.pop("points", None)
            meta.update(expected, schema_version=3)
            if changed:
                notes.append(f"the nbgrader settings of cell {name!r} were changed; restored")
            original = by_name.get(name)
            pristine = (original.source if original else None, source.get(name, (0, 0, None))[2])
            if expected["locked"] and original is not None and cell.source not in pristine:
                notes.append(f"locked cell {name!r} was edited; the original was restored")
        present = {_grade_id(cell) for cell in nb.cells}
        for name in order:
            if name in present:
                continue
            cell_type, locked, text = source.get(name, ("code", False, ""))
            if not locked:
                notes.append(f"cell {name!r} (the student's answer) was deleted")
                continue
            restored = copy.deepcopy(by_name.get(name))
            if restored is None:
                make = (
                    nbformat.v4.new_code_cell
                    if cell_type == "code"
                    else (nbformat.v4.new_markdown_cell)
                )
                restored = make(text)
                restored.metadata["nbgrader"] = {"grade_id": name, "schema_version": 3}
                flags = {kind: name in names for kind, names in kinds.items()}
                restored.metadata["nbgrader"].update(flags, locked=True)
                if name in points:
                    restored.metadata["nbgrader"]["points"] = points[name]
            nb.cells.append(restored)
            notes.append(f"locked cell {name!r} was deleted; the original was put back")
        self._reorder(nb, order, notes)
        return nb, resources

    @staticmethod
    def _reorder(nb, order: list[str], notes: list[str]) -> None:
        rank = {name: index for index, name in enumerate(order)}
        groups: list[list] = [[]]
        for cell in nb.cells:
            if _grade_id(cell) in rank:
                groups.append([cell])
            else:
                groups[-1].append(cell)  # the student's cell stays after its predecessor
        head, body = groups[0], groups[1:]
        ordered = sorted(body, key=lambda group: rank[_grade_id(group[0])])
        if ordered != body:
            notes.append("cells were moved; they ran in the assignment's order")
        nb.cells = head + [cell for group in ordered for cell in group]


def read_submitted(path: str) -> nbformat.NotebookNode:
    """The submitted notebook, or ValueError with a readable reason."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("it is not a text file (not a Jupyter notebook)") from None
    if not text.strip():
        raise ValueError("the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("it is not a Jupyter notebook (not a JSON object)")
    major = data.get("nbformat")
    if major == 3 and isinstance(data.get("worksheets"), list):
        pass  # an old notebook (IPython 2 era, or exported so): converted to v4 below
    elif not isinstance(data.get("cells"), list):
        raise ValueError("it is not a Jupyter notebook (no list of cells)")
    elif major not in (4, None):
        raise ValueError(f"it is a notebook of format {major!r}, which nbformat cannot read; "
                         "save it again in JupyterLab")  # fmt: skip
    try:
        notebook = nbformat.reads(text, as_version=4)
        nbformat.validate(notebook)
    except Exception as exc:  # nbformat raises several kinds
        raise ValueError(f"it is not a valid Jupyter notebook ({first_line(exc)})") from None
    return notebook


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
