"""The lecture notebooks: stored clean, in sync with their sources, and executable.

The notebooks are generated from their py:percent sources ``lectures/src/*.py`` by
jupytext (``make notebooks``). The execution test runs every ``lectures/*.ipynb`` top to
bottom in a fresh kernel, as shipped: small sizes unless ``NPFL_FULL=1`` is set, and no
thread variables (the notebooks' ``npfl_lib.setup`` call sets the CPU threads), inside a
temporary directory, so nothing is written into ``lectures/``; it checks that it raised
no error and drew at least one figure, and prints the time it took.
"""

from __future__ import annotations

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
# The variables that would make a run differ from a student's: the notebooks run as shipped.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NPFL_DEVICE")


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
    jupytext = pytest.importorskip("jupytext")
    source = jupytext.read(LECTURES / "src" / f"{path.stem}.py")
    stored = nbformat.read(path, as_version=4)
    hint = f"{path.name} differs from lectures/src/{path.stem}.py: run make notebooks"
    assert [(c.cell_type, c.source) for c in stored.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], hint
    assert stored.metadata.kernelspec == source.metadata.kernelspec, hint
    ids = [cell.id for cell in stored.cells]
    assert len(set(ids)) == len(ids), f"{path.name} has repeated cell ids"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_the_lecture_structure(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert 'os.environ.get("NPFL_FULL") == "1"' in code[0], (
        "the first code cell must read NPFL_FULL"
    )
    assert "npfl_lib.setup(" in code[0], (
        "the first code cell must call npfl_lib.setup (device, seed, CPU threads)"
    )
    assert "npfl_lib" in "\n".join(code)
    assert "## Try it yourself" in markdown


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_executes_and_draws_a_figure(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits the environment: an MPLBACKEND such as Agg would stop the
    # inline backend from turning figures into image/png outputs.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for name in THREAD_VARIABLES:  # as shipped: npfl_lib.setup picks the threads
        monkeypatch.delenv(name, raising=False)
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
