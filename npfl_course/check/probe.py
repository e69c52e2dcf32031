"""Which mutants change anything on the calls the tests make? (``npfl-course check``)

Run as ``python -m npfl_course.check.probe IN.json OUT.json`` by
:mod:`npfl_course.check.mutants`. It executes the source notebook's code cells in order
in a fresh ``__main__`` (as a kernel would, without nbgrader), wraps each graded function
as its solution cell defines it, and records every call the later cells make (from test
cells and from other solutions): the arguments before and after, the result, the global
random state, the default dtype and the grad mode. Then:

* an output mutant (:mod:`npfl_course.check.mutant_runtime`) is *equivalent* if its
  perturbation, applied to each recorded call's outputs, changes nothing (no floating
  output to scale, no argument tensor to change, ...), and *unexercised* if it would
  change a floating output but the tests never give the kind of input that sets it off
  (no float64 output for "float32", no input above 50 for "nan");
* a code mutant is *equivalent* if, replayed on every recorded call (same arguments,
  same random state), it gives the same results and leaves the arguments as the
  solution did, bit for bit, tensors aliasing the same arguments. Replays stop at the
  first difference; one that runs past its time budget leaves the mutant *undecided*.

Equivalent mutants cannot lose points however they are graded (the tests see exactly
what the solution gives them), so they are not graded. OUT.json holds each mutant's
status and, per graded function, how often and how long the tests called it and which
kinds of input they gave it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import math
import random
import signal
import sys
import time
import types
import warnings

import nbformat
import numpy as np
import torch

from npfl_course.check import mutant_runtime as runtime

MAX_CALLS = 400  # recorded calls per function (later ones are only looked at)
OUTPUT_HOWS = ("scale", "float32", "nan", "element")
UNEXERCISED = {  # output mutants that only a kind of input can set off
    "float32": "the tests never check a float64 output of it",
    "nan": "the tests never give it an input above 50 in magnitude",
}


class _Timeout(BaseException):
    """A replayed call ran too long (BaseException: student-style ``except Exception``
    in the code under test cannot swallow it)."""


# ----------------------------------------------------------------------------------
# copies and comparisons that keep track of identity
# ----------------------------------------------------------------------------------


def copy_value(value, memo: dict):
    """A deep copy of ``value``; objects shared inside it stay shared (one ``memo``)."""
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, torch.Tensor):
        if value.is_leaf:
            result = copy.deepcopy(value, memo)
            if value.grad is not None and result.grad is None:  # Parameter leaves it out
                result.grad = copy_value(value.grad, memo)
        else:
            result = value.detach().clone().requires_grad_(value.requires_grad)
    elif isinstance(value, torch.nn.Module):
        for tensor in [*value.parameters(), *value.buffers()]:
            copy_value(tensor, memo)  # with its .grad, which deepcopy leaves out
        result = copy.deepcopy(value, memo)
    elif isinstance(value, torch.Generator):
        result = torch.Generator(device=value.device)
        result.set_state(value.get_state())
    elif isinstance(value, (str, bytes, int, float, bool, type(None), type, types.ModuleType)):
        return value
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return value
    elif isinstance(value, list):
        result = []
        memo[key] = result
        result.extend(copy_value(item, memo) for item in value)
    elif isinstance(value, dict) and type(value) is dict:
        result = {}
        memo[key] = result
        result.update((k, copy_value(v, memo)) for k, v in value.items())
    elif isinstance(value, tuple):
        items = [copy_value(item, memo) for item in value]
        result = type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    else:
        try:
            result = copy.deepcopy(value, memo)
        except Exception:  # noqa: BLE001 - an object that cannot be copied is shared
            return value
    memo[key] = result
    return result


def _state_of(module: torch.nn.Module) -> dict:
    """What a module is: its type, modes and public settings, per submodule."""
    return {
        name: (type(m), m.training, {k: v for k, v in vars(m).items() if not k.startswith("_")})
        for name, m in module.named_modules()
    }


def difference(a, b, pairs: dict | None = None, depth: int = 0) -> str | None:
    """Where ``b`` differs from ``a`` (values bit for bit, nan equal to nan; the same
    objects shared the same way), or None. ``pairs`` maps ids of ``a``'s objects to
    ``b``'s, so a result that aliases an argument must alias the same one."""
    pairs = {} if pairs is None else pairs
    if depth > 12:
        return "too deep to compare"
    if type(a) is not type(b):
        return f"type {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, (str, bytes, int, bool, type(None), torch.dtype, torch.device)):
        return None if a == b else f"{a!r} != {b!r}"
    if isinstance(a, float):
        return None if a == b or (math.isnan(a) and math.isnan(b)) else f"{a!r} != {b!r}"
    if isinstance(a, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)):
        return None if a is b else f"{a!r} is not {b!r}"
    if id(a) in pairs:
        return None if pairs[id(a)][0] is b else "shares objects differently"
    pairs[id(a)] = (b, a)  # holds both: an id is unique only while its object lives
    if isinstance(a, torch.Tensor):
        if (a.dtype, a.shape, a.device, a.requires_grad) != (b.dtype, b.shape, b.device,
                                                             b.requires_grad):  # fmt: skip
            return f"tensor {a.dtype} {tuple(a.shape)} {a.device} != {b.dtype} {tuple(b.shape)}"
        if not runtime.same(a.detach(), b.detach()):
            return "tensor values differ"
        if a.is_leaf and b.is_leaf and (a.grad is not None or b.grad is not None):
            return difference(a.grad, b.grad, pairs, depth + 1)
        return None
    if isinstance(a, torch.Generator):
        return None if torch.equal(a.get_state(), b.get_state()) else "generator states differ"
    if isinstance(a, torch.optim.Optimizer):  # a copy leaves out private flags: not those
        ours, theirs = (a.defaults, a.param_groups, dict(a.state)), (b.defaults, b.param_groups,
                                                                      dict(b.state))  # fmt: skip
        return difference(ours, theirs, pairs, depth + 1)
    if isinstance(a, torch.nn.Module):
        found = difference(_state_of(a), _state_of(b), pairs, depth + 1)
        return found or difference(a.state_dict(keep_vars=True), b.state_dict(keep_vars=True),
                                   pairs, depth + 1)  # fmt: skip
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"length {len(a)} != {len(b)}"
        for x, y in zip(a, b, strict=True):
            found = difference(x, y, pairs, depth + 1)
            if found:
                return found
        return None
    if isinstance(a, dict):
        found = difference(list(a.keys()), list(b.keys()), pairs, depth + 1)
        return found or difference(list(a.values()), list(b.values()), pairs, depth + 1)
    if isinstance(a, types.MethodType):
        if a.__func__ is not b.__func__:
            return "different methods"
        return difference(a.__self__, b.__self__, pairs, depth + 1)
    if hasattr(a, "__dict__"):
        return difference(vars(a), vars(b), pairs, depth + 1)
    try:
        return None if bool(a == b) else f"{type(a).__name__} values differ"
    except Exception:  # noqa: BLE001
        return f"{type(a).__name__} values cannot be compared"


