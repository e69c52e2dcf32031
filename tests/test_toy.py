"""Tests of npfl_lib.datasets.toy: moons, circles, spirals and the 1-D regression set."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.datasets import Splits, circles, moons, polynomial_regression, spirals

CLASSIFIERS = [moons, circles, spirals]
ALL = CLASSIFIERS + [polynomial_regression]


def splits_of(data: Splits):
    return data.train, data.dev, data.test


def assert_near(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    """Elementwise |actual - expected| <= atol; the data are float32, so exact up to rounding."""
    error = (actual - expected).abs().max().item()
    assert error <= atol, f"largest absolute error {error}"


def assert_same(first: Splits, second: Splits) -> None:
    for a, b in zip(splits_of(first), splits_of(second), strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


@pytest.mark.parametrize("make", CLASSIFIERS)
def test_classification_shapes_dtypes_and_attributes(make):
    data = make(train_size=30, dev_size=20, test_size=10)
    assert data.name == make.__name__ and data.num_classes == 2 and data.input_shape == (2,)
    for split, size in zip(splits_of(data), (30, 20, 10), strict=True):
        assert split.inputs.shape == (size, 2) and split.inputs.dtype == torch.float32
        assert split.targets.shape == (size,) and split.targets.dtype == torch.int64
        # balanced classes: half of each, up to one example
        assert abs(2 * int(split.targets.sum()) - size) <= 1
    assert repr(data) == (
        f"<{make.__name__}: train=30, dev=20, test=10, input_shape=(2,), num_classes=2>"
    )


def test_regression_shapes_dtypes_and_attributes():
    data = polynomial_regression()
    assert data.name == "polynomial_regression" and data.num_classes is None
    assert data.input_shape == (1,)
    for split, size in zip(splits_of(data), (15, 100, 500), strict=True):
        assert split.inputs.shape == (size, 1) and split.inputs.dtype == torch.float32
        assert split.targets.shape == (size, 1) and split.targets.dtype == torch.float32
        assert 0 <= split.inputs.min() and split.inputs.max() <= 1


@settings(max_examples=15, deadline=None)
@given(sizes=st.tuples(*[st.integers(1, 50)] * 3), seed=st.integers(0, 2**40))
def test_sizes_are_honoured(sizes, seed):
    for make in ALL:
        data = make(*sizes, seed=seed)
        assert tuple(len(split) for split in splits_of(data)) == sizes


@pytest.mark.parametrize("make", ALL)
def test_deterministic_and_independent_of_global_rng(make):
    first = make(seed=3)
    torch.manual_seed(1)
    np.random.seed(1)
    assert_same(first, make(seed=3))
    other = make(seed=4)
    assert not torch.equal(first.train.inputs, other.train.inputs)


@pytest.mark.parametrize("make", ALL)
def test_train_does_not_depend_on_dev_or_test_size(make):
    small, large = make(20, 5, 5, seed=7), make(20, 50, 70, seed=7)
    assert torch.equal(small.train.inputs, large.train.inputs)
    assert torch.equal(small.train.targets, large.train.targets)
    # the splits are different draws, not copies of one another
    assert not torch.equal(small.train.inputs[:5], small.dev.inputs)


@pytest.mark.parametrize("make", ALL)
def test_dataloader_works(make):
    data = make(train_size=10)
    loader = torch.utils.data.DataLoader(data.train, batch_size=4, shuffle=True)
    batches = list(loader)
    assert [len(targets) for _, targets in batches] == [4, 4, 2]
    assert sorted(torch.cat([x for x, _ in batches]).flatten().tolist()) == sorted(
        data.train.inputs.flatten().tolist()
    )


def test_moons_without_noise_lie_on_sklearns_half_circles():
    data = moons(train_size=101, noise=0.0)
    inputs, targets = data.train.inputs.double(), data.train.targets
    upper, lower = inputs[targets == 0], inputs[targets == 1]
    assert_near(upper.norm(dim=1), 1.0)
    assert (upper[:, 1] >= -1e-7).all()
    center = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert_near((lower - center).norm(dim=1), 1.0)
    assert len(upper) == 50 and len(lower) == 51


def test_circles_without_noise_have_radii_1_and_factor():
    data = circles(train_size=50, noise=0.0, factor=0.3)
    radius = data.train.inputs.double().norm(dim=1)
    targets = data.train.targets
    assert_near(radius[targets == 0], 1.0)
    assert_near(radius[targets == 1], 0.3)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_spirals_without_noise_follow_the_formula(num_classes):
    turns = 1.5
    data = spirals(train_size=200, num_classes=num_classes, turns=turns, noise=0.0)
    assert data.num_classes == num_classes
    inputs, targets = data.train.inputs.double(), data.train.targets
    counts = torch.bincount(targets, minlength=num_classes)
    assert counts.max() - counts.min() <= 1 and len(counts) == num_classes
    radius = inputs.norm(dim=1)
    assert radius.max() <= 1
    angle = torch.atan2(inputs[:, 1], inputs[:, 0]) / (2 * math.pi)
    # angle / 2 pi = turns * r + c / K, up to whole turns
    offset = angle - turns * radius - targets / num_classes
    assert_near(torch.cos(2 * math.pi * offset), 1.0)


def test_regression_without_noise_is_the_sine_at_the_same_inputs():
    clean, noisy = polynomial_regression(noise=0.0), polynomial_regression()
    for clean_split, noisy_split in zip(splits_of(clean), splits_of(noisy), strict=True):
        x = clean_split.inputs
        assert torch.equal(x, noisy_split.inputs)
        assert_near(clean_split.targets, torch.sin(2 * math.pi * x))


def test_regression_noise_has_the_requested_standard_deviation():
    data = polynomial_regression(test_size=20000, noise=0.5)
    residual = data.test.targets.double() - torch.sin(2 * math.pi * data.test.inputs.double())
    assert abs(residual.mean()) < 0.02
    assert abs(residual.std() - 0.5) < 0.02


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("argument", ["train_size", "dev_size", "test_size"])
@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (0, ValueError), (2.5, TypeError)])
def test_bad_sizes(make, argument, value, error):
    with pytest.raises(error, match=argument):
        make(**{argument: value})


@pytest.mark.parametrize("make", ALL)
def test_bad_noise_and_seed(make):
    for noise in (-0.1, math.nan):
        with pytest.raises(ValueError, match="noise"):
            make(noise=noise)
    with pytest.raises(ValueError, match="seed"):
        make(seed=-1)
    with pytest.raises(TypeError, match="seed"):
        make(seed=1.0)


def test_bad_shape_arguments():
    for factor in (1.0, -0.1):
        with pytest.raises(ValueError, match="factor"):
            circles(factor=factor)
    with pytest.raises(ValueError, match="num_classes"):
        spirals(num_classes=1)
    with pytest.raises(ValueError, match="turns"):
        spirals(turns=0)
