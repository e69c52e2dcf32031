"""Tests for npfl_lib.functional.losses: every loss against torch.nn.functional."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npfl_lib.functional import loss_grads, losses

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float64, torch.float32]
HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to torch: rtol 1e-10 in float64, 1e-5 in float32; nan where torch has nan.

    The absolute tolerance, a few units in the last place of 1, covers losses that are
    tiny by cancellation (e.g. ``log(1 + 1e-14)`` when the gold logit dominates): both
    implementations round there, so neither is closer to the truth than that.
    """
    float64 = expected.dtype == torch.float64
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(
        actual,
        expected,
        rtol=1e-10 if float64 else 1e-5,
        atol=1e-15 if float64 else 5e-7,
        equal_nan=True,
    )


def random(shape, dtype, device, seed=0, scale=1.0) -> torch.Tensor:
    """Reproducible normal noise, drawn on the CPU and then moved to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device, dtype)


def random_classes(shape, num_classes, device, seed=0, ignore_index=None, ignore_rate=0.3):
    """Random class indices; a fraction of them replaced by ``ignore_index``."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=generator)
    if ignore_index is not None:
        target[torch.rand(shape, generator=generator) < ignore_rate] = ignore_index
    return target.to(device)


def random_probs(shape, dtype, device, seed=0) -> torch.Tensor:
    """A random distribution along the class dimension (dim 1, or dim 0 when unbatched)."""
    dim = 0 if len(shape) == 1 else 1
    return torch.softmax(random(shape, torch.float64, "cpu", seed + 1, 2.0), dim).to(device, dtype)


def class_shapes():
    """Input shapes [C], [N, C] and [N, C, d1, ..., dk] with N <= 4 (0 too) and k <= 2."""
    extra = st.lists(st.integers(1, 3), max_size=2)
    batched = st.tuples(st.integers(0, 4), st.integers(1, 5), extra)
    return st.one_of(
        st.integers(1, 5).map(lambda c: (c,)),
        batched.map(lambda t: (t[0], t[1], *t[2])),
    )


def target_shape(input_shape):
    return () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])


# ----------------------------------------------------------------------------------
# mse_loss and huber_loss
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_loss_matches_torch(device, dtype, reduction):
    x, y = random((3, 4, 5), dtype, device, 1), random((3, 4, 5), dtype, device, 2)
    assert_matches(losses.mse_loss(x, y, reduction), F.mse_loss(x, y, reduction=reduction))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("delta", [0.3, 1.0, 2.5])
def test_huber_loss_matches_torch(device, dtype, reduction, delta):
    x, y = random((6, 7), dtype, device, 3, 2.0), random((6, 7), dtype, device, 4)
    # Differences of 0, exactly +-delta and just inside/outside it test the branch boundary.
    offsets = torch.tensor([delta, -delta, 0.0, 0.995 * delta, -1.005 * delta], dtype=dtype)
    x[0, :5] = y[0, :5] + offsets.to(device)
    expected = F.huber_loss(x, y, reduction=reduction, delta=delta)
    assert_matches(losses.huber_loss(x, y, reduction, delta), expected)


@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
    delta=st.floats(0.01, 5.0),
)
@HYPOTHESIS
def test_regression_losses_random_shapes(device, shape, seed, reduction, delta):
    x = random(shape, torch.float64, device, seed, 3.0)
    y = random(shape, torch.float64, device, seed + 1)
    assert_matches(losses.mse_loss(x, y, reduction), F.mse_loss(x, y, reduction=reduction))
    expected = F.huber_loss(x, y, reduction=reduction, delta=delta)
    assert_matches(losses.huber_loss(x, y, reduction, delta), expected)


# ----------------------------------------------------------------------------------
# nll_loss and cross_entropy
# ----------------------------------------------------------------------------------

