"""Tests for npfl_lib.manual: hand-written backprop against autograd, and gradcheck."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.manual import GradcheckReport, ManualMLP, gradcheck

NAMES = ("W1", "b1", "W2", "b2")
TOLERANCES = [(torch.float64, 1e-10), (torch.float32, 1e-5)]
# Near-zero gradient entries are sums that cancel; their rounding depends on the order.
ATOL = {torch.float64: 1e-13, torch.float32: 1e-6}


def _data(n, d, c, device, dtype, generator):
    x = torch.randn(n, d, generator=generator, dtype=dtype).to(device)
    t = torch.randint(c, (n,), generator=generator).to(device)
    return x, t


def _autograd_reference(model, x, t):
    """Loss, probabilities and gradients computed by torch's autograd and nn.functional."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.parameters().items()}
    act = torch.tanh if model.activation == "tanh" else torch.relu
    logits = act(x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    loss = torch.nn.functional.cross_entropy(logits, t)
    grads = torch.autograd.grad(loss, [params[k] for k in NAMES])
    return loss.detach(), logits.softmax(dim=1).detach(), dict(zip(NAMES, grads, strict=True))


def _model(activation, device, dtype, seed=0, sizes=(5, 7, 3)):
    generator = torch.Generator().manual_seed(seed)
    return ManualMLP(*sizes, activation=activation, generator=generator, dtype=dtype, device=device)


# --- forward and backward against autograd -----------------------------------------


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradients_equal_autograd(device, generator, activation, dtype, rtol):
    model = _model(activation, device, dtype)
    x, t = _data(16, 5, 3, device, dtype, generator)
    loss, probs, expected = _autograd_reference(model, x, t)

    torch.testing.assert_close(model.forward(x), probs, rtol=rtol, atol=ATOL[dtype])
    torch.testing.assert_close(model.loss(x, t), loss, rtol=rtol, atol=0)
    grads = model.backward(x, t)
    assert set(grads) == set(NAMES)
    for name in NAMES:
        assert grads[name].shape == model.parameters()[name].shape
        assert grads[name].dtype == dtype and grads[name].device.type == device.type
        torch.testing.assert_close(grads[name], expected[name], rtol=rtol, atol=ATOL[dtype])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 8),
    d=st.integers(1, 6),
    h=st.integers(1, 6),
    c=st.integers(1, 5),
    activation=st.sampled_from(["tanh", "relu"]),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
)
def test_gradients_equal_autograd_hypothesis(n, d, h, c, activation, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    model = ManualMLP(d, h, c, activation, generator=generator, dtype=torch.float64)
    x, t = _data(n, d, c, "cpu", torch.float64, generator)
    x = scale * x
    loss, _, expected = _autograd_reference(model, x, t)
    torch.testing.assert_close(model.loss(x, t), loss, rtol=1e-10, atol=1e-12)
    grads = model.backward(x, t)
    for name in NAMES:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-13)


def test_backward_recomputes_for_a_new_batch(generator):
    model = _model("tanh", "cpu", torch.float64)
    x1, t1 = _data(4, 5, 3, "cpu", torch.float64, generator)
    x2, t2 = _data(6, 5, 3, "cpu", torch.float64, generator)
    model.forward(x1)
    grads = model.backward(x2, t2)  # not the batch of the last forward
    _, _, expected = _autograd_reference(model, x2, t2)
    for name in NAMES:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-13)


def test_probabilities_are_a_distribution(device, generator):
    model = _model("relu", device, torch.float32)
    x, _ = _data(10, 5, 3, device, torch.float32, generator)
    probs = model(1e4 * x)  # huge logits must not overflow
    assert probs.shape == (10, 3) and torch.isfinite(probs).all() and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(10, device=device))


# --- initialization ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_init_equals_nn_linear_with_same_seed(dtype):
    torch.manual_seed(5)
    hidden = torch.nn.Linear(6, 4, dtype=dtype)
    output = torch.nn.Linear(4, 3, dtype=dtype)
    model = ManualMLP(6, 4, 3, generator=torch.Generator().manual_seed(5), dtype=dtype)
    expected = {
        "W1": hidden.weight.T,
        "b1": hidden.bias,
        "W2": output.weight.T,
        "b2": output.bias,
    }
    for name, value in model.parameters().items():
        assert value.dtype == dtype and not value.requires_grad
        torch.testing.assert_close(value, expected[name].detach(), rtol=1e-6, atol=0)


