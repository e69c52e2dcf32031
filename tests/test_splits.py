"""Tests of npfl_lib.datasets.splits: the Split dataset and the Splits container."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.datasets import Split, Splits
from npfl_lib.datasets.splits import _check_size


def make_split(size: int, generator: torch.Generator, shape=(1, 4, 4)) -> Split:
    inputs = torch.rand(size, *shape, generator=generator)
    targets = torch.randint(0, 3, (size,), generator=generator)
    return Split(inputs, targets)


def test_split_len_getitem_and_repr(generator):
    split = make_split(7, generator)
    assert len(split) == 7
    inputs, target = split[3]
    assert torch.equal(inputs, split.inputs[3]) and torch.equal(target, split.targets[3])
    assert target.dtype == torch.int64 and target.ndim == 0
    inputs, targets = split[2:5]
    assert torch.equal(inputs, split.inputs[2:5]) and torch.equal(targets, split.targets[2:5])
    expected = "Split(size=7, inputs=(7, 1, 4, 4) torch.float32, targets=(7,) torch.int64)"
    assert repr(split) == expected


def test_split_to_device(device, generator):
    split = make_split(5, generator).to(device)
    assert split.inputs.device.type == device.type and split.targets.device.type == device.type
    inputs, target = split[0]
    assert inputs.device.type == device.type and target.device.type == device.type


def test_split_accepts_float_regression_targets():
    split = Split(torch.zeros(4, 1, dtype=torch.float64), torch.ones(4, 1))
    assert split[1][1].dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 40),
    batch_size=st.integers(1, 16),
    shape=st.lists(st.integers(1, 3), min_size=0, max_size=3),
)
def test_dataloader_batches_are_the_split_in_order(size, batch_size, shape):
    split = make_split(size, torch.Generator().manual_seed(size), tuple(shape))
    batches = list(torch.utils.data.DataLoader(split, batch_size=batch_size))
    assert len(batches) == -(-size // batch_size)
    assert torch.equal(torch.cat([inputs for inputs, _ in batches]), split.inputs)
    assert torch.equal(torch.cat([targets for _, targets in batches]), split.targets)


def test_shuffled_dataloader_covers_every_example(generator):
    split = Split(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    loader = torch.utils.data.DataLoader(split, batch_size=3, shuffle=True, generator=generator)
    targets = torch.cat([targets for _, targets in loader])
    assert sorted(targets.tolist()) == list(range(10))
    inputs = torch.cat([inputs for inputs, _ in loader])
    assert inputs.shape == (10, 1)


def test_splits_attributes_and_repr(generator):
    train, dev, test = (make_split(size, generator) for size in (6, 2, 3))
    splits = Splits("toy", train, dev, test, num_classes=3)
    assert (splits.train, splits.dev, splits.test) == (train, dev, test)
    assert splits.name == "toy" and splits.num_classes == 3 and splits.input_shape == (1, 4, 4)
    text = repr(splits)
    assert text == "<toy: train=6, dev=2, test=3, input_shape=(1, 4, 4), num_classes=3>"


@pytest.mark.parametrize(
    ("inputs", "targets", "error", "match"),
    [
        (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3), TypeError, "inputs"),
        (np.zeros((3, 2)), torch.zeros(3, dtype=torch.int64), TypeError, "inputs"),
        (torch.zeros(3, 2), [0, 1, 2], TypeError, "targets"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32), TypeError, "targets"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), TypeError, "targets"),
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64), ValueError, "inputs and targets"),
        (torch.zeros(()), torch.zeros((), dtype=torch.int64), ValueError, "inputs and targets"),
    ],
)
def test_split_bad_input(inputs, targets, error, match):
    with pytest.raises(error, match=match):
        Split(inputs, targets)


def test_splits_bad_input(generator):
    train, dev = make_split(4, generator), make_split(2, generator)
    wide = make_split(2, generator, shape=(1, 5, 5))
    with pytest.raises(ValueError, match="test inputs must have the train inputs' shape"):
        Splits("toy", train, dev, wide, num_classes=3)
    with pytest.raises(ValueError, match="dev inputs"):
        Splits("toy", train, wide, dev, num_classes=3)
    with pytest.raises(TypeError, match="dev must be a Split"):
        Splits("toy", train, (dev.inputs, dev.targets), dev, num_classes=3)


def test_check_size():
    assert _check_size("n", 3) == 3
    assert _check_size("n", np.int64(4)) == 4
    assert _check_size("n", 0) == 0
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        _check_size("n", 0, minimum=1)
    with pytest.raises(ValueError, match="n must be an integer >= 0, got -2"):
        _check_size("n", -2)
    for bad in (2.0, True, "3", None):
        with pytest.raises(TypeError, match="n must be an int"):
            _check_size("n", bad)