# ----------------------------------------------------------------------------------
# recording
# ----------------------------------------------------------------------------------


def _global_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    torch.set_default_dtype(state["dtype"])
    torch.set_grad_enabled(state["grad"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Recorder:
    """Wraps a graded function; records its calls and what each output mutant would do."""

    recording = True  # off while replaying

    def __init__(self, name: str, function, inplace_arguments: list[str]):
        self.name = name
        self.function = function
        self.signature = runtime.signature_of(function)
        self.hows = [(how, None) for how in OUTPUT_HOWS]
        self.hows += [("inplace", argument) for argument in inplace_arguments]
        # output mutant -> how it changes a call: (call number, difference)
        self.effective: dict[tuple[str, str | None], str] = {}
        self.calls: list[dict] = []
        self.count = 0
        self.seconds = 0.0
        self.broken = ""  # why calls could not be recorded
        self.inputs = {"float64": False, "float32": False, "large": False}
        functools_wrapped = getattr(function, "__wrapped__", None)
        self.__wrapped__ = functools_wrapped or function

    def __call__(self, *args, **kwargs):
        if not Recorder.recording or self.signature is None:
            return self.function(*args, **kwargs)
        bound = runtime.bind(self.signature, args, kwargs)
        if bound is None:
            return self.function(*args, **kwargs)
        bound, arguments = bound
        self.count += 1
        record = self.count <= MAX_CALLS and not self.broken
        entry = {}
        if record:
            try:
                entry = {
                    "state": _global_state(),
                    "before": copy_value(arguments, {}),
                    "iterators": [n for n, v in bound.arguments.items() if v is not arguments[n]],
                }
            except Exception as error:  # noqa: BLE001 - then this function is not replayed
                self.broken = f"cannot copy the arguments: {type(error).__name__}: {error}"
                record = False
        large = runtime.is_large(arguments)
        self._note_inputs(arguments, large)
        snapshot = runtime.snapshot_of(arguments)
        start = time.perf_counter()
        try:
            result = self.function(*bound.args, **bound.kwargs)
        except BaseException as error:
            self.seconds += time.perf_counter() - start
            if record:
                entry.update(raised=type(error).__name__, seconds=time.perf_counter() - start)
                self.calls.append(entry)
            raise
        seconds = time.perf_counter() - start
        self.seconds += seconds
        modified = runtime.modified_since(snapshot)
        if record:
            try:
                entry.update(after=copy_value((arguments, result), {}), seconds=seconds)
                self.calls.append(entry)
            except Exception as error:  # noqa: BLE001
                self.broken = f"cannot copy the results: {type(error).__name__}: {error}"
        self._effects(arguments, modified, result, large)
        return result

    def _note_inputs(self, arguments, large: bool) -> None:
        self.inputs["large"] |= large
        for tensor in runtime.tensors_in(arguments):
            if tensor.dtype == torch.float64:
                self.inputs["float64"] = True
            elif tensor.dtype == torch.float32:
                self.inputs["float32"] = True

    def _effects(self, arguments, modified, result, large) -> None:
        """Which output mutants would change this call's outputs."""
        for how, argument in self.hows:
            if (how, argument) in self.effective:
                continue
            memo: dict = {}
            try:
                spoilt_arguments, spoilt = copy_value((arguments, result), memo)
                copies = [memo[id(t)] for t in modified if id(t) in memo]
                spoilt = runtime.perturb(how, argument, spoilt_arguments, copies, spoilt, large)
                changed = difference((arguments, result), (spoilt_arguments, spoilt))
            except Exception as error:  # noqa: BLE001 - if unsure, the mutant is graded
                changed = f"{type(error).__name__} spoiling it: {error}"
            if changed:
                self.effective[(how, argument)] = f"call {self.count}: {changed}"


# ----------------------------------------------------------------------------------
# replaying
# ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _deadline(seconds: float):
    def expire(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def replay(function, recorder: Recorder, budget: float) -> str:
    """The status of a mutated function: "equivalent", "differs (where)" or "undecided"."""
    if recorder.broken or recorder.count > len(recorder.calls):
        limit = "undecided"  # some calls were not recorded: never "equivalent"
    else:
        limit = "equivalent"
    signature = inspect.signature(function)
    spent = 0.0
    for number, call in enumerate(recorder.calls, start=1):
        if spent > budget:
            return "undecided"
        arguments = copy_value(call["before"], {})
        bound_arguments = dict(arguments)
        for name in call["iterators"]:
            bound_arguments[name] = iter(arguments[name])
        bound = inspect.BoundArguments(signature, bound_arguments)
        _restore(call["state"])
        start = time.perf_counter()
        try:
            with _deadline(max(5.0, 20 * call["seconds"], budget - spent)):
                result = function(*bound.args, **bound.kwargs)
        except _Timeout:
            return f"differs (call {number} ran too long)"
        except Exception as error:  # noqa: BLE001
            if call.get("raised") != type(error).__name__:
                return f"differs (call {number} raised {type(error).__name__})"
            continue
        finally:
            spent += time.perf_counter() - start
        if "raised" in call:
            return f"differs (call {number} did not raise {call['raised']})"
        found = difference(call["after"], (arguments, result))
        if found:
            return f"differs (call {number}: {found})"
    return limit


# ----------------------------------------------------------------------------------
# the notebook
# ----------------------------------------------------------------------------------


def _code(source: str) -> str:
    """A cell's code without IPython magics and shell lines (the tests use none)."""
    return "\n".join(
        "pass" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )


def run(spec: dict) -> dict:
    """Records the notebook's calls, then judges each mutant (see the module's doc)."""
    started = time.perf_counter()
    notebook = nbformat.read(spec["notebook"], as_version=4)
    functions: dict[str, str] = spec["functions"]  # cell -> function
    inplace = spec.get("inplace", {})  # function -> argument names
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    namespace = main.__dict__
    recorders: dict[str, Recorder] = {}
    failed: dict[str, str] = {}
    output = io.StringIO()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    exec(compile(_code(cell.source), f"<cell {grade_id}>", "exec"), namespace)  # noqa: S102
        except BaseException as error:  # noqa: BLE001 - a failing test is reported
            failed[grade_id] = f"{type(error).__name__}: {str(error)[:300]}"
        name = functions.get(grade_id)
        if name and callable(namespace.get(name)):
            recorders[name] = Recorder(name, namespace[name], inplace.get(name, []))
            namespace[name] = recorders[name]
    recording_seconds = time.perf_counter() - started
    Recorder.recording = False
    statuses = {}
    for mutant in spec["mutants"]:
        recorder = recorders.get(mutant["function"])
        if recorder is None:
            statuses[mutant["id"]] = "undecided (the function was never defined)"
        elif mutant["kind"] == "output":
            statuses[mutant["id"]] = _judge_output(mutant, recorder)
        else:
            budget = min(spec.get("budget", 60.0), max(10.0, 2 * recorder.seconds))
            statuses[mutant["id"]] = _judge_code(mutant, namespace, recorder, budget, output)
    torch.set_default_dtype(torch.float32)
    return {
        "statuses": statuses,
        "failed_cells": failed,
        "functions": {
            name: {"calls": r.count, "seconds": r.seconds, "inputs": r.inputs, "broken": r.broken}
            for name, r in recorders.items()
        },
        "recording_seconds": recording_seconds,
        "seconds": time.perf_counter() - started,
    }


def _judge_output(mutant: dict, recorder: Recorder) -> str:
    """An output mutant that changes no call is equivalent, unless it spoils a kind of
    input or output the tests never give (float64 outputs, inputs above 50) while the
    function has floating outputs: then it is unexercised."""
    key = (mutant["how"], mutant.get("argument"))
    if key in recorder.effective:
        return f"differs ({recorder.effective[key]})"
    if ("scale", None) in recorder.effective and mutant["how"] in UNEXERCISED:
        return f"unexercised ({UNEXERCISED[mutant['how']]})"
    return "equivalent"


def _judge_code(mutant: dict, namespace: dict, recorder: Recorder, budget: float, output) -> str:
    scope = dict(namespace)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            exec(compile(mutant["code"], f"<mutant {mutant['id']}>", "exec"), scope)  # noqa: S102
            function = scope[mutant["function"]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return replay(function, recorder, budget)
    except Exception as error:  # noqa: BLE001 - e.g. a mutant that does not compile
        return f"differs ({type(error).__name__} defining it)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as file:
        spec = json.load(file)
    result = run(spec)
    with open(argv[1], "w", encoding="utf-8") as file:
        json.dump(result, file, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
