"""Weight initialization schemes, as in ``torch.nn.init``.

A layer's weights must start small and random: random so that hidden units differ
(identical units receive identical gradients and stay identical), and scaled to the
layer's size so that activations and gradients neither explode nor vanish with depth.

* ``uniform_``, ``normal_``, ``constant_``, ``ones_``, ``zeros_``: the building blocks,
  e.g. ``uniform_(w, -1 / math.sqrt(n), 1 / math.sqrt(n))`` and ``zeros_(bias)``.
* ``uniform_fan_in_``: the ``torch.nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
* ``xavier_*`` (Glorot & Bengio, 2010): variance ``gain**2 * 2 / (fan_in + fan_out)``,
  keeping the variance of activations *and* gradients roughly constant.
* ``kaiming_*`` (He et al., 2015): variance ``gain**2 / fan``, for ReLU-like layers,
  which zero half of their inputs (hence ``gain = sqrt(2)`` for ReLU).

Every initializer works in place under ``torch.no_grad()``, returns its tensor, and
(like torch) expects weights shaped ``[out_features, in_features, *kernel_size]``.
An optional ``generator`` makes the draw reproducible; it may live on another device
than the tensor (e.g. a CPU generator for a CUDA tensor): the numbers are then drawn
on the generator's device and copied to the tensor's device.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

from ._checks import check_float_tensor, check_in_range, check_nonnegative

__all__ = [
    "calculate_gain",
    "uniform_",
    "normal_",
    "constant_",
    "ones_",
    "zeros_",
    "uniform_fan_in_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
]

_LINEAR = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)
NONLINEARITIES = (*_LINEAR, "sigmoid", "tanh", "relu", "leaky_relu", "selu")
MODES = ("fan_in", "fan_out")


def _check_slope(name: str, value: object) -> None:
    # bool is an int subclass, but True is surely a mistake, not a slope of 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} (the negative slope of leaky_relu) must be an int or float, got {value!r}"
        )


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """Returns the recommended gain (std multiplier) for a nonlinearity, as torch does.

    ============================ =================================
    nonlinearity                 gain
    ============================ =================================
    linear, conv*, sigmoid       1
    tanh                         5/3
    relu                         sqrt(2)
    leaky_relu                   sqrt(2 / (1 + negative_slope**2))
    selu                         3/4
    ============================ =================================

    Args:
        nonlinearity (str): The nonlinearity's ``torch.nn.functional`` name (see table).
        param (float | None): The negative slope for ``"leaky_relu"`` (default 0.01);
            ignored otherwise.

    Returns:
        float: The gain.

    Raises:
        ValueError: If ``nonlinearity`` is unknown or ``param`` is not a number.
    """
    if nonlinearity in _LINEAR or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        negative_slope = 0.01 if param is None else param
        _check_slope("param", negative_slope)
        # ReLU keeps half of the variance; a leaky ReLU also keeps slope**2 of the other half.
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """Returns ``(fan_in, fan_out)`` of a ``[out, in, *kernel]`` weight, as torch does.

    Each input (output) feature map of a convolution touches every kernel position,
    so the receptive field size multiplies both fans.
    """
    check_float_tensor("tensor", tensor)
    if tensor.dim() < 2:
        raise ValueError(
            "tensor must have at least 2 dimensions ([out_features, in_features, ...]) to "
            f"compute fan_in and fan_out, got shape {tuple(tensor.shape)}"
        )
    receptive_field_size = math.prod(tensor.shape[2:])
    fan_in = tensor.shape[1] * receptive_field_size
    fan_out = tensor.shape[0] * receptive_field_size
    return fan_in, fan_out


def _calculate_correct_fan(tensor: torch.Tensor, mode: str) -> int:
    mode = mode.lower() if isinstance(mode, str) else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _on_generator_device(tensor: torch.Tensor, generator: torch.Generator | None) -> bool:
    return generator is None or generator.device == tensor.device


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _check_finite(name: str, value: float) -> None:
    check_in_range(name, value, -math.inf, math.inf, low_inclusive=False, high_inclusive=False)


def _uniform_(
    tensor: torch.Tensor, low: float, high: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Fills ``tensor`` with U(low, high), drawn on the generator's device."""
    _check_generator(generator)
    with torch.no_grad():
        if _on_generator_device(tensor, generator):
            return tensor.uniform_(low, high, generator=generator)
        sample = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
        return tensor.copy_(sample.uniform_(low, high, generator=generator))