SHAPES = [(5,), (6, 5), (0, 5), (3, 4, 2, 3), (1, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_nll_loss_matches_torch(device, dtype, reduction, shape, ignore_index):
    log_probs = torch.log_softmax(random(shape, dtype, device, 5), 0 if len(shape) == 1 else 1)
    target = random_classes(target_shape(shape), shape[len(shape) > 1], device, 6, ignore_index)
    expected = F.nll_loss(log_probs, target, ignore_index=ignore_index, reduction=reduction)
    assert_matches(losses.nll_loss(log_probs, target, ignore_index, reduction), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_class_indices_match_torch(device, dtype, reduction, shape, label_smoothing):
    logits = random(shape, dtype, device, 7, 3.0)
    target = random_classes(target_shape(shape), shape[len(shape) > 1], device, 8, -100)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits, target, **kwargs)
    assert_matches(losses.cross_entropy(logits, target, **kwargs), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_probabilities_match_torch(device, dtype, reduction, shape, label_smoothing):
    logits = random(shape, dtype, device, 9, 3.0)
    target = random_probs(shape, dtype, device, 10)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits, target, **kwargs)
    assert_matches(losses.cross_entropy(logits, target, **kwargs), expected)


def test_cross_entropy_unnormalized_probability_target(device):
    # Soft targets need not sum to 1; the formula -sum_c g_c log p_c still applies.
    logits = random((4, 3), torch.float64, device, 11)
    target = random((4, 3), torch.float64, device, 12).abs()
    for reduction in REDUCTIONS:
        expected = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=0.2)
        assert_matches(losses.cross_entropy(logits, target, -100, reduction, 0.2), expected)


def test_cross_entropy_ignore_index_that_is_a_class(device):
    logits = random((8, 4), torch.float64, device, 13)
    target = torch.tensor([0, 1, 2, 3, 3, 3, 1, 0], device=device)
    for reduction in REDUCTIONS:
        expected = F.cross_entropy(
            logits, target, ignore_index=3, reduction=reduction, label_smoothing=0.3
        )
        assert_matches(losses.cross_entropy(logits, target, 3, reduction, 0.3), expected)


@given(
    shape=class_shapes(),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
    label_smoothing=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    probabilities=st.booleans(),
)
@HYPOTHESIS
def test_cross_entropy_random_shapes(
    device, shape, seed, reduction, label_smoothing, probabilities
):
    logits = random(shape, torch.float64, device, seed, 4.0)
    if probabilities:
        target = random_probs(shape, torch.float64, device, seed)
    else:
        target = random_classes(target_shape(shape), shape[len(shape) > 1], device, seed, -100)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits, target, **kwargs)
    assert_matches(losses.cross_entropy(logits, target, **kwargs), expected)
    if not probabilities:
        log_probs = torch.log_softmax(logits, 0 if len(shape) == 1 else 1)
        expected = F.nll_loss(log_probs, target, reduction=reduction)
        assert_matches(losses.nll_loss(log_probs, target, reduction=reduction), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_huge_logits(device, dtype, reduction, label_smoothing):
    logits = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype, device=device
    )
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    for target in (torch.tensor([1, 2, 0], device=device), torch.softmax(logits.neg(), 1)):
        actual = losses.cross_entropy(logits, target, **kwargs)
        assert torch.isfinite(actual).all()
        assert_matches(actual, F.cross_entropy(logits, target, **kwargs))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.4])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2), (3,)])
