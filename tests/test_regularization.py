"""Weight penalties, the parameters they act on, and label smoothing against PyTorch."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.functional import l1_penalty, l2_penalty, regularized_parameters, smooth_labels

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@contextlib.contextmanager
def default_dtype(dtype):
    """smooth_labels returns the default dtype: set it for a float64 comparison."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def make_model(device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, kernel_size=3),  # weight 4-D, bias 1-D
        torch.nn.BatchNorm2d(3),  # weight and bias 1-D
        torch.nn.Flatten(),
        torch.nn.Linear(12, 5),
        torch.nn.LayerNorm(5),
        torch.nn.Linear(5, 2, bias=False),
    ).to(device, dtype)


# ---------------------------------------------------------------- regularized_parameters


def test_regularized_parameters_excludes_biases_and_norm_parameters():
    model = make_model()
    names = [name for name, _ in regularized_parameters(model)]
    assert names == ["0.weight", "3.weight", "5.weight"]
    by_name = dict(model.named_parameters())
    assert all(p is by_name[name] for name, p in regularized_parameters(model))


def test_regularized_parameters_without_exclusion_is_named_parameters():
    model = make_model()
    everything = regularized_parameters(model, exclude_bias=False)
    assert [n for n, _ in everything] == [n for n, _ in model.named_parameters()]
    assert all(a is b for (_, a), (_, b) in zip(everything, model.named_parameters(), strict=True))


def test_regularized_parameters_of_parameterless_and_embedding_modules():
    assert regularized_parameters(torch.nn.ReLU()) == []
    embedding = torch.nn.Embedding(10, 4)  # a 2-D table: decayed like a weight
    assert [n for n, _ in regularized_parameters(embedding)] == ["weight"]


# ---------------------------------------------------------------- l2_penalty, l1_penalty


@pytest.mark.parametrize("exclude_bias", [True, False])
def test_penalty_values(exclude_bias, device):
    model = make_model(device)
    weights = [p for _, p in regularized_parameters(model, exclude_bias)]
    l2, l1 = l2_penalty(model, exclude_bias), l1_penalty(model, exclude_bias)
    assert l2.shape == () and l1.shape == () and l2.device.type == device.type
    expected_l2 = 0.5 * sum(float((p.detach().double() ** 2).sum()) for p in weights)
    expected_l1 = sum(float(p.detach().double().abs().sum()) for p in weights)
    assert math.isclose(l2.item(), expected_l2, rel_tol=1e-12)
    assert math.isclose(l1.item(), expected_l1, rel_tol=1e-12)
    if exclude_bias:  # the defaults exclude biases
        assert l2_penalty(model).item() == l2.item() and l1_penalty(model).item() == l1.item()
    else:
        assert l2.item() > l2_penalty(model).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penalty_gradients_are_weight_and_sign(dtype, device):
    model = make_model(device, dtype)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = 0.0  # sign(0) = 0
    l2_grads = torch.autograd.grad(l2_penalty(model), list(model.parameters()), allow_unused=True)
    l1_grads = torch.autograd.grad(l1_penalty(model), list(model.parameters()), allow_unused=True)
    decayed = {id(p) for _, p in regularized_parameters(model)}
    for p, g2, g1 in zip(model.parameters(), l2_grads, l1_grads, strict=True):
        if id(p) in decayed:
            torch.testing.assert_close(g2, p.detach(), rtol=RTOL[dtype], atol=0)
            assert torch.equal(g1, torch.sign(p.detach()))
        else:  # biases are not part of the penalty at all
            assert g2 is None and g1 is None
    assert l1_grads[0][0, 0, 0, 0] == 0


def test_l2_penalty_equals_torch_sgd_weight_decay(device):
    weight_decay, lr = 0.1, 0.5
    ours, theirs = make_model(device), make_model(device)
    decayed = [p for _, p in regularized_parameters(theirs)]
    others = [p for _, p in theirs.named_parameters() if all(p is not q for q in decayed)]
    optimizer = torch.optim.SGD(
        [{"params": decayed, "weight_decay": weight_decay}, {"params": others}], lr=lr
    )
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, device=device)
    # Ours: the penalty in the loss, plain SGD step. Theirs: the loss alone, SGD weight_decay.
    loss = ours(x).square().mean() + weight_decay * l2_penalty(ours)
    loss.backward()
    with torch.no_grad():
        for p in ours.parameters():
            p -= lr * p.grad
    theirs(x).square().mean().backward()
    optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)


