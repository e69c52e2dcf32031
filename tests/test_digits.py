"""Tests of npfl_lib.datasets.digits: scikit-learn's 8x8 digits as train/dev/test splits."""

import numpy as np
import pytest
import sklearn.datasets
import torch

from npfl_lib.datasets import Split, Splits, load_digits


@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_digits()


def test_shapes_dtypes_and_attributes(digits):
    assert isinstance(digits, Splits)
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    for split, size in ((digits.train, 1297), (digits.dev, 200), (digits.test, 300)):
        assert isinstance(split, Split) and len(split) == size
        assert split.inputs.shape == (size, 1, 8, 8) and split.inputs.dtype == torch.float32
        assert split.targets.shape == (size,) and split.targets.dtype == torch.int64
    assert repr(digits) == (
        "<digits: train=1297, dev=200, test=300, input_shape=(1, 8, 8), num_classes=10>"
    )


def test_ranges(digits):
    for split in (digits.train, digits.dev, digits.test):
        assert split.inputs.min() == 0 and split.inputs.max() == 1
        # pixel / 16 of integer gray levels 0..16
        levels = split.inputs * 16
        assert torch.equal(levels, levels.round())
        # every split holds every digit
        assert split.targets.unique().tolist() == list(range(10))


def test_deterministic_and_independent_of_global_rng(digits):
    torch.manual_seed(123)
    np.random.seed(123)
    again = load_digits()
    for first, second in zip(
        (digits.train, digits.dev, digits.test), (again.train, again.dev, again.test), strict=True
    ):
        assert torch.equal(first.inputs, second.inputs)
        assert torch.equal(first.targets, second.targets)


def rows(levels: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Each example as one row (its 64 gray levels, then its digit), sorted."""
    table = np.concatenate([levels.reshape(len(levels), -1).numpy(), targets[:, None]], 1)
    return table[np.lexsort(table.T[::-1])]


def test_splits_are_disjoint_and_cover_all_1797(digits):
    everything = sklearn.datasets.load_digits()
    original = rows(torch.from_numpy(everything.images), torch.from_numpy(everything.target))
    splits = (digits.train, digits.dev, digits.test)
    union = rows(
        torch.cat([split.inputs for split in splits]).double() * 16,
        torch.cat([split.targets for split in splits]),
    )
    assert len(union) == 1797
    np.testing.assert_array_equal(union, original)


def test_dataloader_works(digits):
    loader = torch.utils.data.DataLoader(digits.dev, batch_size=64)
    inputs, targets = next(iter(loader))
    assert inputs.shape == (64, 1, 8, 8) and targets.shape == (64,)
    assert torch.equal(inputs, digits.dev.inputs[:64])
    assert sum(len(targets) for _, targets in loader) == 200


def test_split_moves_to_device(digits, device):
    test = digits.test.to(device)
    assert test.inputs.device.type == device.type
    assert torch.equal(test.inputs.cpu(), digits.test.inputs)


def test_split_is_the_documented_permutation(digits):
    everything = sklearn.datasets.load_digits()
    order = np.random.RandomState(42).permutation(1797)
    for split, indices in zip(
        (digits.train, digits.dev, digits.test), np.split(order, [1297, 1497]), strict=True
    ):
        np.testing.assert_array_equal(split.inputs[:, 0].numpy() * 16, everything.images[indices])
        np.testing.assert_array_equal(split.targets.numpy(), everything.target[indices])
