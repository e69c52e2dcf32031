"""Tests for npfl_lib.functional.loss_grads: analytic gradients against torch.autograd."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npfl_lib.functional import loss_grads

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float64, torch.float32]
HYPOTHESIS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def autograd_grad(torch_loss, input, *args, **kwargs) -> torch.Tensor:
    """d loss / d input by torch.autograd; for reduction="none" the gradient of the sum."""
    input = input.detach().clone().requires_grad_(True)
    loss = torch_loss(input, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), input)
    return grad


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to autograd: rtol 1e-10 in float64, 1e-5 in float32.

    The absolute tolerance, a few units in the last place of 1, covers entries that are
    tiny by cancellation, e.g. ``softmax - 1_gold`` where softmax is ``1 - 1e-14``:
    both implementations round there, so neither is closer to the truth than that.
    """
    float64 = expected.dtype == torch.float64
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(
        actual, expected, rtol=1e-10 if float64 else 1e-5, atol=1e-15 if float64 else 5e-7
    )


def random(shape, dtype, device, seed=0, scale=1.0) -> torch.Tensor:
    """Reproducible normal noise, drawn on the CPU and then moved to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(device, dtype)


def random_classes(shape, num_classes, device, seed=0, ignore_index=-100, ignore_rate=0.3):
    """Random class indices; a fraction of them replaced by ``ignore_index``."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < ignore_rate] = ignore_index
    return target.to(device)


def random_probs(shape, dtype, device, seed=0) -> torch.Tensor:
    """A random distribution along the class dimension (dim 1, or dim 0 when unbatched)."""
    dim = 0 if len(shape) == 1 else 1
    return torch.softmax(random(shape, torch.float64, "cpu", seed + 1, 2.0), dim).to(device, dtype)


def target_shape(input_shape):
    return () if len(input_shape) == 1 else (input_shape[0], *input_shape[2:])


def num_classes(input_shape):
    return input_shape[0] if len(input_shape) == 1 else input_shape[1]


SHAPES = [(5,), (6, 5), (0, 5), (3, 4, 2, 3), (1, 1)]


# ----------------------------------------------------------------------------------
# mse_loss_grad and binary_cross_entropy_with_logits_grad
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (), (0, 3)])
def test_mse_loss_grad(device, dtype, reduction, shape):
    x, y = random(shape, dtype, device, 1), random(shape, dtype, device, 2)
    expected = autograd_grad(F.mse_loss, x, y, reduction=reduction)
    assert_matches(loss_grads.mse_loss_grad(x, y, reduction), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (), (0, 3)])
def test_binary_cross_entropy_with_logits_grad(device, dtype, reduction, shape):
    x = random(shape, dtype, device, 3, 5.0)
    y = torch.rand(shape, generator=torch.Generator().manual_seed(4)).to(device, dtype)
    expected = autograd_grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction)
    actual = loss_grads.binary_cross_entropy_with_logits_grad(x, y, reduction)
    assert_matches(actual, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_with_logits_grad_huge_logits(device, dtype, reduction):
    x = torch.tensor([1e4, -1e4, 1e4, -1e4, 1e4, -1e4, 80.0, -80.0], dtype=dtype, device=device)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0], dtype=dtype, device=device)
    actual = loss_grads.binary_cross_entropy_with_logits_grad(x, y, reduction)
    assert torch.isfinite(actual).all()
    expected = autograd_grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction)
    assert_matches(actual, expected)
    if reduction == "sum":  # sigmoid(+-1e4) is exactly 1 or 0
        assert actual[:6].tolist() == [1.0, -1.0, 0.0, 0.0, 0.5, -0.5]


def test_grad_for_none_is_each_elements_own_gradient(device):
    # reduction="none": entry i is d loss_i / d input_i, i.e. the gradient of the sum.
    x, y = random((4,), torch.float64, device, 5), random((4,), torch.float64, device, 6)
    x_ = x.clone().requires_grad_()
    per_element = F.binary_cross_entropy_with_logits(x_, y.sigmoid(), reduction="none")
    for i in range(4):
        (grad,) = torch.autograd.grad(per_element[i], x_, retain_graph=True)
        ours = loss_grads.binary_cross_entropy_with_logits_grad(x, y.sigmoid(), "none")
        assert_matches(ours[i], grad[i])
        assert (grad[torch.arange(4, device=device) != i] == 0).all()


