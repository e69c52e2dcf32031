"""One call to make a run repeatable: ``set_seed(42)``."""

from __future__ import annotations

import random

import numpy as np
import torch

from ._checks import check_in_range


def set_seed(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and torch (CPU and every GPU).

    Two runs that call ``set_seed`` with the same seed before building the model and
    training give identical results on the CPU. On a GPU some kernels (e.g. atomic-add
    reductions) are not bitwise deterministic; ``torch.use_deterministic_algorithms``
    controls that and is left to the caller.

    Args:
        seed (int): The seed, in [0, 2**32 - 1] (NumPy's range).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    check_in_range("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CUDA generators too (torch.cuda.manual_seed_all)
