"""Mutation testing of an assignment's tests: near-miss answers made from the solution.

``npfl-course check`` grades, besides the hand-written variants, *mutants*: the
instructor's solution with one small, plausible error, made automatically for every
solution cell:

* **output mutants** wrap the solution (:mod:`npfl_course.check.mutant_runtime`):
  outputs off by a factor 1.001, computed in float32 (rounded to float32 and back),
  nan whenever an input is above 50 in magnitude, one output element changed (an
  index tensor repeats its first index), and, per argument, the argument's tensors
  changed in place after the call;
* **code mutants** edit the solution's code between its markers (``ast``): a flipped
  comparison (``<`` and ``<=``, ``==`` and ``!=``, ...), an off-by-one index or
  dimension, a dropped term, factor, statement or chained method call, swapped
  arguments or operands.

Before grading, the probe (:mod:`npfl_course.check.probe`) runs the source notebook
once, records every call of the graded functions, and finds the mutants that change
nothing on those calls: they are *equivalent* on the tests' inputs and are not graded.
An output mutant that would spoil a floating output but only for a kind of input
the tests never give (float64 outputs, inputs above 50) is *unexercised*: not graded,
not a failure, but listed (what the tests could check more). The others are graded
like the variants, several in one submission where no test cell
can see two of them (:func:`npfl_course.check.plan.plan`); one that keeps full points on
every test cell that runs its cell *survives*: the tests would not notice that mistake.
A survivor listed in ``ACCEPTED`` of the assignment's ``variants.py`` (with the cell,
the mutation as reported and a reason) is accepted; every other survivor is a problem.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import nbformat

from npfl_course.check import mutant_runtime
from npfl_course.check.notebook import SOLUTION_MARKERS, cells_by_kind, graded_function
from npfl_course.check.plan import Plan, plan

OUTPUT_MUTATIONS = {
    "scale": "output off by a factor 1.001",
    "float32": "output computed in float32",
    "nan": "nan for inputs above 50 in magnitude",
    "element": "one output element changed",
}
# Methods and functions whose integer arguments name dimensions.
_DIM_CALLS = {
    "sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "softmax",
    "log_softmax", "logsumexp", "cumsum", "prod", "std", "var", "norm", "all", "any",
    "unsqueeze", "squeeze", "gather", "scatter", "scatter_", "stack", "cat", "flatten",
    "transpose", "select", "index_select", "narrow", "median", "topk", "sort", "flip",
}  # fmt: skip
_FLIPPED = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}  # fmt: skip
_NOT_COMMUTATIVE = (ast.Sub, ast.Div, ast.MatMult)


@dataclass
class Mutant:
    """One near-miss answer: the code of a solution cell with one mutation."""

    cell: str  # the solution cell's grade_id
    function: str  # the graded function it defines
    kind: str  # "output" or "code"
    mutation: str  # what was changed, as reported and as listed in ACCEPTED
    code: str  # the cell's whole new source
    how: str | None = None  # output mutants: mutant_runtime._HOWS
    argument: str | None = None  # output mutants "inplace": the argument changed
    line: int | None = None  # code mutants: the line of the cell
    status: str = "new"  # equivalent, differs, undecided, killed, survived, accepted
    probed: str = ""  # what the probe said: equivalent, differs or undecided
    detail: str = ""  # the probe's or the grader's word

    @property
    def id(self) -> str:
        return f"{self.cell}: {self.mutation}"

    def describe(self) -> str:
        where = f"cell {self.cell!r}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.mutation}"


# ----------------------------------------------------------------------------------
# making mutants
# ----------------------------------------------------------------------------------


def _runtime_source() -> str:
    return Path(mutant_runtime.__file__).read_text(encoding="utf-8")


def output_mutants(cell: str, source: str, function: str) -> list[Mutant]:
    """The wrappers of one solution cell's function (see mutant_runtime)."""
    tree = ast.parse(source)
    definition = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    arguments = [a.arg for a in (*definition.args.posonlyargs, *definition.args.args,
                                 *definition.args.kwonlyargs)]  # fmt: skip
    factory = f"_npfl_mutant_{function}"
    body = textwrap.indent(_runtime_source(), "    ")
    mutants = []
    hows = [(how, None, text) for how, text in OUTPUT_MUTATIONS.items()]
    hows += [("inplace", a, f"changes its argument {a!r} in place") for a in arguments]
    for how, argument, text in hows:
        code = (
            f"{source}\n\n\n# npfl-course check: a mutant ({text})\n"
            f"def {factory}():\n{body}\n    return _wrap\n\n\n"
            f"{function} = {factory}()({function}, {how!r}, {argument!r})\n"
        )
        mutants.append(Mutant(cell, function, "output", text, code, how=how, argument=argument))
    return mutants


