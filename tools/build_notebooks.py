"""Build the lecture notebooks from their Python sources.

Each notebook ``lectures/NN_name.ipynb`` is generated from ``lectures/src/NN_name.py``,
a plain Python file whose cells start with ``# %%`` (code) or ``# %% [markdown]``
(Markdown, every line written as a ``#`` comment), the "percent" format that VS Code,
Spyder and jupytext understand. The sources are easy to review and diff; the notebooks
are what students open. Notebooks are written without outputs and execution counts,
with deterministic cell ids, so rebuilding an unchanged source changes nothing.

Usage::

    python tools/build_notebooks.py           # (re)write every notebook
    python tools/build_notebooks.py --check   # exit 1 if a notebook is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "lectures" / "src"
NOTEBOOKS = ROOT / "lectures"

MARKER = "# %%"
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def _strip_blank_edges(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _uncomment(line: str) -> str:
    if line.startswith("# "):
        return line[2:]
    if line.strip() == "#":
        return ""
    raise ValueError(f"a Markdown line must start with '# ' or be '#', got {line!r}")


def parse_cells(source: str) -> list[tuple[str, str]]:
    """Splits a percent-format source into ``(kind, text)`` cells.

    Anything before the first ``# %%`` marker (e.g. a header comment) is ignored.

    Args:
        source (str): The text of a ``lectures/src/*.py`` file.

    Returns:
        list[tuple[str, str]]: ``kind`` is "markdown" or "code".
    """
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith(MARKER):
            tag = line[len(MARKER) :].strip()
            if tag not in ("", "[markdown]"):
                raise ValueError(f"unknown cell marker {line!r}")
            cells.append(("markdown" if tag else "code", []))
        elif cells:
            cells[-1][1].append(line)
    result = []
    for kind, lines in cells:
        lines = _strip_blank_edges(lines)
        if kind == "markdown":
            lines = [_uncomment(line) for line in lines]
        if lines:
            result.append((kind, "\n".join(lines)))
    return result


def build_notebook(source_path: Path) -> nbformat.NotebookNode:
    """The notebook (without outputs) for one source file."""
    notebook = nbformat.v4.new_notebook(metadata=METADATA)
    for index, (kind, text) in enumerate(parse_cells(source_path.read_text())):
        cell_id = f"{source_path.stem[:2]}-{index:02d}"
        if kind == "markdown":
            notebook.cells.append(nbformat.v4.new_markdown_cell(text, id=cell_id))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(text, id=cell_id))
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report notebooks that differ from sources"
    )
    args = parser.parse_args(argv)

    stale = []
    for source_path in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        target = NOTEBOOKS / f"{source_path.stem}.ipynb"
        text = nbformat.writes(build_notebook(source_path)) + "\n"
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text)
    for target in stale:
        print(f"{'stale' if args.check else 'wrote'}: {target.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
