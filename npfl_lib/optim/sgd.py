"""Stochastic gradient descent with momentum (``torch.optim.SGD``)."""

from __future__ import annotations

from typing import Any

import torch

from ._base import KernelOptimizer
from ._validate import _check_flag, _check_sgd_args
from .kernels import sgd_step


class SGD(KernelOptimizer):
    """SGD with optional (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.sgd_step`::

        g <- -grad if maximize else grad
        g <- g + weight_decay * theta
        v <- g (first step),  momentum * v + (1 - dampening) * g (later steps)
        theta <- theta - lr * (g + momentum * v if nesterov else v)

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float | torch.Tensor): Learning rate, ``>= 0`` (a 1-element tensor too).
        momentum (float): Momentum factor, ``>= 0`` (0 disables momentum).
        dampening (float): Dampening for momentum (not applied on the first step).
        weight_decay (float): L2 penalty coefficient added to the gradient, ``>= 0``.
        nesterov (bool): Nesterov momentum; requires ``momentum > 0`` and
            ``dampening == 0``.
        maximize (bool): Ascend the objective instead of descending it.
        foreach, differentiable, fused: torch's implementation choices, accepted only at
            the value npfl_lib implements (``foreach``/``fused``: ``None`` or ``False``;
            ``differentiable``: ``False``); see :class:`~npfl_lib.optim._base.KernelOptimizer`.

    State per parameter (torch's key): ``"momentum_buffer"``, only when
    ``momentum != 0``, set from the gradient at the parameter's first step. Sparse
    gradients are not supported (torch's SGD accepts them).

    Raises:
        ValueError: An argument out of range, or a refused option value, naming it.
        TypeError: A flag that is not a bool.
    """

    _fixed_options = ("foreach", "differentiable", "fused")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_sgd_args(
            group["lr"],
            group["momentum"],
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
        )
        _check_flag("maximize", group["maximize"])

    def _update(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        buffer = state.get("momentum_buffer")
        first_step = buffer is None
        if group["momentum"] != 0 and first_step:
            buffer = torch.empty_like(param)  # the kernel fills it from the gradient
        sgd_step(
            param,
            grad,
            buffer,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            first_step=first_step,
            maximize=group["maximize"],
        )
        if group["momentum"] != 0:
            state["momentum_buffer"] = buffer
