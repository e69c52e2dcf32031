"""MixUp and CutMix: training on convex combinations of pairs of examples.

Both draw one ``lam ~ Beta(alpha, alpha)`` per batch and pair every example ``i`` with
example ``perm[i]`` of a random permutation of the batch (an example may be paired
with itself). ``torch.distributions`` cannot take a ``generator``, so the Beta
variates come from a small sampler of our own (:func:`_sample_beta`).

Random numbers are drawn on the generator's device if a generator is given (else on
the data's device) and then moved to the data's device, so a CPU generator gives the
same augmentation on every device. They are drawn in this order: ``lam`` (the Beta
sampler's normal and uniform variates), ``perm`` (``torch.randperm``), and for
CutMix the box centre (``torch.randint`` for the row, then for the column).
"""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_float_tensor, check_in_range
from .activations import sigmoid
from .dropout import _check_generator, _generator_device

__all__ = ["mixup", "cutmix"]


def _log_gamma_variates(
    shape: float, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``log`` of ``n`` Gamma(shape, 1) variates (float64), by Marsaglia & Tsang (2000).

    For ``shape >= 1``: with ``d = shape - 1/3``, ``c = 1 / sqrt(9 d)``, draw
    ``z ~ N(0, 1)``, ``u ~ U(0, 1)``, set ``v = (1 + c z)**3`` and accept ``d v`` if
    ``v > 0`` and ``log u < z**2 / 2 + d - d v + d log v`` (over 95 % are accepted).
    For ``shape < 1``, ``Gamma(shape) = Gamma(shape + 1) * U**(1 / shape)``. Logs are
    returned because ``U**(1 / shape)`` underflows to 0 for small shapes.
    """
    boosted = shape < 1
    d = (shape + 1 if boosted else shape) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    log_gamma = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        m = pending.numel()
        z = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1 + c * z) ** 3
        # For v <= 0, log(v) is NaN or -inf and the comparison is False: rejected.
        accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v))
        log_gamma[pending[accept]] = math.log(d) + torch.log(v[accept])
        pending = pending[~accept]
    if boosted:
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        log_gamma += torch.log1p(-u) / shape  # 1 - u lies in (0, 1]: no log(0)
    return log_gamma


def _sample_beta(
    alpha: float, n: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """``n`` samples of Beta(alpha, alpha) as float64 on ``device`` (generator's if given).

    ``X / (X + Y)`` for independent ``X, Y ~ Gamma(alpha)`` is Beta(alpha, alpha); from
    the logs it is ``sigmoid(log X - log Y)``, which stays in ``[0, 1]`` without 0 / 0.
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    log_x = _log_gamma_variates(alpha, n, generator, device)
    log_y = _log_gamma_variates(alpha, n, generator, device)
    return sigmoid(log_x - log_y)


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a positive real number, got {type(alpha).__name__}")
    check_in_range("alpha", alpha, 0.0, math.inf, low_inclusive=False, high_inclusive=False)


def _check_batch(name: str, inputs: torch.Tensor, target_probs: torch.Tensor) -> None:
    check_float_tensor(name, inputs)
    check_float_tensor("target_probs", target_probs)
    if target_probs.ndim != 2:
        raise ValueError(
            f"target_probs must be 2-D (batch, classes), got shape {tuple(target_probs.shape)}"
        )
    if inputs.ndim == 0 or inputs.shape[0] != target_probs.shape[0]:
        raise ValueError(
            f"{name} and target_probs must have the same batch size (first dimension), "
            f"got shapes {tuple(inputs.shape)} and {tuple(target_probs.shape)}"
        )


def _draw_lam_and_perm(alpha, batch_size, generator, data_device):
    device = _generator_device(generator, data_device)
    lam = _sample_beta(alpha, 1, generator, device).item()
    perm = torch.randperm(batch_size, generator=generator, device=device)
    return lam, perm, device


def _mix(lam: float, tensor: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return lam * tensor + (1 - lam) * tensor[perm.to(tensor.device)]


def mixup(
    inputs: torch.Tensor,
    target_probs: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (Zhang et al., 2018): convex combinations of pairs of examples.

    With ``lam ~ Beta(alpha, alpha)`` (one per batch) and a random permutation
    ``perm`` of the batch, returns ``lam * x + (1 - lam) * x[perm]`` and
    ``lam * y + (1 - lam) * y[perm]``. Mixed one-hot (or smoothed) targets stay
    probability distributions. See the module docstring for the random draws.

    Args:
        inputs (torch.Tensor): Floating-point batch ``(N, ...)``.
        target_probs (torch.Tensor): Floating-point target distributions ``(N, K)``.
        alpha (float): The Beta parameter, ``> 0``; small values keep ``lam`` near 0
            or 1 (little mixing), ``alpha = 1`` draws ``lam`` uniformly.
        generator (torch.Generator, optional): Source of randomness; may be a CPU
            generator for data on another device (draws happen on the generator's
            device and are moved to the data's).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The mixed inputs and mixed targets, with
        the shapes, dtypes and devices of ``inputs`` and ``target_probs``.
    """
    _check_batch("inputs", inputs, target_probs)
    _check_alpha(alpha)
    _check_generator(generator)
    lam, perm, _ = _draw_lam_and_perm(alpha, inputs.shape[0], generator, inputs.device)
    return _mix(lam, inputs, perm), _mix(lam, target_probs, perm)


def cutmix(
    images: torch.Tensor,
    target_probs: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019): paste a box from a partner image, mix labels by area.

    With ``lam ~ Beta(alpha, alpha)`` and a random permutation ``perm`` of the batch, a
    box of size ``cut_h x cut_w = int(H * sqrt(1 - lam)) x int(W * sqrt(1 - lam))``
    (area about ``(1 - lam) * H * W``) is centred at a uniformly random pixel
    ``(cy, cx)``: rows ``cy - cut_h // 2`` up to (excluding) ``cy - cut_h // 2 + cut_h``,
    likewise columns, clipped to the image. The same box of ``images[perm]`` is pasted
    into every image. As clipping shrinks the box, ``lam`` is then recomputed as the
    fraction of pixels that still come from the original image, and the targets are
    mixed with it: ``lam * y + (1 - lam) * y[perm]``. See the module docstring for the
    random draws.

    Args:
        images (torch.Tensor): Floating-point images ``(N, C, H, W)``.
        target_probs (torch.Tensor): Floating-point target distributions ``(N, K)``.
        alpha (float): The Beta parameter, ``> 0`` (the CutMix paper uses 1).
        generator (torch.Generator, optional): Source of randomness; may be a CPU
            generator for data on another device (draws happen on the generator's
            device and are moved to the data's).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The mixed images (a new tensor; ``images``
        is not modified) and the mixed targets.
    """
    _check_batch("images", images, target_probs)
    if images.ndim != 4 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(
            f"images must be 4-D (N, C, H, W) with H, W >= 1, got shape {tuple(images.shape)}"
        )
    _check_alpha(alpha)
    _check_generator(generator)
    height, width = images.shape[2], images.shape[3]
    lam, perm, device = _draw_lam_and_perm(alpha, images.shape[0], generator, images.device)
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy = int(torch.randint(height, (), generator=generator, device=device))
    cx = int(torch.randint(width, (), generator=generator, device=device))
    top, left = max(cy - cut_h // 2, 0), max(cx - cut_w // 2, 0)
    bottom, right = min(cy - cut_h // 2 + cut_h, height), min(cx - cut_w // 2 + cut_w, width)

    mixed = images.clone()
    partner = perm.to(images.device)
    mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (height * width)
    return mixed, _mix(lam, target_probs, perm)
