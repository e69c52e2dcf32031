"""``npfl-course export``: the gradebook as a CSV file a spreadsheet can open safely.

nbgrader's ``CsvExportPlugin`` joins the values with commas as they are. Two things go
wrong in a class: a student id, name or e-mail that starts with ``=``, ``+``, ``-`` or
``@`` is a formula to Excel and LibreOffice (``=HYPERLINK(...)``: CSV injection), and a
comma or a quote in a name shifts the columns. It also writes 0 for every student
without a gradebook submission, including one whose submission could not be graded (an
infrastructure failure, which ``autograde`` leaves without a score on purpose).

:class:`SafeCsvExport` writes nbgrader's columns with the ``csv`` module (UTF-8), puts
an apostrophe before text that a spreadsheet would evaluate (OWASP's advice), and adds a
``status`` column: ``graded``, ``not submitted`` (score 0, as nbgrader) or ``not graded``
(a submission exists but has no score: empty score cells). Use it from nbgrader too:
``c.ExportApp.plugin_class = "npfl_course.export.SafeCsvExport"``.
"""

from __future__ import annotations

import csv
import glob
import os
import re

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin

COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name",
           "email", "raw_score", "late_submission_penalty", "score", "max_score",
           "status"]  # fmt: skip
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def neutralised(value) -> str:
    """``value`` as CSV text that no spreadsheet evaluates as a formula.

    Text that starts with one of :data:`FORMULA_START` gets a leading apostrophe
    (which spreadsheets hide); numbers, negative ones included, stay numbers.
    """
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


class SafeCsvExport(ExportPlugin):
    """nbgrader's CSV export, safe for spreadsheets, with a ``status`` column (see module)."""

    def export(self, gradebook: Gradebook) -> None:
        dest = self.to or "grades.csv"
        students = {str(s) for s in self.student}
        assignments = {str(a) for a in self.assignment}
        submitted = self._submitted_folders()
        with open(dest, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for assignment in gradebook.assignments:
                if assignments and assignment.name not in assignments:
                    continue
                for student in gradebook.students:
                    if students and student.id not in students:
                        continue
                    row = {"assignment": assignment.name, "duedate": assignment.duedate,
                           "student_id": student.id, "last_name": student.last_name,
                           "first_name": student.first_name, "email": student.email,
                           "max_score": assignment.max_score}  # fmt: skip
                    try:
                        submission = gradebook.find_submission(assignment.name, student.id)
                    except MissingEntry:
                        if (student.id, assignment.name) in submitted:
                            row["status"] = "not graded"  # no score, and certainly not 0
                        else:
                            row.update(raw_score=0.0, late_submission_penalty=0.0, score=0.0,
                                       status="not submitted")  # fmt: skip
                    else:
                        penalty = submission.late_submission_penalty
                        row.update(timestamp=submission.timestamp, raw_score=submission.score,
                                   late_submission_penalty=penalty,
                                   score=max(0.0, submission.score - penalty),
                                   status="graded")  # fmt: skip
                    writer.writerow([neutralised(row.get(key)) for key in COLUMNS])

    def _submitted_folders(self) -> set[tuple[str, str]]:
        """(student, assignment) pairs with a folder in ``submitted/``."""
        coursedir = getattr(self.parent, "coursedir", None)
        if coursedir is None:
            return set()
        step = coursedir.submitted_directory
        marker = "\0"
        pattern = glob.escape(coursedir.format_path(step, marker, marker)).replace(marker, "*")
        regex = coursedir.format_path(step, "(?P<student>[^/]+)", "(?P<assignment>[^/]+)",
                                      escape=True)  # fmt: skip
        pairs = set()
        for path in glob.glob(pattern):
            match = re.fullmatch(regex, path)
            if match and os.path.isdir(path):
                pairs.add((match["student"], match["assignment"]))
        return pairs
