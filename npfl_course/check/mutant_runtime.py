"""The output mutants of ``npfl-course check``: a graded function wrapped in a near-miss.

A wrapper calls the instructor's solution and then spoils what it produced in one small,
plausible way (:data:`HOWS`): the returned values, and the tensors of its arguments
that it changed in place (an in-place function's outputs). ``npfl_course.check.mutants``
embeds this file, indented, in the body of a function in a mutant's solution cell, so it
imports what it needs itself, names everything with a leading underscore (no clash with
the notebook's names) and is read from top to bottom with no module-level state; the
probe (``npfl_course.check.probe``) imports it to tell which wrappers change anything
on the calls the tests make.
"""

import functools as _functools
import inspect as _inspect
import math as _math
import struct as _struct
from collections.abc import Iterator as _Iterator

import torch as _torch

_HOWS = ("scale", "float32", "nan", "element", "inplace")
_LARGE = 50.0  # "nan": inputs above this in magnitude give nan outputs
_FACTOR = 1.001  # "scale": outputs off by this factor
_MAX_DEPTH = 6  # how deep containers and objects are searched for tensors


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _children(value):
    """What may hold tensors inside ``value`` (never consumes an iterator)."""
    if isinstance(value, _torch.Tensor):
        grad = value.grad if value.is_leaf else None
        return [] if grad is None else [grad]
    if isinstance(value, _torch.nn.Module):
        return [*value.parameters(), *value.buffers()]
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if isinstance(value, (str, bytes, _Iterator, type)) or callable(value):
        return []
    if type(value).__module__ == "builtins" or not hasattr(value, "__dict__"):
        return []
    return [v for k, v in vars(value).items() if not k.startswith("__")]


def _walk(value, depth=0, seen=None):
    """Every object reachable from ``value`` (each once), depth first."""
    seen = set() if seen is None else seen
    if id(value) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(value))
    yield value
    for child in _children(value):
        yield from _walk(child, depth + 1, seen)


def _tensors(value):
    return [v for v in _walk(value) if isinstance(v, _torch.Tensor)]


def _large(arguments):
    """Whether any floating input is a finite number above _LARGE in magnitude."""
    for value in _walk(arguments):
        if isinstance(value, float) and _math.isfinite(value) and abs(value) > _LARGE:
            return True
        if isinstance(value, _torch.Tensor) and value.is_floating_point() and value.numel():
            finite = value.detach()[_torch.isfinite(value.detach())]
            if finite.numel() and finite.abs().max().item() > _LARGE:
                return True
    return False


def _same(a, b):
    """Equal values, nan equal to nan (a, b: tensors of one shape and dtype)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if _torch.equal(a, b):
        return True
    if not a.is_floating_point():
        return False
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _snapshot(arguments):
    """(tensor, copy of its values, its .grad) for every tensor of the arguments."""
    pairs = []
    for tensor in _tensors(arguments):
        grad = tensor.grad if tensor.is_leaf else None
        pairs.append((tensor, tensor.detach().clone(), grad))
    return pairs


def _modified(snapshot):
    """The tensors a call changed in place, and the gradients it set anew."""
    changed = []
    for tensor, before, grad in snapshot:
        if not _same(tensor.detach(), before):
            changed.append(tensor)
        now = tensor.grad if tensor.is_leaf else None
        if now is not None and now is not grad:
            changed.append(now)
    return changed


def _float32(value):
    """``value`` rounded to float32 and back (a float64 tensor keeps its dtype)."""
    if isinstance(value, _torch.Tensor):
        return value.float().to(value.dtype) if value.dtype == _torch.float64 else value
    try:
        return _struct.unpack("f", _struct.pack("f", value))[0]
    except OverflowError:
        return _math.copysign(_math.inf, value)


def _changed_number(value):
    if isinstance(value, int):
        return value + 1
    return value + 0.01 * (1 + abs(value)) if _math.isfinite(value) else 0.0


def _changed_last(tensor):
    """The new value of the tensor's last element."""
    flat = tensor.detach().reshape(-1)
    if tensor.dtype == _torch.bool:
        return not bool(flat[-1])
    if not tensor.is_floating_point():
        if flat.numel() > 1 and flat[-1] != flat[0]:
            return flat[0].item()  # one index repeats another
        return flat[-1].item() + 1
    return _changed_number(flat[-1].item())


