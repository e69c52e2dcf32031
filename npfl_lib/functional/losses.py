"""Loss functions, written from scratch on plain tensor operations.

Each function matches its ``torch.nn.functional`` (``F``) namesake (same signature, same
result up to rounding) and validates its arguments, so a bad call raises an error
naming the argument instead of returning a silently wrong number.

Reductions (all losses): ``"none"`` returns the loss of every element, ``"sum"`` their
sum and ``"mean"`` their average; the mean of no elements is ``nan``, like torch.
"""

from __future__ import annotations

import math

import torch

from .._checks import (
    check_float_tensor,
    check_in_range,
    check_index_tensor,
    check_reduction,
    check_same_shape,
)

__all__ = [
    "mse_loss",
    "huber_loss",
    "nll_loss",
    "cross_entropy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
]


# ----------------------------------------------------------------------------------
# Private helpers (also used by loss_grads.py)
# ----------------------------------------------------------------------------------


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Applies a (validated) reduction to per-element losses."""
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def _log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Stable ``log(softmax(x))`` along ``dim``.

    Subtracting the maximum first keeps ``exp`` from overflowing (the result is
    unchanged because softmax is shift-invariant), and the largest term becomes
    ``exp(0) = 1``, so the ``log`` of the sum never sees 0.
    """
    if x.shape[dim] == 0:  # no classes: amax refuses; torch returns the empty x, in the graph
        return x.clone()
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """Stable ``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``.

    ``exp`` only ever sees a non-positive argument, so it cannot overflow. ``max(x, 0)``
    and ``-|x|`` are spelled with ``where`` on one condition rather than ``clamp_min`` and
    ``abs``, whose autograd slopes at 0 are both 0: so autograd gives the true derivative
    ``sigmoid(0) = 1/2`` at ``x = 0`` (torch's, what a zero-initialised model sees).
    """
    nonnegative = x >= 0
    minus_abs = torch.where(nonnegative, -x, x)
    return torch.where(nonnegative, x, 0.0) + minus_abs.exp().log1p()


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Stable ``log(sigmoid(x)) = -softplus(-x)``."""
    return -_softplus(-x)


def _check_elementwise_args(input: torch.Tensor, target: torch.Tensor, reduction: str) -> None:
    """Checks an element-wise loss's arguments: float tensors of one shape, a reduction."""
    check_float_tensor("input", input)
    check_float_tensor("target", target)
    check_same_shape("input", input, "target", target)
    check_reduction(reduction)


def _class_dim(input: torch.Tensor) -> int:
    """The class dimension: 0 for an unbatched ``[C]`` input, otherwise 1."""
    return 0 if input.dim() == 1 else 1


def _check_class_input(input: torch.Tensor) -> None:
    """Checks that ``input`` is a float tensor of shape [C], [N, C] or [N, C, d1, ...]."""
    check_float_tensor("input", input)
    if input.dim() == 0:
        raise ValueError(
            "input must have a class dimension: shape (C,), (N, C) or (N, C, d1, ..., dk), "
            "got a 0-dimensional tensor"
        )


