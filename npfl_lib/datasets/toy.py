"""Small seeded data sets for the lecture's plots: 2-D classification and 1-D regression.

Every set is generated from its ``seed`` alone (never the global RNG), and each split
from its own stream spawned from that seed, so the training set stays the same when
only ``dev_size`` or ``test_size`` changes. The data are on the CPU; move a split with
``split.to(device)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_in_range, check_nonnegative
from .splits import Split, Splits, _check_size

__all__ = ["moons", "circles", "spirals", "polynomial_regression"]

# A maker turns (size, seed) into NumPy (inputs, targets) of one split.
Maker = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def moons(
    train_size: int = 200,
    dev_size: int = 200,
    test_size: int = 1000,
    noise: float = 0.1,
    seed: int = 0,
) -> Splits:
    """Two interleaving half circles, made by ``sklearn.datasets.make_moons``.

    Args:
        train_size (int): Examples in ``train``; likewise ``dev_size`` and ``test_size``
            (each at least 1; each split has half of each class, up to one example).
        dev_size (int): See ``train_size``.
        test_size (int): See ``train_size``.
        noise (float): Standard deviation of the Gaussian noise added to each coordinate.
        seed (int): Non-negative seed of the whole data set.

    Returns:
        Splits: named ``"moons"``, float32 inputs ``(N, 2)``, int64 targets 0 or 1.
    """
    check_nonnegative("noise", noise)
    sklearn_datasets = _sklearn_datasets()

    def make(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return sklearn_datasets.make_moons(size, noise=noise, random_state=seed)

    return _make_splits("moons", make, (train_size, dev_size, test_size), seed, num_classes=2)


def circles(
    train_size: int = 200,
    dev_size: int = 200,
    test_size: int = 1000,
    noise: float = 0.1,
    factor: float = 0.5,
    seed: int = 0,
) -> Splits:
    """A small circle (class 1) inside a large one (class 0), by ``sklearn.datasets.make_circles``.

    Args:
        train_size (int): Examples in ``train``; likewise ``dev_size`` and ``test_size``
            (each at least 1).
        dev_size (int): See ``train_size``.
        test_size (int): See ``train_size``.
        noise (float): Standard deviation of the Gaussian noise added to each coordinate.
        factor (float): Radius of the inner circle relative to the outer one (radius 1),
            in [0, 1).
        seed (int): Non-negative seed of the whole data set.

    Returns:
        Splits: named ``"circles"``, float32 inputs ``(N, 2)``, int64 targets 0 or 1.
    """
    check_nonnegative("noise", noise)
    check_in_range("factor", factor, 0.0, 1.0, high_inclusive=False)
    sklearn_datasets = _sklearn_datasets()

    def make(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return sklearn_datasets.make_circles(size, noise=noise, factor=factor, random_state=seed)

    return _make_splits("circles", make, (train_size, dev_size, test_size), seed, num_classes=2)


def spirals(
    train_size: int = 200,
    dev_size: int = 200,
    test_size: int = 1000,
    num_classes: int = 2,
    turns: float = 1.0,
    noise: float = 0.05,
    seed: int = 0,
) -> Splits:
    """Interleaved spiral arms, one per class: a set that needs a nonlinear model.

    A point of class ``c`` at radius ``r ~ U(0, 1)`` lies at the angle
    ``2 pi (turns r + c / num_classes)``, plus Gaussian noise on each coordinate. The
    classes are balanced (sizes differ by at most one) and shuffled.

    Args:
        train_size (int): Examples in ``train``; likewise ``dev_size`` and ``test_size``
            (each at least 1).
        dev_size (int): See ``train_size``.
        test_size (int): See ``train_size``.
        num_classes (int): Number of arms (classes), at least 2.
        turns (float): How many full turns each arm makes from the center to radius 1 (> 0).
        noise (float): Standard deviation of the Gaussian noise added to each coordinate.
        seed (int): Non-negative seed of the whole data set.

    Returns:
        Splits: named ``"spirals"``, float32 inputs ``(N, 2)``, int64 targets
        ``0..num_classes-1``.
    """
    num_classes = _check_size("num_classes", num_classes, minimum=2)
    check_in_range("turns", turns, 0.0, math.inf, low_inclusive=False)
    check_nonnegative("noise", noise)

    def make(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        targets = rng.permutation(np.arange(size) % num_classes)
        radius = rng.uniform(0.0, 1.0, size)
        angle = 2 * np.pi * (turns * radius + targets / num_classes)
        inputs = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return inputs + rng.normal(0.0, noise, inputs.shape), targets

    return _make_splits("spirals", make, (train_size, dev_size, test_size), seed, num_classes)


def polynomial_regression(
    train_size: int = 15,
    dev_size: int = 100,
    test_size: int = 500,
    noise: float = 0.3,
    seed: int = 0,
) -> Splits:
    """The lecture's noisy 1-D regression: ``y = sin(2 pi x) + noise``, ``x ~ U(0, 1)``.

    Fitting polynomials of growing degree to the few training points shows
    underfitting and overfitting; the larger dev and test sets measure it. Unlike the
    classification sets, the **targets are float32 of shape (N, 1)** and
    ``num_classes`` is None. With ``noise=0`` the targets are exactly ``sin(2 pi x)``
    at the same ``x``.

    Args:
        train_size (int): Examples in ``train`` (few on purpose); likewise ``dev_size``
            and ``test_size`` (each at least 1).
        dev_size (int): See ``train_size``.
        test_size (int): See ``train_size``.
        noise (float): Standard deviation of the Gaussian noise added to ``y``.
        seed (int): Non-negative seed of the whole data set.

    Returns:
        Splits: named ``"polynomial_regression"``, float32 inputs ``x`` of shape
        ``(N, 1)``, float32 targets ``y`` of shape ``(N, 1)``.
    """
    check_nonnegative("noise", noise)

    def make(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        inputs = rng.uniform(0.0, 1.0, (size, 1))
        return inputs, np.sin(2 * np.pi * inputs) + rng.normal(0.0, noise, (size, 1))

    sizes = (train_size, dev_size, test_size)
    return _make_splits("polynomial_regression", make, sizes, seed, num_classes=None)


def _sklearn_datasets():
    # Imported on use, not at the top: scikit-learn takes most of a second to import.
    import sklearn.datasets

    return sklearn.datasets


def _make_splits(
    name: str, make: Maker, sizes: tuple[int, int, int], seed: int, num_classes: int | None
) -> Splits:
    """Makes each split with ``make`` from its own seed spawned from ``seed``."""
    names = ("train_size", "dev_size", "test_size")
    sizes = [_check_size(arg, size, minimum=1) for arg, size in zip(names, sizes, strict=True)]
    seed = _check_size("seed", seed)
    # SeedSequence.spawn gives independent streams, unlike seed, seed + 1, ... which would
    # make one seed's dev set another seed's training set.
    streams = np.random.SeedSequence(seed).spawn(3)
    target_dtype = torch.float32 if num_classes is None else torch.int64
    splits = []
    for size, stream in zip(sizes, streams, strict=True):
        inputs, targets = make(size, int(stream.generate_state(1)[0]))
        inputs = torch.tensor(inputs, dtype=torch.float32)
        splits.append(Split(inputs, torch.tensor(targets, dtype=target_dtype)))
    return Splits(name, *splits, num_classes=num_classes)
