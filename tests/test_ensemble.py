"""Tests of npfl_lib.ensemble: probability averaging and bagging."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.ensemble import average_probabilities, bootstrap_indices, bootstrap_split

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_models(count, dtype=torch.float64, device="cpu", dropout=0.0):
    torch.manual_seed(0)
    return [
        torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Dropout(dropout), torch.nn.Linear(6, 3))
        .to(dtype)
        .to(device)
        for _ in range(count)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_size", [None, 1, 7, 100])
def test_average_probabilities_matches_manual_mean(dtype, batch_size, device):
    models = make_models(3, dtype, device, dropout=0.5)
    inputs = torch.randn(20, 4, dtype=dtype, device=device)
    with torch.no_grad():
        expected = sum(torch.softmax(m.eval()(inputs), dim=1) for m in models) / 3
    for model in models:
        model.train()
    result = average_probabilities(models, inputs, batch_size=batch_size)
    assert result.device == inputs.device and result.dtype == dtype
    torch.testing.assert_close(result, expected, rtol=RTOL[dtype], atol=1e-7)
    torch.testing.assert_close(result.sum(1), torch.ones(20, dtype=dtype, device=device))
    assert all(model.training for model in models)  # modes restored


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_average_without_softmax_averages_outputs(dtype):
    class Probabilities(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def forward(self, inputs):
            return self.table[: len(inputs)]

    a = torch.tensor([[0.2, 0.8], [0.5, 0.5]], dtype=dtype)
    b = torch.tensor([[0.6, 0.4], [0.1, 0.9]], dtype=dtype)
    result = average_probabilities(
        [Probabilities(a), Probabilities(b)], torch.zeros(2, 1, dtype=dtype), apply_softmax=False
    )
    torch.testing.assert_close(
        result, torch.tensor([[0.4, 0.6], [0.3, 0.7]], dtype=dtype), rtol=RTOL[dtype], atol=0
    )


def test_single_model_and_identical_models_equal_its_softmax():
    (model,) = make_models(1)
    inputs = torch.randn(5, 4, dtype=torch.float64)
    expected = torch.softmax(model(inputs), dim=1).detach()
    torch.testing.assert_close(average_probabilities([model], inputs), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        average_probabilities([model] * 4, inputs), expected, rtol=1e-12, atol=0
    )


@settings(max_examples=20, deadline=None)
@given(
    count=st.integers(1, 4),
    n=st.integers(1, 12),
    batch_size=st.one_of(st.none(), st.integers(1, 13)),
)
def test_average_is_batch_size_independent(count, n, batch_size):
    models = make_models(count)
    inputs = torch.linspace(-2, 2, n * 4, dtype=torch.float64).reshape(n, 4)
    full = average_probabilities(models, inputs)
    torch.testing.assert_close(
        average_probabilities(models, inputs, batch_size), full, rtol=1e-12, atol=0
    )


def test_bootstrap_indices(generator):
    indices = bootstrap_indices(1000, generator)
    assert indices.shape == (1000,) and indices.dtype == torch.int64
    assert 0 <= indices.min() and indices.max() < 1000
    again = bootstrap_indices(1000, torch.Generator().manual_seed(0))
    assert torch.equal(indices, again)  # reproducible with a seeded generator
    fraction = len(torch.unique(bootstrap_indices(20000, generator))) / 20000
    assert abs(fraction - (1 - 1 / math.e)) < 0.01  # about 63.2% appear
    assert bootstrap_indices(1).tolist() == [0]


def test_bootstrap_indices_device(device, generator):
    indices = bootstrap_indices(50, generator, device=device)
    assert indices.device.type == device.type
    expected = bootstrap_indices(50, torch.Generator().manual_seed(0))
    assert torch.equal(indices.cpu(), expected)  # drawn on the generator's device


def test_bootstrap_split_keeps_pairs_together(device, generator):
    targets = torch.arange(30, device=device)
    inputs = (2.0 * targets).unsqueeze(1)

    class Split:
        pass

    split = Split()
    split.inputs, split.targets = inputs, targets
    for data in [(inputs, targets), split]:
        sample_inputs, sample_targets = bootstrap_split(data, generator)
        assert sample_inputs.shape == (30, 1) and sample_targets.shape == (30,)
        assert sample_inputs.device.type == device.type
        assert torch.equal(sample_inputs[:, 0], 2.0 * sample_targets)
    sample = bootstrap_split((inputs, targets), torch.Generator().manual_seed(3))
    expected = bootstrap_indices(30, torch.Generator().manual_seed(3))
    assert torch.equal(sample[1].cpu(), expected)


def test_bad_arguments():
    models = make_models(2)
    inputs = torch.randn(3, 4, dtype=torch.float64)
    cases = [
        (ValueError, "models", lambda: average_probabilities([], inputs)),
        (ValueError, "models", lambda: average_probabilities([lambda x: x], inputs)),
        (
            TypeError,
            "inputs",
            lambda: average_probabilities(models, torch.ones(3, 4, dtype=torch.long)),
        ),
        (TypeError, "inputs", lambda: average_probabilities(models, [[1.0] * 4])),
        (ValueError, "inputs", lambda: average_probabilities(models, inputs[:0])),
        (ValueError, "batch_size", lambda: average_probabilities(models, inputs, batch_size=0)),
        (ValueError, "batch_size", lambda: average_probabilities(models, inputs, batch_size=2.0)),
        (ValueError, "n", lambda: bootstrap_indices(0)),
        (ValueError, "n", lambda: bootstrap_indices(2.5)),
        (ValueError, "n", lambda: bootstrap_indices(True)),
        (TypeError, "data", lambda: bootstrap_split(torch.ones(3))),
        (ValueError, "data", lambda: bootstrap_split((inputs, torch.ones(2)))),
        (ValueError, "data", lambda: bootstrap_split((inputs[:0], inputs[:0]))),
    ]
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()
