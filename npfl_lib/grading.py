"""Helpers for the test cells of the auto-graded assignments.

* :func:`check_close` compares a student's result with the reference and, on a
  mismatch, says where (index, both values, relative error) instead of just "False".
* :func:`forbid` makes calls of the reference implementations (``npfl_lib``) and of
  named torch built-ins raise, so a graded function cannot pass by delegating.
* :func:`time_limit` stops a test that runs too long (e.g. an infinite loop).
* :func:`pick_device` chooses CUDA when available, so the notebooks run anywhere.

Importing this module also sends warnings to stdout instead of stderr: nbgrader scores
a test cell 0 whenever the cell writes to stderr, so a harmless warning raised by a
student's (or torch's) code would otherwise cost the cell's points.

Typical test cell::

    expected = reference(x)                       # outside forbid: the reference may run
    with forbid("npfl_lib", "torch.softmax", "torch.Tensor.softmax"), time_limit(10):
        actual = softmax(x)                       # the student's function
    check_close(actual, expected, name="softmax(x)")
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "ForbiddenCallError",
    "active_forbidden",
    "check_close",
    "intercept_forbidden",
    "forbid",
    "time_limit",
    "pick_device",
    "student_side",
]


# ----------------------------------------------------------------------------------
# check_close
# ----------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _as_float64(value: Any, name: str, role: str) -> torch.Tensor:
    """``value`` as a float64 CPU tensor, or an AssertionError naming what it was."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, (np.ndarray, np.generic)):
        tensor = torch.from_numpy(np.asarray(value))
    elif isinstance(value, (bool, int, float)):
        tensor = torch.tensor(float(value))
    else:
        raise AssertionError(
            f"{name}: the {role} value must be a tensor, a number or a numpy array, "
            f"got {_describe(value)}"
        )
    if tensor.is_complex():
        raise AssertionError(f"{name}: complex values are not supported")
    return tensor.cpu().to(torch.float64)


def check_close(
    actual: Any, expected: Any, *, rtol: float = 1e-6, atol: float = 1e-8, name: str = "output"
) -> None:
    """Asserts ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    NaN matches only NaN, and an infinity only the same infinity. When ``expected`` is
    a tensor, ``actual`` must be a tensor of the same shape, dtype and device (a
    student's function should return a tensor like its input); when it is a number
    or numpy array, only the shape and values are compared. Values are compared in
    float64 on the CPU.

    Args:
        actual (Any): The student's result: a tensor, number or numpy array.
        expected (Any): The reference result: a tensor, number or numpy array.
        rtol (float): Relative tolerance.
        atol (float): Absolute tolerance.
        name (str): What is compared, quoted in the message (e.g. ``"softmax(x)"``).

    Raises:
        AssertionError: Naming ``name`` and the first mismatch: a different type,
            shape, dtype or device, or the first mismatching index with both values
            and the relative error.
    """
    for role, value in (("actual", actual), ("expected", expected)):
        # A tensor subclass can override __torch_function__ and make any comparison
        # come out true, so only plain tensors (and parameters) are compared.
        if isinstance(value, torch.Tensor) and type(value) not in (
            torch.Tensor,
            torch.nn.Parameter,
        ):
            raise AssertionError(
                f"{name}: the {role} value must be a plain torch.Tensor, "
                f"got the subclass {_describe(value)}"
            )
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            raise AssertionError(f"{name} must be a torch.Tensor, got {_describe(actual)}")
        if actual.dtype != expected.dtype:
            raise AssertionError(
                f"{name} has dtype {actual.dtype}, expected {expected.dtype} "
                f"(create new tensors with the input's dtype, e.g. torch.zeros_like(x))"
            )
        if actual.device != expected.device:
            raise AssertionError(
                f"{name} is on device {actual.device}, expected {expected.device} "
                f"(create new tensors on the input's device, e.g. device=x.device)"
            )
    elif isinstance(expected, np.ndarray) and isinstance(actual, np.ndarray):
        if actual.dtype != expected.dtype:
            raise AssertionError(f"{name} has dtype {actual.dtype}, expected {expected.dtype}")
    a = _as_float64(actual, name, "actual")
    b = _as_float64(expected, name, "expected")
    if a.shape != b.shape:
        raise AssertionError(f"{name} has shape {tuple(a.shape)}, expected {tuple(b.shape)}")
    close = torch.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return
    bad = (~close).nonzero()
    index = tuple(bad[0].tolist())
    got, want = a[index].item(), b[index].item()
    diff = abs(got - want)
    rel = diff / abs(want) if want != 0 else (math.inf if diff > 0 else 0.0)
    where = f"at index {index}" if index else "(a scalar)"
    raise AssertionError(
        f"{name} differs from the expected value in {len(bad)} of {a.numel()} element(s) "
        f"(rtol={rtol:g}, atol={atol:g}); first {where}: got {got!r}, expected {want!r} "
        f"(relative error {rel:.3g})"
    )


