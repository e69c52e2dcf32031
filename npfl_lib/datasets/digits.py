"""scikit-learn's bundled 8x8 handwritten digits: the offline default data set."""

from __future__ import annotations

import numpy as np
import torch

from .splits import Split, Splits

__all__ = ["load_digits"]

DEV_SIZE, TEST_SIZE = 200, 300
SEED = 42


def load_digits() -> Splits:
    """Loads the 1,797 8x8 digits that ship with scikit-learn (no network needed).

    The images are split by a fixed permutation of all 1,797 examples, drawn from
    ``numpy.random.RandomState(42)`` (a frozen stream, so the split is the same on
    every call, machine and NumPy version and ignores the global RNG):
    the first 1,297 permuted examples are ``train``, the next 200 ``dev`` and the
    last 300 ``test``.

    Returns:
        Splits: named ``"digits"`` with ``num_classes=10`` and ``input_shape=(1, 8, 8)``;
        each split's ``inputs`` are float32 of shape ``(N, 1, 8, 8)`` with the 17 gray
        levels 0..16 scaled to [0, 1] (pixel / 16), its ``targets`` int64 digits 0..9.
    """
    # Imported here, not at the top: scikit-learn takes most of a second to import.
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    inputs = torch.from_numpy(digits.images / 16.0).to(torch.float32).unsqueeze(1)
    targets = torch.from_numpy(digits.target).to(torch.int64)

    order = torch.from_numpy(np.random.RandomState(SEED).permutation(len(targets)))
    train_size = len(targets) - DEV_SIZE - TEST_SIZE
    train, dev, test = order.split([train_size, DEV_SIZE, TEST_SIZE])
    return Splits(
        "digits",
        train=Split(inputs[train], targets[train]),
        dev=Split(inputs[dev], targets[dev]),
        test=Split(inputs[test], targets[test]),
        num_classes=10,
    )
