"""The similarity report: a table for the terminal, an HTML page and a CSV file.

Everything a student wrote is hostile input. In the HTML page every piece of it (cell
sources, file names in the notes, ids) is escaped, the highlighting is added around
escaped text only, and the page carries a
Content-Security-Policy that allows no script at all, so nothing a student wrote can
run when the instructor opens it. The CSV neutralises formulas
(:func:`npfl_course.export.neutralised`).
"""

from __future__ import annotations

import csv
import difflib
import html
import io
import os
import re
from datetime import datetime
from pathlib import Path

from npfl_course.similarity.answers import CellKey
from npfl_course.similarity.compare import Pair, Similarity

MAX_SHOWN_CHARS = 20_000  # of one cell in the HTML page
MIN_STATEMENT_CHARS = 12  # shorter shared statements (``_ = _``) are not marked


def _cell_name(key: CellKey, result: Similarity) -> str:
    several = len({notebook for notebook, _ in result.answers.cells}) > 1
    return f"{key[0]}/{key[1]}" if several else key[1]


def _cell_text(cell) -> str:
    if cell.score is None:
        return "-"
    return f"{cell.score:.2f}" + ("e" if cell.expected else "")


def table(result: Similarity, top: int | None = 20) -> str:
    """The listed pairs as a text table (at most ``top``), with each cell's similarity.

    A cell's number ends in ``e`` where both answers match a reference (expected, not
    counted in the pair's similarity); ``-``: not compared there.
    """
    from npfl_course.autograde.submission import shown

    pairs = result.pairs if top is None else result.pairs[:top]
    names = [_cell_name(key, result) for key in result.answers.cells]
    width = max([len("student"), *(len(shown(s)) for p in pairs for s in p.students)])
    header = f"{'#':>3}  {'student':<{width}}  {'student':<{width}}  {'similar':>7}  "
    header += "  ".join(f"{name:>{max(len(name), 5)}}" for name in names)
    lines = [header.rstrip()]
    for rank, pair in enumerate(pairs, 1):
        a, b = (shown(s) for s in pair.students)
        cells = "  ".join(
            f"{_cell_text(pair.cells[key]):>{max(len(name), 5)}}"
            for key, name in zip(result.answers.cells, names, strict=True)
        )
        lines.append(f"{rank:>3}  {a:<{width}}  {b:<{width}}  {pair.score:>7.2f}  {cells}".rstrip())
    if not pairs:
        lines.append(f"  (no pair at or above {result.settings.threshold:.2f})")
    elif len(result.pairs) > len(pairs):
        lines.append(f"  ... and {len(result.pairs) - len(pairs)} more (see the CSV)")
    return "\n".join(lines)


def summary(result: Similarity) -> list[str]:
    """Lines on what was compared: students, skipped ones, references matched."""
    from npfl_course.autograde.submission import shown

    answers, settings = result.answers, result.settings
    lines = [
        f"{len(answers.students)} student(s) compared in {len(answers.cells)} solution "
        f"cell(s); {len(result.pairs)} pair(s) at or above {settings.threshold:.2f}"
    ]
    for note in answers.notes:
        lines.append(f"note: {note}")
    for student, why in sorted(answers.skipped.items()):
        lines.append(f"skipped: {shown(student)}: {why}")
    matched = sum(1 for cells in result.matches.values() for _ in cells)
    if matched:
        kind = "expected" if settings.expected else "still compared: --no-expected"
        lines.append(f"{matched} answer(s) match the instructor's solution or a variant ({kind})")
    return lines


def write_csv(result: Similarity, path: str | os.PathLike) -> Path:
    """The listed pairs as CSV: rank, students, similarity, then each cell's similarity
    (empty: not compared) and what it matches (``expected: solution``)."""
    from npfl_course.export import neutralised

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [_cell_name(key, result) for key in result.answers.cells]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        header = ["rank", "student_a", "student_b", "similarity", "cells_compared"]
        header += [f"{n} similarity" for n in names] + [f"{n} note" for n in names]
        writer.writerow([neutralised(value) for value in header])
        for rank, pair in enumerate(result.pairs, 1):
            cells = [pair.cells[key] for key in result.answers.cells]
            compared = sum(1 for c in cells if c.score is not None and not c.expected)
            scores = ["" if c.score is None else f"{c.score:.3f}" for c in cells]
            notes = [f"expected: {c.expected}" if c.expected else c.why for c in cells]
            row = [rank, *pair.students, f"{pair.score:.3f}", compared, *scores, *notes]
            writer.writerow([neutralised(value) for value in row])
    return path