# ----------------------------------------------------------------------------------
# forbid
# ----------------------------------------------------------------------------------


class ForbiddenCallError(AssertionError):
    """A test called a function it must not use (e.g. the reference implementation)."""


def _report(name: str) -> None:
    """Called instead of a forbidden function: records the call and raises."""
    if _CALLS:
        _CALLS[-1].append(name)
    raise ForbiddenCallError(f"{name} is not allowed in this exercise: write it yourself")


_CALLS: list[list[str]] = []  # one list per active forbid block, innermost last
_TARGETS: list[tuple[str, ...]] = []  # the targets of each active forbid block


_MODE = {"intercept": True}


def intercept_forbidden(enabled: bool) -> None:
    """Whether :func:`forbid` patches its targets in this process (the default) or only
    records them for :func:`active_forbidden`.

    ``npfl-course autograde`` runs the test cells in a process of their own and the
    student's functions in the student's kernel, where the recorded targets are
    forbidden around each call: patching them in the test's process would only cost
    time (and imports) there.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    _MODE["intercept"] = enabled


def active_forbidden() -> tuple[str, ...]:
    """The targets of the :func:`forbid` blocks active now, outermost first.

    A grader that runs the student's functions in another process (``npfl-course
    autograde``) sends them along with each call, so that the same calls are forbidden
    there.
    """
    return tuple(dict.fromkeys(target for targets in _TARGETS for target in targets))


# Where torch keeps the same C function under several names (torch.softmax is also
# torch._C._VariableFunctions.softmax, F.relu6 lives in torch._C._nn, ...).
_TORCH_NAMESPACES = (
    "torch",
    "torch.nn.functional",
    "torch.special",
    "torch.linalg",
    "torch.fft",
    "torch._C._nn",
    "torch._C._special",
    "torch._C._linalg",
    "torch._C._fft",
)
_AUTOGRAD = ("torch.Tensor.backward", "torch.autograd.grad", "torch.autograd.backward")
_code_cache: dict[tuple[str, tuple[str, ...]], types.CodeType] = {}


def _raising_code(name: str, freevars: tuple[str, ...]) -> types.CodeType:
    """A code object that reports ``name``, with the free variables of the original.

    A function's ``__code__`` may only be replaced by code with the same number of
    free variables, so the raising function is compiled inside an outer function that
    defines them. It finds ``_report`` through ``__import__`` because the swapped code
    runs with the *original* function's globals.
    """
    key = (name, freevars)
    if key not in _code_cache:
        lines = ["def _outer():"]
        lines += [f"    {var} = None" for var in freevars]
        lines.append("    def _forbidden(*args, **kwargs):")
        if freevars:
            lines.append(f"        ({', '.join(freevars)},)")
        lines.append(f"        __import__({__name__!r}, fromlist=['_'])._report({name!r})")
        lines.append("    return _forbidden")
        namespace: dict[str, Any] = {}
        exec("\n".join(lines), namespace)  # noqa: S102 - our own template, no user input
        _code_cache[key] = namespace["_outer"]().__code__
    return _code_cache[key]


def _raiser(name: str):
    def forbidden(*args, **kwargs):
        _report(name)

    return forbidden


_not_modules: set[str] = set()  # dotted names whose import failed


def _resolve(target: str) -> Any:
    """Imports the longest importable prefix of ``target`` and walks the attributes."""
    if not isinstance(target, str) or not target:
        raise TypeError(f"forbid targets must be dotted names (str), got {target!r}")
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in _not_modules:
            continue
        try:
            obj = importlib.import_module(name)
        except ImportError:
            # A failed import searches sys.path again each time: remembered (forbid runs
            # around every call the grader makes). Installing a module later is no use.
            _not_modules.add(name)
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj.__func__ if inspect.ismethod(obj) else obj
    raise ValueError(f"forbid target {target!r} does not name a module or a callable")


# Module name -> (the modules walked, their sizes, the callables found): forbid runs
# around every call the grader makes, and walking npfl_lib takes about a millisecond.
_callables_cache: dict[str, tuple[list[types.ModuleType], list[int], list]] = {}


def _public_callables(module: types.ModuleType) -> list[tuple[str, Any]]:
    """Every public callable defined in ``module`` or its loaded submodules (BFS); the
    last answer again while none of those modules gained or lost a name (not inside a
    forbid block, whose replacements hide what they replace)."""
    if _TARGETS:
        return list(_walk_public_callables(module, []))
    cached = _callables_cache.get(module.__name__)
    if cached is not None and all(
        len(vars(m)) == size for m, size in zip(cached[0], cached[1], strict=True)
    ):
        return cached[2]
    walked: list[types.ModuleType] = []
    found = list(_walk_public_callables(module, walked))
    _callables_cache[module.__name__] = (walked, [len(vars(m)) for m in walked], found)
    return found


def _walk_public_callables(
    module: types.ModuleType, walked: list[types.ModuleType]
) -> Iterator[tuple[str, Any]]:
    root = module.__name__
    queue, seen = [module], {root}
    while queue:
        current = queue.pop(0)
        walked.append(current)
        for attr, value in sorted(vars(current).items()):
            if attr.startswith("_"):
                continue
            if isinstance(value, types.ModuleType):
                sub = value.__name__
                if sub.startswith(root + ".") and sub not in seen and sub != __name__:
                    seen.add(sub)
                    queue.append(value)
            elif callable(value):
                owner = getattr(value, "__module__", None) or ""
                # Skip what the module merely imported (typing, dataclasses, ...) and
                # this module itself, whose helpers the test cells call under forbid.
                if (owner == root or owner.startswith(root + ".")) and owner != __name__:
                    yield f"{current.__name__}.{attr}", value


def _expand(target: str) -> list[tuple[str, Any]]:
    if target == "autograd":
        return [(name, _resolve(name)) for name in _AUTOGRAD]
    obj = _resolve(target)
    if isinstance(obj, types.ModuleType):
        return _public_callables(obj)
    if not callable(obj):
        raise ValueError(f"forbid target {target!r} is not callable")
    return [(target, obj)]


class _Patches:
    """Applied replacements, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, ...]] = []

    def set_attr(self, owner: Any, attr: str, value: Any) -> bool:
        own = attr in vars(owner)
        old = vars(owner).get(attr)
        try:
            setattr(owner, attr, value)
        except (AttributeError, TypeError):  # read-only C namespaces
            return False
        self._undo.append(("attr", owner, attr, own, old))
        return True

    def set_code(self, func: types.FunctionType, code: types.CodeType) -> None:
        self._undo.append(("code", func, func.__code__))
        func.__code__ = code

    def undo(self) -> None:
        while self._undo:
            entry = self._undo.pop()
            if entry[0] == "code":
                entry[1].__code__ = entry[2]
            elif entry[3]:
                setattr(entry[1], entry[2], entry[4])
            else:
                delattr(entry[1], entry[2])


