"""Mutation testing of the assignments' tests (``npfl-course check``, issue 20).

* how mutants are made: each output mutant (npfl_course.check.mutant_runtime) spoils a
  call's outputs as it says, each ``ast`` edit gives the expected code;
* the probe: mutants that change nothing on the tests' calls are equivalent, output
  mutants the tests never set off are unexercised;
* the judgement: survivors are problems unless ``ACCEPTED`` lists them;
* ``npfl-course check`` of the tests' tiny course with a weakened test cell reports the
  surviving mutant with its mutation and cell and exits 1 (and 0 once it is accepted);
* the mutants of the repository's assignments: one assignment per run, in rotation by
  the day (``NPFL_MUTANTS=all`` or ``NPFL_MUTANTS=<name>,...`` chooses; CI's 35-minute
  bound does not fit all seven).
"""

from __future__ import annotations

import datetime
import math
import os
import types

import nbformat
import pytest
import torch
from tiny_course import TINY_VARIANTS as VARIANTS
from tiny_course import solution, source_cell, tiny_course

from npfl_course import check, cli
from npfl_course.check import mutants as mutation
from npfl_course.course import load_course

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SOURCE = '''def f(x, n, dim=1):
    """Doc."""
    ### BEGIN SOLUTION
    total = 0
    for i in range(n):
        if x[i].sum(dim=0) < 3:
            total += x[i][0] - x[i, 1] * 2
    return torch.clamp(total, 0, 5).abs()
    ### END SOLUTION'''


# ----------------------------------------------------------------------------------
# making mutants
# ----------------------------------------------------------------------------------


def test_code_mutants_are_the_expected_edits():
    found = {m.mutation: m for m in mutation.code_mutants("f", SOURCE, "f")}
    expected = {
        "flipped comparison: `x[i].sum(dim=0) < 3` -> `x[i].sum(dim=0) <= 3`":
            "if x[i].sum(dim=0) <= 3:",
        "off-by-one index: `x[i][0]` -> `x[i][1]`": "total += x[i][1] - x[i, 1] * 2",
        "off-by-one index: `x[i, 1]` -> `x[i, 2]`": "total += x[i][0] - x[i, 2] * 2",
        "off-by-one dimension: `x[i].sum(dim=0)` -> `x[i].sum(dim=1)`":
            "if x[i].sum(dim=1) < 3:",
        "off-by-one range: `range(n)` -> `range(n - 1)`": "for i in range(n - 1):",
        "dropped term: `x[i][0] - x[i, 1] * 2` -> `x[i][0]`": "total += x[i][0]\n",
        "dropped factor: `x[i, 1] * 2` -> `x[i, 1]`": "total += x[i][0] - x[i, 1]\n",
        "dropped statement: `total += x[i][0] - x[i, 1] * 2`": "            pass\n",
        "swapped operands: `x[i][0] - x[i, 1] * 2` -> `x[i, 1] * 2 - x[i][0]`":
            "total += x[i, 1] * 2 - x[i][0]",
        "swapped arguments: `torch.clamp(total, 0, 5)` -> `torch.clamp(0, total, 5)`":
            "torch.clamp(0, total, 5).abs()",
        "dropped method call: `torch.clamp(total, 0, 5).abs()` -> `torch.clamp(total, 0, 5)`":
            "return torch.clamp(total, 0, 5)\n",
    }  # fmt: skip
    for text, line in expected.items():
        assert text in found, sorted(found)
        mutant = found[text]
        assert line in mutant.code, (text, mutant.code)
        assert (mutant.cell, mutant.function, mutant.kind) == ("f", "f", "code")
        compile(mutant.code, "<mutant>", "exec")
    # Only the answer between the markers is edited: the signature and docstring stay.
    for mutant in found.values():
        assert mutant.code.startswith('def f(x, n, dim=1):\n    """Doc."""'), mutant.code
        assert 4 <= mutant.line <= 8
    assert len({m.code for m in found.values()}) == len(found)  # no duplicates


