"""Adam (``torch.optim.Adam``) and AdamW (``torch.optim.AdamW``)."""

from __future__ import annotations

from typing import Any

import torch

from ._base import KernelOptimizer
from ._validate import _check_adam_args
from .kernels import adam_step, adamw_step


def _check_betas(betas: tuple[float, float]) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")


class Adam(KernelOptimizer):
    """Adam with coupled L2 weight decay, as ``torch.optim.Adam``.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.adam_step`::

        t <- t + 1                                   # before the update: first step t = 1
        g <- grad + weight_decay * theta             # coupled: the penalty enters m and v
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    with bias-corrected ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``;
    ``eps`` goes outside the square root, after bias correction, as torch. For weight
    decay that does not pass through ``m``/``v`` use :class:`AdamW`.

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float): Learning rate, ``>= 0``.
        betas (tuple[float, float]): ``(beta1, beta2)``, each in ``[0, 1)``.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): L2 penalty coefficient added to the gradient, ``>= 0``.

    State per parameter (torch's keys): ``"step"`` (``t``, a Python ``int``, see
    :class:`~npfl_lib.optim._base.KernelOptimizer`), ``"exp_avg"`` (``m``) and
    ``"exp_avg_sq"`` (``v``), zeros before the first step.

    Raises:
        ValueError: An argument out of range, naming it.
    """

    _kernel = staticmethod(adam_step)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
    ) -> None:
        _check_betas(betas)
        _check_adam_args(lr, betas[0], betas[1], eps, weight_decay, names=("betas[0]", "betas[1]"))
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        betas = group["betas"]
        _check_betas(betas)
        _check_adam_args(
            group["lr"],
            betas[0],
            betas[1],
            group["eps"],
            group["weight_decay"],
            names=("betas[0]", "betas[1]"),
        )

    def _update(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        step = state["step"] + 1
        beta1, beta2 = group["betas"]
        self._kernel(
            param,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            step=step,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )
        state["step"] = step


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.adamw_step`::

        theta <- theta * (1 - lr * weight_decay)     # the current lr, so schedules scale it
        (Adam update with weight_decay = 0)

    The decay never passes through ``m`` or ``v``, so every weight shrinks by the same
    factor whatever its gradient history. Everything else is as :class:`Adam`.

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float): Learning rate, ``>= 0``.
        betas (tuple[float, float]): ``(beta1, beta2)``, each in ``[0, 1)``.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): Decoupled decay coefficient ``lambda``, ``>= 0``.

    Raises:
        ValueError: An argument out of range, naming it.
    """

    _kernel = staticmethod(adamw_step)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