def _patch(patches: _Patches, name: str, obj: Any) -> None:
    if isinstance(obj, types.FunctionType):
        # Swapping the code object catches every alias (``from m import f as g``).
        patches.set_code(obj, _raising_code(name, obj.__code__.co_freevars))
        return
    if inspect.isclass(obj) and patches.set_attr(obj, "__init__", _raiser(name)):
        return  # constructing the class (or a subclass) now raises
    # A C function or method: replace it wherever it is reachable under a known name.
    places = list(_torch_index().get(id(obj), []))
    owners = [torch.Tensor, importlib.import_module("__main__")]
    with contextlib.suppress(ValueError):
        prefix = _resolve(name.rpartition(".")[0])
        if getattr(prefix, "__name__", None) not in _TORCH_NAMESPACES:  # else indexed
            owners.append(prefix)
    for owner in owners:
        names = [name.rpartition(".")[2]] if inspect.isclass(owner) else list(vars(owner))
        places += [(owner, attr) for attr in names if getattr(owner, attr, None) is obj]
    found = False
    for owner, attr in dict.fromkeys(places):
        if getattr(owner, attr, None) is obj:  # not already patched under another name
            found = patches.set_attr(owner, attr, _raiser(name)) or found
    if not found:
        raise ValueError(f"forbid cannot intercept {name!r} ({type(obj).__name__})")


_index: dict[int, list[tuple[types.ModuleType, str]]] = {}