def _short(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_constant(node.operand)
        return None if inner is None or inner < 0 else -inner
    return None


def _number(value: int) -> ast.AST:
    return ast.Constant(value) if value >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-value))


def _other_dim(node: ast.AST) -> ast.AST | None:
    value = _int_constant(node)
    if value is None:
        return None
    return _number(value - 1 if value > 0 else value + 1)


def _index_constants(node: ast.Subscript) -> list[ast.AST]:
    """The integer constants of a subscript's index (in a tuple, or a slice's bounds)."""
    found = []

    def visit(part):
        if isinstance(part, ast.Tuple):
            for element in part.elts:
                visit(element)
        elif isinstance(part, ast.Slice):
            for bound in (part.lower, part.upper):
                if bound is not None:
                    visit(bound)
        elif _int_constant(part) is not None:
            found.append(part)

    visit(node.slice)
    return found


def _edits(node: ast.AST):
    """(operator, new node or None for "no statement", description) for one node."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _FLIPPED:
                new = copy.deepcopy(node)
                new.ops[i] = _FLIPPED[type(op)]()
                yield "flipped comparison", new
    if isinstance(node, ast.Subscript):
        for position in range(len(_index_constants(node))):
            new = copy.deepcopy(node)
            site = _index_constants(new)[position]
            value = _int_constant(site)
            if _replace(new, site, _number(value + 1 if value >= 0 else value - 1)):
                yield "off-by-one index", new
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
            node.func, "id", "")  # fmt: skip
        for i, keyword in enumerate(node.keywords):
            other = _other_dim(keyword.value) if keyword.arg in ("dim", "axis") else None
            if other is not None:
                new = copy.deepcopy(node)
                new.keywords[i].value = other
                yield "off-by-one dimension", new
        if name in _DIM_CALLS:
            for i, argument in enumerate(node.args):
                other = _other_dim(argument)
                if other is not None:
                    new = copy.deepcopy(node)
                    new.args[i] = other
                    yield "off-by-one dimension", new
        if name == "range" and 1 <= len(node.args) <= 2:
            new = copy.deepcopy(node)
            stop = new.args[-1]
            new.args[-1] = ast.BinOp(stop, ast.Sub(), ast.Constant(1))
            yield "off-by-one range", new
        plain = [a for a in node.args if not isinstance(a, ast.Starred)]
        if len(plain) >= 2 and ast.dump(plain[0]) != ast.dump(plain[1]):
            new = copy.deepcopy(node)
            new.args[0], new.args[1] = new.args[1], new.args[0]
            yield "swapped arguments", new
        if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
            yield "dropped method call", copy.deepcopy(node.func.value)
    if isinstance(node, ast.BinOp):
        dropped = "dropped term" if isinstance(node.op, (ast.Add, ast.Sub)) else "dropped factor"
        if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            yield dropped, copy.deepcopy(node.left)
        if isinstance(node.op, (ast.Add, ast.Mult)):
            yield dropped, copy.deepcopy(node.right)
        if isinstance(node.op, _NOT_COMMUTATIVE):
            yield "swapped operands", ast.BinOp(copy.deepcopy(node.right), node.op,
                                                copy.deepcopy(node.left))  # fmt: skip
    if isinstance(node, ast.AugAssign) or (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ):
        yield "dropped statement", None
    if isinstance(node, ast.With):
        yield "dropped context", node.body


def _solution_lines(source: str) -> tuple[int, int] | None:
    """The 1-based lines of the BEGIN and END SOLUTION markers."""
    lines = [line.strip() for line in source.splitlines()]
    try:
        return lines.index(SOLUTION_MARKERS[0]) + 1, lines.index(SOLUTION_MARKERS[1]) + 1
    except ValueError:
        return None


def code_mutants(cell: str, source: str, function: str) -> list[Mutant]:
    """One mutant per ``ast`` edit of the code between the solution markers."""
    markers = _solution_lines(source)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    if markers is None:
        return []
    begin, end = markers
    original = ast.unparse(tree)
    nodes = [n for n in ast.walk(tree) if begin < getattr(n, "lineno", 0) < end]
    seen, mutants, labels = {original}, [], {}
    for position, node in enumerate(nodes):
        for operator, replacement in _edits(node):
            new_tree = copy.deepcopy(tree)
            target = [n for n in ast.walk(new_tree) if begin < getattr(n, "lineno", 0) < end]
            target = target[position]
            if not _replace(new_tree, target, replacement):
                continue
            ast.fix_missing_locations(new_tree)
            code = ast.unparse(new_tree)
            if code in seen:
                continue
            try:
                compile(code, "<mutant>", "exec")
            except SyntaxError:
                continue
            seen.add(code)
            if replacement is None:
                text = f"{operator}: `{_short(node)}`"
            elif isinstance(replacement, list):
                text = f"{operator}: `{_short(node.items[0].context_expr)}`"
            else:
                text = f"{operator}: `{_short(node)}` -> `{_short(replacement)}`"
            labels[text] = labels.get(text, 0) + 1
            if labels[text] > 1:
                text += f" (#{labels[text]})"
            mutants.append(Mutant(cell, function, "code", text, code + "\n", line=node.lineno))
    return mutants


def _replace(tree: ast.AST, target: ast.AST, replacement) -> bool:
    """Puts ``replacement`` (a node, None: ``pass``, a list: statements) where ``target``
    is in ``tree``."""
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list) and any(item is target for item in value):
                index = next(i for i, item in enumerate(value) if item is target)
                if replacement is None:
                    value[index] = ast.Pass()
                elif isinstance(replacement, list):
                    value[index : index + 1] = copy.deepcopy(replacement)
                elif isinstance(replacement, ast.expr) and isinstance(target, ast.stmt):
                    return False
                else:
                    value[index] = replacement
                return True
            if value is target:
                if replacement is None or isinstance(replacement, list):
                    return False
                setattr(parent, name, replacement)
                return True
    return False


def mutants_of(source_notebook: nbformat.NotebookNode) -> list[Mutant]:
    """Every mutant of every solution cell that defines one function, in notebook order."""
    result = []
    for cell_id, cell in cells_by_kind(source_notebook, "solution").items():
        function = graded_function(cell.source)
        if function is None:
            continue
        result += output_mutants(cell_id, cell.source, function)
        result += code_mutants(cell_id, cell.source, function)
    return result


# ----------------------------------------------------------------------------------
# the probe: which mutants change anything on the tests' calls?
# ----------------------------------------------------------------------------------


@dataclass
class Probe:
    """What the probe found: statuses by mutant id, the graded functions' calls."""

    statuses: dict[str, str] = field(default_factory=dict)
    failed_cells: dict[str, str] = field(default_factory=dict)
    functions: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def probe(notebook_path: Path, mutants: list[Mutant], budget: float = 60.0) -> Probe:
    """Runs :mod:`npfl_course.check.probe` on the source notebook (CPU, one thread)."""
    functions = {m.cell: m.function for m in mutants}
    inplace: dict[str, list[str]] = {}
    for m in mutants:
        if m.how == "inplace":
            inplace.setdefault(m.function, []).append(m.argument)
    spec = {
        "notebook": str(notebook_path),
        "functions": functions,
        "inplace": inplace,
        "budget": budget,
        "mutants": [
            {"id": m.id, "cell": m.cell, "function": m.function, "kind": m.kind, "how": m.how,
             "argument": m.argument, "code": m.code}
            for m in mutants
        ],
    }  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", NPFL_DEVICE="cpu", NPFL_PROGRESS="0",
               OMP_NUM_THREADS="1", MPLBACKEND="Agg")  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="npfl-probe-") as folder:
        folder = Path(folder)
        (folder / "in.json").write_text(json.dumps(spec), encoding="utf-8")
        command = [sys.executable, "-m", "npfl_course.check.probe", "in.json", "out.json"]
        try:
            done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=3600)  # fmt: skip
        except subprocess.TimeoutExpired:
            return Probe(error="the probe ran for more than an hour")
        out = folder / "out.json"
        if done.returncode != 0 or not out.exists():
            return Probe(error=f"the probe failed (exit {done.returncode}): {done.stderr[-1500:]}")
        found = json.loads(out.read_text(encoding="utf-8"))
    return Probe(found["statuses"], found["failed_cells"], found["functions"],
                 time.perf_counter() - start)  # fmt: skip