def test_init_bounds_and_cpu_generator_on_device(device):
    model = ManualMLP(400, 100, 10, generator=torch.Generator().manual_seed(0), device=device)
    cpu = ManualMLP(400, 100, 10, generator=torch.Generator().manual_seed(0))
    for name, value in model.parameters().items():
        assert value.device.type == device.type
        assert torch.equal(value.cpu(), cpu.parameters()[name])
    for name, fan_in in [("W1", 400), ("b1", 400), ("W2", 100), ("b2", 100)]:
        bound = 1 / math.sqrt(fan_in)
        assert model.parameters()[name].abs().max().item() <= bound
    assert model.W1.std().item() == pytest.approx(1 / math.sqrt(3 * 400), rel=0.03)
    assert model.W1.shape == (400, 100) and model.W2.shape == (100, 10)


# --- training ---------------------------------------------------------------------


def test_sgd_step_updates_in_place(generator):
    model = _model("tanh", "cpu", torch.float64)
    x, t = _data(8, 5, 3, "cpu", torch.float64, generator)
    before = {k: v.clone() for k, v in model.parameters().items()}
    grads = model.backward(x, t)
    model.sgd_step(grads, lr=0.5)
    for name in NAMES:
        torch.testing.assert_close(model.parameters()[name], before[name] - 0.5 * grads[name])
    # The cache of the old parameters must not leak into the next backward.
    new_grads = model.backward(x, t)
    _, _, expected = _autograd_reference(model, x, t)
    for name in NAMES:
        torch.testing.assert_close(new_grads[name], expected[name], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_sgd_loop_decreases_loss(device, activation):
    generator = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(3, 2, generator=generator)
    t = torch.randint(3, (150,), generator=generator)
    x = (centers[t] + torch.randn(150, 2, generator=generator)).to(device)
    t = t.to(device)
    model = ManualMLP(2, 16, 3, activation, generator=generator, device=device)
    losses = []
    for _ in range(200):
        losses.append(model.loss(x, t).item())
        model.sgd_step(model.backward(x, t), lr=0.5)
    final = model.loss(x, t).item()
    assert final < 0.5 * losses[0]
    steps = zip(losses[:-1], losses[1:], strict=True)
    assert all(later <= earlier + 1e-3 for earlier, later in steps)
    accuracy = (model.forward(x).argmax(dim=1) == t).float().mean().item()
    assert accuracy > 0.85


# --- gradcheck --------------------------------------------------------------------


def _loss_of_parameters(model, x, t):
    def loss(W1, b1, W2, b2):
        model.W1, model.b1, model.W2, model.b2 = W1, b1, W2, b2
        return model.loss(x, t)

    return loss


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradcheck_passes_on_manual_gradients(generator, activation):
    model = _model(activation, "cpu", torch.float64, sizes=(3, 4, 3))
    x, t = _data(5, 3, 3, "cpu", torch.float64, generator)
    params = [model.parameters()[k].clone() for k in NAMES]
    grads = model.backward(x, t)
    report = gradcheck(_loss_of_parameters(model, x, t), params, analytic=[grads[k] for k in NAMES])
    assert isinstance(report, GradcheckReport)
    assert report.passed and bool(report)
    assert report.max_rel_error < 1e-6 and report.max_abs_error < 1e-9
    assert str(report).startswith("gradcheck passed")
    assert [n.shape for n in report.numeric] == [p.shape for p in params]


def test_gradcheck_fails_and_points_at_the_wrong_element(generator):
    model = _model("tanh", "cpu", torch.float64, sizes=(3, 4, 3))
    x, t = _data(5, 3, 3, "cpu", torch.float64, generator)
    params = [model.parameters()[k].clone() for k in NAMES]
    grads = model.backward(x, t)
    wrong = [grads[k].clone() for k in NAMES]
    wrong[2][1, 2] += 1e-3  # a bug in one element of dL/dW2

    report = gradcheck(_loss_of_parameters(model, x, t), params, analytic=wrong)

    assert not report.passed and not report
    assert report.where == (2, (1, 2))
    assert report.max_abs_error == pytest.approx(1e-3, rel=1e-4)
    assert "FAILED" in str(report) and "input 2, element (1, 2)" in str(report)


def test_gradcheck_with_autograd_and_a_single_input(generator):
    x = torch.randn(3, 4, generator=generator)  # float32: checked in float64
    before = x.clone()
    report = gradcheck(lambda a: (a.sin() * a).sum(), x)
    assert report.passed and report.max_rel_error < 1e-8
    assert report.analytic[0].dtype == torch.float64
    assert torch.equal(x, before)  # the inputs are never modified
    unused = gradcheck(lambda a, b: (a**2).sum(), [x, torch.ones(2)])
    assert unused.passed and torch.equal(unused.analytic[1], torch.zeros(2, dtype=torch.float64))


def test_gradcheck_single_wrong_analytic_tensor_and_scalar_input():
    x = torch.tensor(2.0, dtype=torch.float64)
    assert gradcheck(lambda a: a**3, x, analytic=torch.tensor(12.0)).passed
    report = gradcheck(lambda a: a**3, x, analytic=torch.tensor(11.0))
    assert not report.passed and report.where == (0, ())


def test_gradcheck_nan_gradient_fails():
    x = torch.ones(3, dtype=torch.float64)
    analytic = torch.tensor([2.0, math.nan, 2.0], dtype=torch.float64)
    report = gradcheck(lambda a: (a**2).sum(), x, analytic=analytic)
    assert not report.passed and report.where == (0, (1,))
    assert report.max_abs_error == math.inf and report.max_rel_error == math.inf
    nan_fn = gradcheck(lambda a: (a * math.nan).sum(), x, analytic=2 * x, atol=0, rtol=0)
    assert not nan_fn.passed


def test_gradcheck_tolerances():
    x = torch.ones(2, dtype=torch.float64)
    analytic = torch.tensor([2.0, 2.001], dtype=torch.float64)  # relative error 5e-4
    fn = lambda a: (a**2).sum()  # noqa: E731
    assert gradcheck(fn, x, analytic=analytic, atol=0, rtol=1e-3).passed
    assert not gradcheck(fn, x, analytic=analytic, atol=0, rtol=1e-4).passed
    exact = gradcheck(fn, x, analytic=torch.full((2,), 2.0), atol=0, rtol=0)
    assert exact.max_abs_error < 1e-8


def test_gradcheck_bad_arguments():
    x = torch.ones(2, 3, dtype=torch.float64)
    fn = lambda a: (a**2).sum()  # noqa: E731
    with pytest.raises(ValueError, match="fn must return a scalar"):
        gradcheck(lambda a: a**2, x)
    with pytest.raises(ValueError, match="fn must return a scalar"):
        gradcheck(lambda a: a**2, x, analytic=2 * x)
    with pytest.raises(ValueError, match="analytic must hold 1"):
        gradcheck(fn, x, analytic=[x, x])
    with pytest.raises(ValueError, match=r"analytic\[0\] and inputs\[0\]"):
        gradcheck(fn, x, analytic=torch.ones(3))
    with pytest.raises(TypeError, match=r"analytic\[0\]"):
        gradcheck(fn, x, analytic=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"inputs\[1\]"):
        gradcheck(lambda a, b: a.sum(), [x, torch.ones(2, dtype=torch.int64)])
    for eps in [0.0, -1e-6]:
        with pytest.raises(ValueError, match="eps"):
            gradcheck(fn, x, eps=eps)
    with pytest.raises(ValueError, match="atol"):
        gradcheck(fn, x, atol=-1.0)
    with pytest.raises(ValueError, match="rtol"):
        gradcheck(fn, x, rtol=-1.0)


# --- bad arguments ----------------------------------------------------------------


def test_manual_mlp_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation must be one of .*'tanh', 'relu'"):
        ManualMLP(2, 3, 4, activation="sigmoid")
    for name, args in [
        ("input_size", (0, 3, 4)),
        ("hidden_size", (2, 3.5, 4)),
        ("num_classes", (2, 3, True)),
    ]:
        with pytest.raises(ValueError, match=name):
            ManualMLP(*args)
    with pytest.raises(TypeError, match="dtype"):
        ManualMLP(2, 3, 4, dtype=torch.int64)


def test_manual_mlp_bad_inputs():
    model = ManualMLP(2, 3, 4)
    x, t = torch.randn(5, 2), torch.randint(4, (5,))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2\]"):
        model.forward(torch.randn(5, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        model.loss(torch.randn(2), t[:1])
    with pytest.raises(TypeError, match="x must be a floating-point"):
        model.forward(torch.ones(5, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must have the parameters' dtype"):
        model.backward(x.double(), t)
    with pytest.raises(TypeError, match="targets"):
        model.loss(x, t.float())
    with pytest.raises(ValueError, match=r"targets must have shape \[N\]"):
        model.backward(x, t[:3])
    for bad in [4, -1]:
        with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 3\]"):
            model.backward(x, torch.full((5,), bad))
    grads = model.backward(x, t)
    with pytest.raises(ValueError, match="lr"):
        model.sgd_step(grads, lr=-0.1)
    with pytest.raises(ValueError, match="gradients must have the keys"):
        model.sgd_step({"W1": grads["W1"]}, lr=0.1)
    with pytest.raises(TypeError, match="gradients\\['b1'\\]"):
        model.sgd_step({**grads, "b1": [0.0] * 3}, lr=0.1)