def test_code_mutants_of_code_without_markers_or_edits():
    assert mutation.code_mutants("g", "def g(x):\n    return x", "g") == []
    assert mutation.code_mutants("g", solution("def g(x):", "return x"), "g") == []


def _wrapped(how, argument=None, source=None, function="f"):
    source = source or solution("def f(x, y):", "return x * 2, y.sum()")
    (mutant,) = [
        m
        for m in mutation.output_mutants(function, source, function)
        if (m.how, m.argument) == (how, argument)
    ]
    scope = {"torch": torch}
    exec(compile(mutant.code, "<mutant>", "exec"), scope)  # noqa: S102 - our own code
    return mutant, scope[function]


def test_output_mutants_spoil_outputs_as_they_say():
    texts = {(m.how, m.argument): m.mutation for m in mutation.output_mutants(
        "f", solution("def f(x, y):", "return x"), "f")}  # fmt: skip
    assert texts == {
        ("scale", None): "output off by a factor 1.001",
        ("float32", None): "output computed in float32",
        ("nan", None): "nan for inputs above 50 in magnitude",
        ("element", None): "one output element changed",
        ("inplace", "x"): "changes its argument 'x' in place",
        ("inplace", "y"): "changes its argument 'y' in place",
    }
    x = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0], dtype=torch.float64)

    _, f = _wrapped("scale")
    doubled, total = f(x, y)
    assert torch.equal(doubled, x * 2 * 1.001) and torch.equal(total, y.sum() * 1.001)

    _, f = _wrapped("float32")
    doubled, _ = f(x, y)
    assert doubled.dtype == torch.float64 and not torch.equal(doubled, x * 2)
    assert torch.equal(doubled, (x * 2).float().double())

    _, f = _wrapped("nan")
    assert torch.equal(f(x, y)[0], x * 2)  # small inputs: unchanged
    doubled, total = f(x, y * 100)
    assert doubled.isnan().all() and math.isnan(total)

    _, f = _wrapped("element")
    doubled, total = f(x, y)
    assert torch.equal(doubled, x * 2) and total != y.sum()  # the last leaf only
    assert torch.equal(total, y.sum() + 0.01 * (1 + y.sum()))

    _, f = _wrapped("inplace", "y")
    before = y.clone()
    doubled, total = f(x, y)
    assert torch.equal(total, before.sum()) and torch.equal(y, before + 1)
    assert torch.equal(doubled, x * 2)


def test_element_mutant_of_indices_repeats_one():
    _, f = _wrapped("element", source=solution("def f(n):", "return torch.arange(n)"))
    assert f(4).tolist() == [0, 1, 2, 0]
    _, f = _wrapped("element", source=solution("def f(x):", "return x > 0"))
    assert f(torch.tensor([1.0, -1.0])).tolist() == [True, True]


def test_output_mutants_of_an_in_place_function_spoil_what_it_changed():
    source = solution("def step(p, lr):", "p.sub_(lr * p)")
    expected = {
        "scale": lambda p: torch.equal(p, torch.tensor([0.5, 1.0]) * 1.001),
        "element": lambda p: p[0] == 0.5 and p[1] != 1.0,
        "nan": lambda p: bool(p.isnan().all()),
    }
    for how, spoilt in expected.items():
        _, step = _wrapped(how, source=source, function="step")
        p = torch.tensor([1.0, 2.0]) * (100 if how == "nan" else 1)
        assert step(p, 0.5) is None
        assert spoilt(p), (how, p)


# ----------------------------------------------------------------------------------
# the probe: equivalent mutants
# ----------------------------------------------------------------------------------


def _notebook(tests: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        source_cell("readonly", "setup", "import torch"),
        source_cell(
            "solution",
            "relu",
            solution("def relu(x):", "return torch.where(x > 0, x, torch.zeros_like(x))"),
        ),
        source_cell("solution", "count", solution("def count(x):", "return int((x > 0).sum())")),
        source_cell("test", "test_relu", tests, 1),
    ]
    return notebook


