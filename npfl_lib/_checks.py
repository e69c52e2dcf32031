"""Argument checks shared by the library.

Every public function validates its arguments with these helpers, so a student who
passes a bad value gets an error that names the argument and the allowed values
instead of a silently wrong result.
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    """Raises ValueError unless ``reduction`` is "none", "mean" or "sum"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_float_tensor(name: str, tensor: torch.Tensor) -> None:
    """Raises TypeError unless ``tensor`` is a floating-point torch.Tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (e.g. torch.float32), got {tensor.dtype}; "
            f"convert it with {name}.float()"
        )


def check_index_tensor(name: str, tensor: torch.Tensor) -> None:
    """Raises TypeError unless ``tensor`` is an integer torch.Tensor of class indices."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices (torch.int64), got {tensor.dtype}")


def check_in_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raises ValueError unless ``low <= value <= high`` (bounds inclusive as requested).

    Args:
        name: The argument's name, quoted in the message.
        value: The value to check; NaN is always rejected.
        low: Lower bound (``-math.inf`` for none).
        high: Upper bound (``math.inf`` for none).
        low_inclusive: Whether ``value == low`` is allowed.
        high_inclusive: Whether ``value == high`` is allowed.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    ok_low = number >= low if low_inclusive else number > low
    ok_high = number <= high if high_inclusive else number < high
    if math.isnan(number) or not (ok_low and ok_high):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def check_nonnegative(name: str, value: float) -> None:
    """Raises ValueError unless ``value >= 0``."""
    check_in_range(name, value, 0.0, math.inf)


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raises ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
