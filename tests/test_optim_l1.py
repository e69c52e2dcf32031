"""npfl_lib.optim.l1_step_: the clipped L1 update that stops weights exactly at zero."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npfl_lib.optim import SGD, l1_step_

HYPOTHESIS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_soft_thresholding(dtype, device, generator):
    """The clipped update is torch's softshrink with threshold lr * l1."""
    theta = torch.randn(100, generator=generator, dtype=torch.float64).to(
        device=device, dtype=dtype
    )
    expected = torch.nn.functional.softshrink(theta, 0.3 * 2.0)
    l1_step_(theta, lr=0.3, l1=2.0)
    torch.testing.assert_close(
        theta, expected, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0
    )


def test_small_weights_end_exactly_at_zero(device):
    theta = torch.tensor(
        [0.05, -0.05, 0.1, -0.1, 0.5, -0.5, 0.0], dtype=torch.float64, device=device
    )
    l1_step_(theta, lr=0.1, l1=1.0)
    expected = torch.tensor(
        [0.0, 0.0, 0.0, 0.0, 0.4, -0.4, 0.0], dtype=torch.float64, device=device
    )
    assert torch.equal(theta[:4], expected[:4])  # exactly 0, not a rounding error away
    torch.testing.assert_close(theta, expected, rtol=1e-15, atol=0)


def test_repeated_steps_settle_at_zero_instead_of_oscillating(device):
    theta = torch.tensor([0.35, -0.27], dtype=torch.float64, device=device)
    naive = theta.clone()
    for _ in range(10):
        l1_step_(theta, lr=0.1, l1=1.0)
        naive -= 0.1 * naive.sign()  # the unclipped subgradient step
    assert torch.equal(theta, torch.zeros_like(theta))
    assert (naive != 0).all()  # it keeps jumping across zero


@given(
    values=st.lists(st.floats(-10, 10), min_size=1, max_size=20),
    lr=st.floats(0, 1),
    l1=st.floats(0, 10),
)
@HYPOTHESIS
def test_never_changes_sign_and_never_grows(values, lr, l1, device):
    before = torch.tensor(values, dtype=torch.float64, device=device)
    theta = before.clone()
    l1_step_(theta, lr, l1)
    assert (theta.sign() * before.sign() >= 0).all()
    assert (theta.abs() <= before.abs()).all()
    small = before.abs() <= lr * l1
    assert (theta[small] == 0).all()


def test_iterable_of_parameters_and_combination_with_an_optimizer(device):
    model = torch.nn.Linear(4, 2).to(device=device, dtype=torch.float64)
    weights = [model.weight]
    optimizer = SGD(model.parameters(), lr=0.1)
    for _ in range(50):
        optimizer.zero_grad()
        (model(torch.ones(1, 4, dtype=torch.float64, device=device)).sum() * 1e-3).backward()
        optimizer.step()
        l1_step_(iter(weights), lr=0.1, l1=1.0)  # parameters that require grad: fine
    assert torch.equal(model.weight, torch.zeros_like(model.weight))
    assert model.weight.requires_grad


def test_zero_penalty_changes_nothing(device, generator):
    theta = torch.randn(10, generator=generator, dtype=torch.float64).to(device)
    before = theta.clone()
    l1_step_([theta], lr=0.5, l1=0.0)
    assert torch.equal(theta, before)


def test_bad_input():
    theta = torch.ones(3)
    with pytest.raises(ValueError, match="lr"):
        l1_step_(theta, lr=-0.1, l1=1.0)
    with pytest.raises(ValueError, match="l1"):
        l1_step_(theta, lr=0.1, l1=-1.0)
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        l1_step_([theta, torch.ones(3, dtype=torch.int64)], lr=0.1, l1=1.0)
    with pytest.raises(TypeError, match=r"parameters\[0\]"):
        l1_step_([[1.0, 2.0]], lr=0.1, l1=1.0)
    assert torch.equal(theta, torch.ones(3))  # nothing moved before the error
