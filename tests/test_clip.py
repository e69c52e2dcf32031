"""Tests for npfl_lib.clip against torch.nn.utils."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib import clip

SHAPES = [(3, 4), (5,), (2, 3, 2), ()]
TOLERANCES = [(torch.float64, 1e-10), (torch.float32, 1e-5)]
NORM_TYPES = [1, 2.0, 3, math.inf, "inf", 0.5]


def _twin_parameters(grads):
    """Two lists of parameters holding equal copies of ``grads`` (None: no grad)."""
    twins = []
    for _ in range(2):
        params = []
        for g in grads:
            p = torch.zeros(2) if g is None else torch.zeros_like(g)
            p.requires_grad_(True)
            p.grad = None if g is None else g.clone()
            params.append(p)
        twins.append(params)
    return twins


def _random_grads(device, dtype, generator, scale=1.0):
    return [(scale * torch.randn(s, generator=generator, dtype=dtype)).to(device) for s in SHAPES]


def _assert_grads_close(ours, theirs, rtol):
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=0, equal_nan=True)


# --- clip_grad_norm_ --------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1.0, 1e6])
def test_clip_grad_norm_matches_torch(device, generator, dtype, rtol, norm_type, max_norm):
    grads = _random_grads(device, dtype, generator, scale=2.0)
    grads.insert(1, None)  # skipped
    ours, theirs = _twin_parameters(grads)
    total = clip.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total.shape == () and total.dtype == dtype and total.device.type == device.type
    torch.testing.assert_close(total, expected, rtol=rtol, atol=0)
    _assert_grads_close(ours, theirs, rtol)


@pytest.mark.parametrize("norm_type", [1, 2, 3, math.inf])
def test_total_norm_is_global_not_per_tensor(device, norm_type):
    a = torch.zeros(2, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, device=device, dtype=torch.float64, requires_grad=True)
    a.grad = torch.tensor([3.0, 0.0], device=device, dtype=torch.float64)
    b.grad = torch.tensor([4.0], device=device, dtype=torch.float64)
    all_grads = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    expected = torch.linalg.vector_norm(all_grads, norm_type).item()

    total = clip.clip_grad_norm_([a, b], max_norm=1.0, norm_type=norm_type)

    assert total.item() == pytest.approx(expected, rel=1e-12)
    coef = 1.0 / (expected + 1e-6)  # one coefficient for all tensors keeps the direction
    torch.testing.assert_close(a.grad.cpu(), torch.tensor([3.0 * coef, 0.0], dtype=torch.float64))
    torch.testing.assert_close(b.grad.cpu(), torch.tensor([4.0 * coef], dtype=torch.float64))
    new_norm = torch.linalg.vector_norm(torch.cat([a.grad, b.grad]), norm_type).item()
    assert new_norm == pytest.approx(1.0, rel=1e-5)


def test_single_tensor_and_generator_inputs(generator):
    p, q = _twin_parameters([torch.randn(4, 5, generator=generator, dtype=torch.float64)])
    total = clip.clip_grad_norm_(p[0], 0.5)
    torch.testing.assert_close(total, torch.nn.utils.clip_grad_norm_(q[0], 0.5), rtol=1e-10, atol=0)
    _assert_grads_close(p, q, 1e-10)

    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3, generator=generator)).sum().backward()
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    for s, t in zip(model.parameters(), twin.parameters(), strict=True):
        t.grad = s.grad.clone()
    total = clip.clip_grad_norm_(model.parameters(), 0.1)  # a one-shot generator
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
    _assert_grads_close(list(model.parameters()), list(twin.parameters()), 1e-5)


def test_small_gradients_are_not_scaled_up(device):
    p = torch.zeros(3, device=device, requires_grad=True)
    p.grad = torch.tensor([0.1, -0.2, 0.0], device=device)
    before = p.grad.clone()
    total = clip.clip_grad_norm_([p], max_norm=10.0)
    assert torch.equal(p.grad, before)
    assert total.item() == pytest.approx(math.sqrt(0.05), rel=1e-6)


def test_no_gradients_at_all(device):
    params = [torch.zeros(3, device=device, requires_grad=True) for _ in range(2)]
    for target in [params, [], params[0]]:
        total = clip.clip_grad_norm_(target, 1.0)
        assert torch.equal(total, torch.tensor(0.0))
    assert all(p.grad is None for p in params)


def test_zero_gradients_do_not_divide_by_zero(device):
    p = torch.zeros(3, device=device, requires_grad=True)
    p.grad = torch.zeros(3, device=device)
    assert clip.clip_grad_norm_([p], 1.0).item() == 0.0
    assert torch.equal(p.grad, torch.zeros(3, device=device))


def test_empty_gradient_is_ignored(device):
    p = torch.zeros(0, device=device, requires_grad=True)
    p.grad = torch.zeros(0, device=device)
    q = torch.zeros(2, device=device, requires_grad=True)
    q.grad = torch.tensor([-3.0, 1.0], device=device)
    assert clip.clip_grad_norm_([p, q], 1.0, norm_type=math.inf).item() == 3.0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_nonfinite_norm(device, bad, norm_type):
    grads = [torch.tensor([1.0, bad], device=device), torch.tensor([2.0], device=device)]
    ours, theirs = _twin_parameters(grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        clip.clip_grad_norm_(ours, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
    # Without the error, the gradients are scaled by the non-finite norm, as in torch.
    total = clip.clip_grad_norm_(ours, 1.0, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    torch.testing.assert_close(total, expected, equal_nan=True)
    _assert_grads_close(ours, theirs, 1e-6)


def test_mixed_dtypes_match_torch(generator):
    grads = [
        torch.randn(3, generator=generator, dtype=torch.float64),
        torch.randn(4, generator=generator, dtype=torch.float32),
    ]
    ours, theirs = _twin_parameters(grads)
    total = clip.clip_grad_norm_(ours, 0.3)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.3)
    assert total.dtype == expected.dtype
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    _assert_grads_close(ours, theirs, 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    scale=st.floats(1e-3, 1e3),
    max_norm=st.floats(0.0, 10.0),
    norm_type=st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_clip_grad_norm_hypothesis(sizes, scale, max_norm, norm_type, seed):
    generator = torch.Generator().manual_seed(seed)
    grads = [scale * torch.randn(n, generator=generator, dtype=torch.float64) for n in sizes]
    ours, theirs = _twin_parameters(grads)
    total = clip.clip_grad_norm_(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=0)
    _assert_grads_close(ours, theirs, 1e-10)


def test_clip_grad_norm_bad_arguments():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    for max_norm in [-1.0, math.nan]:
        with pytest.raises(ValueError, match="max_norm"):
            clip.clip_grad_norm_([p], max_norm)
    for norm_type in [0, -1.0, -math.inf, math.nan]:
        with pytest.raises(ValueError, match="norm_type"):
            clip.clip_grad_norm_([p], 1.0, norm_type)
    with pytest.raises(TypeError, match="norm_type"):
        clip.clip_grad_norm_([p], 1.0, "two")
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        clip.clip_grad_norm_([p, [1.0, 2.0]], 1.0)
    assert torch.equal(p.grad, torch.ones(2))  # nothing clipped before the error


# --- clip_grad_value_ -------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize("clip_value", [0.0, 0.5, 1, 100.0])
def test_clip_grad_value_matches_torch(device, generator, dtype, rtol, clip_value):
    grads = _random_grads(device, dtype, generator, scale=2.0)
    grads.append(None)
    ours, theirs = _twin_parameters(grads)
    assert clip.clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    _assert_grads_close(ours, theirs, rtol)
    for p in ours[:-1]:
        assert p.grad.abs().max().item() <= clip_value


def test_clip_grad_value_single_tensor_and_no_grads(device):
    p = torch.zeros(3, device=device, requires_grad=True)
    clip.clip_grad_value_(p, 1.0)
    assert p.grad is None
    p.grad = torch.tensor([-5.0, 0.3, 2.0], device=device)
    clip.clip_grad_value_(p, 1.0)
    assert torch.equal(p.grad.cpu(), torch.tensor([-1.0, 0.3, 1.0]))


def test_clip_grad_value_bad_arguments():
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.ones(2)
    for clip_value in [-0.1, math.nan]:
        with pytest.raises(ValueError, match="clip_value"):
            clip.clip_grad_value_([p], clip_value)
    with pytest.raises(TypeError, match="clip_value"):
        clip.clip_grad_value_([p], None)
    with pytest.raises(TypeError, match=r"parameters\[0\]"):
        clip.clip_grad_value_([torch.zeros(2, dtype=torch.int64)], 1.0)
