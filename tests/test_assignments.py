"""Tests of the tests: every assignment under assignments/, graded by real nbgrader
(through ``npfl_course.check``, the machinery of ``npfl-course check``, which autogrades
with ``npfl-course autograde``: nbgrader's converter and gradebook, sandboxed workers).

For each assignment (parametrized by name, so ``-k losses_and_gradients`` selects one):

1. the source notebook, submitted as is, gets full points on every autograded cell;
2. the generated release holds no solution code, no hidden tests and no variants.py,
   and submitted unchanged scores 0 on every autograded cell;
3. every WRONG variant of ``variants.py`` loses points on each test cell it names,
   through an error raised in that cell;
4. every ALTERNATIVE variant gets full points on every test cell that runs its code;
5. every DELEGATING variant loses points on each test cell it names, through a
   ForbiddenCallError raised by ``forbid``.

A submission is the release with the solutions filled in from the source except for
the cells of its variants. Variants that cannot affect each other's judging cells share
a submission (``NPFL_GRADING_GROUP=0``: one submission per variant); see
npfl_course/check/. All submissions of an assignment are autograded in one go, by
the first test that needs the grades. Cheap static checks come first: the rules of
``npfl_course.check.static_problems`` (clean notebooks with schema-3 metadata, unique
grade_ids, one documented function per solution cell, every call of a graded function
under ``forbid`` and ``time_limit``, complete variants), which ``npfl-course check``
enforces too. The times per assignment are
printed (``-rP`` or ``-s`` shows them); the source notebook must execute in 60 s.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

import nbformat
import pytest

from npfl_course import check as harness

NAMES = harness.discover()
MAX_AUTOGRADE_S = 60  # per notebook on a 2-core CPU (the issue's budget)
KINDS = harness.KINDS
_REPORTED: set[str] = set()
_PLANS: dict[str, harness.Plan] = {}
_PLAN_ERRORS: dict[str, str] = {}  # name -> traceback of a plan that could not be made

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _variant_params() -> list:
    params = []
    for name in NAMES:
        try:
            module = harness.load_variants(name)
        except Exception:  # reported by test_notebook_and_variants_follow_the_rules
            continue
        for kind in KINDS:
            for index, variant in enumerate(getattr(module, kind, [])):
                label = harness.safe_id(str(variant.get("name", "")))
                params.append(pytest.param(name, kind, index, id=f"{name}-{kind}{index}-{label}"))
    return params


def _plan(name: str) -> harness.Plan:
    """How the variants of ``name`` are spread over submissions (cached)."""
    if name not in _PLANS:
        group = os.environ.get("NPFL_GRADING_GROUP", "1") != "0"
        _PLANS[name] = harness.plan(_source(name), harness.load_variants(name), group=group)
    return _PLANS[name]


def _submissions(name: str):
    """``f(release, source) -> {student: notebook}`` for the source, release and variants."""

    def build(release, source):
        submissions = {"source": source, "release": release}
        try:
            students = _plan(name).students
        except Exception:  # a broken variants.py: test_variants_are_complete reports it
            _PLAN_ERRORS[name] = traceback.format_exc()
            return submissions
        for student, replace in students.items():
            submissions[student] = harness.make_submission(release, source, replace)
        return submissions

    return build


@pytest.fixture(scope="module")
def graded(request, tmp_path_factory, pytestconfig):
    """``graded(name)``: the assignment autograded (once per test session).

    The first call starts grading every assignment that the selected tests need, side
    by side (see npfl_course.check.jobs()), so one assignment's generation overlaps
    another's autograding; each call waits for its own assignment.
    """
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    selected = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if "graded" in getattr(item, "fixturenames", ())
            and "name" in getattr(getattr(item, "callspec", None), "params", {})
        }
    )
    for name in selected:  # plans are made here, in one thread, before any grading starts
        with contextlib.suppress(Exception):  # _submissions records the error
            _plan(name)
    pool = ThreadPoolExecutor(max_workers=max(len(selected), 1))
    futures: dict[str, Future] = {}

    def get(name: str) -> harness.Graded:
        for other in [name, *selected]:
            if other not in futures:
                workdir = tmp_path_factory.mktemp(other)
                futures[other] = pool.submit(harness.grade, other, workdir, _submissions(other))
        result = futures[name].result()
        if name not in _REPORTED:
            _REPORTED.add(name)
            if reporter is not None:
                source_s = result.exec_seconds.get("source", float("nan"))
                reporter.write_line(
                    f"\n[{name}] generate {result.generate_seconds:.1f} s; autograde of "
                    f"{len(result.scores)} submissions {result.autograde_seconds:.1f} s "
                    f"(wall, beside other assignments); the source notebook executes in "
                    f"{source_s:.1f} s"
                )
        if result.release is None:
            pytest.fail(f"nbgrader generate_assignment {name} failed:\n{result.log[-3000:]}")
        return result

    yield get
    pool.shutdown(wait=True, cancel_futures=True)


def _source(name: str) -> nbformat.NotebookNode:
    return harness.read_notebook(harness.source_path(name))


# ----------------------------------------------------------------------------------
# Static checks
# ----------------------------------------------------------------------------------


def test_there_are_assignments():
    assert NAMES, "no assignments/<name>/<name>.ipynb found"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_and_variants_follow_the_rules(name):
    """The rules of npfl-course check (``npfl_course.check.static_problems``), one rulebook."""
    notebook = _source(name)
    nbformat.validate(notebook)
    assert not harness.static_problems(notebook, harness.load_variants(name))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda nb, v: nb.metadata.kernelspec.update(name="python2"), "kernelspec"),
        (lambda nb, v: setattr(v, "ALTERNATIVE", []), "at least one ALTERNATIVE"),
        (lambda nb, v: setattr(v, "WRONG", v.WRONG[:1]), "fewer than two WRONG"),
        (lambda nb, v: v.WRONG.append(dict(v.WRONG[0])), "used twice"),
        (lambda nb, v: v.DELEGATING[0].update(code="x = 1"), "exactly one function"),
        (
            lambda nb, v: _solution_cell(nb).update(
                source="def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
            ),
            "docstring",
        ),  # fmt: skip
        (lambda nb, v: _solution_cell(nb).update(source="x = 1"), "unbalanced"),
    ],
)
def test_the_rulebook_catches_broken_assignments(change, problem):
    """What the repository's tests enforce, ``npfl-course check`` enforces too."""
    import copy
    import types

    name = NAMES[0]
    notebook = copy.deepcopy(_source(name))
    module = harness.load_variants(name)
    variants = types.SimpleNamespace(
        **{kind: [dict(v) for v in getattr(module, kind)] for kind in KINDS}
    )
    change(notebook, variants)
    problems = harness.static_problems(notebook, variants)
    assert any(problem in p for p in problems), problems


