"""``npfl-course check``: the tests of an assignment's tests, and the rulebook they follow.

The parts: :mod:`npfl_course.check.notebook` (the notebooks' structure, submissions),
:mod:`npfl_course.check.plan` (which variants may share a submission),
:mod:`npfl_course.check.grade` (grading in a throwaway course) and
:mod:`npfl_course.check.harness` (the rules and the ``check`` command). This is their
public surface, for the command line and ``tests/test_assignments.py``.
"""

from npfl_course.check.grade import Graded, grade, jobs, safe_id
from npfl_course.check.harness import (
    check_assignments,
    graded_problems,
    solution_cell_problems,
    static_problems,
    variant_problems,
)
from npfl_course.check.notebook import (
    ASSIGNMENTS,
    CELL_KINDS,
    HIDDEN_MARKERS,
    REPO,
    SOLUTION_MARKERS,
    autograded_tests,
    calls_outside_guards,
    cell_kind,
    cells_by_kind,
    discover,
    expected_metadata,
    graded_function,
    load_variants,
    make_submission,
    marked_lines,
    read_notebook,
    source_path,
)
from npfl_course.check.plan import KINDS, Plan, dependencies, plan

__all__ = [
    "ASSIGNMENTS", "CELL_KINDS", "HIDDEN_MARKERS", "KINDS", "REPO", "SOLUTION_MARKERS",
    "Graded", "Plan", "autograded_tests", "calls_outside_guards", "cell_kind", "cells_by_kind",
    "check_assignments", "dependencies", "discover", "expected_metadata", "grade",
    "graded_function", "graded_problems", "jobs", "load_variants", "make_submission",
    "marked_lines", "plan", "read_notebook", "safe_id", "solution_cell_problems",
    "source_path", "static_problems", "variant_problems",
]  # fmt: skip