def _spoil(how, value, in_place):
    """``value`` spoilt: a tensor changed in place if ``in_place``, else a new tensor or
    number (tensors that require grad stay part of the autograd graph)."""
    if isinstance(value, _torch.Tensor):
        if how != "element" and not value.is_floating_point():
            return value
        if in_place:
            with _torch.no_grad():
                if how == "scale":
                    value.mul_(_FACTOR)
                elif how == "float32":
                    value.copy_(_float32(value))
                elif how == "nan":
                    value.fill_(_math.nan)
                else:
                    value.view(-1)[-1] = _changed_last(value)
            return value
        if how == "scale":
            return value * _FACTOR
        if how == "float32":
            return _float32(value)
        if how == "nan":
            return value * _math.nan
        changed = value.clone(memory_format=_torch.contiguous_format)
        changed.view(-1)[-1] = _changed_last(value)
        return changed
    if how == "element":
        return _changed_number(value)
    if not isinstance(value, float):
        return value
    if how == "scale":
        return value * _FACTOR
    return _float32(value) if how == "float32" else _math.nan


def _visit(value, leaf, inputs, depth=0):
    """``value`` rebuilt with ``leaf(x, in_place)`` applied to each output leaf, in order:
    tensors and numbers (``in_place`` False: the return value replaces them) and the
    parameters of modules the call made (``in_place`` True). ``inputs``: the ids of
    what the arguments hold; such modules are left alone."""
    if isinstance(value, _torch.Tensor):
        return leaf(value, False) if value.numel() else value
    if _is_number(value):
        return leaf(value, False)
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, _torch.nn.Module):
        if id(value) not in inputs:
            for parameter in value.parameters():
                if parameter.numel() and id(parameter) not in inputs:
                    leaf(parameter, True)
        return value
    if isinstance(value, dict):
        items = [(key, _visit(item, leaf, inputs, depth + 1)) for key, item in value.items()]
        try:
            return type(value)(items)
        except TypeError:
            return dict(items)
    if isinstance(value, (list, tuple)):
        items = [_visit(item, leaf, inputs, depth + 1) for item in value]
        if isinstance(value, list):
            return items
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _perturb(how, argument, arguments, modified, result, large):
    """Spoils one call's outputs as ``how`` says; returns the result to give back.

    Args:
        how: One of _HOWS.
        argument: For "inplace", the name of the argument to change.
        arguments: The call's arguments by name (iterators already made lists).
        modified: The tensors the call changed in place (see _modified).
        result: What the call returned.
        large: For "nan", whether an input was large (see _large).
    """
    if how == "nan" and not large:
        return result
    inputs = {id(v) for v in _walk(arguments)}
    done = {id(t) for t in modified}
    if how == "inplace":
        with _torch.no_grad():
            for tensor in _tensors(arguments.get(argument)):
                if id(tensor) in done or not tensor.numel():
                    continue
                if tensor.dtype == _torch.bool:
                    tensor.logical_not_()
                else:
                    tensor.add_(1)
        return result
    if how == "element":
        count = []
        _visit(result, lambda x, in_place: count.append(x) or x, inputs)
        if not count:  # an in-place function: its last changed tensor
            changed = [t for t in modified if t.numel()]
            if changed:
                _spoil(how, changed[-1], in_place=True)
            return result
        index = iter(range(len(count)))

        def last(x, in_place):
            if next(index) != len(count) - 1:
                return x
            return _spoil(how, x, in_place or id(x) in done)

        return _visit(result, last, inputs)
    for tensor in modified:
        _spoil(how, tensor, in_place=True)

    def every(x, in_place):
        if isinstance(x, _torch.Tensor) and id(x) in done:
            return x  # spoilt above
        if in_place:
            done.add(id(x))
        return _spoil(how, x, in_place)

    return _visit(result, every, inputs)


def _signature(function):
    try:
        return _inspect.signature(function)
    except (TypeError, ValueError):
        return None


def _bind(signature, args, kwargs):
    """(bound arguments with iterators replaced by fresh ones, arguments by name with
    iterators as lists), or None if the call does not fit the signature."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    arguments = {}
    for name, value in list(bound.arguments.items()):
        if isinstance(value, _Iterator) and not isinstance(value, _torch.Tensor):
            items = list(value)
            bound.arguments[name] = iter(items)
            value = items
        arguments[name] = value
    return bound, arguments


def _wrap(function, how, argument=None):
    """``function`` whose every call has its outputs spoilt as ``how`` says."""
    signature = _signature(function)

    @_functools.wraps(function)
    def _mutant(*args, **kwargs):
        bound = _bind(signature, args, kwargs) if signature is not None else None
        if bound is None:
            return function(*args, **kwargs)
        bound, arguments = bound
        large = how == "nan" and _large(arguments)
        snapshot = _snapshot(arguments)
        result = function(*bound.args, **bound.kwargs)
        return _perturb(how, argument, arguments, _modified(snapshot), result, large)

    return _mutant


# The probe's surface (npfl_course.check.probe); in a mutant's cell they are locals of
# the factory, as everything above.
signature_of = _signature
bind = _bind
is_large = _large
snapshot_of = _snapshot
modified_since = _modified
tensors_in = _tensors
same = _same
perturb = _perturb
