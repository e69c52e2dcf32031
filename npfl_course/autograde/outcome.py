"""What ``npfl-course autograde`` reports: an Outcome per submission, the Report of a run.

The reasons an outcome lists come from the graded notebook: :func:`lost_tests` (test
cells that lost points) and :func:`stopped_cells` (other cells that hit a limit). Student ids,
messages and notes come from students: the summary shows them through :func:`printable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from nbgrader import utils

# What a terminal may act on or what hides text: C0 controls (but tab and newline), DEL, C1
# controls (U+009B is a CSI), bidirectional and zero-width marks, line and paragraph
# separators, the byte order mark; and lone surrogates (a file name's undecodable bytes),
# which cannot be encoded for printing at all.
_UNPRINTABLE = (
    r"\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069"
    r"\ufeff\ud800-\udfff"
)
_CONTROL = re.compile(f"[{_UNPRINTABLE}]")
_CONTROL_OR_NEWLINE = re.compile(f"[\\n{_UNPRINTABLE}]")


def printable(text: object, *, one_line: bool = False) -> str:
    """``text`` safe to print on a terminal: what a terminal would act on is escaped.

    Control characters become escapes as Python writes them (ESC as ``\\x1b``, U+202E as
    ``\\u202e``, an undecodable byte's surrogate as ``\\udcxx``), a tab four spaces; a
    newline stays, or with ``one_line`` becomes ``\\n``, so that a student's text cannot
    pose as a line of the summary.
    """
    text = str(text).replace("\t", "    ")
    return (_CONTROL_OR_NEWLINE if one_line else _CONTROL).sub(_escape, text)


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code in (0x0A, 0x0D):
        return "\\n" if code == 0x0A else "\\r"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


GRADER_ERRORS = {"CellTimeoutError", "DeadKernelError", "OutputError"}
# The first cell that failed says why; the others ("not run: ...") point to it.
FOLLOWING_ERRORS = ("not run", "not read")


@dataclass
class Outcome:
    """What happened to one submission.

    Attributes:
        student (str): The student id.
        status (str): ``"graded"``, ``"failed"`` (could not be graded; see ``notes``) or
            ``"skipped"`` (already autograded).
        score (float | None): The total score in the gradebook after grading.
        max_score (float | None): The maximum score.
        lost (dict[str, str]): Test cells that lost points -> the reason (first error).
        notes (list[str]): Other readable remarks (restored cells, unreadable notebook, ...).
        seconds (float): Wall-clock time from preparing to saving.
        peak_memory_mb (float): The most memory one of its notebooks used (all its
            processes together, anonymous memory, MiB), as the sandbox's watchdog saw it.
    """

    student: str
    status: str
    score: float | None = None
    max_score: float | None = None
    lost: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def score_text(self) -> str:
        """``"7/10"``, or ``"no score (failed)"`` when it has none."""
        if self.score is None:
            return f"no score ({self.status})"
        return f"{self.score:g}/{self.max_score:g}"


@dataclass
class Report:
    """The outcomes of one ``autograde`` run, one per submission considered."""

    assignment: str
    outcomes: list[Outcome]
    seconds: float
    jobs: int
    isolation: str  # how student code ran (npfl_course.sandbox.isolation)
    preflight: Any = None  # the passed Preflight, None when there was none

    @property
    def sandboxed(self) -> bool:
        return not self.isolation.startswith("NO sandbox")

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    def summary(self, details: bool = True) -> str:
        """A readable summary: counts, then one line per submission with its reasons."""

        def shown(text) -> str:
            return printable(text, one_line=True)

        lines = [
            f"autograde {shown(self.assignment)}: {len(self.outcomes)} submission(s) in "
            f"{self.seconds:.1f} s with {self.jobs} job(s) ({self.isolation})",
            f"  graded: {self.count('graded')}, failed: {self.count('failed')}, "
            f"skipped: {self.count('skipped')}",
        ]
        peak = max((o.peak_memory_mb for o in self.outcomes), default=0.0)
        if peak:
            lines.append(f"  peak memory of a notebook: {peak:.0f} MiB")
        if self.preflight is not None:
            how = "remembered" if self.preflight.cached else f"{self.preflight.seconds:.1f} s"
            lines.append(f"  preflight: the solution got full marks, the release 0 ({how})")
        if self.count("failed"):
            lines.append(
                "  failed submissions have no score (not 0): fix the cause, run autograde again"
            )
        for outcome in self.outcomes:
            if not details and outcome.status != "failed":
                continue  # the short summary still says why each failure failed
            score = outcome.score_text if outcome.score is not None else "-"
            lines.append(f"  {shown(outcome.student):<24} {outcome.status:<8} {score}")
            for grade_id, reason in outcome.lost.items():
                lines.append(f"      {shown(grade_id)}: {shown(reason)}")
            lines += [f"      note: {shown(note)}" for note in outcome.notes]
        return "\n".join(lines)


def stopped_cells(notebook) -> list[str]:
    """Notes on cells other than tests that hit a limit or tampered (tests are in ``lost``)."""
    notes = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or utils.is_grade(cell):
            continue
        for output in cell.outputs:
            if output.output_type == "error" and output.ename in GRADER_ERRORS:
                if not output.evalue.startswith(FOLLOWING_ERRORS):
                    notes.append(f"cell {index}: {output.ename}: {output.evalue}"[:300])
    return notes


def lost_tests(notebook) -> dict[str, str]:
    """``{grade_id: reason}`` of the autograded test cells that did not get full points."""
    lost = {}
    for cell in notebook.cells:
        if cell.cell_type != "code" or not utils.is_grade(cell) or utils.is_solution(cell):
            continue
        score, max_score = utils.determine_grade(cell)
        if score is None or score >= max_score:
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors:
            reason = f"{errors[-1].ename}: {errors[-1].evalue}"
        elif any(o.output_type == "stream" and o.name == "stderr" for o in cell.outputs):
            reason = "it wrote to stderr (nbgrader counts that as a failure)"
        else:
            reason = f"partial credit {score:g}/{max_score:g}"
        lost[cell.metadata.nbgrader.grade_id] = reason.strip().splitlines()[0][:300]
    return lost
