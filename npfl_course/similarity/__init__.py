"""``npfl-course similarity``: which students' answers to an assignment were copied.

The parts: :mod:`npfl_course.similarity.normalize` (what copying changes, taken out of
an answer: comments, blank lines, local names, the order of independent statements, and
the release's own code), :mod:`npfl_course.similarity.answers` (reading the class's
submissions and the references: the instructor's solution and ``variants.py``),
:mod:`npfl_course.similarity.compare` (copydetect's winnowed fingerprints, cell by
cell, every pair of students bounded at once and the likely ones compared exactly),
:mod:`npfl_course.similarity.report` (the table, the HTML page with the two students'
cells side by side, the CSV) and :mod:`npfl_course.similarity.settings`
(``c.NpflSimilarity.*`` in ``nbgrader_config.py``); :mod:`npfl_course.similarity.demo`
is ``npfl-course demo``'s part. This is their public surface.
"""

from npfl_course.similarity.answers import (
    MAX_CELL_CHARS,
    Answer,
    CellKey,
    ClassAnswers,
    read_class,
    submitted_students,
)
from npfl_course.similarity.compare import (
    CellResult,
    Pair,
    Similarity,
    cell_similarity,
    compare,
    find_similar,
    fingerprint,
    load_copydetect,
    similarity,
)
from npfl_course.similarity.demo import demo_report, demo_submissions
from npfl_course.similarity.normalize import PLACEHOLDER, answer, normalize
from npfl_course.similarity.report import summary, table, write_csv, write_html, write_reports
from npfl_course.similarity.settings import NpflSimilarity, Settings

__all__ = [
    "MAX_CELL_CHARS",
    "PLACEHOLDER",
    "Answer",
    "CellKey",
    "CellResult",
    "ClassAnswers",
    "NpflSimilarity",
    "Pair",
    "Settings",
    "Similarity",
    "answer",
    "cell_similarity",
    "compare",
    "demo_report",
    "demo_submissions",
    "find_similar",
    "fingerprint",
    "load_copydetect",
    "normalize",
    "read_class",
    "similarity",
    "submitted_students",
    "summary",
    "table",
    "write_csv",
    "write_html",
    "write_reports",
]