@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
)
@HYPOTHESIS
def test_elementwise_grads_random_shapes(device, shape, seed, reduction):
    x, y = (
        random(shape, torch.float64, device, seed, 6.0),
        random(shape, torch.float64, device, seed + 1),
    )
    expected = autograd_grad(F.mse_loss, x, y, reduction=reduction)
    assert_matches(loss_grads.mse_loss_grad(x, y, reduction), expected)
    y = y.sigmoid()
    expected = autograd_grad(F.binary_cross_entropy_with_logits, x, y, reduction=reduction)
    actual = loss_grads.binary_cross_entropy_with_logits_grad(x, y, reduction)
    assert_matches(actual, expected)


# ----------------------------------------------------------------------------------
# cross_entropy_grad
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_grad_class_indices(device, dtype, reduction, shape, label_smoothing):
    x = random(shape, dtype, device, 7, 3.0)
    target = random_classes(target_shape(shape), num_classes(shape), device, 8)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
    assert_matches(loss_grads.cross_entropy_grad(x, target, **kwargs), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
def test_cross_entropy_grad_probabilities(device, dtype, reduction, shape, label_smoothing):
    x = random(shape, dtype, device, 9, 3.0)
    target = random_probs(shape, dtype, device, 10)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
    assert_matches(loss_grads.cross_entropy_grad(x, target, **kwargs), expected)


def test_cross_entropy_grad_is_softmax_minus_gold(device):
    # The lecture's formulas: o - 1_gold for indices, o - g for a distribution g.
    x = random((4, 3), torch.float64, device, 11)
    target = torch.tensor([2, 0, 1, 1], device=device)
    gold = torch.eye(3, dtype=torch.float64, device=device)[target]
    o = torch.softmax(x, dim=1)
    assert_matches(loss_grads.cross_entropy_grad(x, target, reduction="sum"), o - gold)
    assert_matches(loss_grads.cross_entropy_grad(x, target), (o - gold) / 4)
    g = random_probs((4, 3), torch.float64, device, 12)
    assert_matches(loss_grads.cross_entropy_grad(x, g, reduction="sum"), o - g)


def test_cross_entropy_grad_unnormalized_probability_target(device):
    x = random((4, 3), torch.float64, device, 13)
    target = random((4, 3), torch.float64, device, 14).abs()
    for reduction in REDUCTIONS:
        kwargs = dict(reduction=reduction, label_smoothing=0.2)
        expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
        assert_matches(loss_grads.cross_entropy_grad(x, target, **kwargs), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_grad_ignore_index_that_is_a_class(device, reduction):
    x = random((8, 4), torch.float64, device, 15)
    target = torch.tensor([0, 1, 2, 3, 3, 3, 1, 0], device=device)
    kwargs = dict(ignore_index=3, reduction=reduction, label_smoothing=0.3)
    expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
    actual = loss_grads.cross_entropy_grad(x, target, **kwargs)
    assert_matches(actual, expected)
    assert (actual[3:6] == 0).all()  # ignored rows get zero gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_grad_huge_logits(device, dtype, reduction, label_smoothing):
    x = torch.tensor(
        [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype, device=device
    )
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    for target in (torch.tensor([1, 2, 0], device=device), torch.softmax(-x, 1)):
        actual = loss_grads.cross_entropy_grad(x, target, **kwargs)
        assert torch.isfinite(actual).all()
        assert_matches(actual, autograd_grad(F.cross_entropy, x, target, **kwargs))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.4])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2), (3,)])
def test_cross_entropy_grad_all_targets_ignored(device, reduction, label_smoothing, shape):
    x = random(shape, torch.float64, device, 16)
    target = torch.full(target_shape(shape), -100, device=device)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    actual = loss_grads.cross_entropy_grad(x, target, **kwargs)
    # The mean loss is nan (0 / 0), but autograd's gradient is all zeros; so is ours.
    assert (actual == 0).all()
    assert_matches(actual, autograd_grad(F.cross_entropy, x, target, **kwargs))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.4])
