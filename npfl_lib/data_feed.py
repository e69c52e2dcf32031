"""Where the Trainer computes, and how it turns what a user passes as data into batches.

Two paths:

* **Resident** (fast): an ``(inputs, targets)`` pair of tensors, a split object with
  ``.inputs``/``.targets`` or a two-tensor ``TensorDataset``. The tensors are moved to
  the device once and every batch is gathered there with an index permutation, so an
  epoch costs no host-to-device copies and no DataLoader machinery.
* **Loader** (generic): any other torch ``Dataset`` or ``DataLoader``; each batch is
  moved to the device as it comes.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

DATA_KINDS = (
    "an (inputs, targets) pair of tensors, a split with .inputs/.targets, "
    "a torch Dataset or a DataLoader"
)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turns ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... into a usable torch.device.

    ``"auto"`` takes the ``NPFL_DEVICE`` environment variable when it is set (and not
    ``"auto"`` itself), else CUDA when available, else the CPU.

    Raises:
        ValueError: The name is not a device, or names one this machine does not have.
    """
    source, name = "device", device
    if isinstance(device, str) and device == "auto":
        name = os.environ.get("NPFL_DEVICE", "auto").strip() or "auto"
        source = "NPFL_DEVICE"
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(name).__name__}")
    try:
        resolved = torch.device(name)
        torch.empty(0, device=resolved)  # fails for a backend this build or machine lacks
    except (RuntimeError, AssertionError, ValueError) as error:
        raise ValueError(
            f"{source} must be 'auto', 'cpu', 'cuda' or 'cuda:N' (a device this machine has), "
            f"got {name!r}: {error}"
        ) from None
    if resolved.type == "cuda" and resolved.index is None:
        # An explicit index makes device comparisons (tensor.device == device) work.
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def to_device(obj, device: torch.device):
    """Moves a tensor, or the tensors inside a tuple/list/dict, to ``device``."""
    if isinstance(obj, torch.Tensor):
        # Asynchronous only towards an accelerator: a CPU result must be ready when used.
        return obj.to(device, non_blocking=device.type != "cpu")
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(item, device) for item in obj)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    return obj


def batch_length(obj) -> int:
    """The number of examples in a batch (the first dimension of its first tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj.shape[0] if obj.dim() > 0 else 1
    if isinstance(obj, (tuple, list)) and obj:
        return batch_length(obj[0])
    if isinstance(obj, dict) and obj:
        return batch_length(next(iter(obj.values())))
    raise TypeError(f"cannot tell the batch size of a {type(obj).__name__}")


def tensor_pair(data, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Returns ``(inputs, targets)`` when ``data`` can take the resident path, else None."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        pair = data.tensors
    elif hasattr(data, "inputs") and hasattr(data, "targets"):
        pair = (data.inputs, data.targets)
    elif isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(f"{name} as a tuple must be (inputs, targets), got {len(data)} items")
        pair = tuple(data)
    else:
        return None
    inputs, targets = (torch.as_tensor(t) if isinstance(t, np.ndarray) else t for t in pair)
    for part, tensor in (("inputs", inputs), ("targets", targets)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} {part} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() == 0:
            raise ValueError(f"{name} {part} must have a batch dimension, got a 0-d tensor")
    if len(inputs) != len(targets):
        raise ValueError(
            f"{name} inputs and targets must have the same number of examples, "
            f"got {len(inputs)} and {len(targets)}"
        )
    if len(inputs) == 0:
        raise ValueError(f"{name} must hold at least one example, got 0")
    return inputs, targets


class DeviceCache:
    """Remembers the device copies of host tensors, so repeated fit() calls copy data once.

    An entry is reused only while the host tensor is alive and unmodified (its in-place
    version counter is unchanged); a few entries at most are kept.
    """

    def __init__(self, device: torch.device, size: int = 4):
        self.device = device
        self.size = size
        self._entries: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}

    def get(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == self.device:
            return tensor
        entry = self._entries.get(id(tensor))
        if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
            return entry[2]
        copy = tensor.to(self.device)
        self._entries = {k: e for k, e in self._entries.items() if e[0]() is not None}
        while len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[id(tensor)] = (weakref.ref(tensor), tensor._version, copy)
        return copy


class ResidentData:
    """A pair of tensors living on the device, batched by gathering with index tensors."""

    resident = True

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def index_batches(self, batch_size: int, shuffle: bool) -> Iterator[torch.Tensor]:
        """Yields the index tensor of each batch; only the last one may be shorter."""
        n, device = len(self), self.inputs.device
        order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs.index_select(0, index), self.targets.index_select(0, index)

    def batches(self, batch_size: int, shuffle: bool = False):
        for index in self.index_batches(batch_size, shuffle):
            yield self.take(index)


class LoaderData:
    """Any Dataset or DataLoader; batches are moved to the device one at a time."""

    resident = False

    def __init__(self, data, device: torch.device):
        self.data, self.device = data, device

    def num_batches(self, batch_size: int) -> int | None:
        try:
            return len(self.loader(batch_size))
        except TypeError:  # an iterable dataset without a length
            return None

    def loader(self, batch_size: int, shuffle: bool = False) -> DataLoader:
        if isinstance(self.data, DataLoader):
            return self.data  # its own batch size and order win
        shuffle = shuffle and not isinstance(self.data, IterableDataset)
        return DataLoader(self.data, batch_size=batch_size, shuffle=shuffle)

    def batches(self, batch_size: int, shuffle: bool = False):
        for batch in self.loader(batch_size, shuffle):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError(
                    "each batch of the data must be an (inputs, targets) pair, "
                    f"got a {type(batch).__name__}"
                )
            yield to_device(batch[0], self.device), to_device(batch[1], self.device)


def make_feed(data, name: str, device: torch.device, cache: DeviceCache):
    """Wraps ``data`` (argument ``name``) in a ResidentData or LoaderData on ``device``."""
    pair = tensor_pair(data, name)
    if pair is not None:
        return ResidentData(cache.get(pair[0]), cache.get(pair[1]))
    if isinstance(data, (Dataset, DataLoader)):
        return LoaderData(data, device)
    raise TypeError(f"{name} must be {DATA_KINDS}, got {type(data).__name__}")