def test_probe_finds_equivalent_and_unexercised_mutants(tmp_path):
    tests = (
        "assert relu(torch.tensor([-1.0, 2.0])).tolist() == [0.0, 2.0]\n"
        "assert count(torch.tensor([-1.0, 2.0, 3.0])) == 2"
    )
    notebook = _notebook(tests)
    path = tmp_path / "a.ipynb"
    nbformat.write(notebook, path)
    made = mutation.mutants_of(notebook)
    found = mutation.probe(path, made)
    assert not found.error and not found.failed_cells, (found.error, found.failed_cells)
    status = {m.id: found.statuses[m.id].split(" ")[0] for m in made}
    # relu at 0 gives 0 either way: the flipped comparison cannot be told apart.
    assert status["relu: flipped comparison: `x > 0` -> `x >= 0`"] == "equivalent"
    assert status["relu: swapped arguments: `torch.where(x > 0, x, torch.zeros_like(x))` -> "
                  "`torch.where(x, x > 0, torch.zeros_like(x))`"] == "differs"  # fmt: skip
    assert status["relu: output off by a factor 1.001"] == "differs"
    # float32 outputs only, no large inputs: what the tests never set off.
    assert status["relu: output computed in float32"] == "unexercised"
    assert status["relu: nan for inputs above 50 in magnitude"] == "unexercised"
    # count returns an int: scaling or rounding it to float32 changes nothing.
    assert status["count: output off by a factor 1.001"] == "equivalent"
    assert status["count: output computed in float32"] == "equivalent"
    assert status["count: one output element changed"] == "differs"
    assert status["count: flipped comparison: `x > 0` -> `x >= 0`"] == "equivalent"
    assert status["count: changes its argument 'x' in place"] == "differs"


# ----------------------------------------------------------------------------------
# the judgement
# ----------------------------------------------------------------------------------


def _mutant(status, text="output off by a factor 1.001", cell="relu"):
    return mutation.Mutant(cell, cell, "output", text, "", status=status)


def test_survivors_are_problems_unless_accepted():
    survivor, killed, other = _mutant("survived"), _mutant("killed", "x"), _mutant("survived", "y")
    accepted = types.SimpleNamespace(ACCEPTED=[
        {"cell": "relu", "mutation": "output off by a factor 1.001", "reason": "tolerance"},
        {"cell": "relu", "mutation": "x", "reason": "r"},
        {"cell": "relu", "mutation": "gone", "reason": "r"},
    ])  # fmt: skip
    problems = mutation.accepted_problems([survivor, killed, other], accepted)
    assert survivor.status == "accepted" and survivor.detail == "tolerance"
    assert problems == [
        "ACCEPTED mutant cell 'relu': x no longer survives (killed): remove it from ACCEPTED",
        "mutant survived (full points): cell 'relu': y",
        "ACCEPTED mutant cell 'relu': gone does not exist",
    ]
    assert mutation.accepted_problems([_mutant("survived")], None) == [
        "mutant survived (full points): cell 'relu': output off by a factor 1.001"
    ]
    solutions = {"relu": None}
    bad = types.SimpleNamespace(ACCEPTED=[{"cell": "relu", "mutation": "m"}, {"cell": "nope"}])
    assert len(mutation.accepted_entry_problems(bad, solutions)) == 2
    assert mutation.accepted_entry_problems(types.SimpleNamespace(ACCEPTED={}), solutions)


