"""Activation functions and their derivatives, written on elementary tensor ops.

Each function matches its ``torch`` / ``torch.nn.functional`` counterpart (same
signature, same values to rounding error, same behaviour at the edges: ``inf``,
``nan``, the kink of ReLU) and is differentiable by autograd. The ``*_grad`` helpers
give the derivative ``d activation / d x`` at ``x``, as used for manual backprop.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_float_tensor, check_in_range

__all__ = [
    "sigmoid",
    "softmax",
    "log_softmax",
    "tanh",
    "relu",
    "leaky_relu",
    "gelu",
    "silu",
    "swiglu",
    "sigmoid_grad",
    "tanh_grad",
    "relu_grad",
]

GELU_APPROXIMATIONS = ("none", "tanh")


def _check_dim(x: torch.Tensor, dim: int) -> None:
    """Raises ValueError unless ``dim`` indexes a dimension of ``x`` (0-dim counts as 1-dim)."""
    ndim = max(x.ndim, 1)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(
            f"dim must be an int in [{-ndim}, {ndim - 1}] for x.ndim={x.ndim}, got {dim!r}"
        )


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The logistic function ``1 / (1 + exp(-x))``, like ``torch.sigmoid``.

    Written so that ``exp`` never overflows: with ``z = exp(-|x|) <= 1`` it is
    ``1 / (1 + z)`` for ``x >= 0`` and ``z / (1 + z)`` for ``x < 0``. Both branches
    are finite everywhere, so autograd through ``torch.where`` yields no NaN either.
    (``-|x|`` is spelled with ``where`` rather than ``abs``: autograd takes the slope
    of ``abs`` at 0 to be 0, which would make the derivative at 0 wrong.)

    Args:
        x (torch.Tensor): Floating-point input of any shape.

    Returns:
        torch.Tensor: ``sigmoid(x)`` with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    z = torch.exp(torch.where(x >= 0, -x, x))
    return torch.where(x >= 0, 1 / (1 + z), z / (1 + z))


def _shift_by_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    # softmax(x) == softmax(x - c) for any c; subtracting the max keeps exp() <= 1 so it
    # cannot overflow. The shift is a constant for autograd (its exact gradient is zero).
    return x - x.amax(dim=dim, keepdim=True).detach()


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``exp(x) / exp(x).sum(dim)``, like ``torch.nn.functional.softmax``.

    Logits are shifted by their maximum along ``dim`` first, so logits of +-1e4 do not
    overflow. ``-inf`` logits get probability 0; a slice that is all ``-inf`` or holds
    ``+inf`` gives NaN, as in PyTorch.

    Args:
        x (torch.Tensor): Floating-point logits of any shape.
        dim (int): The dimension that sums to one. Default: -1.

    Returns:
        torch.Tensor: Probabilities with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    _check_dim(x, dim)
    if x.numel() == 0:  # amax refuses empty reductions; torch's empty result is in the graph
        return x.clone()
    e = torch.exp(_shift_by_max(x, dim))
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x - log(exp(x).sum(dim))``, like ``torch.nn.functional.log_softmax``.

    With ``m = x.max(dim)`` it computes ``(x - m) - log(exp(x - m).sum(dim))``: the sum
    lies in ``[1, n]``, so its log neither overflows nor hits ``log(0)`` for large
    logits. ``-inf`` logits give ``-inf``; a slice that is all ``-inf`` or holds
    ``+inf`` gives NaN, as in PyTorch.

    Args:
        x (torch.Tensor): Floating-point logits of any shape.
        dim (int): The dimension that is normalized. Default: -1.

    Returns:
        torch.Tensor: Log-probabilities with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    _check_dim(x, dim)
    if x.numel() == 0:  # as in softmax
        return x.clone()
    shifted = _shift_by_max(x, dim)
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def tanh(x: torch.Tensor) -> torch.Tensor:
    """The hyperbolic tangent, like ``torch.tanh``.

    Uses ``tanh(|x|) = -t / (2 + t)`` with ``t = expm1(-2|x|)`` and restores the sign
    (tanh is odd): ``expm1`` keeps full relative precision near 0, where
    ``1 - exp(-2|x|)`` would cancel, and ``exp`` of a non-positive number cannot
    overflow. ``|x|`` is spelled with ``where`` for autograd, as in :func:`sigmoid`.

    Args:
        x (torch.Tensor): Floating-point input of any shape.

    Returns:
        torch.Tensor: ``tanh(x)`` with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    positive = x >= 0
    t = torch.expm1(-2 * torch.where(positive, x, -x))
    tanh_abs = -t / (2 + t)
    return torch.where(positive, tanh_abs, -tanh_abs)


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``, like ``torch.nn.functional.relu``.

    Written as "0 where ``x <= 0``, else ``x``", PyTorch's own rule: NaN stays NaN and
    autograd gives slope 0 at ``x == 0``.

    Args:
        x (torch.Tensor): Floating-point input of any shape.

    Returns:
        torch.Tensor: ``relu(x)`` with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    return torch.where(x <= 0, 0.0, x)


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """``x`` for ``x > 0``, else ``negative_slope * x``, like ``F.leaky_relu``.

    Args:
        x (torch.Tensor): Floating-point input of any shape.
        negative_slope (float): The slope for ``x <= 0`` (finite; autograd uses it at
            ``x == 0``, as PyTorch does). Default: 0.01.

    Returns:
        torch.Tensor: ``leaky_relu(x)`` with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(
            f"negative_slope must be a real number, got {type(negative_slope).__name__}"
        )
    check_in_range(
        "negative_slope",
        negative_slope,
        -math.inf,
        math.inf,
        low_inclusive=False,
        high_inclusive=False,
    )
    return torch.where(x > 0, x, x * negative_slope)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Gaussian Error Linear Unit ``x * Phi(x)``, like ``torch.nn.functional.gelu``.

    ``Phi`` is the standard normal CDF, ``Phi(x) = (1 + erf(x / sqrt(2))) / 2``. With
    ``approximate="tanh"`` it is replaced by ``(1 + tanh(u)) / 2`` with
    ``u = sqrt(2 / pi) * (x + 0.044715 * x**3)`` (Hendrycks & Gimpel).

    Both are evaluated in forms that do not cancel for negative ``x``, where ``1 + erf``
    and ``1 + tanh`` are tiny: ``1 + erf(x / sqrt(2)) = erfc(-x / sqrt(2))`` and
    ``(1 + tanh(u)) / 2 = sigmoid(2u)``. They equal PyTorch's results to rounding error;
    in the far negative tail (float32 below about -3) they are the more accurate ones.

    Args:
        x (torch.Tensor): Floating-point input of any shape.
        approximate (str): ``"none"`` (exact, erf) or ``"tanh"``. Default: ``"none"``.

    Returns:
        torch.Tensor: ``gelu(x)`` with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
    if approximate == "tanh":
        u = math.sqrt(2 / math.pi) * (x + 0.044715 * (x * x * x))
        return x * sigmoid(2 * u)
    return x * (0.5 * torch.erfc(x * (-1 / math.sqrt(2))))


def silu(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid Linear Unit (swish) ``x * sigmoid(x)``, like ``F.silu``.

    Args:
        x (torch.Tensor): Floating-point input of any shape.

    Returns:
        torch.Tensor: ``silu(x)`` with the shape, dtype and device of ``x``.
    """
    return x * sigmoid(x)


def swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The SwiGLU gate ``silu(a) * b`` where ``a, b = x.chunk(2, dim)``.

    The first half of ``x`` along ``dim`` is the gate, the second half the value
    (Shazeer, "GLU Variants Improve Transformer"); the output is half as large along
    ``dim``.

    Args:
        x (torch.Tensor): Floating-point input whose size along ``dim`` is even.
        dim (int): The dimension that is split in two. Default: -1.

    Returns:
        torch.Tensor: ``silu(a) * b``, of shape ``x.shape`` with ``dim`` halved.
    """
    check_float_tensor("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension to split, got a 0-dim tensor")
    _check_dim(x, dim)
    if x.shape[dim] % 2:
        raise ValueError(
            f"x.shape[dim] must be even to split x in two along dim={dim}, got shape "
            f"{tuple(x.shape)}"
        )
    a, b = x.chunk(2, dim=dim)
    return silu(a) * b


def sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    """``d sigmoid(x) / dx = sigmoid(x) * (1 - sigmoid(x))``, evaluated at ``x``.

    Computed as ``sigmoid(x) * sigmoid(-x)``: the same value, without the cancellation
    in ``1 - sigmoid(x)`` when ``sigmoid(x)`` is close to 1.

    Args:
        x (torch.Tensor): Floating-point input (the pre-activation) of any shape.

    Returns:
        torch.Tensor: The derivative with the shape, dtype and device of ``x``.
    """
    return sigmoid(x) * sigmoid(-x)


def tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """``d tanh(x) / dx = 1 - tanh(x)**2``, evaluated at ``x``.

    Computed as ``4 * sigmoid_grad(2 * x)`` (because ``tanh(x) = 2 * sigmoid(2x) - 1``):
    the same value, without the cancellation in ``1 - tanh(x)**2`` for large ``|x|``.

    Args:
        x (torch.Tensor): Floating-point input (the pre-activation) of any shape.

    Returns:
        torch.Tensor: The derivative with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    return 4 * sigmoid_grad(2 * x)


def relu_grad(x: torch.Tensor) -> torch.Tensor:
    """``d relu(x) / dx``: 1 where ``x > 0``, else 0, evaluated at ``x``.

    At the kink ``x == 0`` it is 0 and at NaN it is 1, exactly what autograd gives
    for ``torch.nn.functional.relu``.

    Args:
        x (torch.Tensor): Floating-point input (the pre-activation) of any shape.

    Returns:
        torch.Tensor: The derivative with the shape, dtype and device of ``x``.
    """
    check_float_tensor("x", x)
    return torch.where(x <= 0, torch.zeros_like(x), torch.ones_like(x))