def _lines(source: str) -> tuple[list[str], list[int]]:
    """The lines of ``source`` as Python counts them (ends kept) and where each starts."""
    lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", source)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return lines, starts


def _released_spans(source: str, released: str) -> list[tuple[int, int]]:
    """Character spans of ``source``'s lines that the released cell has too."""
    lines, starts = _lines(source)
    matcher = difflib.SequenceMatcher(
        None, [line.strip() for line in released.splitlines()], [line.strip() for line in lines],
        autojunk=False,
    )  # fmt: skip
    return [
        (starts[line], starts[line + 1])
        for _, j, size in matcher.get_matching_blocks()
        for line in range(j, j + size)
    ]


def _same_statements(source: str, other: str) -> list[tuple[int, int]]:
    """Character spans of ``source``'s statements that ``other`` has too, normalised
    (:func:`npfl_course.similarity.normalize.statements`; trivial ones left out)."""
    from npfl_course.similarity.normalize import statements

    theirs = {text for _, _, text in statements(other)}
    _, starts = _lines(source)
    return [
        (starts[first - 1], starts[min(last, len(starts) - 1)])
        for first, last, text in statements(source)
        if len(text) >= MIN_STATEMENT_CHARS and text in theirs and first <= len(starts) - 1
    ]


def render(source: str, marked, released) -> str:
    """``source`` as HTML: escaped everywhere, ``<mark>`` around the ``marked`` spans and
    a grey ``<span class=rel>`` around the ``released`` ones (no mark there)."""
    import numpy as np

    flags = np.zeros(len(source), dtype=np.int8)
    for value, spans in ((1, marked), (2, released)):
        for start, end in spans:
            flags[max(0, int(start)) : max(0, int(end))] = value
    bounds = [0, *(np.flatnonzero(np.diff(flags)) + 1).tolist(), len(source)]
    out = []
    for begin, end in zip(bounds, bounds[1:], strict=False):
        text = html.escape(source[begin:end])
        if text and flags[begin] == 1:
            text = f"<mark>{text}</mark>"
        elif text and flags[begin] == 2:
            text = f"<span class=rel>{text}</span>"
        out.append(text)
    return "".join(out)


def highlighted(source_a: str, source_b: str, released: str, settings) -> tuple[str, str]:
    """Both cells as escaped HTML (:func:`render`): what they share marked, the lines
    the release already had grey.

    Marked are copydetect's shared passages, on its tokens (names as one symbol, no
    comments, no spaces; the release's fingerprints are boilerplate), and the statements
    the other cell has too, up to local names, wherever they stand (a reordered copy).
    """
    import numpy as np

    from npfl_course.similarity.compare import load_copydetect

    copydetect = load_copydetect()
    k, window = settings.noise_threshold, settings.window

    def printed(text: str, boilerplate=None):
        return copydetect.CodeFingerprint(
            "cell.py", k, window, boilerplate=boilerplate, language="python", fp=io.StringIO(text)
        )

    try:
        release = np.array(sorted(printed(released).hashes), dtype=np.int64)
        a, b = printed(source_a, release), printed(source_b, release)
        _, _, slices = copydetect.compare_files(a, b)
    except Exception:  # a tokenizer's surprise: show the cells unmarked
        slices = ([], [])
    shown = []
    for source, other, found in zip(
        (source_a, source_b), (source_b, source_a), slices, strict=True
    ):
        spans = list(zip(*found, strict=True)) if np.size(found) else []
        spans += _same_statements(source, other)
        shown.append(render(source, spans, _released_spans(source, released)))
    return shown[0], shown[1]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
