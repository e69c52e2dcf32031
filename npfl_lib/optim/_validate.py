"""Argument checks of the optimizers, kept apart so ``kernels.py`` reads like the lecture.

Each ``_check_*_args`` enforces ``torch.optim``'s rules for one optimizer and is used by
both the kernel and the class (at construction and again at every step, since a
scheduler or ``add_param_group`` may change a group's values).
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_float_tensor, check_in_range, check_nonnegative, check_same_shape


def _check_dense(name: str, tensor: torch.Tensor) -> None:
    if tensor.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense tensor, got layout {tensor.layout}; these optimizers do "
            "not support sparse gradients (e.g. from torch.nn.Embedding(sparse=True)): use "
            "sparse=False or torch.optim.SparseAdam"
        )


def _check_tensors(param: torch.Tensor, grad: torch.Tensor, **state: torch.Tensor | None) -> None:
    """Checks ``param``, ``grad`` and the given state tensors (``None`` ones are skipped)."""
    for name, tensor in {"param": param, "grad": grad, **state}.items():
        if tensor is None:
            continue
        check_float_tensor(name, tensor)
        _check_dense(name, tensor)
        if name != "param":
            check_same_shape("param", param, name, tensor)


def _check_number(name: str, value: float) -> None:
    check_in_range(name, value, -math.inf, math.inf)


def _check_sgd_args(
    lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool
) -> None:
    """Raises ValueError/TypeError for SGD hyperparameters that torch.optim.SGD rejects."""
    check_nonnegative("lr", lr)
    check_nonnegative("momentum", momentum)
    _check_number("dampening", dampening)
    check_nonnegative("weight_decay", weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "nesterov=True requires momentum > 0 and dampening == 0, "
            f"got momentum={momentum}, dampening={dampening}"
        )


def _check_rmsprop_args(
    lr: float, alpha: float, eps: float, weight_decay: float, momentum: float
) -> None:
    """Raises ValueError/TypeError for RMSprop hyperparameters that torch.optim.RMSprop rejects."""
    check_nonnegative("lr", lr)
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("momentum", momentum)


def _check_adam_args(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, names=("beta1", "beta2")
) -> None:
    """Raises ValueError/TypeError for Adam(W) hyperparameters that torch.optim.Adam rejects."""
    check_nonnegative("lr", lr)
    check_in_range(names[0], beta1, 0.0, 1.0, high_inclusive=False)
    check_in_range(names[1], beta2, 0.0, 1.0, high_inclusive=False)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int (1 for the first update), got {type(step).__name__}")
    check_in_range("step", step, 1, math.inf)
