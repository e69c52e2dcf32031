"""Analytic gradients of the losses with respect to their input.

The lecture derives that for the usual output layer + loss pairs the gradient of the
loss with respect to the *input of the loss* (the logits or predictions) is simply
"prediction minus target":

* mean squared error: ``2 (x - g)``,
* softmax + cross-entropy: ``o - 1_gold`` for a class index, ``o - g`` for a target
  distribution ``g`` (``o = softmax(x)``),
* sigmoid + binary cross-entropy: ``sigmoid(x) - g``.

Every function returns a tensor of the input's shape and honours ``reduction``:

* ``"sum"``: the gradient of the summed loss (the formulas above),
* ``"mean"``: the same divided by the number of elements the mean averages over,
* ``"none"``: the gradient of each element's loss with respect to its own input;
  elements do not interact, so this is the same tensor as for ``"sum"``.
"""

from __future__ import annotations

import torch

from .losses import (
    _check_cross_entropy_args,
    _check_elementwise_args,
    _log_softmax,
    _smoothing_share,
)

__all__ = [
    "mse_loss_grad",
    "cross_entropy_grad",
    "binary_cross_entropy_with_logits_grad",
]


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + exp(-x))``, accurate for every x.

    For very negative x, ``exp(-x)`` overflows to inf and ``1 / inf = 0`` is exactly
    the right limit, so this form needs no special case (unlike ``log(sigmoid(x))``).
    """
    return 1 / (1 + (-x).exp())


def _one_hot(target: torch.Tensor, num_classes: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``1_gold``: a one-hot encoding of ``target`` with the classes on ``dim``."""
    shape = [1] * (target.dim() + 1)
    shape[dim] = num_classes
    classes = torch.arange(num_classes, device=target.device).view(shape)
    return (target.unsqueeze(dim) == classes).to(dtype)


def mse_loss_grad(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Gradient of :func:`mse_loss` with respect to ``input``.

    ``d/dx (x - g)^2 = 2 (x - g)``; ``"mean"`` divides by the number of elements.
    ``"none"`` gives each element's own gradient, i.e. the gradient of the sum.

    Args:
        input (torch.Tensor): Predictions, a float tensor of any shape.
        target (torch.Tensor): Float tensor of the same shape.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: The gradient, of the input's shape.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    grad = 2 * (input - target)
    if reduction == "mean":
        grad = grad / input.numel()
    return grad


def cross_entropy_grad(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Gradient of :func:`cross_entropy` with respect to the logits ``input``.

    With ``o = softmax(input)`` over the class dimension and the (smoothed) target
    distribution ``g = (1 - eps) * g + eps / C``, the gradient of
    ``-sum_c g_c log o_c`` is ``o * sum_c g_c - g``, which is the lecture's ``o - g``
    whenever ``g`` sums to 1:

    * Class indices: ``g`` is ``1_gold`` (smoothed), so the gradient is
      ``o - 1_gold`` without smoothing. Ignored positions get a zero gradient, and
      ``"mean"`` divides by the number of non-ignored targets (if all are ignored,
      the gradient is all zeros, as torch's autograd gives, though the loss is nan).
    * Class probabilities (float, same shape as input): ``"mean"`` divides by the
      number of samples ``N * d1 * ... * dk``.

    ``"none"`` gives the gradient of each sample's loss with respect to its own
    logits, i.e. the gradient of the sum.

    Args:
        input (torch.Tensor): Logits of shape ``[C]``, ``[N, C]`` or
            ``[N, C, d1, ..., dk]`` (classes on dim 1, or dim 0 when unbatched).
        target (torch.Tensor): Integer class indices of shape ``[]``, ``[N]`` or
            ``[N, d1, ..., dk]`` (each in ``[0, C)`` or ``ignore_index``), or float
            class probabilities of the input's shape.
        ignore_index (int): Class-index target value that gets zero gradient.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.
        label_smoothing (float): ``eps`` in ``[0, 1]``.

    Returns:
        torch.Tensor: The gradient, of the input's shape.

    Raises:
        TypeError: If input is not float, or target is neither float nor integer.
        ValueError: On a shape mismatch, an out-of-range class index, label_smoothing
            outside [0, 1] or an unknown reduction.
    """
    dim, num_classes, target = _check_cross_entropy_args(
        input, target, ignore_index, reduction, label_smoothing
    )
    if target.is_floating_point():
        probs = _log_softmax(input, dim).exp()
        grad = probs * target.sum(dim, keepdim=True) - target
        if reduction == "mean":  # divide by N * d1 * ... * dk (no classes: nothing to divide)
            grad = grad / (input.numel() // num_classes if num_classes else 1)
        return grad

    probs = _log_softmax(input, dim).exp()
    gold = _one_hot(target, num_classes, dim, input.dtype)
    grad = probs - ((1 - label_smoothing) * gold + _smoothing_share(label_smoothing, num_classes))
    ignored = (target == ignore_index).unsqueeze(dim)
    if reduction == "mean":
        # Divide before masking: when every target is ignored the count is 0, and the
        # resulting inf/nan must not survive into the (zero) gradient.
        grad = grad / (~ignored).sum()
    return grad.masked_fill(ignored, 0.0)


def binary_cross_entropy_with_logits_grad(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Gradient of :func:`binary_cross_entropy_with_logits` with respect to the logits.

    ``d/dx [(1 - g) x - log_sigmoid(x)] = sigmoid(x) - g``; ``"mean"`` divides by the
    number of elements. ``"none"`` gives each element's own gradient, i.e. the
    gradient of the sum. The sigmoid is computed stably, so logits like +-1e4 give
    exact results (0 - g or 1 - g).

    Args:
        input (torch.Tensor): Logits, a float tensor of any shape.
        target (torch.Tensor): Float targets of the same shape.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: The gradient, of the input's shape.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    grad = _sigmoid(input) - target
    if reduction == "mean":
        grad = grad / input.numel()
    return grad