@pytest.mark.parametrize(
    ("shape", "kind"),
    [((5, 0), "probabilities"), ((0,), "probabilities"), ((5, 0), "ignored"), ((0, 0), "ignored")],
)
def test_cross_entropy_grad_zero_classes(device, reduction, label_smoothing, shape, kind):
    """No classes: an empty gradient, as torch's autograd gives (no division by zero)."""
    x = torch.zeros(shape, dtype=torch.float64, device=device)
    if kind == "probabilities":
        target = torch.zeros(shape, dtype=torch.float64, device=device)
    else:
        target = torch.full(target_shape(shape), -100, device=device)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    actual = loss_grads.cross_entropy_grad(x, target, **kwargs)
    assert actual.shape == shape
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(x, target, **kwargs).sum()
    (expected,) = torch.autograd.grad(loss, x, allow_unused=True)
    assert expected is None or expected.shape == shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", [0, 4, -100])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_cross_entropy_grad_unbatched_scalar_target(device, reduction, target, label_smoothing):
    x = random((5,), torch.float64, device, 17)
    target = torch.tensor(target, device=device)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
    assert_matches(loss_grads.cross_entropy_grad(x, target, **kwargs), expected)


@given(
    n=st.integers(0, 4),
    c=st.integers(1, 5),
    extra=st.lists(st.integers(1, 3), max_size=2),
    unbatched=st.booleans(),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(REDUCTIONS),
    label_smoothing=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    probabilities=st.booleans(),
)
@HYPOTHESIS
def test_cross_entropy_grad_random_shapes(
    device, n, c, extra, unbatched, seed, reduction, label_smoothing, probabilities
):
    shape = (c,) if unbatched else (n, c, *extra)
    x = random(shape, torch.float64, device, seed, 4.0)
    if probabilities:
        target = random_probs(shape, torch.float64, device, seed)
    else:
        target = random_classes(target_shape(shape), c, device, seed)
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    expected = autograd_grad(F.cross_entropy, x, target, **kwargs)
    assert_matches(loss_grads.cross_entropy_grad(x, target, **kwargs), expected)


def test_no_torch_functional_counterpart_is_called(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a from-scratch gradient called torch.nn.functional")

    for name in ["softmax", "log_softmax", "sigmoid", "one_hot", "cross_entropy"]:
        monkeypatch.setattr(F, name, forbidden)
    for name in ["softmax", "log_softmax", "sigmoid"]:
        monkeypatch.setattr(torch, name, forbidden)
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    loss_grads.mse_loss_grad(x, y), loss_grads.binary_cross_entropy_with_logits_grad(x, y)
    loss_grads.cross_entropy_grad(x, torch.tensor([0, 3, -100]), label_smoothing=0.1)
    loss_grads.cross_entropy_grad(x, y)


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


def valid_calls():
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    return [
        (loss_grads.mse_loss_grad, (x, y)),
        (loss_grads.cross_entropy_grad, (x, torch.tensor([0, 3, 1]))),
        (loss_grads.cross_entropy_grad, (x, y)),
        (loss_grads.binary_cross_entropy_with_logits_grad, (x, y)),
    ]


@pytest.mark.parametrize("reduction", ["avg", "Mean", None])
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
    for function in (loss_grads.mse_loss_grad, loss_grads.binary_cross_entropy_with_logits_grad):
        with pytest.raises(TypeError, match="target"):
            function(x, y)
    with pytest.raises(TypeError, match="target"):
        loss_grads.cross_entropy_grad(x, torch.tensor([True, False, True]))


def test_mismatched_shapes_name_both():
    x = torch.rand(3, 4)
    for function, _ in valid_calls():
        with pytest.raises(ValueError, match=r"input and target.*\(3, 4\)"):
            function(x, torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"target.*input.*\(3, 4\).*\(3,\).*\(4,\)"):
        loss_grads.cross_entropy_grad(x, torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("bad", [4, -1, -101])
def test_class_index_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"target .*\[0, 4\).*{bad}"):
        loss_grads.cross_entropy_grad(torch.randn(3, 4), torch.tensor([0, bad, -100]))


@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5, math.nan])
def test_bad_label_smoothing(label_smoothing):
    for _, (x, target) in valid_calls()[1:3]:
        with pytest.raises(ValueError, match="label_smoothing"):
            loss_grads.cross_entropy_grad(x, target, label_smoothing=label_smoothing)


def test_ignore_index_with_probability_target():
    with pytest.raises(ValueError, match="ignore_index"):
        loss_grads.cross_entropy_grad(torch.randn(3, 4), torch.rand(3, 4), ignore_index=2)
