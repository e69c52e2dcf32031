"""The per-tensor kernels of npfl_lib.optim.kernels, called directly on one tensor."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npfl_lib.optim import adam_step, adamw_step, kernels, rmsprop_step, sgd_step

TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-7},
}
HYPOTHESIS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
STEPS = 8


def random_problem(dtype, device, seed=0, shape=(4, 3)):
    """A starting parameter and a sequence of gradients, drawn on the CPU and moved."""
    generator = torch.Generator().manual_seed(seed)
    param = torch.randn(shape, generator=generator, dtype=torch.float64)
    grads = torch.randn((STEPS, *shape), generator=generator, dtype=torch.float64)
    return param.to(device=device, dtype=dtype), grads.to(device=device, dtype=dtype)


def run_torch(torch_class, param, grads, **kwargs):
    """Applies torch.optim (foreach=False) to one parameter with the given gradients."""
    param = torch.nn.Parameter(param.clone())
    optimizer = torch_class([param], foreach=False, **kwargs)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach()


def run_sgd(param, grads, **kwargs):
    param, buffer = param.clone(), torch.full_like(param, float("nan"))  # content must not matter
    for index, grad in enumerate(grads):
        sgd_step(param, grad, buffer, first_step=index == 0, **kwargs)
    return param


def run_rmsprop(param, grads, **kwargs):
    param = param.clone()
    square_avg, grad_avg, buffer = (torch.zeros_like(param) for _ in range(3))
    for grad in grads:
        rmsprop_step(param, grad, square_avg, grad_avg, buffer, **kwargs)
    return param


def run_adam(param, grads, kernel=adam_step, betas=(0.9, 0.999), **kwargs):
    param = param.clone()
    exp_avg, exp_avg_sq, max_exp_avg_sq = (torch.zeros_like(param) for _ in range(3))
    for step, grad in enumerate(grads, start=1):
        kernel(
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            step=step,
            beta1=betas[0],
            beta2=betas[1],
            **kwargs,
        )
    return param


def check_against_torch(run, torch_class, dtype, device, **kwargs):
    param, grads = random_problem(dtype, device)
    actual = run(param, grads, **kwargs)
    expected = run_torch(torch_class, param, grads, **kwargs)
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])
    if kwargs["lr"] >= 1e-3:  # the comparison is not vacuous: the parameter moved
        assert not torch.equal(actual, param)


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32])


@DTYPES
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        {"lr": 0.1, "maximize": True, "weight_decay": 0.1},
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
    ],
)
def test_sgd_step_matches_torch(kwargs, dtype, device):
    check_against_torch(run_sgd, torch.optim.SGD, dtype, device, **kwargs)


@DTYPES
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.01},
        {"lr": 0.01, "centered": True},
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1},
        {"lr": 0.01, "alpha": 0.5, "eps": 1e-3, "momentum": 0.5, "centered": True},
        {"lr": 0.01, "maximize": True, "weight_decay": 0.1, "momentum": 0.5, "centered": True},
    ],
)
def test_rmsprop_step_matches_torch(kwargs, dtype, device):
    check_against_torch(run_rmsprop, torch.optim.RMSprop, dtype, device, **kwargs)


@DTYPES
@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.01},
        {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
        {"lr": 0.01, "betas": (0.5, 0.6), "weight_decay": 0.1, "amsgrad": True},
        {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True, "maximize": True},
    ],
)
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_steps_match_torch(kwargs, decoupled, dtype, device):
    if decoupled:
        run = lambda p, g, **kw: run_adam(p, g, kernel=adamw_step, **kw)  # noqa: E731
        check_against_torch(run, torch.optim.AdamW, dtype, device, **kwargs)
    else:
        check_against_torch(run_adam, torch.optim.Adam, dtype, device, **kwargs)


@given(
    lr=st.floats(0.0, 1.0),
    momentum=st.floats(0.0, 0.99),
    dampening=st.floats(0.0, 1.0),
    weight_decay=st.floats(0.0, 0.5),
    nesterov=st.booleans(),
)
@HYPOTHESIS
def test_sgd_step_random_hyperparameters(lr, momentum, dampening, weight_decay, nesterov, device):
    if nesterov:
        momentum, dampening = max(momentum, 0.1), 0.0
    kwargs = {"lr": lr, "momentum": momentum, "dampening": dampening}
    kwargs |= {"weight_decay": weight_decay, "nesterov": nesterov}
    check_against_torch(run_sgd, torch.optim.SGD, torch.float64, device, **kwargs)


@given(
    lr=st.floats(0.0, 0.1),
    alpha=st.floats(0.1, 0.999),  # alpha near 0 with centered=True: sqrt of a rounding error
    eps=st.floats(1e-8, 1e-2),
    weight_decay=st.floats(0.0, 0.5),
    momentum=st.floats(0.0, 0.99),
    centered=st.booleans(),
)
@HYPOTHESIS
def test_rmsprop_step_random_hyperparameters(
    lr, alpha, eps, weight_decay, momentum, centered, device
):
    kwargs = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}
    kwargs |= {"momentum": momentum, "centered": centered}
    check_against_torch(run_rmsprop, torch.optim.RMSprop, torch.float64, device, **kwargs)


@given(
    lr=st.floats(0.0, 0.1),
    beta1=st.floats(0.0, 0.999),
    beta2=st.floats(0.0, 0.9999),
    eps=st.floats(1e-8, 1e-2),
    weight_decay=st.floats(0.0, 0.5),
    decoupled=st.booleans(),
)
@HYPOTHESIS
def test_adam_step_random_hyperparameters(lr, beta1, beta2, eps, weight_decay, decoupled, device):
    kwargs = {"lr": lr, "betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay}
    kernel, torch_class = (
        (adamw_step, torch.optim.AdamW) if decoupled else (adam_step, torch.optim.Adam)
    )
    run = lambda p, g, **kw: run_adam(p, g, kernel=kernel, **kw)  # noqa: E731
    check_against_torch(run, torch_class, torch.float64, device, **kwargs)


def test_adam_step_is_the_textbook_formula(device):
    """The folded-in bias corrections equal the lecture's m_hat / (sqrt(v_hat) + eps)."""
    param, grads = random_problem(torch.float64, device)
    lr, beta1, beta2, eps, weight_decay = 0.01, 0.8, 0.95, 1e-4, 0.1
    expected, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * expected
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        expected = expected - lr * m_hat / (torch.sqrt(v_hat) + eps)
    actual = run_adam(param, grads, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


def test_adamw_step_is_decay_then_adam(device):
    param, grads = random_problem(torch.float64, device)
    decayed, plain = param.clone(), param.clone()
    states = [(torch.zeros_like(param), torch.zeros_like(param)) for _ in range(2)]
    adamw_step(decayed, grads[0], *states[0], step=1, lr=0.1, weight_decay=0.5)
    plain.mul_(1 - 0.1 * 0.5)
    adam_step(plain, grads[0], *states[1], step=1, lr=0.1)
    assert torch.equal(decayed, plain)


def test_first_adam_step_moves_every_coordinate_by_about_lr(device):
    """With t = 1 the bias corrections cancel: the first step is lr * sign(g) (up to eps)."""
    param, grads = random_problem(torch.float64, device)
    updated = param.clone()
    adam_step(updated, grads[0], torch.zeros_like(param), torch.zeros_like(param), step=1, lr=0.01)
    torch.testing.assert_close(param - updated, 0.01 * grads[0].sign(), rtol=1e-6, atol=0)


def test_rmsprop_centered_uses_the_variance(device):
    """Constant gradients have zero variance: centered RMSprop then divides by eps only."""
    param = torch.zeros(3, dtype=torch.float64, device=device)
    square_avg, grad_avg = torch.zeros_like(param), torch.zeros_like(param)
    grad = torch.full_like(param, 2.0)
    rmsprop_step(param, grad, square_avg, grad_avg, lr=1.0, alpha=0.0, eps=1.0, centered=True)
    torch.testing.assert_close(param, torch.full_like(param, -2.0), rtol=1e-12, atol=0)


def test_sgd_step_first_step_ignores_dampening(device):
    param = torch.zeros(3, dtype=torch.float64, device=device)
    buffer, grad = torch.empty_like(param), torch.ones_like(param)
    sgd_step(param, grad, buffer, lr=1.0, momentum=0.9, dampening=0.5, first_step=True)
    assert torch.equal(buffer, grad) and torch.equal(param, -grad)
    sgd_step(param, grad, buffer, lr=1.0, momentum=0.9, dampening=0.5)
    torch.testing.assert_close(buffer, torch.full_like(param, 0.9 + 0.5), rtol=1e-15, atol=0)


def test_plain_sgd_needs_no_buffer_and_grad_is_left_alone(device):
    param, grads = random_problem(torch.float64, device)
    grad = grads[0].clone()
    updated = param.clone()
    sgd_step(updated, grad, None, lr=0.5, weight_decay=0.1)
    assert torch.equal(grad, grads[0])  # weight decay is added out of place
    torch.testing.assert_close(updated, param - 0.5 * (grad + 0.1 * param), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel", [adam_step, adamw_step])
def test_lr_zero_keeps_param_but_updates_moments(kernel, device):
    param, grads = random_problem(torch.float64, device)
    updated, exp_avg, exp_avg_sq = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    kernel(updated, grads[0], exp_avg, exp_avg_sq, step=1, lr=0.0, weight_decay=0.5)
    assert torch.equal(updated, param)
    torch.testing.assert_close(
        exp_avg, 0.1 * (grads[0] + (0.5 * param if kernel is adam_step else 0))
    )


def test_kernels_module_exports_the_same_functions():
    assert kernels.sgd_step is sgd_step and kernels.adamw_step is adamw_step
    assert set(kernels.__all__) == {"sgd_step", "rmsprop_step", "adam_step", "adamw_step"}


# --------------------------------------------------------------------------- bad input


def tensors(n=4, shape=(2, 3)):
    return [torch.zeros(shape, dtype=torch.float64) for _ in range(n)]


def call_sgd(**overrides):
    param, grad, buffer = tensors(3)
    kwargs = {"lr": 0.1, "momentum": 0.9} | overrides
    sgd_step(param, grad, buffer, **kwargs)


def call_rmsprop(**overrides):
    param, grad, square_avg, grad_avg = tensors(4)
    kwargs = {"lr": 0.1} | overrides
    rmsprop_step(param, grad, square_avg, grad_avg, None, **kwargs)


def call_adam(kernel=adam_step, **overrides):
    param, grad, exp_avg, exp_avg_sq = tensors(4)
    kwargs = {"lr": 0.1, "step": 1} | overrides
    kernel(param, grad, exp_avg, exp_avg_sq, **kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: call_sgd(lr=-1.0), "lr"),
        (lambda: call_sgd(momentum=-0.5), "momentum"),
        (lambda: call_sgd(weight_decay=-0.5), "weight_decay"),
        (lambda: call_sgd(dampening=math.nan), "dampening"),
        (lambda: call_sgd(nesterov=True, momentum=0.0), "nesterov"),
        (lambda: call_sgd(nesterov=True, dampening=0.1), "nesterov"),
        (lambda: sgd_step(*tensors(2), None, lr=0.1, momentum=0.9), "momentum_buffer"),
        (lambda: call_rmsprop(lr=-1.0), "lr"),
        (lambda: call_rmsprop(alpha=-0.1), "alpha"),
        (lambda: call_rmsprop(eps=-1e-8), "eps"),
        (lambda: call_rmsprop(weight_decay=-0.1), "weight_decay"),
        (lambda: call_rmsprop(momentum=-0.1), "momentum"),
        (lambda: call_rmsprop(momentum=0.5), "momentum_buffer"),
        (lambda: rmsprop_step(*tensors(3), lr=0.1, centered=True), "grad_avg"),
        (lambda: call_adam(lr=-1.0), "lr"),
        (lambda: call_adam(beta1=1.0), "beta1"),
        (lambda: call_adam(beta2=-0.1), "beta2"),
        (lambda: call_adam(eps=-1e-8), "eps"),
        (lambda: call_adam(weight_decay=-0.1), "weight_decay"),
        (lambda: call_adam(step=0), "step"),
        (lambda: call_adam(adamw_step, lr=math.nan), "lr"),
        (lambda: call_adam(adamw_step, beta2=1.0), "beta2"),
        (lambda: call_adam(adamw_step, weight_decay=-1.0), "weight_decay"),
        (lambda: call_adam(adamw_step, step=-3), "step"),
        (lambda: call_adam(amsgrad=True), "max_exp_avg_sq"),
        (lambda: call_adam(adamw_step, amsgrad=True), "max_exp_avg_sq"),
    ],
)
def test_bad_hyperparameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda p, g, s: sgd_step(p, g, s, lr=0.1, momentum=0.9),
        lambda p, g, s: rmsprop_step(p, g, s, lr=0.1),
        lambda p, g, s: adam_step(p, g, s, s.clone(), step=1, lr=0.1),
        lambda p, g, s: adamw_step(p, g, s, s.clone(), step=1, lr=0.1),
    ],
)
def test_bad_tensors(call):
    param, grad, state = tensors(3)
    with pytest.raises(ValueError, match="param and grad"):
        call(param, torch.zeros(3, 2, dtype=torch.float64), state)
    with pytest.raises(ValueError, match="param and"):
        call(param, grad, torch.zeros(6, dtype=torch.float64))
    with pytest.raises(TypeError, match="param"):
        call(torch.zeros(2, 3, dtype=torch.int64), grad, state)
    with pytest.raises(TypeError, match="grad"):
        call(param, [[0.0] * 3] * 2, state)
    with pytest.raises(TypeError, match="sparse"):
        call(param, grad.to_sparse(), state)
    assert torch.equal(param, torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    "call",
    [
        lambda: call_sgd(maximize=1),
        lambda: call_sgd(nesterov="yes"),
        lambda: call_rmsprop(maximize=None),
        lambda: call_rmsprop(centered=1),
        lambda: call_adam(maximize="no"),
        lambda: call_adam(amsgrad=0),
        lambda: call_adam(adamw_step, amsgrad=1),
    ],
)
def test_flags_must_be_bools(call):
    with pytest.raises(TypeError, match="must be True or False"):
        call()


