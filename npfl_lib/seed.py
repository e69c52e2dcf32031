"""Repeatable runs: ``set_seed(42)``; and the notebooks' one set-up call, ``setup(42)``."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ._checks import check_in_range
from .data_feed import resolve_device


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


def setup(seed: int = 42, *, threads: int | None = None, device: str = "auto") -> torch.device:
    """The one set-up call of a lecture notebook: the device, the seed and the CPU threads.

    ``device = npfl_lib.setup(42)`` picks the device (``resolve_device``: the
    ``NPFL_DEVICE`` environment variable, else CUDA when available, else the CPU), seeds
    every generator (:func:`set_seed`) and sets how many CPU threads torch's operations
    use (``torch.set_num_threads``).

    One thread is the default: the notebooks' tensors are small (batches of tens of
    examples, layers of hundreds of units), where more threads do not make an operation
    faster on an idle machine, and on a busy one (a shared JupyterHub, a laptop running
    other work) OpenMP threads wait for each other and make small operations many times
    slower. Set ``OMP_NUM_THREADS`` (read when ``threads`` is None) or pass ``threads``
    for large CPU work.

    Args:
        seed (int): The seed, in [0, 2**32 - 1].
        threads (int | None): CPU threads for torch's operations, >= 1; None takes the
            ``OMP_NUM_THREADS`` environment variable when it is set, else 1.
        device (str | torch.device): As ``Trainer``'s ``device``: "auto", "cpu",
            "cuda", "cuda:1", ...

    Returns:
        torch.device: The device to put models and data on.

    Raises:
        ValueError: A bad seed, thread count or device, naming it.
    """
    if threads is None:
        value = os.environ.get("OMP_NUM_THREADS", "").strip()
        try:
            threads = int(value) if value else 1
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS must be a positive int, got {value!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    resolved = resolve_device(device)
    set_seed(seed)
    torch.set_num_threads(threads)
    return resolved
