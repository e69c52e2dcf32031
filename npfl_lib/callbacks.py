"""Callbacks for ``Trainer.fit``: early stopping and keeping the best weights.

A callback is any object with some of these methods, called by ``Trainer.fit``:

* ``on_train_begin(trainer)`` before the first epoch,
* ``on_epoch_end(trainer, epoch, logs)`` after each epoch (``epoch`` counts from 0
  within the fit call, ``logs`` is that epoch's history dict),
* ``on_train_end(trainer)`` after the last epoch, also after an early stop.

Setting ``trainer.stop_training = True`` ends training after the current epoch.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_nonnegative

MODES = ("min", "max")


class Callback:
    """Base class with no-op hooks; subclass it and override what you need."""

    def on_train_begin(self, trainer) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass


class _Monitor(Callback):
    """Tracks the best value of one log entry (shared by the callbacks below)."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str (a key of the logs), got {monitor!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        check_nonnegative("min_delta", min_delta)
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None

    def on_train_begin(self, trainer) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None

    def _improved(self, epoch: int, logs: dict) -> bool:
        """Records and reports whether ``logs[monitor]`` beats the best by > min_delta."""
        if self.monitor not in logs:
            raise ValueError(
                f"{type(self).__name__}: monitor {self.monitor!r} is not in the epoch logs; "
                f"available keys: {sorted(logs)} (dev_* keys need fit(..., dev=...))"
            )
        value = float(logs[self.monitor])
        if self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:  # NaN never compares better, so a diverged epoch is no improvement
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(_Monitor):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor (str): The log key to watch, e.g. ``"dev_loss"`` or ``"dev_accuracy"``.
        patience (int): Number of epochs without improvement after which training stops
            (as in Keras and Lightning; 0 and 1 both stop at the first such epoch).
        mode (str): ``"min"`` when lower is better, ``"max"`` when higher is better.
        min_delta (float): An improvement must exceed this (>= 0) to count.

    After fit, ``stopped_epoch`` is the epoch (from 0) training stopped at, else None.
    """

    def __init__(self, monitor="dev_loss", patience=3, mode="min", min_delta=0.0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_train_begin(self, trainer) -> None:
        super().on_train_begin(trainer)
        self.wait, self.stopped_epoch = 0, None

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self._improved(epoch, logs):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True


class KeepBestWeights(_Monitor):
    """Restores, when training ends, the weights of the epoch with the best ``monitor``.

    Args:
        monitor (str): The log key to watch, e.g. ``"dev_loss"`` or ``"dev_accuracy"``.
        mode (str): ``"min"`` when lower is better, ``"max"`` when higher is better.

    A copy of the model's ``state_dict`` (parameters and buffers) is kept on the
    model's device; ``best_epoch`` and ``best`` tell which epoch and value it is.
    """

    def __init__(self, monitor="dev_loss", mode="min"):
        super().__init__(monitor, mode)
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, trainer) -> None:
        super().on_train_begin(trainer)
        self.best_state = None

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self._improved(epoch, logs):
            state = trainer.model.state_dict()
            self.best_state = {key: value.detach().clone() for key, value in state.items()}

    def on_train_end(self, trainer) -> None:
        if self.best_state is not None:
            # load_state_dict copies in place, so the optimizer keeps the same tensors.
            trainer.model.load_state_dict(self.best_state)
