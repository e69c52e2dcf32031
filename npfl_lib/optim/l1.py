"""L1 regularization as a clipped ("truncated") update of the weights."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .._checks import check_float_tensor, check_nonnegative


@torch.no_grad()
def l1_step_(parameters: torch.Tensor | Iterable[torch.Tensor], lr: float, l1: float) -> None:
    """Applies the lecture's L1 update in place: ``theta -= min(lr * l1, |theta|) * sign(theta)``.

    The gradient of ``l1 * |theta|`` is ``l1 * sign(theta)``, and a plain gradient step
    ``theta -= lr * l1 * sign(theta)`` would overshoot zero and make small weights
    oscillate around it. Clipping the step at ``|theta|`` stops exactly at zero
    instead: weights smaller than ``lr * l1`` become exactly ``0`` (and stay there,
    since ``sign(0) = 0``), larger ones shrink towards zero by ``lr * l1``, and no
    weight ever changes sign. This is the proximal step of the L1 penalty (soft
    thresholding).

    Call it after ``optimizer.step()`` with the same ``lr``, on the weights only, e.g.
    ``l1_step_([p for _, p in regularized_parameters(model)], lr, l1)``.

    Args:
        parameters (torch.Tensor | Iterable[torch.Tensor]): A tensor or tensors, updated
            in place (under ``torch.no_grad()``).
        lr (float): Learning rate, ``>= 0``.
        l1 (float): L1 penalty coefficient ``lambda``, ``>= 0``.

    Raises:
        ValueError: Negative ``lr`` or ``l1``.
        TypeError: A parameter that is not a floating-point tensor.
    """
    check_nonnegative("lr", lr)
    check_nonnegative("l1", l1)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    for index, param in enumerate(parameters):
        check_float_tensor(f"parameters[{index}]", param)
    for param in parameters:
        shrink = param.abs().clamp(max=lr * l1)  # min(lr * l1, |theta|)
        param.sub_(shrink * param.sign())