def test_penalties_without_penalized_parameters():
    for penalty in (l2_penalty, l1_penalty):
        assert torch.equal(penalty(torch.nn.ReLU()), torch.zeros(()))
        only_bias = torch.nn.BatchNorm1d(3)
        assert penalty(only_bias).item() == 0.0
        assert penalty(only_bias, exclude_bias=False).item() > 0.0  # weight = ones


@pytest.mark.parametrize("penalty", [l2_penalty, l1_penalty])
def test_penalties_reject_non_modules(penalty):
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        penalty([torch.zeros(2, 2)])


# ---------------------------------------------------------------- smooth_labels


def test_smooth_labels_values_shape_dtype(device):
    target = torch.tensor([[0, 2], [1, 1]], device=device)
    out = smooth_labels(target, 3, 0.3)
    assert out.shape == (2, 2, 3) and out.dtype == torch.get_default_dtype()
    assert out.device == target.device
    high, low = 1 - 0.3 + 0.1, 0.1
    expected = torch.tensor(
        [[[high, low, low], [low, low, high]], [[low, high, low], [low, high, low]]],
        device=device,
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=0)


def test_smooth_labels_extremes(device):
    target = torch.tensor([3, 0, 4, 1], device=device)
    assert torch.equal(smooth_labels(target, 5, 0.0), F.one_hot(target, 5).float())
    assert torch.equal(smooth_labels(target, 5, 1.0), torch.full((4, 5), 0.2, device=device))
    assert smooth_labels(torch.tensor(2), 3, 0.0).tolist() == [0.0, 0.0, 1.0]
    assert smooth_labels(torch.zeros(0, dtype=torch.long), 3, 0.1).shape == (0, 3)
    assert smooth_labels(torch.tensor([0, 0]), 1, 0.5).tolist() == [[1.0], [1.0]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_labels_is_what_cross_entropy_uses(smoothing, reduction, dtype, device):
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(8, 7, generator=g, dtype=torch.float64) * 3).to(device, dtype)
    target = torch.randint(7, (8,), generator=g).to(device)
    with default_dtype(dtype):
        soft = smooth_labels(target, 7, smoothing)
    assert soft.dtype == dtype
    builtin = F.cross_entropy(logits, target, label_smoothing=smoothing, reduction=reduction)
    ours = F.cross_entropy(logits, soft, reduction=reduction)
    torch.testing.assert_close(ours, builtin, rtol=RTOL[dtype], atol=0)


def test_smooth_labels_with_spatial_targets(device):
    # (N, d1, d2) targets: smooth_labels puts classes last; cross_entropy wants them at dim 1.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    target = torch.randint(4, (3, 5, 6), generator=g).to(device)
    with default_dtype(torch.float64):
        soft = smooth_labels(target, 4, 0.2).movedim(-1, 1)
    builtin = F.cross_entropy(logits, target, label_smoothing=0.2)
    torch.testing.assert_close(F.cross_entropy(logits, soft), builtin, rtol=1e-10, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9),
    st.floats(0.0, 1.0),
    st.lists(st.integers(0, 100), min_size=1, max_size=12),
)
def test_smooth_labels_hypothesis(num_classes, smoothing, raw):
    target = torch.tensor(raw) % num_classes
    with default_dtype(torch.float64):
        out = smooth_labels(target, num_classes, smoothing)
    torch.testing.assert_close(out.sum(-1), torch.ones(len(raw), dtype=torch.float64))
    expected = torch.full((len(raw), num_classes), smoothing / num_classes, dtype=torch.float64)
    expected[torch.arange(len(raw)), target] = 1 - smoothing + smoothing / num_classes
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("smoothing", [-0.01, 1.01, math.nan])
def test_smooth_labels_rejects_bad_smoothing(smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0.0, 1.0\]"):
        smooth_labels(torch.tensor([0]), 3, smoothing)
    with pytest.raises(TypeError, match="label_smoothing must be a real number"):
        smooth_labels(torch.tensor([0]), 3, "0.1")


@pytest.mark.parametrize("bad", [[-1, 0], [0, 3], [-100]])
def test_smooth_labels_rejects_out_of_range_indices(bad):
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 2\]"):
        smooth_labels(torch.tensor(bad), 3, 0.1)


def test_smooth_labels_rejects_bad_target_and_num_classes():
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        smooth_labels(torch.tensor([0.0, 1.0]), 3, 0.1)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        smooth_labels([0, 1], 3, 0.1)
    for num_classes in [0, -2]:
        with pytest.raises(ValueError, match="num_classes must be at least 1"):
            smooth_labels(torch.tensor([0]), num_classes, 0.1)
    for num_classes in [3.0, True, None]:
        with pytest.raises(TypeError, match="num_classes must be an int"):
            smooth_labels(torch.tensor([0]), num_classes, 0.1)
