"""Tests of npfl_lib.callbacks: EarlyStopping, KeepBestWeights and the callback protocol."""

import math

import pytest
import torch

from npfl_lib.callbacks import Callback, EarlyStopping, KeepBestWeights
from npfl_lib.trainer import Trainer


class FakeTrainer:
    """Just what the callbacks touch: a model and the stop flag."""

    def __init__(self):
        self.model = torch.nn.Linear(2, 1)
        self.stop_training = False


def run(callback, values, key="dev_loss"):
    """Feeds ``values`` as successive epoch logs; returns the epoch training stopped at."""
    trainer = FakeTrainer()
    callback.on_train_begin(trainer)
    for epoch, value in enumerate(values):
        callback.on_epoch_end(trainer, epoch, {"loss": 0.0, key: value})
        if trainer.stop_training:
            return epoch
    return None


def make_fit(epochs=8, callbacks=(), score=None, device="cpu"):
    """Fits a small model; ``score[epoch]`` is written into the logs as "score"."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(60, 4, generator=generator)
    targets = (inputs[:, 0] > 0).long()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    snapshots = []

    class Inject(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if score is not None:
                logs["score"] = score[epoch]
            snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer(model, optimizer, torch.nn.CrossEntropyLoss(), device=device)
    history = trainer.fit(
        (inputs, targets),
        epochs,
        20,
        dev=(inputs, targets),
        callbacks=[Inject(), *callbacks],
        verbose=0,
    )
    return trainer, history, snapshots


# ------------------------------------------------------------------- early stopping
@pytest.mark.parametrize(
    ("values", "patience", "mode", "min_delta", "stopped"),
    [
        ([5, 4, 3, 2, 1], 1, "min", 0.0, None),  # always improving
        ([5, 4, 4, 4, 4], 2, "min", 0.0, 3),  # 2 epochs without improvement after epoch 1
        ([5, 4, 6, 3, 7, 8], 2, "min", 0.0, 5),  # an improvement resets the count
        ([5, 4, 4, 4], 0, "min", 0.0, 2),  # patience 0 stops at the first bad epoch
        ([5, 4.95, 4.9, 4.85], 1, "min", 0.1, 1),  # improvements below min_delta do not count
        ([0.1, 0.2, 0.2, 0.2], 2, "max", 0.0, 3),
        ([0.1, 0.2, 0.1, 0.3, 0.3], 1, "max", 0.0, 2),
        ([1.0, math.nan, math.nan], 1, "min", 0.0, 1),  # NaN is never an improvement
    ],
)
def test_early_stopping_sequences(values, patience, mode, min_delta, stopped):
    callback = EarlyStopping(patience=patience, mode=mode, min_delta=min_delta)
    assert run(callback, values) == stopped
    assert callback.stopped_epoch == stopped


def test_early_stopping_is_reset_by_on_train_begin():
    callback = EarlyStopping(patience=1)
    assert run(callback, [1, 2]) == 1
    assert run(callback, [3, 2, 1]) is None  # a stale best (1) would stop at once


def test_early_stopping_stops_fit(device):
    # The dev loss of a model that cannot improve (score constant) stops fit after patience.
    early = EarlyStopping(monitor="score", patience=2)
    trainer, history, _ = make_fit(epochs=10, callbacks=[early], score=[1.0] * 10, device=device)
    assert len(history) == 3 and early.stopped_epoch == 2 and trainer.stop_training


def test_early_stopping_on_dev_loss_of_real_training(device):
    early = EarlyStopping(monitor="dev_loss", patience=1, mode="min")
    _, history, _ = make_fit(epochs=6, callbacks=[early], device=device)
    losses = [logs["dev_loss"] for logs in history]
    assert early.best == min(losses)
    if early.stopped_epoch is not None:
        assert len(history) == early.stopped_epoch + 1 < 6
        assert losses[-1] >= early.best


# -------------------------------------------------------------------- keep best
@pytest.mark.parametrize(
    ("mode", "score", "best"),
    [("min", [3, 1, 2, 4, 5], 1), ("max", [3, 1, 2, 4, 3.5], 3), ("min", [2, 2, 2, 2, 2], 0)],
)
def test_keep_best_weights_restores_best_epoch(mode, score, best, device):
    keep = KeepBestWeights(monitor="score", mode=mode)
    trainer, _, snapshots = make_fit(epochs=5, callbacks=[keep], score=score, device=device)
    assert keep.best_epoch == best and keep.best == score[best]
    state = trainer.model.state_dict()
    for key, value in snapshots[best].items():
        assert torch.equal(state[key], value)
    assert not torch.equal(snapshots[best]["0.weight"], snapshots[-1]["0.weight"])


def test_keep_best_with_early_stopping(device):
    score = [3, 1, 2, 4, 5, 6, 7, 8]
    early, keep = EarlyStopping("score", patience=2), KeepBestWeights("score")
    trainer, history, snapshots = make_fit(8, [early, keep], score=score, device=device)
    assert len(history) == 4
    assert torch.equal(trainer.model.state_dict()["2.bias"], snapshots[1]["2.bias"])


def test_keep_best_weights_copies_are_independent():
    keep = KeepBestWeights(monitor="dev_loss")
    trainer = FakeTrainer()
    keep.on_train_begin(trainer)
    keep.on_epoch_end(trainer, 0, {"dev_loss": 1.0})
    saved = trainer.model.weight.detach().clone()
    with torch.no_grad():
        trainer.model.weight.add_(1.0)
    keep.on_epoch_end(trainer, 1, {"dev_loss": 2.0})  # worse: nothing saved
    keep.on_train_end(trainer)
    assert torch.equal(trainer.model.weight, saved)


# ------------------------------------------------------------------------ bad input
def test_unknown_monitor_lists_available_keys():
    for callback in (EarlyStopping(monitor="dev_accuracy"), KeepBestWeights(monitor="dev_acc")):
        with pytest.raises(ValueError, match=r"monitor 'dev_a.*'.*available keys.*dev_loss"):
            run(callback, [1.0])
    with pytest.raises(ValueError, match=r"available keys: \['dev_loss', 'loss', 'lr', 'time'\]"):
        make_fit(epochs=1, callbacks=[EarlyStopping(monitor="val_loss")])


def test_bad_arguments():
    cases = [
        (ValueError, "mode", lambda: EarlyStopping(mode="minimum")),
        (ValueError, "mode", lambda: KeepBestWeights(mode="MAX")),
        (ValueError, "patience", lambda: EarlyStopping(patience=-1)),
        (ValueError, "patience", lambda: EarlyStopping(patience=1.5)),
        (ValueError, "min_delta", lambda: EarlyStopping(min_delta=-0.1)),
        (TypeError, "monitor", lambda: EarlyStopping(monitor=3)),
        (TypeError, "monitor", lambda: KeepBestWeights(monitor=None)),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


def test_base_callback_hooks_are_no_ops():
    callback, trainer = Callback(), FakeTrainer()
    callback.on_train_begin(trainer)
    callback.on_epoch_end(trainer, 0, {})
    callback.on_train_end(trainer)
    assert not trainer.stop_training