# ----------------------------------------------------------------------------------
# grading and judging
# ----------------------------------------------------------------------------------


def mutant_plan(source: nbformat.NotebookNode, mutants: list[Mutant], group: bool = True):
    """Submissions for the mutants, as for ALTERNATIVE variants: ``(plan, students)``,
    ``students[i]`` the submission of ``mutants[i]``; several share one where no test
    cell can run two of them."""
    entries = SimpleNamespace(
        WRONG=[], DELEGATING=[],
        ALTERNATIVE=[{"cell": m.cell, "code": m.code, "name": m.id} for m in mutants],
    )  # fmt: skip
    found = plan(source, entries, group=group)
    renamed = Plan()
    names = {old: f"mutants{number:03d}" for number, old in enumerate(found.students)}
    renamed.students = {names[old]: code for old, code in found.students.items()}
    renamed.student_of = {key: names[old] for key, old in found.student_of.items()}
    renamed.judged_by = dict(found.judged_by)
    return renamed


def judge(mutants: list[Mutant], graded, the_plan: Plan) -> None:
    """Sets the status of each graded mutant: killed, survived or not graded."""
    to_grade = [m for m in mutants if m.status in ("differs", "undecided")]
    for index, mutant in enumerate(to_grade):
        student = the_plan.student_of[("ALTERNATIVE", index)]
        judged = the_plan.judged_by[("ALTERNATIVE", index)]
        scores = graded.scores.get(student)
        if scores is None:
            mutant.status, mutant.detail = "not graded", student
            continue
        lost = [g for g in sorted(judged) if g in scores and (scores[g][0] or 0) < scores[g][1]]
        if lost:
            mutant.status, mutant.detail = "killed", ", ".join(lost)
        else:
            mutant.status = "survived"
            mutant.detail = "no test cell runs it" if not judged else ", ".join(sorted(judged))


