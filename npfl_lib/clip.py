"""Gradient clipping, as in ``torch.nn.utils``.

An occasional huge gradient (a steep cliff in the loss surface, common in RNNs) can
throw the parameters far away in a single step. Clipping bounds the step:

* ``clip_grad_value_`` clamps every gradient element into ``[-clip_value, clip_value]``
  (this changes the gradient's direction);
* ``clip_grad_norm_`` rescales all gradients together so that their *global* norm,
  the norm of all gradients concatenated into one vector, is at most ``max_norm``
  (this keeps the direction).

Both modify ``.grad`` in place, skip parameters whose ``.grad`` is None, and are called
between ``loss.backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ._checks import check_float_tensor, check_in_range, check_nonnegative

__all__ = ["clip_grad_value_", "clip_grad_norm_"]


def _grads(parameters: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for i, parameter in enumerate(parameters):
        check_float_tensor(f"parameters[{i}]", parameter)
        if parameter.grad is not None:
            grads.append(parameter.grad)
    return grads


def _norm(x: torch.Tensor, norm_type: float) -> torch.Tensor:
    """The p-norm of ``x`` seen as one vector: ``max |x|`` for p = inf."""
    if norm_type == math.inf:
        return x.abs().amax()
    return x.abs().pow(norm_type).sum().pow(1.0 / norm_type)


@torch.no_grad()
def clip_grad_value_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_value: float) -> None:
    """Clamps every gradient element into ``[-clip_value, clip_value]`` in place.

    Args:
        parameters (torch.Tensor | Iterable[torch.Tensor]): A tensor or an iterable of
            tensors (e.g. ``model.parameters()``); those with ``.grad`` None are skipped.
        clip_value (float): Non-negative bound on the absolute value of each element.

    Raises:
        ValueError: If ``clip_value`` is negative or NaN.
        TypeError: If a parameter is not a floating-point tensor.
    """
    check_nonnegative("clip_value", clip_value)
    clip_value = float(clip_value)
    for grad in _grads(parameters):
        grad.clamp_(min=-clip_value, max=clip_value)


@torch.no_grad()
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> torch.Tensor:
    """Rescales all gradients together so that their global norm is at most ``max_norm``.

    The total norm is the ``norm_type``-norm of all gradients concatenated into one
    vector (computed, as torch does, as the norm of the per-tensor norms), NOT a
    separate norm per tensor. Every gradient is then multiplied in place by
    ``min(1, max_norm / (total_norm + 1e-6))``: the 1e-6 is added to the norm in the
    denominator so that zero gradients do not divide by zero. Small gradients are
    never scaled up. The scaling is done with tensor operations, without a Python
    ``if``, so no GPU-to-CPU synchronization is needed.

    Args:
        parameters (torch.Tensor | Iterable[torch.Tensor]): A tensor or an iterable of
            tensors (e.g. ``model.parameters()``); those with ``.grad`` None are skipped.
        max_norm (float): Non-negative largest allowed total norm.
        norm_type (float): The p of the p-norm, positive; ``math.inf`` (or ``"inf"``)
            for the max-norm ``max |g|``.
        error_if_nonfinite (bool): If True, raise when the total norm is NaN or
            infinite instead of scaling the gradients by it (which would turn them into
            zeros or NaNs).

    Returns:
        torch.Tensor: The total norm of the gradients BEFORE clipping, a 0-dim tensor on
        the first gradient's device (``torch.tensor(0.0)`` when no parameter has a
        gradient).

    Raises:
        ValueError: If ``max_norm`` is negative or ``norm_type`` is not positive.
        TypeError: If a parameter is not a floating-point tensor.
        RuntimeError: If ``error_if_nonfinite`` and the total norm is NaN or infinite.
    """
    check_nonnegative("max_norm", max_norm)
    check_in_range("norm_type", norm_type, 0.0, math.inf, low_inclusive=False)
    norm_type = float(norm_type)
    # Empty gradients add nothing to any norm (torch's inf-norm would fail on them).
    grads = [grad for grad in _grads(parameters) if grad.numel() > 0]
    if not grads:
        return torch.tensor(0.0)

    device = grads[0].device
    norms = torch.stack([_norm(grad, norm_type).to(device) for grad in grads])
    total_norm = _norm(norms, norm_type)

    if error_if_nonfinite and not torch.isfinite(total_norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`"
        )

    clip_coef = (float(max_norm) / (total_norm + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(clip_coef.to(grad.device))
    return total_norm
