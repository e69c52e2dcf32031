"""Inverted dropout: drop rate, 1/(1-p) scaling, the documented mask, eval identity, grads."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.functional import dropout

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def expected_keep(shape, p, seed, generator_device="cpu"):
    """The mask the docstring promises, drawn from a fresh generator seeded with ``seed``."""
    g = torch.Generator(device=generator_device).manual_seed(seed)
    return torch.rand(shape, generator=g, device=generator_device) >= p


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_scaling_are_right_on_average(p, device):
    n = 400_000
    x = torch.ones(n, dtype=torch.float64, device=device)
    out = dropout(x, p, generator=torch.Generator().manual_seed(1))
    zeros = (out == 0).double().mean().item()
    assert abs(zeros - p) < 5 * math.sqrt(p * (1 - p) / n)
    # Kept units are exactly 1 / (1 - p); the mean stays 1 (std of one unit: sqrt(p/(1-p))).
    scaled = torch.tensor([0.0, 1 / (1 - p)], dtype=torch.float64, device=device)
    assert torch.equal(torch.unique(out), scaled)
    assert abs(out.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_statistics_without_a_generator(device):
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed(0)
    n, p = 200_000, 0.3
    out = dropout(torch.full((n,), 2.0, device=device), p)
    assert abs((out == 0).float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(out.mean().item() - 2.0) < 5 * 2 * math.sqrt(p / (1 - p) / n)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [0.2, 0.75])
def test_exact_mask_given_a_generator(p, dtype, device):
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(7), dtype=dtype).to(device)
    out = dropout(x, p, generator=torch.Generator().manual_seed(3))
    keep = expected_keep(x.shape, p, seed=3).to(device)
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
    torch.testing.assert_close(out, torch.where(keep, x / (1 - p), 0.0), rtol=RTOL[dtype], atol=0)


def test_cpu_generator_gives_the_same_mask_on_every_device(device):
    x = torch.ones(1000, device=device)
    out = dropout(x, 0.5, generator=torch.Generator().manual_seed(11))
    reference = dropout(torch.ones(1000), 0.5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(out.cpu(), reference)


def test_generator_on_the_data_device(device):
    x = torch.ones(1000, device=device)
    out = dropout(x, 0.4, generator=torch.Generator(device=device).manual_seed(5))
    keep = expected_keep(x.shape, 0.4, seed=5, generator_device=device)
    assert torch.equal(out != 0, keep)


def test_reproducible_and_advances_the_generator():
    x = torch.ones(500)
    g = torch.Generator().manual_seed(0)
    first, second = dropout(x, 0.5, generator=g), dropout(x, 0.5, generator=g)
    assert not torch.equal(first, second)  # consecutive calls draw fresh masks
    assert torch.equal(first, dropout(x, 0.5, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("training, p", [(False, 0.5), (False, 0.0), (True, 0.0)])
def test_identity_when_not_training_or_p_zero(training, p, device):
    x = torch.randn(3, 4, device=device)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert dropout(x, p, training=training, generator=g) is x
    assert torch.equal(g.get_state(), state)  # no random numbers drawn


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_is_mask_over_keep_probability(dtype, device):
    p = 0.35
    x = torch.randn(50, 8, dtype=dtype, device=device, requires_grad=True)
    upstream = torch.randn(50, 8, dtype=dtype, device=device)
    out = dropout(x, p, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(out, x, upstream)
    keep = expected_keep(x.shape, p, seed=2).to(device)
    torch.testing.assert_close(grad, upstream * keep / (1 - p), rtol=RTOL[dtype], atol=0)


def test_zero_dim_and_empty_inputs():
    g = torch.Generator().manual_seed(0)
    out = dropout(torch.tensor(2.0), 0.5, generator=g)
    assert out.shape == () and out.item() in (0.0, 4.0)
    assert dropout(torch.empty(0, 3), 0.5).shape == (0, 3)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 0.99), st.integers(0, 2**31 - 1))
def test_hypothesis_output_is_zero_or_scaled_input(p, seed):
    x = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 5
    out = dropout(x, p, generator=torch.Generator().manual_seed(seed))
    kept = out != 0
    assert torch.equal(kept, expected_keep(x.shape, p, seed))
    torch.testing.assert_close(out[kept], x[kept] / (1 - p), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan, math.inf])
def test_rejects_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"p must lie in \[0.0, 1.0\]"):
        dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match="p must lie in"):  # also in eval mode
        dropout(torch.ones(3), p, training=False)


@pytest.mark.parametrize("p", [1, 1.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_p_one_drops_everything_as_torch(p, dtype, device):
    """torch: p = 1 gives zeros in training (x * 0, so nan and inf give nan), x in eval."""
    x = torch.tensor([1.5, -2.0, 0.0, math.inf, math.nan], dtype=dtype, device=device)
    for training in (True, False):
        ours_x, theirs_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours = dropout(ours_x, p, training=training)
        theirs = torch.nn.functional.dropout(theirs_x, p, training=training)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
        ours.sum().backward()
        theirs.sum().backward()
        assert torch.equal(ours_x.grad, theirs_x.grad)
    assert dropout(x, p, training=False) is x
    assert dropout(x, p).tolist()[:3] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("p", ["0.5", None, True])
def test_rejects_non_numeric_p(p):
    with pytest.raises(TypeError, match="p must be a real number"):
        dropout(torch.ones(3), p)


@pytest.mark.parametrize("x", [torch.arange(4), torch.ones(3, dtype=torch.bool), [1.0, 2.0]])
def test_rejects_non_float_input(x):
    with pytest.raises(TypeError, match="x must be a"):
        dropout(x, 0.5)


def test_rejects_bad_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        dropout(torch.ones(3), 0.5, generator=0)
