"""The lecture notebooks: stored clean, in sync with their sources, and executable.

The execution test runs every ``lectures/*.ipynb`` top to bottom in a fresh kernel
(small sizes unless ``NPFL_FULL=1`` is set) inside a temporary directory, so nothing
is written into ``lectures/``, and checks that it raised no error and drew at least
one figure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LECTURES = ROOT / "lectures"
NOTEBOOKS = sorted(LECTURES.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted((LECTURES / "src").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300  # generous: a cold CI runner is slow, and NPFL_FULL=1 runs are longer


def _load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "tools" / "build_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name(path: Path) -> str:
    return path.stem


def test_there_are_ten_notebooks_with_sources():
    assert len(NOTEBOOKS) == 10, [p.name for p in NOTEBOOKS]
    assert [p.stem for p in NOTEBOOKS] == [p.stem for p in SOURCES]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {index} of {path.name} has outputs"
            assert cell.execution_count is None, f"cell {index} of {path.name} has a count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_matches_its_source(path):
    builder = _load_builder()
    built = nbformat.writes(builder.build_notebook(LECTURES / "src" / f"{path.stem}.py"))
    # Compared as JSON, so another nbformat version's whitespace cannot fail the test.
    assert json.loads(path.read_text()) == json.loads(built), (
        f"{path.name} differs from lectures/src/{path.stem}.py: run python tools/build_notebooks.py"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_the_lecture_structure(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert 'os.environ.get("NPFL_FULL") == "1"' in code[0], (
        "the first code cell must read NPFL_FULL"
    )
    assert "torch.cuda.is_available()" in code[0], "the first code cell must pick the device"
    assert "npfl_lib" in "\n".join(code)
    assert "## Try it yourself" in markdown


def test_builder_rejects_bad_markdown_and_unknown_markers():
    builder = _load_builder()
    assert builder.parse_cells(
        "header\n# %% [markdown]\n# # Title\n#\n# text\n# %%\nx = 1\n\n"
    ) == [
        ("markdown", "# Title\n\ntext"),
        ("code", "x = 1"),
    ]
    with pytest.raises(ValueError, match="Markdown line"):
        builder.parse_cells("# %% [markdown]\nnot a comment\n")
    with pytest.raises(ValueError, match="unknown cell marker"):
        builder.parse_cells("# %% [raw]\n# text\n")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_executes_and_draws_a_figure(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits the environment: an MPLBACKEND such as Agg would stop the
    # inline backend from turning figures into image/png outputs.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    # The notebooks' tensors are small: one thread is as fast, and on a busy machine two
    # OpenMP threads per kernel wait for each other and slow small ops down a hundredfold.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = sorted(LECTURES.rglob("*"))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start
    print(f"{path.name}: executed in {elapsed:.1f} s (NPFL_FULL={os.environ.get('NPFL_FULL', '')})")

    outputs = [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]
    errors = [output for output in outputs if output.output_type == "error"]
    assert not errors, errors
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} drew no figure"
    assert sorted(LECTURES.rglob("*")) == before, "executing a notebook wrote into lectures/"