def _check_index_target(input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Checks class-index targets: integer dtype, shape and range [0, C) or ignore_index."""
    check_index_tensor("target", target)
    if not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    dim = _class_dim(input)
    expected = input.shape[:dim] + input.shape[dim + 1 :]
    if target.shape != expected:
        raise ValueError(
            f"target of class indices must have the shape of input without its class "
            f"dimension {dim}: input has shape {tuple(input.shape)}, so target must have "
            f"shape {tuple(expected)}, got {tuple(target.shape)}"
        )
    num_classes = input.shape[dim]
    valid = ((target >= 0) & (target < num_classes)) | (target == ignore_index)
    if not bool(valid.all()):
        bad = target[~valid].flatten()[0].item()
        raise ValueError(
            f"target must hold class indices in the range [0, {num_classes}) "
            f"or ignore_index={ignore_index}, got {bad}"
        )


def _check_prob_target(input: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
    """Checks class-probability targets: same shape as input, no ignore_index (like torch)."""
    check_same_shape("input", input, "target (class probabilities)", target)
    if ignore_index >= 0:
        raise ValueError(
            f"ignore_index is not supported for class-probability targets; it must stay "
            f"negative (e.g. the default -100), got {ignore_index}"
        )


def _smoothing_share(label_smoothing: float, num_classes: int) -> float:
    """``eps / C``, the probability label smoothing gives each class.

    With no classes and ``eps > 0`` it is ``inf`` (so a smoothed loss is nan), as torch's
    float division gives; Python's would raise.
    """
    if num_classes == 0:
        return math.inf if label_smoothing > 0 else 0.0
    return label_smoothing / num_classes


def _check_cross_entropy_args(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> tuple[int, int, torch.Tensor]:
    """Validates cross-entropy arguments (shared by the loss and its gradient).

    Returns:
        ``(class dim, number of classes, target)``; a probability target comes back
        already smoothed, ``(1 - eps) * target + eps / C``, so callers only need to
        smooth class-index targets.
    """
    _check_class_input(input)
    check_reduction(reduction)
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    dim = _class_dim(input)
    num_classes = input.shape[dim]
    if target.is_floating_point():
        _check_prob_target(input, target, ignore_index)
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + _smoothing_share(label_smoothing, num_classes)
    else:
        _check_index_target(input, target, ignore_index)
    return dim, num_classes, target


def _picked_nll(
    log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element ``-log_probs[target]`` (0 where ignored) and the ignored mask."""
    dim = _class_dim(log_probs)
    ignored = target == ignore_index
    if log_probs.shape[dim] == 0:
        # No classes, so every target is ignore_index (checked): torch's loss is 0 each.
        return log_probs.sum(dim), ignored
    # Ignored positions may hold any index (e.g. -100); point them at class 0 so the
    # gather is valid, then overwrite their loss with 0.
    safe_target = target.long().masked_fill(ignored, 0).unsqueeze(dim)
    picked = log_probs.gather(dim, safe_target).squeeze(dim)
    return (-picked).masked_fill(ignored, 0.0), ignored


def _nll(
    log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str
) -> torch.Tensor:
    """``nll_loss`` without the argument checks; the mean is over non-ignored targets."""
    loss, ignored = _picked_nll(log_probs, target, ignore_index)
    if reduction == "mean":
        return loss.sum() / (~ignored).sum()
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------------
# Regression losses
# ----------------------------------------------------------------------------------


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error, like ``torch.nn.functional.mse_loss``.

    ``loss_i = (input_i - target_i) ** 2``; ``"mean"`` divides the sum by the number of
    elements.

    Args:
        input (torch.Tensor): Predictions, a float tensor of any shape.
        target (torch.Tensor): Float tensor of the same shape (unlike torch, no
            broadcasting: a shape mismatch is nearly always a bug, so it raises).
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: The per-element losses (``"none"``) or a scalar.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    return _reduce((input - target) ** 2, reduction)


def huber_loss(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", delta: float = 1.0
) -> torch.Tensor:
    """Huber loss, like ``torch.nn.functional.huber_loss``.

    With ``z = |input - target|``: ``loss = 0.5 * z ** 2`` if ``z < delta``, otherwise
    ``delta * (z - 0.5 * delta)``: quadratic near the target, linear (so robust to
    outliers) far from it. ``"mean"`` divides the sum by the number of elements.

    Args:
        input (torch.Tensor): Predictions, a float tensor of any shape.
        target (torch.Tensor): Float tensor of the same shape.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.
        delta (float): Where the loss switches from quadratic to linear; must be > 0.

    Returns:
        torch.Tensor: The per-element losses (``"none"``) or a scalar.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ, delta <= 0 or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    check_in_range("delta", delta, 0.0, float("inf"), low_inclusive=False)
    z = (input - target).abs()
    loss = torch.where(z < delta, 0.5 * z * z, delta * (z - 0.5 * delta))
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------------
# Classification losses
# ----------------------------------------------------------------------------------


def nll_loss(
    input: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, reduction: str = "mean"
) -> torch.Tensor:
    """Negative log-likelihood, like ``torch.nn.functional.nll_loss`` (no class weights).

    ``loss_i = -input[i, target_i]``, and 0 where ``target_i == ignore_index``.
    ``"mean"`` divides the sum by the number of non-ignored targets (``nan`` if there
    are none).

    Args:
        input (torch.Tensor): Log-probabilities of shape ``[C]``, ``[N, C]`` or
            ``[N, C, d1, ..., dk]`` (classes on dim 1, or dim 0 when unbatched).
        target (torch.Tensor): Integer class indices of shape ``[]``, ``[N]`` or
            ``[N, d1, ..., dk]``, each in ``[0, C)`` or equal to ``ignore_index``.
        ignore_index (int): Target value that contributes no loss.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: Losses of shape ``target.shape`` (``"none"``) or a scalar.

    Raises:
        TypeError: If input is not float or target is not integer.
        ValueError: On a shape mismatch, an out-of-range class index or an unknown
            reduction.
    """
    _check_class_input(input)
    _check_index_target(input, target, ignore_index)
    check_reduction(reduction)
    return _nll(input, target, ignore_index, reduction)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax cross-entropy on logits, like ``torch.nn.functional.cross_entropy``.

    With ``log p = log_softmax(input)`` over the class dimension and the target
    distribution ``g``, ``loss = -sum_c g_c log p_c``. Label smoothing ``eps`` mixes the
    target with the uniform distribution: ``g = (1 - eps) * g + eps / C``.

    Two kinds of target (told apart by dtype):

    * Class indices (integer): ``g`` is one-hot (``1_gold``), so the loss is
      ``(1 - eps) * (-log p_gold) + eps / C * (-sum_c log p_c)``. Targets equal to
      ``ignore_index`` contribute 0, and ``"mean"`` divides by the number of
      non-ignored targets (``nan`` if there are none, like torch).
    * Class probabilities (float, same shape as input): ``g`` is given; ``"mean"``
      divides by the number of samples ``N * d1 * ... * dk`` (``nan`` if 0).

    Args:
        input (torch.Tensor): Logits of shape ``[C]``, ``[N, C]`` or
            ``[N, C, d1, ..., dk]`` (classes on dim 1, or dim 0 when unbatched).
        target (torch.Tensor): Integer class indices of shape ``[]``, ``[N]`` or
            ``[N, d1, ..., dk]`` (each in ``[0, C)`` or ``ignore_index``), or float
            class probabilities of the input's shape.
        ignore_index (int): Class-index target value that contributes no loss. Must
            be negative with probability targets (torch does not support it there).
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.
        label_smoothing (float): ``eps`` in ``[0, 1]``; 0 disables smoothing.

    Returns:
        torch.Tensor: Per-sample losses of shape ``input.shape`` without the class
        dimension (``"none"``) or a scalar.

    Raises:
        TypeError: If input is not float, or target is neither float nor integer.
        ValueError: On a shape mismatch, an out-of-range class index, label_smoothing
            outside [0, 1] or an unknown reduction.
    """
    dim, num_classes, target = _check_cross_entropy_args(
        input, target, ignore_index, reduction, label_smoothing
    )
    if target.is_floating_point():
        loss = -(_log_softmax(input, dim) * target).sum(dim)
        if reduction == "mean" and input.numel() == 0:
            return loss.sum() * math.nan  # torch: nan, even for samples without classes
        return _reduce(loss, reduction)

    log_probs = _log_softmax(input, dim)
    nll = _nll(log_probs, target, ignore_index, reduction)
    if label_smoothing == 0:
        return nll
    # The uniform part -sum_c log p_c / C, zeroed and averaged exactly like the nll part.
    smooth = (-log_probs.sum(dim)).masked_fill(target == ignore_index, 0.0)
    if reduction == "mean":
        smooth = smooth.sum() / (target != ignore_index).sum()
    else:
        smooth = _reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + _smoothing_share(label_smoothing, num_classes) * smooth


def binary_cross_entropy(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy on probabilities, like ``F.binary_cross_entropy``.

    ``loss = -(g * log(p) + (1 - g) * log(1 - p))`` with ``p = input`` and ``g = target``.
    As in torch, each log is clamped at -100, so ``p`` exactly 0 or 1 gives a finite
    loss (at most 100) instead of ``inf``. ``"mean"`` divides by the number of elements.
    The gradient is torch's too, ``(p - g) / max(p (1 - p), 1e-12)``: finite everywhere
    (0 for ``p = g`` at 0 or 1), where autograd through the clamped logs would give nan.
    Prefer :func:`binary_cross_entropy_with_logits`, which is stable for any logit.

    Args:
        input (torch.Tensor): Probabilities in ``[0, 1]``, a float tensor of any shape.
        target (torch.Tensor): Float targets in ``[0, 1]`` of the same shape.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: The per-element losses (``"none"``) or a scalar.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ, a value of input or target lies outside
            [0, 1] (or is nan), or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    for name, tensor in (("input", input), ("target", target)):
        if not bool(((tensor >= 0) & (tensor <= 1)).all()):
            raise ValueError(f"every element of {name} must lie in [0, 1]")
    return _reduce(_BinaryCrossEntropy.apply(input, target), reduction)


class _BinaryCrossEntropy(torch.autograd.Function):
    """Element-wise binary cross-entropy with torch's backward.

    torch's gradient is not the autograd derivative of the clamped forward (which is nan
    at ``p`` = 0 or 1, where ``0 * inf`` appears, and ``-1/p`` for a tiny ``p``): it is
    the analytic slope ``(p - g) / (p (1 - p))`` with the denominator clamped at 1e-12.
    """

    @staticmethod
    def forward(ctx, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(input, target)
        # log1p(-p) is more accurate than log(1 - p) for small p; the order of the terms
        # follows torch's kernel so float32 results agree to the last bit.
        log_p = input.log().clamp_min(-100)
        log_1mp = (-input).log1p().clamp_min(-100)
        return (target - 1) * log_1mp - target * log_p

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        input, target = ctx.saved_tensors
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            # torch: 0 for a matching target at p = 0 or 1, at most 1e12 in size otherwise.
            grad_input = grad * (input - target) / ((1 - input) * input).clamp_min(1e-12)
        if ctx.needs_input_grad[1]:
            # d/dg = log(1 - p) - log(p), unclamped as torch's (+-inf at p = 1 or 0).
            grad_target = grad * ((-input).log1p() - input.log())
        return grad_input, grad_target


def binary_cross_entropy_with_logits(
    input: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy on logits, like ``F.binary_cross_entropy_with_logits``.

    With ``p = sigmoid(x)``: ``loss = -(g log p + (1 - g) log(1 - p))``. Using
    ``log(1 - p) = log p - x``, this is ``(1 - g) * x - log_sigmoid(x)``, and
    ``log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))`` never overflows, so the loss is
    finite and exact for any finite logit (e.g. +-1e4). ``"mean"`` divides by the
    number of elements.

    Args:
        input (torch.Tensor): Logits, a float tensor of any shape.
        target (torch.Tensor): Float targets (usually in ``[0, 1]``) of the same shape.
        reduction (str): ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        torch.Tensor: The per-element losses (``"none"``) or a scalar.

    Raises:
        TypeError: If input or target is not a float tensor.
        ValueError: If the shapes differ or reduction is unknown.
    """
    _check_elementwise_args(input, target, reduction)
    return _reduce((1 - target) * input - _log_sigmoid(input), reduction)