def test_cross_entropy_all_targets_ignored(device, reduction, label_smoothing, shape):
    logits = random(shape, torch.float64, device, 14)
    target = torch.full(target_shape(shape), -100, device=device)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    actual = losses.cross_entropy(logits, target, **kwargs)
    assert_matches(actual, F.cross_entropy(logits, target, **kwargs))
    if reduction == "mean":
        assert torch.isnan(actual)  # 0 / 0 non-ignored targets, as in torch
    expected = F.nll_loss(logits, target, reduction=reduction)
    assert_matches(losses.nll_loss(logits, target, reduction=reduction), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", [0, 4, -100])
def test_unbatched_input_with_scalar_target(device, reduction, target):
    logits = random((5,), torch.float64, device, 15)
    target = torch.tensor(target, device=device)
    for smoothing in (0.0, 0.3):
        kwargs = dict(reduction=reduction, label_smoothing=smoothing)
        actual = losses.cross_entropy(logits, target, **kwargs)
        assert actual.shape == ()
        assert_matches(actual, F.cross_entropy(logits, target, **kwargs))
    assert_matches(
        losses.nll_loss(logits, target, reduction=reduction),
        F.nll_loss(logits, target, reduction=reduction),
    )


def test_cross_entropy_gradient_through_autograd(device):
    # Students train with these losses, so autograd through them must match torch too.
    logits = random((4, 3, 2), torch.float64, device, 16)
    target = random_classes((4, 2), 3, device, 17, -100)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    losses.cross_entropy(ours, target, label_smoothing=0.1).backward()
    F.cross_entropy(theirs, target, label_smoothing=0.1).backward()
    assert_matches(ours.grad, theirs.grad)


# ----------------------------------------------------------------------------------
# binary_cross_entropy and binary_cross_entropy_with_logits
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_matches_torch(device, dtype, reduction):
    probs = torch.sigmoid(random((5, 6), dtype, device, 18, 3.0))
    target = torch.rand(5, 6, generator=torch.Generator().manual_seed(19)).to(device, dtype)
    target[0] = target[0].round()  # hard 0/1 targets as well as soft ones
    expected = F.binary_cross_entropy(probs, target, reduction=reduction)
    assert_matches(losses.binary_cross_entropy(probs, target, reduction), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_probabilities_zero_and_one(device, dtype, reduction):
    probs = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=dtype, device=device)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5], dtype=dtype, device=device)
    actual = losses.binary_cross_entropy(probs, target, reduction)
    assert torch.isfinite(actual).all()  # each log is clamped at -100
    assert_matches(actual, F.binary_cross_entropy(probs, target, reduction=reduction))
    if reduction == "none":
        assert actual.tolist() == [0.0, 0.0, 100.0, 100.0, 50.0, 50.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_matches_torch(device, dtype, reduction):
    logits = random((4, 3, 5), dtype, device, 20, 5.0)
    target = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(21)).to(device, dtype)
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    assert_matches(losses.binary_cross_entropy_with_logits(logits, target, reduction), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_huge_logits(device, dtype, reduction):
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 1e4, -1e4, 50.0, -50.0], device=device)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0], device=device)
    logits, target = logits.to(dtype), target.to(dtype)
    actual = losses.binary_cross_entropy_with_logits(logits, target, reduction)
    assert torch.isfinite(actual).all()
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    assert_matches(actual, expected)


