"""Argument checks of the optimizers, kept apart so ``kernels.py`` reads like the lecture.

Each ``_check_*_args`` enforces ``torch.optim``'s rules for one optimizer and is used by
both the kernel and the class (at construction and again at every step, since a
scheduler or ``add_param_group`` may change a group's values).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

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


def _capturing(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lives on a GPU while a CUDA graph is being captured there.

    Its value cannot be read then (a read waits for the GPU, which a capture forbids); it
    was checked at the eager steps before the capture, and a replay runs no Python.
    """
    return tensor.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _check_lr(lr: float | torch.Tensor) -> None:
    """``lr >= 0``, a number or (as torch allows) a 1-element tensor."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(
                "lr must be a number or a 1-element tensor, got a tensor of shape "
                f"{tuple(lr.shape)}"
            )
        if _capturing(lr):
            return
    check_nonnegative("lr", lr)


def _check_flag(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


# torch.optim options that npfl_lib accepts only at the value it implements: each name, the
# values accepted and why the others are refused (the README's table of refused options).
FIXED_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "foreach": (
        (None, False),
        "npfl_lib updates one tensor at a time, which is torch's foreach=False path; the "
        "multi-tensor kernels only change the speed (and the rounding)",
    ),
    "fused": (
        (None, False),
        "there is no fused kernel: the update is the kernel's plain tensor operations",
    ),
    "differentiable": (
        (False,),
        "the step runs under torch.no_grad(), so the update cannot be differentiated",
    ),
}


def _check_fixed_option(name: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is one of the values npfl_lib implements."""
    accepted, reason = FIXED_OPTIONS[name]
    if not any(value is ok for ok in accepted):  # "is": 0 and 1 are not False and True
        raise ValueError(
            f"{name}={value!r} is not supported: {reason}; leave {name} out or pass "
            f"{name}={accepted[-1]!r}"
        )


def _check_betas(betas: Any) -> None:
    """Raises unless ``betas`` is a pair of numbers (their range is checked separately)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    if any(isinstance(beta, torch.Tensor) for beta in betas):
        # torch raises for a float and a tensor, and accepts two tensors only for its
        # capturable and compiled steps.
        raise ValueError(
            f"betas must be two numbers, got {betas!r}: torch takes tensor betas for its "
            "capturable and compiled steps, npfl_lib's capturable steps take numbers; pass "
            "floats, e.g. betas=(0.9, 0.999)"
        )


def _check_sgd_args(
    lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool
) -> None:
    """Raises ValueError/TypeError for SGD hyperparameters that torch.optim.SGD rejects."""
    _check_lr(lr)
    check_nonnegative("momentum", momentum)
    _check_number("dampening", dampening)
    check_nonnegative("weight_decay", weight_decay)
    _check_flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "nesterov=True requires momentum > 0 and dampening == 0, "
            f"got momentum={momentum}, dampening={dampening}"
        )


def _check_rmsprop_args(
    lr: float, alpha: float, eps: float, weight_decay: float, momentum: float
) -> None:
    """Raises ValueError/TypeError for RMSprop hyperparameters that torch.optim.RMSprop rejects."""
    _check_lr(lr)
    check_nonnegative("alpha", alpha)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)
    check_nonnegative("momentum", momentum)


def _check_adam_args(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, names=("beta1", "beta2")
) -> None:
    """Raises ValueError/TypeError for Adam(W) hyperparameters that torch.optim.Adam rejects."""
    _check_lr(lr)
    check_in_range(names[0], beta1, 0.0, 1.0, high_inclusive=False)
    check_in_range(names[1], beta2, 0.0, 1.0, high_inclusive=False)
    check_nonnegative("eps", eps)
    check_nonnegative("weight_decay", weight_decay)


def _check_step(step: int | torch.Tensor, param: torch.Tensor) -> None:
    """An ``int >= 1``, or (capturable) a 1-element float tensor on ``param``'s device.

    A tensor's value is not read: reading it would wait for the GPU at every step.
    """
    if isinstance(step, torch.Tensor):
        if step.numel() != 1 or not step.is_floating_point() or step.device != param.device:
            raise TypeError(
                "a tensor step must be a 1-element float tensor on param's device "
                f"({param.device}), got {step.dtype} of shape {tuple(step.shape)} on "
                f"{step.device}"
            )
        return
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(
            f"step must be an int (1 for the first update) or a float tensor, got "
            f"{type(step).__name__}"
        )
    check_in_range("step", step, 1, math.inf)


def _step_count(step: Any) -> int:
    """A loaded state's step counter as an ``int``.

    torch keeps it as a float32 tensor and older torch checkpoints as a float; either is
    accepted when it holds a whole number of updates, as torch steps on from both.
    """
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"state step must be a number of updates, got {step!r}")
    if not (math.isfinite(step) and step >= 0 and step == int(step)):
        raise ValueError(f"state step must be a whole number of updates >= 0, got {step!r}")
    return int(step)
