"""``npfl-course report``: the grades of an assignment as a table and a PNG.

Everything comes from nbgrader's gradebook (``CourseDirectory.db_url``): one row per
submission with its total and the score of each autograded test cell, and a figure with
the histogram of the total scores and the pass rate (full points) of each test cell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from npfl_course.course import Course, CourseError


@dataclass
class Grades:
    """An assignment's grades: ``scores[student][test] = (score, max_score)``."""

    assignment: str
    tests: list[str]
    max_score: float
    totals: dict[str, float]
    scores: dict[str, dict[str, tuple[float, float]]]

    def pass_rates(self) -> dict[str, float]:
        """Fraction of submissions with full points, per test cell."""
        count = max(len(self.scores), 1)
        return {
            test: sum(s[test][0] >= s[test][1] for s in self.scores.values() if test in s) / count
            for test in self.tests
        }


def read_grades(course: Course, assignment: str) -> Grades:
    """The grades of ``assignment`` from the gradebook.

    Raises:
        CourseError: If the gradebook does not know the assignment.
    """
    from nbgrader.api import MissingEntry

    with course.gradebook() as gradebook:
        try:
            record = gradebook.find_assignment(assignment)
        except MissingEntry:
            raise CourseError(f"no assignment {assignment!r} in the gradebook") from None
        tests = [cell.name for nb in record.notebooks for cell in nb.grade_cells]
        max_score = float(record.max_score)
        totals, scores = {}, {}
        for submission in gradebook.assignment_submissions(assignment):
            student = submission.student_id
            totals[student] = float(submission.score)
            scores[student] = {
                grade.name: (float(grade.score or 0.0), float(grade.max_score))
                for notebook in submission.notebooks
                for grade in notebook.grades
            }
    return Grades(assignment, tests, max_score, dict(sorted(totals.items())), scores)


def grade_table(course: Course, assignment: str) -> str:
    """A plain-text table: one row per student, the total and each test cell's score."""
    grades = read_grades(course, assignment)
    if not grades.totals:
        return f"{assignment}: no graded submissions"
    width = max(len("student"), *(len(s) for s in grades.totals))
    columns = [("total", 7)] + [(test, max(len(test), 5)) for test in grades.tests]
    lines = ["  ".join([f"{'student':<{width}}"] + [f"{name:>{w}}" for name, w in columns])]
    for student, total in grades.totals.items():
        cells = [f"{total:>7g}"]
        for test, w in columns[1:]:
            score = grades.scores[student].get(test, (0.0, 0.0))[0]
            cells.append(f"{score:>{w}g}")
        lines.append("  ".join([f"{student:<{width}}", *cells]))
    rates = grades.pass_rates()
    passed = [f"{'passed':>7}"] + [f"{rates[t]:>{w}.0%}" for t, w in columns[1:]]
    lines.append("  ".join([f"{'':<{width}}", *passed]))
    mean = sum(grades.totals.values()) / len(grades.totals)
    lines.append(f"{len(grades.totals)} submissions, mean {mean:.2f} / {grades.max_score:g}")
    return "\n".join(lines)


def write_report(course: Course, assignment: str, output: str | os.PathLike) -> Path:
    """Writes the PNG: the score histogram and the per-test pass rates.

    Returns:
        Path: Where the PNG is.
    """
    from matplotlib.figure import Figure  # no pyplot: works headless, no global state

    grades = read_grades(course, assignment)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(11, max(3.5, 0.35 * len(grades.tests) + 1.5)), layout="constrained")
    histogram, rates = figure.subplots(1, 2, width_ratios=(1, 1.3))
    totals = list(grades.totals.values())
    bins = max(1, min(20, int(grades.max_score) or 1))
    histogram.hist(totals, bins=bins, range=(0, max(grades.max_score, 1e-9)), color="tab:blue")
    histogram.set(
        title=f"{assignment}: total scores ({len(totals)} submissions)",
        xlabel=f"score (of {grades.max_score:g})",
        ylabel="submissions",
    )
    pass_rates = grades.pass_rates()
    names = list(reversed(grades.tests))
    values = [100 * pass_rates[name] for name in names]
    bars = rates.barh(names, values, color="tab:green")
    rates.bar_label(bars, labels=[f"{v:.0f} %" for v in values], padding=3)
    rates.set(title="full points per test cell", xlabel="submissions (%)", xlim=(0, 110))
    figure.savefig(output, dpi=100)
    return output