def _normal_(
    tensor: torch.Tensor, mean: float, std: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Fills ``tensor`` with N(mean, std**2), drawn on the generator's device."""
    _check_generator(generator)
    with torch.no_grad():
        if _on_generator_device(tensor, generator):
            return tensor.normal_(mean, std, generator=generator)
        sample = torch.empty(tensor.shape, dtype=tensor.dtype, device=generator.device)
        return tensor.copy_(sample.normal_(mean, std, generator=generator))


def uniform_(
    tensor: torch.Tensor,
    a: float = 0.0,
    b: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fills ``tensor`` with values drawn from U(a, b) in place, as ``torch.nn.init.uniform_``.

    The lecture's U(-1/sqrt(n), 1/sqrt(n)) is ``uniform_(w, -1 / math.sqrt(n),
    1 / math.sqrt(n))``; :func:`uniform_fan_in_` computes ``n`` from the weight's shape.

    Args:
        tensor (torch.Tensor): Any floating-point tensor (any shape, zero elements too).
        a (float): Lower bound, finite.
        b (float): Upper bound, finite, ``>= a`` (``a == b`` fills the constant ``a``).
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one); a CPU generator works for a tensor on any device.

    Returns:
        torch.Tensor: ``tensor`` itself.

    Raises:
        TypeError: A non-float tensor, a bound that is not a number or a bad generator.
        ValueError: A bound that is not finite, or ``a > b``.
    """
    check_float_tensor("tensor", tensor)
    _check_finite("a", a)
    _check_finite("b", b)
    if a > b:
        raise ValueError(f"uniform_ needs a <= b (the interval [a, b)), got a={a}, b={b}")
    return _uniform_(tensor, a, b, generator)


def normal_(
    tensor: torch.Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fills ``tensor`` with N(mean, std**2) values in place, as ``torch.nn.init.normal_``.

    Args:
        tensor (torch.Tensor): Any floating-point tensor (any shape, zero elements too).
        mean (float): The mean, finite.
        std (float): The standard deviation (not the variance), finite and ``>= 0``.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one); a CPU generator works for a tensor on any device.

    Returns:
        torch.Tensor: ``tensor`` itself.

    Raises:
        TypeError: A non-float tensor, ``mean``/``std`` not a number or a bad generator.
        ValueError: ``mean`` or ``std`` not finite, or ``std < 0``.
    """
    check_float_tensor("tensor", tensor)
    _check_finite("mean", mean)
    check_in_range("std", std, 0.0, math.inf, high_inclusive=False)
    return _normal_(tensor, mean, std, generator)


def constant_(tensor: torch.Tensor, val: float) -> torch.Tensor:
    """Fills ``tensor`` with ``val`` in place, as ``torch.nn.init.constant_``.

    Args:
        tensor (torch.Tensor): Any floating-point tensor.
        val (float): The value (a real number; ``True``/``False`` are refused).

    Returns:
        torch.Tensor: ``tensor`` itself.

    Raises:
        TypeError: A non-float tensor or a ``val`` that is not a real number.
    """
    check_float_tensor("tensor", tensor)
    if isinstance(val, bool) or not isinstance(val, numbers.Real):
        raise TypeError(f"val must be a real number, got {val!r}")
    with torch.no_grad():
        return tensor.fill_(val)


