"""The containers every loader returns: a ``Split`` of examples and the ``Splits`` of a data set."""

from __future__ import annotations

import operator

import torch

from .._checks import check_float_tensor

__all__ = ["Split", "Splits"]


class Split(torch.utils.data.Dataset):
    """One split (train, dev or test) of a data set: inputs and their targets.

    It is a ``torch.utils.data.Dataset``, so ``torch.utils.data.DataLoader(split, ...)``
    batches it; for full-batch training use ``split.inputs`` and ``split.targets``
    directly.

    Args:
        inputs (torch.Tensor): Floating-point inputs of shape ``(N, *input_shape)``.
        targets (torch.Tensor): Targets of shape ``(N, ...)``: int64 class indices for
            classification, floating-point values for regression.

    Raises:
        TypeError: If ``inputs`` is not a floating-point tensor, or ``targets`` is
            neither an int64 nor a floating-point tensor.
        ValueError: If ``inputs`` and ``targets`` hold different numbers of examples.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        check_float_tensor("inputs", inputs)
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.dtype != torch.int64 and not targets.is_floating_point():
            raise TypeError(
                "targets must be int64 class indices or floating-point regression values, "
                f"got {targets.dtype}"
            )
        if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets):
            raise ValueError(
                "inputs and targets must hold the same number of examples along dimension 0, "
                f"got shapes {tuple(inputs.shape)} and {tuple(targets.shape)}"
            )
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def to(self, device: torch.device | str) -> Split:
        """Returns this split with its tensors on ``device``, e.g. for full-batch GPU training."""
        return Split(self.inputs.to(device), self.targets.to(device))

    def __repr__(self) -> str:
        return (
            f"Split(size={len(self)}, inputs={tuple(self.inputs.shape)} {self.inputs.dtype}, "
            f"targets={tuple(self.targets.shape)} {self.targets.dtype})"
        )


class Splits:
    """A data set as its three splits: ``train`` to fit, ``dev`` to tune, ``test`` to report.

    Attributes:
        name (str): The data set's name, e.g. ``"digits"``.
        train (Split): The training examples.
        dev (Split): The development (validation) examples, for hyperparameters and
            early stopping.
        test (Split): The test examples, touched once at the end.
        num_classes (int | None): The number of classes; None for a regression set.
        input_shape (tuple[int, ...]): The shape of one input, e.g. ``(1, 28, 28)``.

    Args:
        name (str): See above.
        train (Split): See above.
        dev (Split): See above.
        test (Split): See above.
        num_classes (int | None): See above.

    Raises:
        ValueError: If the splits' inputs differ in shape.
    """

    def __init__(
        self, name: str, train: Split, dev: Split, test: Split, num_classes: int | None
    ) -> None:
        for split_name, split in (("train", train), ("dev", dev), ("test", test)):
            if not isinstance(split, Split):
                raise TypeError(f"{split_name} must be a Split, got {type(split).__name__}")
            if split.inputs.shape[1:] != train.inputs.shape[1:]:
                raise ValueError(
                    f"{split_name} inputs must have the train inputs' shape "
                    f"{tuple(train.inputs.shape[1:])}, got {tuple(split.inputs.shape[1:])}"
                )
        self.name = name
        self.train, self.dev, self.test = train, dev, test
        self.num_classes = num_classes
        self.input_shape = tuple(train.inputs.shape[1:])

    def __repr__(self) -> str:
        return (
            f"<{self.name}: train={len(self.train)}, dev={len(self.dev)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}>"
        )


def _check_size(name: str, value: int, minimum: int = 0) -> int:
    """Returns ``value`` as an int; TypeError unless it is one, ValueError if below ``minimum``."""
    message = f"{name} must be an int, got {type(value).__name__}"
    if isinstance(value, bool):  # an int subclass, but True as a size is a mistake
        raise TypeError(message)
    try:
        number = operator.index(value)  # Python and NumPy integers, but not 10.0
    except TypeError:
        raise TypeError(message) from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return number
