"""A tiny course for the tests: one assignment ``tiny`` (add, mul, square; no torch code in
its cells), and the helpers that build nbgrader source notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat

TINY_CONFIG = """\
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "tiny"
c.CourseDirectory.source_directory = "source"
c.Execute.timeout = 30
"""


# The tiny assignment's variants.py (npfl-course check's tests of the tests).
TINY_VARIANTS = """
WRONG = [
    {"name": "add subtracts", "cell": "add", "code": "def add(a, b):\\n    return a - b",
     "fails": ["test_add"]},
    {"name": "add multiplies", "cell": "add", "code": "def add(a, b):\\n    return a * b",
     "fails": ["test_add"]},
    {"name": "mul adds", "cell": "mul", "code": "def mul(a, b):\\n    return a + b",
     "fails": ["test_mul"]},
    {"name": "mul subtracts", "cell": "mul", "code": "def mul(a, b):\\n    return a - b",
     "fails": ["test_mul"]},
    {"name": "square doubles", "cell": "square", "code": "def square(x):\\n    return x + x",
     "fails": ["test_square"]},
    {"name": "square cubes", "cell": "square", "code": "def square(x):\\n    return x ** 3",
     "fails": ["test_square"]},
]
ALTERNATIVE = [{"name": "mul swapped", "cell": "mul", "code": "def mul(a, b):\\n    return b * a"}]
DELEGATING = [
    {"name": "square via npfl_lib", "cell": "square", "fails": ["test_square"],
     "code": "def square(x):\\n    import torch, npfl_lib.functional as F\\n"
             "    return float(F.relu(torch.tensor(float(x)))) ** 2"},
]
"""


def source_cell(kind: str, grade_id: str, source: str, points: float = 0) -> nbformat.NotebookNode:
    flags = {
        "readonly": (False, True, False),
        "solution": (False, False, True),
        "test": (True, True, False),
    }[kind]
    cell = nbformat.v4.new_code_cell(source)
    meta = dict(zip(("grade", "locked", "solution"), flags, strict=True))
    meta.update(grade_id=grade_id, schema_version=3, task=False)
    if kind == "test":
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def solution(signature: str, body: str) -> str:
    """A solution cell's source: the signature, a docstring, the answer between markers."""
    doc = '    """Computes the answer (see the task)."""'
    return f"{signature}\n{doc}\n    ### BEGIN SOLUTION\n    {body}\n    ### END SOLUTION"


def tiny_source() -> nbformat.NotebookNode:
    """The source notebook of the tiny assignment: add (1 point), mul (2), square (1)."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}  # fmt: skip
    guarded = "with forbid('npfl_lib'), time_limit(5):\n    "

    def test(visible: str, hidden: str) -> str:
        hidden = f"### BEGIN HIDDEN TESTS\n{guarded}{hidden}\n### END HIDDEN TESTS"
        return f"{guarded}{visible}\n{hidden}"

    notebook.cells = [
        source_cell(
            "readonly", "setup", "from npfl_lib.grading import check_close, forbid, time_limit"
        ),
        source_cell("solution", "add", solution("def add(a, b):", "return a + b")),
        source_cell(
            "test",
            "test_add",
            test("assert add(1, 2) == 3, 'add(1, 2)'", "assert add(-1, 1) == 0"),
            1,
        ),
        source_cell("solution", "mul", solution("def mul(a, b):", "return a * b")),
        source_cell(
            "test",
            "test_mul",
            test(
                "value = mul(2.0, 3.0)\ncheck_close(value, 6.0, name='mul')",
                "assert mul(0, 5) == 0",
            ),
            2,
        ),
        source_cell("solution", "square", solution("def square(x):", "return x * x")),
        source_cell(
            "test",
            "test_square",
            test("assert square(3) == 9, 'square(3)'", "assert square(-2) == 4"),
            1,
        ),
    ]
    return notebook


def tiny_course(directory: str | os.PathLike) -> Path:
    """Writes a course with one tiny assignment ``tiny`` (not generated yet); its path."""
    directory = Path(directory)
    (directory / "source" / "tiny").mkdir(parents=True)
    (directory / "nbgrader_config.py").write_text(TINY_CONFIG, encoding="utf-8")
    nbformat.write(tiny_source(), directory / "source" / "tiny" / "tiny.ipynb")
    return directory


def generated_tiny_course(directory: str | os.PathLike, submissions: dict) -> Path:
    """The tiny course in ``directory``, generated, with one submission per student of
    ``submissions`` (student -> solution cells replaced, as ``make_submission`` takes
    them; None: the release untouched). Nothing is graded."""
    from npfl_course.check import make_submission
    from npfl_course.course import generate_assignment, load_course

    directory = tiny_course(directory)
    ok, log = generate_assignment(load_course(directory), "tiny")
    assert ok, log
    release = nbformat.read(directory / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)
    for student, replace in submissions.items():
        notebook = release if replace is None else make_submission(release, source, replace)
        folder = directory / "submitted" / student / "tiny"
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, folder / "tiny.ipynb")
    return directory


def tiny_variant(kind: str = "full", insert: str | None = None, after: str = "setup"):
    """The tiny assignment as the worker gets it (hidden tests included): ``full``,
    ``wrong`` (mul adds) or ``release`` (every answer raises), with a cell inserted."""
    notebook = tiny_source()
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and kind == "release":
            cell.source = cell.source.split("### BEGIN SOLUTION")[0] + "raise NotImplementedError()"
        if meta.get("grade_id") == "mul" and kind == "wrong":
            cell.source = "def mul(a, b):\n    return a + b"
    if insert is not None:
        index = next(i for i, c in enumerate(notebook.cells)
                     if c.metadata.get("nbgrader", {}).get("grade_id") == after)  # fmt: skip
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(insert))
    return notebook


def passed_tests(executed: dict) -> dict[str, bool]:
    """Test cell -> passed (no error output), as nbgrader scores it."""
    return {cell["metadata"]["nbgrader"]["grade_id"]:
            not any(o["output_type"] == "error" for o in cell["outputs"])
            for cell in executed["cells"]
            if cell["metadata"].get("nbgrader", {}).get("grade")}  # fmt: skip


def output_text(cell: dict) -> str:
    """What an executed cell printed."""
    return "".join(o.get("text", "") for o in cell["outputs"])
