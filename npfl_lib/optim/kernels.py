"""One optimizer step on one parameter tensor: the lecture's update rules.

Each kernel updates ``param`` and its state tensors in place from ``grad``, for a
single tensor; the optimizer classes (:class:`~npfl_lib.optim.SGD` and friends) only
loop over parameters, keep the state and call these. The arithmetic is done in the
same order as ``torch.optim``'s single-tensor (``foreach=False``) path, so results
equal PyTorch's bit for bit; each docstring gives the pseudo-code the lines implement.
Arguments are checked (``_validate.py``) before anything is modified, so a bad call
leaves every tensor as it was.

Kernels work on any device: they allocate nothing but temporaries, on ``param``'s
device and dtype. They do not enable ``torch.no_grad()`` themselves; call them on
tensors that do not require grad, or inside ``with torch.no_grad():``.
"""

from __future__ import annotations

import torch

from ._validate import (
    _check_adam_args,
    _check_flag,
    _check_rmsprop_args,
    _check_sgd_args,
    _check_step,
    _check_tensors,
)

__all__ = ["sgd_step", "rmsprop_step", "adam_step", "adamw_step"]


def sgd_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
    maximize: bool = False,
) -> None:
    """One step of SGD with (Nesterov) momentum, in place, as ``torch.optim.SGD``.

    Pseudo-code (``g`` is the gradient, ``v`` the momentum buffer)::

        g <- -g                                 if maximize: ascend instead
        g <- g + weight_decay * theta                   # L2 penalty, coupled into g
        v <- g                                  on the first step
        v <- momentum * v + (1 - dampening) * g on later steps
        d <- g + momentum * v   if nesterov   else   v
        theta <- theta - lr * d

    With ``momentum == 0`` this is plain SGD, ``theta <- theta - lr * g``.

    Args:
        param (torch.Tensor): The parameter, updated in place.
        grad (torch.Tensor): Its gradient, same shape; not modified.
        momentum_buffer (torch.Tensor | None): The velocity ``v``, same shape, updated in
            place; its content is ignored (overwritten by ``g``) when ``first_step``. May
            be ``None`` only when ``momentum == 0``.
        lr (float): Learning rate, ``>= 0``.
        momentum (float): Momentum factor, ``>= 0``.
        dampening (float): Dampening of the gradient added to the buffer (not applied
            on the first step, as torch).
        weight_decay (float): L2 penalty coefficient, ``>= 0``.
        nesterov (bool): Use Nesterov momentum; needs ``momentum > 0`` and
            ``dampening == 0``.
        first_step (bool): Whether ``momentum_buffer`` is fresh (initialize it with ``g``).
        maximize (bool): Ascend the objective (step along ``+grad``) instead of descending.

    Raises:
        ValueError: Negative ``lr``/``momentum``/``weight_decay``, invalid Nesterov
            settings, mismatched shapes or a missing ``momentum_buffer``.
        TypeError: Non-float or sparse tensors.
    """
    _check_sgd_args(lr, momentum, dampening, weight_decay, nesterov)
    _check_flag("maximize", maximize)
    _check_tensors(param, grad, momentum_buffer=momentum_buffer)
    if momentum != 0 and momentum_buffer is None:
        raise ValueError("momentum_buffer must be a tensor shaped like param when momentum != 0")

    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)  # out of place: the caller's grad stays
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)


