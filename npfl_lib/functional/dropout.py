"""Inverted dropout, the ``torch.nn.functional.dropout`` of the lecture."""

from __future__ import annotations

import numbers

import torch

from .._checks import check_float_tensor, check_in_range

__all__ = ["dropout"]


def _check_generator(generator: torch.Generator | None) -> None:
    """Raises TypeError unless ``generator`` is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _generator_device(generator: torch.Generator | None, data_device: torch.device):
    """Where random numbers are drawn: on the generator's device if one is given."""
    return generator.device if generator is not None else data_device


def dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zeroes each element with probability ``p`` and scales the rest by ``1 / (1 - p)``.

    Like ``torch.nn.functional.dropout``, ``p`` is the probability to DROP a unit (not
    to keep it), and this is inverted dropout: the kept units are scaled up during
    training, so the expected output equals ``x`` and evaluation needs no rescaling.

    Mask convention: ``keep = torch.rand(x.shape, generator=generator, device=d) >= p``
    with the default dtype, where ``d`` is the generator's device if a generator is
    given (else ``x.device``); the mask is then moved to ``x.device``. So a CPU
    generator gives the same mask on every device. No random numbers are drawn when
    the function is the identity.

    ``p = 1`` drops every unit: the result is ``x * 0`` (zeros, but nan where ``x`` is
    nan or infinite), as torch, since no unit is kept to be scaled by ``1 / (1 - p)``.

    Args:
        x (torch.Tensor): Floating-point input of any shape.
        p (float): Drop probability in ``[0, 1]``. Default: 0.5.
        training (bool): If False, ``x`` is returned unchanged. Default: True.
        generator (torch.Generator, optional): Source of randomness for the mask.

    Returns:
        torch.Tensor: ``x * keep / (1 - p)``; ``x`` itself (the same object) when
        ``training`` is False or ``p == 0``.
    """
    check_float_tensor("x", x)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number in [0, 1], got {type(p).__name__}")
    check_in_range("p", p, 0.0, 1.0)
    _check_generator(generator)
    if not training or p == 0:
        return x
    if p == 1:  # torch multiplies by 0 rather than divide by 1 - p = 0
        return x * 0.0
    device = _generator_device(generator, x.device)
    keep = torch.rand(x.shape, generator=generator, device=device) >= p
    return x * keep.to(x.device) / (1 - p)