def autograd_grads(loss_fn, input, target, **kwargs):
    """Values and autograd gradients of ``loss_fn`` wrt input and target (upstream: ones)."""
    input = input.detach().clone().requires_grad_(True)
    target = target.detach().clone().requires_grad_(True)
    loss = loss_fn(input, target, **kwargs)
    grads = torch.autograd.grad(loss, (input, target), torch.ones_like(loss))
    return loss.detach(), *grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_gradient_at_zero_logit(device, dtype, reduction):
    """A zero-initialised model's logit 0: autograd gives sigmoid(0) - g, as torch (0.5 - g)."""
    logits = torch.zeros(4, dtype=dtype, device=device)
    target = torch.tensor([0.0, 1.0, 0.3, 0.5], dtype=dtype, device=device)
    ours = autograd_grads(
        losses.binary_cross_entropy_with_logits, logits, target, reduction=reduction
    )
    theirs = autograd_grads(F.binary_cross_entropy_with_logits, logits, target, reduction=reduction)
    for actual, expected in zip(ours, theirs, strict=True):
        assert_matches(actual, expected)
    if reduction == "none":
        assert ours[1].tolist() == [0.5, -0.5, pytest.approx(0.2), 0.0]
    # The analytic helper and autograd agree.
    analytic = loss_grads.binary_cross_entropy_with_logits_grad(logits, target, reduction)
    assert_matches(ours[1], analytic)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_gradient_at_zero_and_one(device, dtype, reduction):
    """torch's backward is (p - g) / max(p (1 - p), 1e-12): 0 for a matching target at p = 0
    or 1, +-1e12 otherwise, and -1e12 (not -1/p) for tiny p; no nan."""
    probs = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-13, 0.5, 1e-3]
    target = [0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0]
    probs = torch.tensor(probs, dtype=torch.float64).to(device, dtype)
    target = torch.tensor(target, dtype=torch.float64).to(device, dtype)
    ours = autograd_grads(losses.binary_cross_entropy, probs, target, reduction=reduction)
    theirs = autograd_grads(F.binary_cross_entropy, probs, target, reduction=reduction)
    assert_matches(ours[0], theirs[0])
    assert not ours[1].isnan().any()
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-6, atol=0)
    # The target's gradient is torch's -logit(p): +-inf at p = 0 or 1.
    torch.testing.assert_close(ours[2], theirs[2], rtol=1e-6, atol=1e-6)
    if reduction == "none" and dtype == torch.float64:
        assert ours[1][:7].tolist() == [0.0, 0.0, -1e12, 1e12, -0.5e12, 0.5e12, -1e12]


def test_binary_cross_entropy_second_derivative_matches_torch(device):
    probs = torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64, device=device)
    target = torch.tensor([0.0, 1.0, 0.4], dtype=torch.float64, device=device)

    def second(loss_fn):
        p = probs.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(p, target, reduction="sum"), p, create_graph=True)
        return torch.autograd.grad(g.sum(), p)[0]

    assert_matches(second(losses.binary_cross_entropy), second(F.binary_cross_entropy))


@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
)
@HYPOTHESIS
def test_binary_losses_random_shapes(device, shape, seed, reduction):
    logits = random(shape, torch.float64, device, seed, 6.0)
    target = torch.sigmoid(random(shape, torch.float64, device, seed + 1, 3.0))
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    assert_matches(losses.binary_cross_entropy_with_logits(logits, target, reduction), expected)
    probs = torch.sigmoid(logits)
    expected = F.binary_cross_entropy(probs, target, reduction=reduction)
    assert_matches(losses.binary_cross_entropy(probs, target, reduction), expected)


# ----------------------------------------------------------------------------------
# Empty batches: every loss, every reduction (the mean of nothing is nan, like torch)
# ----------------------------------------------------------------------------------