def test_amsgrad_uses_the_largest_second_moment(device):
    """After a large gradient, v decays but v_max keeps it: the step stays small."""
    param = torch.zeros(1, dtype=torch.float64, device=device)
    exp_avg, exp_avg_sq, max_exp_avg_sq = (torch.zeros_like(param) for _ in range(3))
    for step, grad in enumerate([100.0, 1.0, 1.0], start=1):
        adam_step(
            param,
            torch.full_like(param, grad),
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            step=step,
            lr=0.1,
            beta2=0.5,
            amsgrad=True,
        )
    assert max_exp_avg_sq.item() == 10000 * 0.5  # v after the first step
    assert exp_avg_sq.item() < max_exp_avg_sq.item()


@pytest.mark.parametrize("kernel", [adam_step, adamw_step])
def test_step_must_be_an_int(kernel):
    with pytest.raises(TypeError, match="step"):
        call_adam(kernel, step=1.0)
    with pytest.raises(TypeError, match="step"):
        call_adam(kernel, step=True)


def test_failed_adamw_step_leaves_param_unchanged():
    param, grad, exp_avg, _ = tensors(4)
    param += 1
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adamw_step(param, grad, exp_avg, torch.zeros(5), step=1, lr=0.1, weight_decay=0.5)
    assert torch.equal(param, torch.ones(2, 3, dtype=torch.float64))
