"""What copying changes, taken out of an answer before it is fingerprinted.

:func:`normalize` turns a code cell into a canonical text with Python's own parser
(:mod:`ast`): comments, blank lines, docstrings and formatting go (``ast.unparse``
writes one layout), every local variable of a function (its parameters, what it
assigns, loop and comprehension variables, lambda parameters) becomes ``_``, and each
run of simple statements (assignments, calls, imports) is put into one canonical order
that keeps every statement after those it depends on (a statement depends on an earlier
one that writes a name it reads or writes, or whose method call may change an object
it uses), so a copy whose independent lines were swapped reads the same. Global names,
attributes and constants stay: they say which API an answer uses.

:func:`answer` then removes what the release already contained: the lines of the
normalised cell that the normalised released cell also has (the signature, the
``raise NotImplementedError()``), found by :class:`difflib.SequenceMatcher`, so only
what the student wrote is compared. A cell that does not parse (the student's code has
a syntax error) is normalised as text: comment and blank lines dropped, each line
stripped.
"""

from __future__ import annotations

import ast
import difflib
import functools
import heapq

PLACEHOLDER = "_"  # every local variable's name in the canonical text
MAX_RUN = 200  # longer runs of simple statements keep their order (sorting is quadratic)

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_SCOPES = (*_FUNCTIONS, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Try, ast.Match)
_MOVABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Import, ast.ImportFrom)


def _code_lines(source: str) -> str:
    """``source`` with IPython's magics and shell lines (``%time``, ``!pip``) blank."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )


def _arguments(args: ast.arguments) -> list[ast.arg]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return every + [a for a in (args.vararg, args.kwarg) if a is not None]


def _bound_in(scope: ast.AST) -> set[str]:
    """Names a function, lambda or comprehension binds itself (its locals), less
    ``global``/``nonlocal`` ones."""
    bound: set[str] = set()
    declared: set[str] = set()
    if isinstance(scope, _FUNCTIONS):
        bound.update(a.arg for a in _arguments(scope.args))
    body = scope.body if isinstance(scope, _FUNCTIONS) else scope.generators
    todo = list(body) if isinstance(body, list) else [body]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        if isinstance(node, _SCOPES) and node is not scope:
            continue  # a nested scope binds its own names; its reads of ours are renamed
        todo.extend(ast.iter_child_nodes(node))
    return bound - declared


_ORIGINAL = "npfl_name"  # attribute keeping a renamed Name's own name (ast.dump skips it)


def _outermost_scopes(tree: ast.AST):
    """The functions, lambdas and comprehensions not inside another one."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                yield child
            else:
                todo.append(child)


def _rename_locals(tree: ast.AST) -> None:
    """Renames the locals of every function, lambda and comprehension to PLACEHOLDER,
    keeping each Name's own name in the attribute ``_ORIGINAL`` (for :func:`_effects`).
    A nested scope's locals are renamed throughout the outermost one around it."""
    for scope in _outermost_scopes(tree):
        nodes = list(ast.walk(scope))
        local: set[str] = set()
        for node in nodes:
            if isinstance(node, _SCOPES):
                local |= _bound_in(node)
        for node in nodes:
            if isinstance(node, ast.Name) and node.id in local:
                setattr(node, _ORIGINAL, node.id)
                node.id = PLACEHOLDER
            elif isinstance(node, ast.arg):
                node.arg = PLACEHOLDER
            elif isinstance(node, ast.ExceptHandler) and node.name in local:
                node.name = PLACEHOLDER