def accepted_problems(mutants: list[Mutant], variants: ModuleType | None) -> list[str]:
    """Marks accepted survivors (and unexercised mutants); the problems: the other
    survivors, and ACCEPTED entries that match no survivor."""
    accepted = list(getattr(variants, "ACCEPTED", None) or [])
    by_key = {(entry.get("cell"), entry.get("mutation")): entry for entry in accepted}
    problems, used = [], set()
    for mutant in mutants:
        entry = by_key.get((mutant.cell, mutant.mutation))
        if mutant.status in ("survived", "unexercised") and entry is not None:
            mutant.status, mutant.detail = "accepted", entry.get("reason", "")
            used.add((mutant.cell, mutant.mutation))
        elif mutant.status == "survived":
            problems.append(f"mutant survived (full points): {mutant.describe()}")
        elif mutant.status == "not graded":
            problems.append(f"mutant not graded: {mutant.describe()}")
        elif entry is not None:
            problems.append(
                f"ACCEPTED mutant {mutant.describe()} no longer survives ({mutant.status}): "
                f"remove it from ACCEPTED"
            )
            used.add((mutant.cell, mutant.mutation))
    for key in by_key.keys() - used:
        problems.append(f"ACCEPTED mutant cell {key[0]!r}: {key[1]} does not exist")
    return problems