td.expected { color: #777; background: #f3f7ff; } td.high { background: #ffe3e0; }
.pair { border-top: 2px solid #888; margin-top: 2em; }
.cell { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; margin: 0.5em 0 1.5em; }
pre { background: #fafafa; border: 1px solid #ddd; padding: 0.5em; overflow-x: auto;
      white-space: pre; font-size: 85%; margin: 0; max-height: 40em; }
mark { background: #ffd24d; } .rel { color: #999; }
.note { color: #555; }
"""


def write_html(result: Similarity, path: str | os.PathLike) -> Path:
    """The report page: what was compared, the table of pairs and, for the first
    ``report_pairs`` pairs, each cell of the two students side by side with the shared
    passages marked. Every student text is escaped; no script runs (module docstring)."""
    from npfl_course.autograde.submission import shown

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    answers, settings = result.answers, result.settings
    esc = html.escape
    names = [_cell_name(key, result) for key in answers.cells]
    title = f"Similarity of the answers to {answers.assignment}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src 'none'; form-action 'none'\">",
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class=note>{esc(datetime.now().strftime('%Y-%m-%d %H:%M'))}; "
        f"pairs listed at a similarity of {settings.threshold:.2f} or more "
        f"(copydetect, noise threshold {settings.noise_threshold}, window "
        f"{settings.window}). A cell's similarity is the shared part of both answers, "
        "after the release's code, comments, blank lines, local names and the order of "
        "independent statements are taken out. <b>e</b>: both answers match the "
        "instructor's solution or a variant (expected"
        + (", not counted" if settings.expected else ", counted: --no-expected")
        + "); -: not compared (left as released, missing or too short).</p>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in summary(result)) + "</ul>",
        "<h2>Pairs</h2><table><tr><th>#</th><th>student</th><th>student</th>"
        "<th>similarity</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>",
    ]
    for rank, pair in enumerate(result.pairs, 1):
        a, b = (esc(shown(s)) for s in pair.students)
        link = f'<a href="#pair{rank}">{rank}</a>' if rank <= settings.report_pairs else rank
        row = f"<tr><td>{link}</td><td class=name>{a}</td><td class=name>{b}</td>"
        row += f"<td>{pair.score:.2f}</td>"
        for key in answers.cells:
            cell = pair.cells[key]
            kind = (
                "expected"
                if cell.expected
                else "high"
                if (cell.score or 0) >= settings.threshold
                else ""
            )
            row += f"<td class='{kind}'>{esc(_cell_text(cell))}</td>"
        out.append(row + "</tr>")
    out.append("</table>")
    if not result.pairs:
        out.append(f"<p>No pair of students at or above {settings.threshold:.2f}.</p>")
    for rank, pair in enumerate(result.pairs[: settings.report_pairs], 1):
        out += _pair_section(result, rank, pair, names)
    out.append("</body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def _pair_section(result: Similarity, rank: int, pair: Pair, names: list[str]) -> list[str]:
    from npfl_course.autograde.submission import shown

    esc = html.escape
    answers = result.answers
    a, b = pair.students
    out = [
        f'<div class="pair" id="pair{rank}"><h2>{rank}. {esc(shown(a))} and '
        f"{esc(shown(b))}: {pair.score:.2f}</h2>"
    ]
    for key, name in zip(answers.cells, names, strict=True):
        cell = pair.cells[key]
        if cell.expected:
            what = f"{cell.score:.2f}, expected: both match {cell.expected}"
        elif cell.score is None:
            what = f"not compared ({cell.why})"
        else:
            what = f"{cell.score:.2f}"
        out.append(f"<h3>{esc(name)}: {esc(what)}</h3>")
        sources = [answers.students[s].get(key) for s in (a, b)]
        texts = [(x.source if x is not None else "")[:MAX_SHOWN_CHARS] for x in sources]
        if cell.score is not None:
            left, right = highlighted(*texts, answers.released[key], result.settings)
        else:
            left, right = esc(texts[0]), esc(texts[1])
        cut = [x is not None and len(x.source) > MAX_SHOWN_CHARS for x in sources]
        left += f"\n(cut at {MAX_SHOWN_CHARS:,} characters)" if cut[0] else ""
        right += f"\n(cut at {MAX_SHOWN_CHARS:,} characters)" if cut[1] else ""
        out.append(
            f'<div class="cell"><div><b>{esc(shown(a))}</b><pre>{left}</pre></div>'
            f"<div><b>{esc(shown(b))}</b><pre>{right}</pre></div></div>"
        )
    out.append("</div>")
    return out


def write_reports(result: Similarity, directory: str | os.PathLike) -> tuple[Path, Path]:
    """``<directory>/<assignment>_similarity.html`` and ``.csv``; their paths."""
    directory = Path(directory)
    stem = f"{result.answers.assignment}_similarity"
    return write_html(result, directory / f"{stem}.html"), write_csv(
        result, directory / f"{stem}.csv"
    )