def _solution_cell(notebook):
    return next(c for c in notebook.cells if harness.cell_kind(c) == "solution")


def _toy_notebook() -> nbformat.NotebookNode:
    """f and g independent, h calls f; a helper cell calls g; one test cell each."""

    def cell(grade_id, kind, source):
        meta = {"grade_id": grade_id, "schema_version": 3, "task": False}
        meta.update(harness.CELL_KINDS[kind])
        if kind == "test":
            meta["points"] = 1
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": meta})

    return nbformat.v4.new_notebook(
        cells=[
            cell("f", "solution", "def f(x):\n    return x + 1"),
            cell("g", "solution", "def g(x):\n    return 2 * x"),
            cell("h", "solution", "def h(x):\n    return f(x) * 3"),
            cell("helper", "readonly", "def twice_g(x):\n    return g(g(x))"),
            cell("test_f", "test", "assert f(1) == 2"),
            cell("test_g", "test", "assert twice_g(1) == 4"),
            cell("test_h", "test", "y = h(0)\nassert y == 3"),
        ]
    )


def test_dependencies_and_plan_keep_variants_apart():
    notebook = _toy_notebook()
    assert harness.dependencies(notebook) == {
        "test_f": {"f"},
        "test_g": {"g"},
        "test_h": {"f", "h"},
    }
    # A variant of h that calls g instead makes test_h depend on g.
    assert harness.dependencies(notebook, {"h": "def h(x):\n    return g(x)"})["test_h"] == {
        "g",
        "h",
    }
    variants = type("Variants", (), {})()
    variants.WRONG = [
        {"cell": "f", "code": "def f(x):\n    return x", "fails": ["test_f"]},
        {"cell": "g", "code": "def g(x):\n    return x", "fails": ["test_g"]},
        {"cell": "h", "code": "def h(x):\n    return f(x) * 2", "fails": ["test_h"]},
        {"cell": "f", "code": "def f(x):\n    return 0", "fails": ["test_f"]},
    ]
    variants.ALTERNATIVE = [{"cell": "g", "code": "def g(x):\n    return x + x"}]
    variants.DELEGATING = []
    plan = harness.plan(notebook, variants)
    together = {key: plan.student_of[key] for key in plan.student_of}
    # f and g are independent; h's test runs f, so a variant of f never joins one of h.
    assert together[("WRONG", 0)] == together[("WRONG", 1)]
    assert together[("WRONG", 2)] not in (together[("WRONG", 0)], together[("WRONG", 3)])
    assert len(set(together.values())) == 3
    assert plan.judged_by[("ALTERNATIVE", 0)] == {"test_g"}
    for student, replace in plan.students.items():
        cells = [harness.graded_function(code) for code in replace.values()]
        assert len(cells) == len(set(cells)), student
    alone = harness.plan(notebook, variants, group=False)
    assert len(alone.students) == 5
    assert alone.judged_by[("ALTERNATIVE", 0)] == {"test_f", "test_g", "test_h"}


