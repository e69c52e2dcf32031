"""Tests of npfl_lib.seed.set_seed: every generator seeded, runs repeatable."""

import random

import numpy as np
import pytest
import torch

from npfl_lib.seed import set_seed, setup
from npfl_lib.trainer import Trainer


def draws():
    return random.random(), np.random.rand(), torch.rand(3).tolist()


def test_seeds_python_numpy_and_torch():
    set_seed(123)
    first = draws()
    set_seed(123)
    assert draws() == first
    set_seed(124)
    assert draws() != first
    assert torch.initial_seed() == 124


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeds_cuda():
    set_seed(7)
    first = torch.rand(4, device="cuda")
    set_seed(7)
    assert torch.equal(torch.rand(4, device="cuda"), first)
    assert torch.cuda.initial_seed() == 7


def train(seed):
    """Builds and trains a model with dropout on shuffled data after set_seed(seed)."""
    set_seed(seed)
    inputs = torch.randn(90, 6)
    targets = torch.randint(0, 3, (90,))
    layers = [
        torch.nn.Linear(6, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(16, 3),
    ]
    model = torch.nn.Sequential(*layers)
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        torch.nn.CrossEntropyLoss(),
        device="cpu",
    )
    history = trainer.fit((inputs, targets), 3, batch_size=16, dev=(inputs, targets), verbose=0)
    return [{k: v for k, v in logs.items() if k != "time"} for logs in history], model.state_dict()


def test_two_fits_with_the_same_seed_are_identical():
    (history_a, state_a), (history_b, state_b) = train(42), train(42)
    assert history_a == history_b
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    history_c, _ = train(43)
    assert history_c != history_a


@pytest.mark.parametrize(
    ("seed", "error"),
    [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)],
)
def test_bad_seed(seed, error):
    with pytest.raises(error, match="seed"):
        set_seed(seed)


def test_extreme_seeds_are_accepted():
    for seed in (0, 2**32 - 1):
        set_seed(seed)
        assert torch.initial_seed() == seed


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_setup_picks_device_seed_and_one_thread(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("NPFL_DEVICE", raising=False)
    device = setup(123)
    assert isinstance(device, torch.device)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.get_num_threads() == 1
    first = draws()
    set_seed(123)
    assert draws() == first


def test_setup_threads_from_argument_or_environment(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    setup(0)
    assert torch.get_num_threads() == 2
    setup(0, threads=1)
    assert torch.get_num_threads() == 1
    assert setup(0, device="cpu") == torch.device("cpu")
    monkeypatch.setenv("NPFL_DEVICE", "cpu")
    assert setup(0) == torch.device("cpu")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_setup_rejects_bad_thread_counts(threads, restore_threads):
    with pytest.raises((ValueError, TypeError), match="threads"):
        setup(0, threads=threads)


def test_setup_rejects_a_bad_environment(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        setup(0)
    with pytest.raises(ValueError, match="seed"):
        setup(-1, threads=1)
