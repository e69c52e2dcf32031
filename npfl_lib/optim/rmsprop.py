"""RMSprop (``torch.optim.RMSprop``)."""

from __future__ import annotations

from typing import Any

import torch

from ._base import KernelOptimizer, _zero_step
from ._validate import _check_flag, _check_rmsprop_args
from .kernels import rmsprop_step


class RMSprop(KernelOptimizer):
    """RMSprop, as ``torch.optim.RMSprop``: divide the gradient by a running RMS.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.rmsprop_step`::

        g <- -grad if maximize else grad
        g <- g + weight_decay * theta
        v <- alpha * v + (1 - alpha) * g^2
        theta <- theta - lr * g / (sqrt(v) + eps)      # eps outside the sqrt

    with ``v - m^2`` (``m`` the running mean of ``g``) in place of ``v`` when
    ``centered``, and a momentum buffer on ``g / (sqrt(v) + eps)`` when ``momentum > 0``.
    There is no bias correction.

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float | torch.Tensor): Learning rate, ``>= 0`` (a 1-element tensor too).
        alpha (float): Smoothing constant of the running averages, ``>= 0``.
        eps (float): Added to the square root for stability, ``>= 0``.
        weight_decay (float): L2 penalty coefficient added to the gradient, ``>= 0``.
        momentum (float): Momentum factor, ``>= 0``.
        centered (bool): Normalize by the estimated variance of the gradient.
        capturable (bool): Keep the step counter on the parameter's device, as torch's
            ``capturable=True`` (the update does not use it: the same update bit for
            bit), so that a step can be captured in a CUDA graph.
        foreach, differentiable: torch's implementation choices, accepted only at the
            value npfl_lib implements (``foreach``: ``None`` or ``False``;
            ``differentiable``: ``False``); see
            :class:`~npfl_lib.optim._base.KernelOptimizer`.
        maximize (bool): Ascend the objective instead of descending it.

    State per parameter (torch's keys): ``"step"`` (an ``int``, or with ``capturable`` a
    0-dim tensor on the parameter's device; counted although the update does not use
    it), ``"square_avg"``, and ``"momentum_buffer"`` /
    ``"grad_avg"`` when momentum / centering is on; all start at zero.

    Raises:
        ValueError: An argument out of range, or a refused option value, naming it.
        TypeError: A flag that is not a bool.
    """

    _fixed_options = ("foreach", "differentiable")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_rmsprop_args(
            group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"]
        )
        for flag in ("centered", "maximize", "capturable"):
            _check_flag(flag, group[flag])

    def _update(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        if not state:
            state["step"] = _zero_step(param, group)
            state["square_avg"] = torch.zeros_like(param)
        # Created on demand, so a group switched to momentum/centered later starts at zero.
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = torch.zeros_like(param)
        rmsprop_step(
            param,
            grad,
            state["square_avg"],
            state.get("grad_avg"),
            state.get("momentum_buffer"),
            lr=group["lr"],
            alpha=group["alpha"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            centered=group["centered"],
            maximize=group["maximize"],
        )
        step = self._current_step(state, param, group)
        if isinstance(step, torch.Tensor):
            step.add_(1)  # in place, as torch: a CUDA graph replays the add on this tensor
        else:
            state["step"] = step + 1