# ----------------------------------------------------------------------------------
# Real nbgrader
# ----------------------------------------------------------------------------------


def _lost(graded: harness.Graded, student: str, tests=None) -> dict[str, tuple]:
    """Those of ``tests`` (default: every autograded cell) where ``student`` lost points."""
    if tests is None:
        tests = harness.autograded_tests(_source(graded.name))
    scores = graded.scores.get(student)
    plan_error = _PLAN_ERRORS.get(graded.name, "")
    assert scores is not None, (
        f"nbgrader graded no submission {graded.failure_log(student)}{plan_error}"
    )
    return {g: scores[g] for g in tests if scores[g][0] is None or scores[g][0] < scores[g][1]}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_source_gets_full_points(name, graded):
    result = graded(name)
    lost = _lost(result, "source")
    errors = {g: result.errors["source"].get(g) for g in lost}
    assert not lost, f"the source notebook lost points on {lost}; errors: {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_release_has_no_solutions_or_hidden_tests(name, graded):
    release = graded(name).release
    source = _source(name)
    text = nbformat.writes(release)
    for marker in (*harness.SOLUTION_MARKERS, *harness.HIDDEN_MARKERS, "HIDDEN TESTS"):
        assert marker not in text, f"the release contains {marker!r}"
    assert "variants.py" not in graded(name).release_files
    released = {
        cell.metadata.nbgrader.grade_id: cell
        for cell in release.cells
        if "nbgrader" in cell.metadata
    }
    for kind, markers in (("solution", harness.SOLUTION_MARKERS), ("test", harness.HIDDEN_MARKERS)):
        for grade_id, cell in harness.cells_by_kind(source, kind).items():
            visible = set(harness.marked_lines(cell.source, markers, inside=False))
            secret = [s for s in harness.marked_lines(cell.source, markers) if s not in visible]
            shown = {line.strip() for line in released[grade_id].source.splitlines()}
            leaked = [s for s in secret if s in shown and not s.startswith("#")]
            assert not leaked, f"release cell {grade_id!r} shows hidden lines: {leaked[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_release_scores_zero(name, graded):
    result = graded(name)
    tests = harness.autograded_tests(_source(name))
    scores = result.scores.get("release")
    assert scores is not None, f"nbgrader graded no release {result.failure_log('release')}"
    scored = {g: scores[g] for g in tests if scores[g][0] != 0}
    assert not scored, f"the unchanged release scored points on {scored}"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kind", "index"), _variant_params())
def test_variant(name, kind, index, graded):
    result = graded(name)
    variant = getattr(harness.load_variants(name), kind)[index]
    student = _plan(name).student_of[(kind, index)]
    judged = _plan(name).judged_by[(kind, index)]
    lost = _lost(result, student, judged)
    errors = result.errors.get(student, {})
    label = f"{kind} variant {variant['name']!r} (submission {student!r})"
    if kind == "ALTERNATIVE":
        details = {g: errors.get(g) for g in lost}
        assert judged, f"no test cell runs the code of {label}"
        assert not lost, f"correct {label} lost points: {lost}; errors: {details}"
        return
    kept = [g for g in variant["fails"] if g not in lost]
    assert not kept, f"{label} kept full points on {kept}"
    for grade_id in variant["fails"]:
        raised = " | ".join(errors.get(grade_id, []))
        # A dead kernel or a cell timeout would also cost points, but says nothing
        # about the tests; the variant must make the test cell itself raise.
        assert raised and not raised.startswith(("DeadKernelError", "CellTimeoutError")), (
            f"{label} lost points on {grade_id!r} without an error of its own: {raised!r}"
        )
        if kind == "DELEGATING":
            assert "ForbiddenCallError" in raised, (
                f"{label} failed {grade_id!r} but not through forbid: {raised}"
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_autograde_time(name, graded):
    result = graded(name)
    seconds = result.exec_seconds.get("source")
    assert seconds is not None, "no timing recorded for the source notebook"
    print(f"{name}: the source notebook executes in {seconds:.1f} s under nbgrader")
    assert seconds <= MAX_AUTOGRADE_S, f"{name} takes {seconds:.0f} s > {MAX_AUTOGRADE_S} s"