def _base(node: ast.AST) -> str | None:
    """The name at the bottom of ``a.b[c].d`` or ``a.mul_(2).add_``, or None (a new
    object, as ``(a / b).sqrt()``, changes no name)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return getattr(node, _ORIGINAL, node.id) if isinstance(node, ast.Name) else None


def _effects(statement: ast.stmt) -> tuple[set[str], set[str]]:
    """(names the statement reads, names it writes or may change), conservatively: an
    attribute, item or method call on an object changes the object's name."""
    reads, writes = set(), set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name):
            name = getattr(node, _ORIGINAL, node.id)
            (reads if isinstance(node.ctx, ast.Load) else writes).add(name)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and not isinstance(
            node.ctx, ast.Load
        ):
            writes.add(_base(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            writes.add(_base(node.func))  # x.mul_(2), x.append(...)
        elif isinstance(node, ast.alias):
            writes.add((node.asname or node.name).split(".")[0])
    if isinstance(statement, ast.AugAssign):
        reads.add(_base(statement.target))
    return reads - {None}, writes - {None}


def _canonical_run(run: list[ast.stmt]) -> list[ast.stmt]:
    """The run's statements in the order that puts, among those whose predecessors are
    placed, the smallest (by their text, locals renamed) first: one order for every
    permutation that respects the dependencies."""
    if len(run) < 2 or len(run) > MAX_RUN:
        return run
    effects = [_effects(s) for s in run]
    after: list[set[int]] = [set() for _ in run]  # i -> the statements that must follow i
    waiting = [0] * len(run)
    for j, (reads_j, writes_j) in enumerate(effects):
        for i in range(j):
            reads_i, writes_i = effects[i]
            if writes_i & (reads_j | writes_j) or writes_j & reads_i:
                after[i].add(j)
                waiting[j] += 1
    keys = [ast.dump(s, annotate_fields=False) for s in run]
    ready = [(keys[i], i) for i in range(len(run)) if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(run[i])
        for j in after[i]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, (keys[j], j))
    return order


_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def _is_string(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _canonical_blocks(tree: ast.AST) -> None:
    """Drops docstrings and other bare strings and sorts each run of simple statements,
    in every block of statements (expressions are not entered: they hold none)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for field in _BLOCKS:
            block = getattr(node, field, None)
            if not isinstance(block, list) or not block:
                continue
            if field in ("handlers", "cases"):  # except handlers, match cases
                todo += block
                continue
            result, run = [], []
            for statement in block:
                if _is_string(statement):
                    continue
                if isinstance(statement, _MOVABLE):
                    run.append(statement)
                    continue
                result += [*_canonical_run(run), statement]
                run = []
                todo.append(statement)
            result += _canonical_run(run)
            setattr(node, field, result or [ast.Pass()])


def normalize(source: str) -> tuple[str, bool]:
    """The canonical text of a code cell (see the module docstring).

    Returns:
        tuple[str, bool]: The text, and whether it parsed (False: normalised as text).
    """
    code = _code_lines(source)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return _as_text(code), False
    try:
        _rename_locals(tree)
        _canonical_blocks(tree)
        return ast.unparse(ast.fix_missing_locations(tree)), True
    except RecursionError:  # deeply nested expressions
        return _as_text(code), False


def _as_text(code: str) -> str:
    lines = (line.strip() for line in code.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


@functools.lru_cache(maxsize=1024)
def _released_lines(release: str, parsed: bool) -> list[str]:
    """The release cell's lines, normalised as a cell that parsed (or not) is."""
    return (normalize(release)[0] if parsed else _as_text(_code_lines(release))).splitlines()


def answer(source: str, release: str) -> tuple[str, bool]:
    """What the student wrote in a cell: its normalised text less the normalised
    release cell's lines (see the module docstring).

    Args:
        source (str): The student's cell.
        release (str): The same cell in the release.

    Returns:
        tuple[str, bool]: The answer (empty if the cell is the release's), and whether
        the cell parsed.
    """
    text, parsed = normalize(source)
    released_lines = _released_lines(release, parsed)
    lines = text.splitlines()
    matcher = difflib.SequenceMatcher(None, released_lines, lines, autojunk=False)
    own = [
        line
        for tag, _, _, start, end in matcher.get_opcodes()
        if tag in ("insert", "replace")
        for line in lines[start:end]
    ]
    return "\n".join(own), parsed


def _header(statement: ast.stmt) -> str | None:
    """A compound statement's first line, normalised (``for _ in range(_)``), or None."""
    if isinstance(statement, (ast.If, ast.While)):
        return f"{type(statement).__name__.lower()} {ast.unparse(statement.test)}"
    if isinstance(statement, (ast.For, ast.AsyncFor)):
        return f"for {ast.unparse(statement.target)} in {ast.unparse(statement.iter)}"
    if isinstance(statement, (ast.With, ast.AsyncWith)):
        return "with " + ", ".join(ast.unparse(item) for item in statement.items)
    return None


def statements(source: str) -> list[tuple[int, int, str]]:
    """The statements of a cell, normalised one by one as :func:`normalize` does (locals
    renamed): ``(first line, last line, text)`` with 1-based line numbers, for simple
    statements and the first lines of ``if``, ``for``, ``while`` and ``with``; none when
    the cell does not parse. The report marks the lines of one student's statements
    that the other student's answer has too, wherever they stand."""
    try:
        tree = ast.parse(_code_lines(source))
        _rename_locals(tree)
        found = []
        for node in ast.walk(tree):
            if not isinstance(node, ast.stmt) or _is_string(node):
                continue
            body = getattr(node, "body", None)
            if isinstance(body, list) and body:
                header = _header(node)
                if header is not None:
                    found.append((node.lineno, max(node.lineno, body[0].lineno - 1), header))
            elif not isinstance(node, _COMPOUND):
                found.append((node.lineno, node.end_lineno or node.lineno, ast.unparse(node)))
        return found
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