def _torch_index() -> dict[int, list[tuple[types.ModuleType, str]]]:
    """``id(object) -> [(namespace, name), ...]`` over torch's namespaces, built once."""
    if not _index:
        for module_name in _TORCH_NAMESPACES:
            if _importable(module_name):
                module = importlib.import_module(module_name)
                for attr, value in vars(module).items():
                    _index.setdefault(id(value), []).append((module, attr))
    return _index


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def forbid(*targets: str) -> Iterator[None]:
    """Makes calls of the named functions raise :class:`ForbiddenCallError` inside the block.

    Targets are dotted names: a function (``"torch.softmax"``,
    ``"torch.nn.functional.cross_entropy"``), a method (``"torch.Tensor.softmax"``), a
    class (``"torch.optim.Adam"``: constructing it raises), a module meaning every
    public callable defined in it and its loaded submodules (``"npfl_lib"``,
    ``"torch.optim"``), or ``"autograd"`` (``torch.Tensor.backward``,
    ``torch.autograd.grad``, ``torch.autograd.backward``). Each name is exact:
    ``"torch.softmax"`` does not forbid ``torch.Tensor.softmax`` or
    ``torch.nn.functional.softmax``; list every route a student might take.

    Python functions get their ``__code__`` swapped, so aliases imported earlier are
    caught too; C functions are replaced in torch's namespaces, ``torch.Tensor`` and
    ``__main__``. Everything is restored on exit, also after an error, and blocks
    nest. If the code under test swallows the error (``except Exception``), the
    block still raises on exit. ``npfl_lib.grading`` itself is never forbidden.

    Args:
        *targets (str): Dotted names of what must not be called.

    Raises:
        ValueError: If a target names nothing that can be intercepted.
        TypeError: If a target is not a string.
        ForbiddenCallError: (an AssertionError) on a call of a target in the block:
            ``"<name> is not allowed in this exercise: write it yourself"``.
    """
    if _MODE["intercept"]:
        resolved = [entry for target in targets for entry in _expand(target)]
    else:
        for target in targets:
            if not isinstance(target, str) or not target:
                raise TypeError(f"forbid targets must be dotted names (str), got {target!r}")
        resolved = []
    patches = _Patches()
    calls: list[str] = []
    try:
        seen: set[int] = set()
        for name, obj in resolved:
            if id(obj) not in seen:
                seen.add(id(obj))
                _patch(patches, name, obj)
        _CALLS.append(calls)
        _TARGETS.append(tuple(targets))
        yield
    finally:
        if _CALLS and _CALLS[-1] is calls:
            _CALLS.pop()
            _TARGETS.pop()
        patches.undo()
    if calls:  # a forbidden call happened but its error was swallowed
        raise ForbiddenCallError(f"{calls[0]} is not allowed in this exercise: write it yourself")


# ----------------------------------------------------------------------------------
# time_limit and pick_device
# ----------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises TimeoutError if the block runs longer than ``seconds``.

    Uses ``SIGALRM``, so it works only on the main thread of a POSIX system (where
    Jupyter kernels run cells); elsewhere it does nothing and nbgrader's per-cell
    timeout is the backstop. Python handles the signal between bytecodes, so a single
    long C call (one huge matmul) is interrupted only when it returns. Blocks nest:
    an outer limit keeps running and fires on time.

    Args:
        seconds (float): The limit, > 0.

    Raises:
        ValueError: If seconds is not positive.
        TimeoutError: Naming the limit, when it is exceeded.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(
            f"the code did not finish within the time limit of {seconds:g} s "
            f"(an infinite loop, or a much slower method than needed?)"
        )

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield  # an enclosing limit ends first and reports itself
        return
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer_left:  # resume the enclosing limit with the time it has left
            left = outer_left - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6))


def student_side(function):
    """Marks a helper of a locked cell that must run where the student's code runs.

    ``npfl-course autograde`` runs the test cells in a process of their own and calls the
    student's functions in the student's kernel (the course's README, "Test cells run out
    of the student's reach"). A test that must see the student's functions call each
    other (e.g. wrap the student's ``sgd_step`` to record what ``train`` does) puts that
    in a helper in a locked setup cell, marked with this decorator: the whole helper
    then runs in the student's kernel and only its result comes back. What it returns
    is as trustworthy as the student's own functions: check it in the test cell. In one
    process (JupyterLab, nbgrader's Validate, plain ``nbgrader autograde``) the
    decorator changes nothing.

    Returns:
        The same function, marked.
    """
    if not callable(function):
        raise TypeError(f"student_side decorates a function, got {function!r}")
    function.__npfl_student_side__ = True
    return function


def pick_device() -> torch.device:
    """The device the tests run on: ``$NPFL_DEVICE`` if set, else CUDA if available.

    Returns:
        torch.device: ``torch.device(os.environ["NPFL_DEVICE"])`` when that variable
        is set and non-empty (e.g. ``"cpu"``, ``"cuda:1"``), otherwise ``cuda`` when
        available, otherwise ``cpu``.

    Raises:
        ValueError: If NPFL_DEVICE is not a device name, or names CUDA where none is
            available.
    """
    name = os.environ.get("NPFL_DEVICE", "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"NPFL_DEVICE must name a torch device (cpu, cuda), got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"NPFL_DEVICE={name!r} but CUDA is not available; use NPFL_DEVICE=cpu")
    return device


# ----------------------------------------------------------------------------------
# warnings on stdout
# ----------------------------------------------------------------------------------


def _show_warning_on_stdout(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` that prints to stdout (nbgrader zeroes cells with stderr)."""
    sys.stdout.write(warnings.formatwarning(message, category, filename, lineno, line))


warnings.showwarning = _show_warning_on_stdout