def accepted_entry_problems(variants: ModuleType, solutions: dict) -> list[str]:
    """Static rules for ACCEPTED: a list of dicts with a solution cell, a mutation and a
    reason."""
    accepted = getattr(variants, "ACCEPTED", [])
    if not isinstance(accepted, list):
        return ["variants.py: ACCEPTED must be a list"]
    problems = []
    for entry in accepted:
        if not isinstance(entry, dict) or entry.get("cell") not in solutions:
            problems.append(f"ACCEPTED entry {entry!r}: no solution cell")
        elif not entry.get("mutation") or not str(entry.get("reason", "")).strip():
            problems.append(f"ACCEPTED entry for {entry['cell']!r} needs a mutation and a reason")
    return problems


@dataclass
class Mutation:
    """The mutants of one assignment while it is checked."""

    name: str
    source: nbformat.NotebookNode
    source_path: Path
    mutants: list[Mutant] = field(default_factory=list)
    probe: Probe | None = None
    plan: Plan = field(default_factory=Plan)
    seconds: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Makes the mutants and starts the probe in the background."""
        self.mutants = mutants_of(self.source)
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()

    def _probe(self) -> None:
        self.probe = probe(self.source_path, self.mutants)

    def students(self, release, source) -> dict[str, nbformat.NotebookNode]:
        """Waits for the probe; the submissions of the mutants that change something."""
        from npfl_course.check.notebook import make_submission

        self._thread.join()
        for mutant in self.mutants:
            status = self.probe.statuses.get(mutant.id, "undecided (not probed)")
            mutant.status = mutant.probed = status.split(" ", 1)[0]
            mutant.detail = status.partition(" ")[2].strip("()")
        to_grade = [m for m in self.mutants if m.status in ("differs", "undecided")]
        self.plan = mutant_plan(self.source, to_grade)
        return {s: make_submission(release, source, r) for s, r in self.plan.students.items()}

    def finish(self, graded, variants) -> list[str]:
        """Judges the graded mutants; the problems (survivors, a failed probe)."""
        problems = []
        if self.probe is None or self.probe.error:
            problems.append(f"mutants: {self.probe.error if self.probe else 'no probe'}")
        else:
            for cell, error in self.probe.failed_cells.items():
                problems.append(f"mutants: the probe's run of the source failed in {cell}: {error}")
        judge(self.mutants, graded, self.plan)
        # A survivor whose replay ran out of time before grading: replay it to the end.
        undecided = [m for m in self.mutants if m.status == "survived" and m.probed == "undecided"]
        if undecided:
            again = probe(self.source_path, undecided, budget=3600.0)
            for mutant in undecided:
                if again.statuses.get(mutant.id, "").startswith("equivalent"):
                    mutant.status, mutant.detail = "equivalent", "replayed after grading"
        problems += accepted_problems(self.mutants, variants)
        self.seconds = time.perf_counter() - self._started
        return problems

    def notes(self) -> list[str]:
        """The output mutants the tests never set off (not failures: what to test more)."""
        return [f"{m.describe()}: {m.detail}" for m in self.mutants if m.status == "unexercised"]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for mutant in self.mutants:
            counts[mutant.status] = counts.get(mutant.status, 0) + 1
        parts = [f"{counts.get(s, 0)} {s}" for s in ("killed", "equivalent", "survived",
                                                       "accepted")]  # fmt: skip
        parts += [f"{n} {s}" for s, n in sorted(counts.items())
                  if s not in ("killed", "equivalent", "survived", "accepted")]  # fmt: skip
        graded = len(self.plan.students)
        return (f"{len(self.mutants)} mutants ({', '.join(parts)}; {graded} submissions), "
                f"{self.seconds:.0f} s")  # fmt: skip