def test_judge_reads_the_grades_of_each_mutants_submission():
    notebook = _notebook("assert relu(torch.tensor(1.0)) == 1")
    made = [m for m in mutation.mutants_of(notebook) if m.kind == "output"]
    for m in made:
        m.status = "differs"
    the_plan = mutation.mutant_plan(notebook, made)
    # relu's and count's mutants can share a submission only if no test runs both.
    for student, replace in the_plan.students.items():
        assert len(replace) <= 2, student
    graded = types.SimpleNamespace(scores={})
    for key, student in the_plan.student_of.items():
        index = key[1]
        full = made[index].cell == "count"  # test_relu never runs count: no cell judges it
        graded.scores[student] = {"test_relu": (1.0 if full else 0.0, 1.0)}
    mutation.judge(made, graded, the_plan)
    assert {m.status for m in made if m.cell == "relu"} == {"killed"}
    assert {m.detail for m in made if m.cell == "count"} == {"no test cell runs it"}
    assert {m.status for m in made if m.cell == "count"} == {"survived"}


# ----------------------------------------------------------------------------------
# npfl-course check catches a weakened test cell
# ----------------------------------------------------------------------------------

SURVIVOR = "mutant survived (full points): cell 'mul': output off by a factor 1.001"
ACCEPTED = [{"cell": "mul", "mutation": "one output element changed", "reason": "a test"}]


@pytest.mark.slow
def test_check_reports_the_mutant_that_a_weakened_test_lets_through(tmp_path, capsys):
    """A test cell that compares with |error| < 0.1 instead of check_close (rtol 1e-6) and
    an exact integer lets mul's output off by 1.001 through (6.006): check names that
    mutant and its cell and fails. The other one it lets through (one element changed:
    6.07) is ACCEPTED."""
    course = tiny_course(tmp_path / "course")
    folder = course / "source" / "tiny"
    (folder / "variants.py").write_text(VARIANTS + f"\nACCEPTED = {ACCEPTED!r}\n")
    path = folder / "tiny.ipynb"
    notebook = nbformat.read(path, as_version=4)
    (cell,) = [c for c in notebook.cells if c.metadata.nbgrader.grade_id == "test_mul"]
    weak = cell.source.replace("check_close(value, 6.0, name='mul')", "assert abs(value - 6) < 0.1")
    weak = weak.replace("assert mul(0, 5) == 0", "assert abs(mul(1.0, 0.5) - 0.5) < 0.1")
    assert weak.count("< 0.1") == 2
    cell.source = weak
    nbformat.write(notebook, path)
    assert cli.main(["check", "tiny", "--course-dir", str(course)]) == 1
    output = capsys.readouterr().out
    assert "tiny: 1 problem(s)" in output and SURVIVOR in output, output
    # Every other mutant of the three cells is killed or equivalent.
    assert " 1 survived, 1 accepted" in output, output
    assert "mutant survived" not in output.replace(SURVIVOR, ""), output


# ----------------------------------------------------------------------------------
# the repository's assignments, in rotation
# ----------------------------------------------------------------------------------


def rotation(names: list[str], choice: str | None, today: datetime.date) -> list[str]:
    """The assignments whose mutants this run grades: ``choice`` (``all`` or names
    separated by commas), else one by the day of the year."""
    if choice == "all":
        return list(names)
    if choice:
        return [name for name in choice.split(",") if name]
    return [names[today.timetuple().tm_yday % len(names)]]


def test_rotation_chooses_one_assignment_a_day_or_what_it_is_told():
    names = ["a", "b", "c"]
    days = [datetime.date(2026, 1, 1) + datetime.timedelta(days=d) for d in range(3)]
    assert sorted(rotation(names, None, day)[0] for day in days) == names
    assert rotation(names, "all", days[0]) == names
    assert rotation(names, "c,a", days[0]) == ["c", "a"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", rotation(check.discover(), os.environ.get("NPFL_MUTANTS"), datetime.date.today())
)
def test_no_mutant_of_the_assignment_survives(name, capsys):
    """``npfl-course check NAME``: variants and mutants, 0 unexplained survivors."""
    status = check.check_assignments(load_course(check.REPO), [name])
    output = capsys.readouterr().out
    print(output)
    assert status == 0, output
    assert f"{name}: ok" in output and " mutants (" in output, output