def ones_(tensor: torch.Tensor) -> torch.Tensor:
    """Fills ``tensor`` with ones in place, as ``torch.nn.init.ones_``.

    Args:
        tensor (torch.Tensor): Any floating-point tensor.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    return constant_(tensor, 1.0)


def uniform_fan_in_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills ``tensor`` with U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in place.

    This is the default weight initialization of ``torch.nn.Linear`` and ``Conv*d``,
    which torch writes as ``kaiming_uniform_(w, a=math.sqrt(5))``; the two bounds agree
    up to floating-point rounding. Its variance ``1 / (3 * fan_in)`` is smaller than
    Kaiming's ``2 / fan_in``.

    Args:
        tensor (torch.Tensor): A floating-point ``[out_features, in_features, ...]``
            weight; a zero-element tensor is left as is.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one). It may be a CPU generator for a CUDA tensor: the numbers are
            then drawn on the CPU and copied over.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    bound = 1.0 / math.sqrt(fan_in)
    return _uniform_(tensor, -bound, bound, generator)


def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fills ``tensor`` with Glorot/Xavier uniform values U(-a, a) in place.

    ``a = gain * sqrt(6 / (fan_in + fan_out))``, i.e. the standard deviation is
    ``gain * sqrt(2 / (fan_in + fan_out))`` (a uniform U(-a, a) has std ``a / sqrt(3)``).

    Args:
        tensor (torch.Tensor): A floating-point ``[out_features, in_features, ...]``
            weight; a zero-element tensor is left as is.
        gain (float): Non-negative scaling factor, e.g. ``calculate_gain("tanh")``.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one). It may be a CPU generator for a CUDA tensor: the numbers are
            then drawn on the CPU and copied over.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    check_nonnegative("gain", gain)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return _uniform_(tensor, -bound, bound, generator)


def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fills ``tensor`` with Glorot/Xavier normal values N(0, std**2) in place.

    ``std = gain * sqrt(2 / (fan_in + fan_out))``.

    Args:
        tensor (torch.Tensor): A floating-point ``[out_features, in_features, ...]``
            weight; a zero-element tensor is left as is.
        gain (float): Non-negative scaling factor, e.g. ``calculate_gain("tanh")``.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one). It may be a CPU generator for a CUDA tensor: the numbers are
            then drawn on the CPU and copied over.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    check_nonnegative("gain", gain)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    if tensor.numel() == 0:
        return tensor
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _normal_(tensor, 0.0, std, generator)


def _kaiming_gain(a: float, nonlinearity: str) -> float:
    if nonlinearity == "leaky_relu":
        _check_slope("a", a)
    return calculate_gain(nonlinearity, a)


def kaiming_uniform_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fills ``tensor`` with He/Kaiming uniform values U(-bound, bound) in place.

    ``bound = gain * sqrt(3 / fan)`` where ``gain = calculate_gain(nonlinearity, a)``,
    so the standard deviation is ``gain / sqrt(fan)``.

    Args:
        tensor (torch.Tensor): A floating-point ``[out_features, in_features, ...]``
            weight; a zero-element tensor is left as is, with torch's warning.
        a (float): Negative slope of the leaky ReLU after this layer (only used when
            ``nonlinearity="leaky_relu"``; the default 0 makes it a plain ReLU).
        mode (str): ``"fan_in"`` keeps the variance of activations in the forward pass,
            ``"fan_out"`` that of gradients in the backward pass.
        nonlinearity (str): A name accepted by ``calculate_gain``.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one). It may be a CPU generator for a CUDA tensor: the numbers are
            then drawn on the CPU and copied over.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    fan = _calculate_correct_fan(tensor, mode)
    gain = _kaiming_gain(a, nonlinearity)
    if tensor.numel() == 0:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)  # as torch
        return tensor
    std = gain / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return _uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fills ``tensor`` with He/Kaiming normal values N(0, std**2) in place.

    ``std = gain / sqrt(fan)`` where ``gain = calculate_gain(nonlinearity, a)``.

    Args:
        tensor (torch.Tensor): A floating-point ``[out_features, in_features, ...]``
            weight; a zero-element tensor is left as is, with torch's warning.
        a (float): Negative slope of the leaky ReLU after this layer (only used when
            ``nonlinearity="leaky_relu"``; the default 0 makes it a plain ReLU).
        mode (str): ``"fan_in"`` keeps the variance of activations in the forward pass,
            ``"fan_out"`` that of gradients in the backward pass.
        nonlinearity (str): A name accepted by ``calculate_gain``.
        generator (torch.Generator | None): Source of randomness (default: torch's
            global one). It may be a CPU generator for a CUDA tensor: the numbers are
            then drawn on the CPU and copied over.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    fan = _calculate_correct_fan(tensor, mode)
    gain = _kaiming_gain(a, nonlinearity)
    if tensor.numel() == 0:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)  # as torch
        return tensor
    std = gain / math.sqrt(fan)
    return _normal_(tensor, 0.0, std, generator)


def zeros_(tensor: torch.Tensor) -> torch.Tensor:
    """Fills ``tensor`` with zeros in place (the usual bias initialization).

    Args:
        tensor (torch.Tensor): Any floating-point tensor.

    Returns:
        torch.Tensor: ``tensor`` itself.
    """
    check_float_tensor("tensor", tensor)
    with torch.no_grad():
        return tensor.zero_()