def rmsprop_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    square_avg: torch.Tensor,
    grad_avg: torch.Tensor | None = None,
    momentum_buffer: torch.Tensor | None = None,
    *,
    lr: float,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
) -> None:
    """One step of RMSprop, in place, as ``torch.optim.RMSprop``.

    Pseudo-code (``g`` gradient, ``v`` the running mean of ``g^2``)::

        g <- -g                                     if maximize: ascend instead
        g <- g + weight_decay * theta
        v <- alpha * v + (1 - alpha) * g^2
        if centered:                                # divide by a std estimate instead
            m <- alpha * m + (1 - alpha) * g
            v_used <- v - m^2
        else:
            v_used <- v
        d <- g / (sqrt(v_used) + eps)               # eps outside the sqrt, as torch
        b <- momentum * b + d   if momentum > 0     # then d <- b
        theta <- theta - lr * d

    Note that ``alpha`` is the decay of the running average (torch's name), i.e. the
    lecture's ``beta``; there is no bias correction.

    Args:
        param (torch.Tensor): The parameter, updated in place.
        grad (torch.Tensor): Its gradient, same shape; not modified.
        square_avg (torch.Tensor): ``v``, same shape, zeros before the first step.
        grad_avg (torch.Tensor | None): ``m``, needed when ``centered``, zeros at first.
        momentum_buffer (torch.Tensor | None): ``b``, needed when ``momentum > 0``,
            zeros at first.
        lr (float): Learning rate, ``>= 0``.
        alpha (float): Smoothing constant, ``>= 0``.
        eps (float): Added to the square root for stability, ``>= 0``.
        weight_decay (float): L2 penalty coefficient, ``>= 0``.
        momentum (float): Momentum factor, ``>= 0``.
        centered (bool): Normalize by the estimated variance instead of the raw second
            moment.
        maximize (bool): Ascend the objective (step along ``+grad``) instead of descending.

    Raises:
        ValueError: A negative hyperparameter, mismatched shapes or a missing state tensor.
        TypeError: Non-float or sparse tensors.
    """
    _check_rmsprop_args(lr, alpha, eps, weight_decay, momentum)
    _check_flag("centered", centered)
    _check_flag("maximize", maximize)
    _check_tensors(
        param, grad, square_avg=square_avg, grad_avg=grad_avg, momentum_buffer=momentum_buffer
    )
    if centered and grad_avg is None:
        raise ValueError("grad_avg must be a tensor shaped like param when centered=True")
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("momentum_buffer must be a tensor shaped like param when momentum > 0")

    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if centered:
        grad_avg.lerp_(grad, 1 - alpha)  # = alpha * m + (1 - alpha) * g, rounded as torch
        denom = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        denom = square_avg.sqrt()
    denom.add_(eps)
    if momentum > 0:
        momentum_buffer.mul_(momentum).addcdiv_(grad, denom)
        param.add_(momentum_buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, denom, value=-lr)


def adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None = None,
    *,
    step: int | torch.Tensor,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    maximize: bool = False,
) -> None:
    """One step of Adam with coupled L2 weight decay, in place, as ``torch.optim.Adam``.

    Pseudo-code (``t = step`` counts updates from 1)::

        g <- -g                                     if maximize: ascend instead
        g <- g + weight_decay * theta               # L2: the penalty's gradient enters m, v
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        v_max <- max(v_max, v)                      # amsgrad only: then v_max replaces v
        m_hat <- m / (1 - beta1^t)                  # bias corrections
        v_hat <- v / (1 - beta2^t)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    ``eps`` is added outside the square root and after bias correction, as torch. Like
    torch, the corrections are applied as scalars rather than by building ``m_hat`` and
    ``v_hat``: ``sqrt(v_hat) = sqrt(v) / sqrt(1 - beta2^t)`` and ``1 / (1 - beta1^t)``
    is folded into the step size.

    ``step`` as a tensor (torch's ``capturable`` path): the bias corrections are computed
    on the step's device, so the step never reads a number back to the host and can be
    recorded in a CUDA graph (a replay then uses the tensor's new value). As torch's
    capturable path, the step size folds into the denominator:
    ``theta <- theta + m / (sqrt(v) / (sqrt(c2) * -s) + eps / -s)`` with
    ``s = lr / c1``, ``c1 = 1 - beta1^t``, ``c2 = 1 - beta2^t`` computed in the step's
    dtype (float32). The result equals torch's capturable path bit for bit, and the
    ``int`` path to float rounding (~1e-7 relative: float32 corrections).

    Args:
        param (torch.Tensor): The parameter, updated in place.
        grad (torch.Tensor): Its gradient, same shape; not modified.
        exp_avg (torch.Tensor): ``m``, same shape, zeros before the first step.
        exp_avg_sq (torch.Tensor): ``v``, same shape, zeros before the first step.
        max_exp_avg_sq (torch.Tensor | None): ``v_max``, needed when ``amsgrad``, zeros
            before the first step.
        step (int | torch.Tensor): ``t``, the number of this update counting from 1: the
            optimizer increments its counter before calling, so the first step uses
            ``t = 1``. Or a 1-element float tensor on ``param``'s device holding ``t``
            (see above); its value is not checked.
        lr (float | torch.Tensor): Learning rate, ``>= 0``.
        beta1 (float): Decay of ``m``, in ``[0, 1)``.
        beta2 (float): Decay of ``v``, in ``[0, 1)``.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): L2 penalty coefficient, ``>= 0``; for decoupled weight
            decay use :func:`adamw_step`.
        amsgrad (bool): Normalize by the largest ``v`` so far (AMSGrad).
        maximize (bool): Ascend the objective (step along ``+grad``) instead of descending.

    Raises:
        ValueError: A hyperparameter out of range, ``step < 1``, mismatched shapes or a
            missing ``max_exp_avg_sq``.
        TypeError: Non-float or sparse tensors, or a ``step`` that is neither an ``int``
            nor a 1-element float tensor on ``param``'s device.
    """
    _check_adam_args(lr, beta1, beta2, eps, weight_decay)
    _check_step(step, param)
    _check_flag("amsgrad", amsgrad)
    _check_flag("maximize", maximize)
    _check_tensors(
        param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_exp_avg_sq
    )
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError("max_exp_avg_sq must be a tensor shaped like param when amsgrad=True")

    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)  # = beta1 * m + (1 - beta1) * g, rounded as torch
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    second_moment = exp_avg_sq
    if amsgrad:  # normalize by the largest v so far
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second_moment = max_exp_avg_sq

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    if isinstance(step, torch.Tensor):  # capturable: the same update, computed on the device
        step_size_neg = (lr / bias_correction1).neg()  # -lr / (1 - beta1^t)
        scale = bias_correction2.sqrt() * step_size_neg
        denom = (second_moment.sqrt() / scale).add_(eps / step_size_neg)
        param.addcdiv_(exp_avg, denom)  # addcdiv_'s value= cannot be a tensor: folded in
        return
    denom = (second_moment.sqrt() / bias_correction2**0.5).add_(eps)  # sqrt(v_hat) + eps
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # lr * m_hat / denom


