"""Adam (``torch.optim.Adam``) and AdamW (``torch.optim.AdamW``)."""

from __future__ import annotations

from typing import Any

import torch

from ._base import KernelOptimizer, _zero_step
from ._validate import _check_adam_args, _check_betas, _check_flag
from .kernels import adam_step, adamw_step


class Adam(KernelOptimizer):
    """Adam with coupled L2 weight decay, as ``torch.optim.Adam``.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.adam_step`::

        t <- t + 1                                   # before the update: first step t = 1
        g <- -grad if maximize else grad
        g <- g + weight_decay * theta                # coupled: the penalty enters m and v
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        v_max <- max(v_max, v)                       # amsgrad only; v_hat uses v_max then
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    with bias-corrected ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``;
    ``eps`` goes outside the square root, after bias correction, as torch. For weight
    decay that does not pass through ``m``/``v`` use :class:`AdamW` (or, as in torch,
    ``decoupled_weight_decay=True``, which makes this optimizer an AdamW).

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float | torch.Tensor): Learning rate, ``>= 0`` (a 1-element tensor too).
        betas (tuple[float, float]): ``(beta1, beta2)``, each in ``[0, 1)``; numbers, not
            tensors.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): L2 penalty coefficient added to the gradient, ``>= 0``.
        amsgrad (bool): Normalize by the largest ``v`` so far (Reddi et al., 2018).
        capturable (bool): Keep the step counter on the parameter's device and compute
            the bias corrections there, as torch's ``capturable=True``, so that a step
            can be captured in a CUDA graph (what ``npfl_lib.Trainer`` does on a GPU); the
            same update to float rounding, see :func:`~npfl_lib.optim.kernels.adam_step`.
        foreach, differentiable, fused: torch's implementation choices, accepted only at
            the value npfl_lib implements (``foreach``/``fused``: ``None`` or ``False``;
            ``differentiable``: ``False``); see
            :class:`~npfl_lib.optim._base.KernelOptimizer`.
        maximize (bool): Ascend the objective instead of descending it.
        decoupled_weight_decay (bool): Decay the weights directly, as :class:`AdamW`.

    State per parameter (torch's keys): ``"step"`` (``t``, a Python ``int``, or with
    ``capturable`` a 0-dim float tensor on the parameter's device, see
    :class:`~npfl_lib.optim._base.KernelOptimizer`), ``"exp_avg"`` (``m``),
    ``"exp_avg_sq"`` (``v``) and, with ``amsgrad``, ``"max_exp_avg_sq"`` (``v_max``),
    zeros before the first step.

    Raises:
        ValueError: An argument out of range, or a refused option value, naming it.
        TypeError: A flag that is not a bool.
    """

    _fixed_options = ("foreach", "differentiable", "fused")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, list) else betas,  # checked with the rest
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
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
        for flag in ("amsgrad", "maximize", "decoupled_weight_decay", "capturable"):
            _check_flag(flag, group[flag])

    def _update(
        self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        if not state:
            state["step"] = _zero_step(param, group)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        # Created on demand, so a group switched to amsgrad later starts at zero.
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
        step = self._current_step(state, param, group)
        captured = isinstance(step, torch.Tensor)
        if captured:
            step.add_(1)  # in place, as torch: a CUDA graph replays the add on this tensor
        else:
            step += 1
        beta1, beta2 = group["betas"]
        kernel = adamw_step if group["decoupled_weight_decay"] else adam_step
        try:
            kernel(
                param,
                grad,
                state["exp_avg"],
                state["exp_avg_sq"],
                state.get("max_exp_avg_sq"),
                step=step,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
            )
        except BaseException:
            if captured:
                step.sub_(1)  # the kernel checks before it changes anything: undo the count
            raise
        state["step"] = step


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    The update of each parameter is :func:`~npfl_lib.optim.kernels.adamw_step`::

        theta <- theta * (1 - lr * weight_decay)     # the current lr, so schedules scale it
        (Adam update with weight_decay = 0)

    The decay never passes through ``m`` or ``v``, so every weight shrinks by the same
    factor whatever its gradient history. Everything else is as :class:`Adam`; like
    torch's AdamW, this is :class:`Adam` with ``decoupled_weight_decay=True``, which it
    keeps even when it loads a state dict of an Adam.

    Args:
        params: Parameters or parameter-group dicts, as for any ``torch.optim`` optimizer.
        lr (float | torch.Tensor): Learning rate, ``>= 0`` (a 1-element tensor too).
        betas (tuple[float, float]): ``(beta1, beta2)``, each in ``[0, 1)``.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): Decoupled decay coefficient ``lambda``, ``>= 0``.
        amsgrad (bool): Normalize by the largest ``v`` so far.
        maximize, capturable, foreach, differentiable, fused: as :class:`Adam`.

    Raises:
        ValueError: An argument out of range, or a refused option value, naming it.
        TypeError: A flag that is not a bool.
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch.optim.AdamW.__setstate__