def empty_cases(device):
    x = torch.zeros(0, 3, dtype=torch.float64, device=device)
    y = torch.zeros(0, 3, dtype=torch.float64, device=device)
    idx = torch.zeros(0, dtype=torch.long, device=device)
    return [
        (losses.mse_loss, F.mse_loss, (x, y), {}),
        (losses.huber_loss, F.huber_loss, (x, y), {}),
        (losses.nll_loss, F.nll_loss, (x, idx), {}),
        (losses.cross_entropy, F.cross_entropy, (x, idx), {}),
        (losses.cross_entropy, F.cross_entropy, (x, idx), {"label_smoothing": 0.2}),
        (losses.cross_entropy, F.cross_entropy, (x, y), {}),
        (losses.cross_entropy, F.cross_entropy, (x, y), {"label_smoothing": 0.2}),
        (losses.binary_cross_entropy, F.binary_cross_entropy, (x, y), {}),
        (
            losses.binary_cross_entropy_with_logits,
            F.binary_cross_entropy_with_logits,
            (x, y),
            {},
        ),
    ]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(device, reduction):
    for ours, theirs, args, kwargs in empty_cases(device):
        actual = ours(*args, reduction=reduction, **kwargs)
        expected = theirs(*args, reduction=reduction, **kwargs)
        assert actual.shape == expected.shape, ours.__name__
        assert_matches(actual, expected)
        if reduction == "mean":
            assert torch.isnan(actual), ours.__name__


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize(
    ("input_shape", "target"),
    [
        ((5, 0), "probabilities"),
        ((2, 0, 3), "probabilities"),
        ((0,), "probabilities"),
        ((5, 0), "ignored"),
        ((0, 0), "ignored"),
        ((0,), "ignored"),
    ],
)
def test_cross_entropy_zero_classes(device, reduction, label_smoothing, input_shape, target):
    """No classes at all: torch gives nan for the mean, zeros otherwise, and an empty grad."""
    input = torch.zeros(input_shape, dtype=torch.float64, device=device)
    if target == "probabilities":
        target = torch.zeros(input_shape, dtype=torch.float64, device=device)
    else:  # class indices: with no class to pick, every one must be ignore_index
        shape = () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])
        target = torch.full(shape, -100, dtype=torch.long, device=device)
    results = []
    for loss_fn in (losses.cross_entropy, F.cross_entropy):
        x = input.clone().requires_grad_(True)
        loss = loss_fn(x, target, reduction=reduction, label_smoothing=label_smoothing)
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
        results.append((loss.detach(), torch.zeros_like(x) if grad is None else grad))
    (actual, actual_grad), (expected, expected_grad) = results
    assert_matches(actual, expected)
    assert actual_grad.shape == expected_grad.shape == input.shape


def test_no_torch_functional_counterpart_is_called(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a from-scratch loss called torch.nn.functional")

    names = ["mse_loss", "huber_loss", "nll_loss", "cross_entropy", "log_softmax", "softmax"]
    names += ["binary_cross_entropy", "binary_cross_entropy_with_logits", "logsigmoid"]
    names += ["softplus"]
    for name in names:
        monkeypatch.setattr(F, name, forbidden)
    monkeypatch.setattr(torch, "log_softmax", forbidden)
    monkeypatch.setattr(torch, "softmax", forbidden)
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    idx = torch.tensor([0, 3, 1])
    losses.mse_loss(x, y), losses.huber_loss(x, y), losses.nll_loss(x, idx)
    losses.cross_entropy(x, idx, label_smoothing=0.1), losses.cross_entropy(x, y)
    losses.binary_cross_entropy(y, y), losses.binary_cross_entropy_with_logits(x, y)


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


def valid_calls():
    """Each loss with valid arguments, as (function, args)."""
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    idx = torch.tensor([0, 3, 1])
    return [
        (losses.mse_loss, (x, y)),
        (losses.huber_loss, (x, y)),
        (losses.nll_loss, (x, idx)),
        (losses.cross_entropy, (x, idx)),
        (losses.cross_entropy, (x, y)),
        (losses.binary_cross_entropy, (y, y)),
        (losses.binary_cross_entropy_with_logits, (x, y)),
    ]


@pytest.mark.parametrize("reduction", ["avg", "Mean", None, ""])
def test_bad_reduction(reduction):
    for function, args in valid_calls():
        with pytest.raises(ValueError, match="reduction"):
            function(*args, reduction=reduction)


def test_integer_input_is_a_type_error():
    for function, (x, target) in valid_calls():
        with pytest.raises(TypeError, match="input"):
            function((10 * x).long(), target)


def test_integer_target_is_a_type_error_where_floats_are_needed():
    x, y = torch.rand(3, 4), torch.ones(3, 4, dtype=torch.long)
    for function in (
        losses.mse_loss,
        losses.huber_loss,
        losses.binary_cross_entropy,
        losses.binary_cross_entropy_with_logits,
    ):
        with pytest.raises(TypeError, match="target"):
            function(x, y)


@pytest.mark.parametrize("target", [torch.tensor([True, False, True]), [0, 1, 2]])
def test_class_target_of_wrong_type(target):
    x = torch.randn(3, 4)
    for function in (losses.nll_loss, losses.cross_entropy):
        with pytest.raises(TypeError, match="target"):
            function(x, target)


def test_mismatched_shapes_name_both():
    x = torch.rand(3, 4)
    for function in (
        losses.mse_loss,
        losses.huber_loss,
        losses.binary_cross_entropy,
        losses.binary_cross_entropy_with_logits,
    ):
        for other in (torch.rand(4, 3), torch.rand(3, 1), torch.rand(4)):
            shapes = re.escape(f"(3, 4) and {tuple(other.shape)}")
            with pytest.raises(ValueError, match=f"input and target.*{shapes}"):
                function(x, other)


@pytest.mark.parametrize("shape", [(3,), (4,), (3, 1), (3, 2, 2), (2, 4)])
def test_class_index_target_of_wrong_shape(shape):
    x = torch.randn(3, 4, 2)
    target = torch.zeros(shape, dtype=torch.long)
    for function in (losses.nll_loss, losses.cross_entropy):
        with pytest.raises(ValueError, match=r"target.*input.*\(3, 4, 2\).*\(3, 2\)"):
            function(x, target)


@pytest.mark.parametrize("shape", [(3, 3), (4, 4), (3,), (3, 4, 1)])
def test_probability_target_of_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"input and target.*\(3, 4\)"):
        losses.cross_entropy(torch.randn(3, 4), torch.rand(shape))