def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor | None = None,
    *,
    step: int | torch.Tensor,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    maximize: bool = False,
) -> None:
    """One step of AdamW (decoupled weight decay), in place, as ``torch.optim.AdamW``.

    Pseudo-code::

        theta <- theta * (1 - lr * weight_decay)    # decay the weights directly ...
        (Adam step with weight_decay = 0)           # ... so it never enters m or v

    The decay is multiplied by the *current* learning rate (as torch, so a schedule
    scales it too) and applied before the Adam update.

    Args:
        param (torch.Tensor): The parameter, updated in place.
        grad (torch.Tensor): Its gradient, same shape; not modified.
        exp_avg (torch.Tensor): ``m``, same shape, zeros before the first step.
        exp_avg_sq (torch.Tensor): ``v``, same shape, zeros before the first step.
        max_exp_avg_sq (torch.Tensor | None): ``v_max``, needed when ``amsgrad``.
        step (int | torch.Tensor): ``t``, counting from 1, or a tensor holding it (the
            capturable path), as in :func:`adam_step`.
        lr (float | torch.Tensor): Learning rate, ``>= 0``.
        beta1 (float): Decay of ``m``, in ``[0, 1)``.
        beta2 (float): Decay of ``v``, in ``[0, 1)``.
        eps (float): Added to ``sqrt(v_hat)`` for stability, ``>= 0``.
        weight_decay (float): The decoupled decay coefficient ``lambda``, ``>= 0``.
        amsgrad (bool): Normalize by the largest ``v`` so far (AMSGrad).
        maximize (bool): Ascend the objective (step along ``+grad``) instead of descending.

    Raises:
        ValueError: A hyperparameter out of range, ``step < 1``, mismatched shapes or a
            missing ``max_exp_avg_sq``.
        TypeError: Non-float or sparse tensors, or a bad ``step`` (as :func:`adam_step`).
    """
    # Check everything before touching param, so a bad call leaves it unchanged.
    _check_adam_args(lr, beta1, beta2, eps, weight_decay)
    _check_step(step, param)
    _check_flag("amsgrad", amsgrad)
    _check_flag("maximize", maximize)
    _check_tensors(
        param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_exp_avg_sq
    )
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError("max_exp_avg_sq must be a tensor shaped like param when amsgrad=True")
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    adam_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
    )