@pytest.mark.parametrize("bad", [4, 5, -1, -101, 2**40])
def test_class_index_out_of_range(bad):
    x = torch.randn(3, 4)
    target = torch.tensor([0, bad, -100])
    for function in (losses.nll_loss, losses.cross_entropy):
        with pytest.raises(ValueError, match=rf"target .*\[0, 4\).*{bad}"):
            function(x, target)


def test_ignore_index_other_than_default():
    x, target = torch.randn(3, 4), torch.tensor([0, -1, 2])
    losses.cross_entropy(x, target, ignore_index=-1)  # -1 is ignored, so valid
    with pytest.raises(ValueError, match=r"target .*\[0, 4\).*-1"):
        losses.cross_entropy(x, target)  # but not with the default ignore_index
    with pytest.raises(TypeError, match="ignore_index"):
        losses.nll_loss(x, torch.tensor([0, 1, 2]), ignore_index=1.5)


def test_ignore_index_with_probability_target():
    with pytest.raises(ValueError, match="ignore_index"):
        losses.cross_entropy(torch.randn(3, 4), torch.rand(3, 4), ignore_index=0)


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.0001, 2.0, math.nan, math.inf])
def test_bad_label_smoothing(label_smoothing):
    x = torch.randn(3, 4)
    for target in (torch.tensor([0, 1, 2]), torch.rand(3, 4)):
        with pytest.raises(ValueError, match="label_smoothing"):
            losses.cross_entropy(x, target, label_smoothing=label_smoothing)


def test_scalar_input_for_classification():
    for function in (losses.nll_loss, losses.cross_entropy):
        with pytest.raises(ValueError, match="input"):
            function(torch.tensor(1.0), torch.tensor(0))


@pytest.mark.parametrize("delta", [0.0, -1.0, math.nan])
def test_bad_huber_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        losses.huber_loss(torch.rand(3), torch.rand(3), delta=delta)


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_binary_cross_entropy_values_outside_unit_interval(bad):
    good = torch.full((3,), 0.5)
    bad_tensor = torch.tensor([0.5, bad, 0.2])
    with pytest.raises(ValueError, match=r"input must lie in \[0, 1\]"):
        losses.binary_cross_entropy(bad_tensor, good)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        losses.binary_cross_entropy(good, bad_tensor)
