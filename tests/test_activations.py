"""Activations and their derivatives against torch / torch.nn.functional and autograd."""

import math

import pytest
import scipy.special
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.functional import activations as A

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
INF, NAN = math.inf, math.nan

# (ours, PyTorch's) for every elementwise activation.
ELEMENTWISE = {
    "sigmoid": (A.sigmoid, torch.sigmoid),
    "tanh": (A.tanh, torch.tanh),
    "relu": (A.relu, F.relu),
    "leaky_relu": (A.leaky_relu, F.leaky_relu),
    "leaky_relu_0.2": (lambda x: A.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2)),
    "leaky_relu_neg": (lambda x: A.leaky_relu(x, -1.5), lambda x: F.leaky_relu(x, -1.5)),
    "gelu": (A.gelu, F.gelu),
    "gelu_tanh": (
        lambda x: A.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    "silu": (A.silu, F.silu),
}

# (ours, the function whose autograd derivative it must equal)
DERIVATIVES = {
    "sigmoid_grad": (A.sigmoid_grad, torch.sigmoid),
    "tanh_grad": (A.tanh_grad, torch.tanh),
    "relu_grad": (A.relu_grad, F.relu),
}


def assert_close(actual, expected, dtype, atol=0.0):
    torch.testing.assert_close(
        actual, expected, rtol=RTOL[dtype], atol=atol, equal_nan=True, check_dtype=True
    )


def autograd_derivative(fn, x):
    """d fn(x) / dx elementwise, by autograd."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad


def random_input(shape, dtype, device, generator, scale=2.5):
    # Drawn in float64 on the CPU, so every dtype and device sees the same numbers.
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)


def gelu_float32_atol(name):
    # PyTorch evaluates 1 + erf(x) and 1 + tanh(u), which cancel for x < -3: in float32 its
    # values there are off by up to ~1e-7 * |x| in absolute terms (ours use erfc / sigmoid).
    return 1e-6 if name.startswith("gelu") else 0.0


# ---------------------------------------------------------------- elementwise activations


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_matches_torch(name, dtype, device, generator):
    ours, theirs = ELEMENTWISE[name]
    x = random_input((7, 5, 3), dtype, device, generator).clamp(min=-4.0)
    out = ours(x)
    assert out.shape == x.shape and out.device == x.device
    atol = gelu_float32_atol(name) if dtype == torch.float32 else 0.0
    assert_close(out, theirs(x), dtype, atol=atol)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_gradient_matches_autograd(name, device, generator):
    ours, theirs = ELEMENTWISE[name]
    x = random_input((50,), torch.float64, device, generator).clamp(min=-4.0)
    x[:3] = torch.tensor([0.0, 1e-12, -1e-12])  # the kink of (leaky) ReLU and its sides
    assert_close(
        autograd_derivative(ours, x), autograd_derivative(theirs, x), torch.float64, atol=1e-300
    )


EDGES = [-INF, -1e30, -1e4, -1e3, -30.0, -1.0, -1e-20, -0.0, 0.0, 1e-20, 1.0, 30.0, 1e3, 1e4]
EDGES += [1e30, INF, NAN]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_edge_values(name, dtype, device):
    ours, theirs = ELEMENTWISE[name]
    x = torch.tensor(EDGES, dtype=dtype, device=device)
    if name.startswith("gelu"):
        # At -30 the true GELU is ~1e-197 (float64): ours has it, PyTorch rounds it to 0.
        # float32 F.gelu(inf) is NaN on CPU, though gelu(inf) = inf (as ours and float64 say).
        x = x[(x != -30.0) & ~((x == INF) & (dtype == torch.float32))]
    assert_close(ours(x), theirs(x), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_does_not_overflow(dtype, device):
    x = torch.tensor([-1e30, -1e4, 1e4, 1e30], dtype=dtype, device=device, requires_grad=True)
    out = A.sigmoid(x)
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_gelu_is_accurate_in_the_negative_tail():
    # Checked against scipy's erfc far beyond where 1 + erf(x) would cancel to 0.
    x = torch.linspace(-37.0, 8.0, 2001, dtype=torch.float64)
    expected = x.numpy() * 0.5 * scipy.special.erfc(-x.numpy() / math.sqrt(2))
    torch.testing.assert_close(A.gelu(x), torch.from_numpy(expected), rtol=1e-12, atol=0)
    x32 = x.float()
    x32 = x32[x32 > -12]  # below that the float32 result is denormal or 0
    expected32 = (
        x32.double()
        * 0.5
        * torch.from_numpy(scipy.special.erfc(-x32.double().numpy() / math.sqrt(2)))
    )
    torch.testing.assert_close(A.gelu(x32).double(), expected32, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gelu_tanh_is_accurate_in_the_negative_tail(dtype):
    # float32 stops at -5: further out, the rounding of u itself (~1e-7 * |u|) is amplified by
    # exp(2u) beyond rtol, for any float32 evaluation (PyTorch's is off by 25 % at -5).
    x = torch.linspace(-12.0 if dtype == torch.float64 else -5.0, 0.0, 500, dtype=dtype)
    xd = x.double()
    u = math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)
    expected = xd * torch.exp(2 * u) / (1 + torch.exp(2 * u))  # fine in float64 for u < 0
    torch.testing.assert_close(A.gelu(x, "tanh").double(), expected, rtol=RTOL[dtype], atol=0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-80, 80, allow_nan=False, allow_subnormal=False), min_size=1, max_size=30)
)
def test_elementwise_hypothesis(values):
    x = torch.tensor(values, dtype=torch.float64)
    for name, (ours, theirs) in ELEMENTWISE.items():
        keep = x > -4 if name.startswith("gelu") else torch.ones_like(x, dtype=torch.bool)
        assert_close(ours(x[keep]), theirs(x[keep]), torch.float64, atol=1e-300)


# ---------------------------------------------------------------- softmax, log_softmax

SOFTMAXES = {"softmax": (A.softmax, F.softmax), "log_softmax": (A.log_softmax, F.log_softmax)}


def softmax_atol(name, dtype):
    # log_softmax near 0 is -log(1 + tiny): the rounding of the sum (order-dependent, one ulp
    # of 1) is an absolute error, so relative error there is meaningless.
    if name == "log_softmax":
        return 1e-14 if dtype == torch.float64 else 1e-6
    return 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_matches_torch(name, dim, dtype, device, generator):
    ours, theirs = SOFTMAXES[name]
    x = random_input((4, 6, 5), dtype, device, generator, scale=5.0)
    out = ours(x, dim=dim)
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert_close(out, theirs(x, dim=dim), dtype, atol=softmax_atol(name, dtype))


def test_softmax_default_dim_is_last(device, generator):
    x = random_input((3, 4), torch.float64, device, generator)
    assert_close(A.softmax(x), F.softmax(x, dim=-1), torch.float64)
    assert_close(A.log_softmax(x), F.log_softmax(x, dim=-1), torch.float64)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_gradient_matches_autograd(name, device, generator):
    ours, theirs = SOFTMAXES[name]
    x = random_input((5, 7), torch.float64, device, generator).requires_grad_(True)
    weights = random_input((5, 7), torch.float64, device, generator)
    (g_ours,) = torch.autograd.grad((ours(x, dim=1) * weights).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs(x, dim=1) * weights).sum(), x)
    assert_close(g_ours, g_theirs, torch.float64, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_large_and_infinite_logits(name, dtype, device):
    ours, theirs = SOFTMAXES[name]
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0, 1e4 - 1.0],
            [-1e4, -1e4 + 2.0, -1e4 + 1.0, -1e4],
            [-INF, 0.0, 1.0, -INF],
            [-INF, -INF, -INF, -INF],  # PyTorch: NaN
            [INF, 0.0, 1.0, 2.0],  # PyTorch: NaN
            [NAN, 0.0, 1.0, 2.0],
        ],
        dtype=dtype,
        device=device,
    )
    out = ours(x)
    assert torch.isfinite(out[:2]).all()
    assert_close(out, theirs(x, dim=-1), dtype, atol=softmax_atol(name, dtype))
    x = x[2:3].clone().requires_grad_(True)  # -inf logits: finite gradients, like PyTorch
    (g_ours,) = torch.autograd.grad(ours(x)[0, 1], x)
    (g_theirs,) = torch.autograd.grad(theirs(x, dim=-1)[0, 1], x)
    assert_close(g_ours, g_theirs, dtype)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_zero_dim_and_empty(name):
    ours, theirs = SOFTMAXES[name]
    scalar = torch.tensor(3.0, dtype=torch.float64)
    assert_close(ours(scalar, dim=0), theirs(scalar, dim=0), torch.float64)
    for shape in [(0, 3), (3, 0)]:
        assert ours(torch.empty(shape), dim=-1).shape == shape


@pytest.mark.parametrize("name", SOFTMAXES)
@pytest.mark.parametrize(("shape", "dim"), [((5, 0), -1), ((5, 0), 0), ((0, 3), 1), ((5, 0, 0), 0)])
def test_softmax_of_empty_input_stays_in_the_graph(name, shape, dim, device):
    """torch's result of an empty input has a grad_fn, so backward() works (an empty grad)."""
    ours, theirs = SOFTMAXES[name]
    for fn in (ours, theirs):
        x = torch.empty(shape, dtype=torch.float64, device=device, requires_grad=True)
        out = fn(x, dim=dim)
        assert out.shape == shape and out.requires_grad
        out.sum().backward()
        assert x.grad.shape == shape


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=12),
    st.sampled_from(list(SOFTMAXES)),
)
def test_softmax_hypothesis(values, name):
    ours, theirs = SOFTMAXES[name]
    x = torch.tensor(values, dtype=torch.float64)
    out = ours(x)
    assert torch.isfinite(out).all()
    assert_close(out, theirs(x, dim=-1), torch.float64, atol=softmax_atol(name, torch.float64))


# ---------------------------------------------------------------- swiglu


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_swiglu_matches_torch(dim, dtype, device, generator):
    x = random_input((4, 6, 8), dtype, device, generator)
    a, b = x.chunk(2, dim=dim)
    out = A.swiglu(x, dim=dim)
    expected_shape = list(x.shape)
    expected_shape[dim] //= 2
    assert list(out.shape) == expected_shape
    assert_close(out, F.silu(a) * b, dtype)
    assert_close(A.swiglu(x), A.swiglu(x, dim=-1), dtype)


def test_swiglu_gradient_matches_autograd(device, generator):
    x = random_input((3, 10), torch.float64, device, generator)
    assert_close(
        autograd_derivative(A.swiglu, x),
        autograd_derivative(lambda t: F.silu(t[:, :5]) * t[:, 5:], x),
        torch.float64,
    )


# ---------------------------------------------------------------- derivative helpers


@pytest.mark.parametrize("name", DERIVATIVES)
def test_derivative_helpers_match_autograd(name, device, generator):
    # |x| <~ 5: beyond, autograd's own 1 - tanh(x)**2 loses more than 1e-10 to cancellation.
    ours, activation = DERIVATIVES[name]
    x = random_input((200,), torch.float64, device, generator, scale=1.5)
    x[:2] = torch.tensor([0.0, -0.0])
    assert_close(ours(x), autograd_derivative(activation, x), torch.float64)


def test_derivative_helpers_are_accurate_for_large_inputs(device):
    x = torch.linspace(-30, 30, 601, dtype=torch.float64, device=device)
    e = torch.exp(-x.abs())
    assert_close(A.sigmoid_grad(x), e / (1 + e) ** 2, torch.float64)
    assert_close(A.tanh_grad(x), 1 / torch.cosh(x) ** 2, torch.float64)


@pytest.mark.parametrize("name", DERIVATIVES)
def test_derivative_helpers_float32(name, device, generator):
    # Reference: float64 autograd. PyTorch's float32 backward uses 1 - y**2 and y * (1 - y),
    # which lose digits for |x| >~ 3; ours are evaluated without that cancellation.
    ours, activation = DERIVATIVES[name]
    x = random_input((200,), torch.float32, device, generator, scale=4.0)
    expected = autograd_derivative(activation, x.double()).float()
    out = ours(x)
    assert out.dtype == torch.float32
    assert_close(out, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_derivative_helpers_edges(dtype, device):
    x = torch.tensor([-INF, -1e4, -0.0, 0.0, 1e4, INF, NAN], dtype=dtype, device=device)
    zeros = [0.0, 0.0, None, None, 0.0, 0.0]
    for helper, at_zero in [(A.sigmoid_grad, 0.25), (A.tanh_grad, 1.0)]:
        out = helper(x)
        zeros[2] = zeros[3] = at_zero
        assert out[:6].tolist() == zeros and out[6].isnan()
    assert A.relu_grad(x).tolist()[:6] == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    # relu's gradient at NaN is 1 in PyTorch (its backward zeroes only where x <= 0).
    assert_close(A.relu_grad(x), autograd_derivative(F.relu, x), dtype)


# ---------------------------------------------------------------- bad input

ALL_FUNCTIONS = {
    **{name: ours for name, (ours, _) in ELEMENTWISE.items()},
    **{name: ours for name, (ours, _) in SOFTMAXES.items()},
    **{name: ours for name, (ours, _) in DERIVATIVES.items()},
    "swiglu": A.swiglu,
}


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_rejects_non_float_input(name):
    fn = ALL_FUNCTIONS[name]
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fn(torch.arange(4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([1.0, 2.0])


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be one of"):
        A.gelu(torch.zeros(2), approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        A.gelu(torch.zeros(2), approximate=None)


def test_leaky_relu_rejects_bad_slope():
    for slope in [NAN, INF, -INF]:
        with pytest.raises(ValueError, match="negative_slope"):
            A.leaky_relu(torch.zeros(2), slope)
    for slope in ["0.1", True, None]:
        with pytest.raises(TypeError, match="negative_slope must be a real number"):
            A.leaky_relu(torch.zeros(2), slope)


@pytest.mark.parametrize("fn", [A.softmax, A.log_softmax, A.swiglu])
def test_rejects_bad_dim(fn):
    x = torch.zeros(2, 4)
    for dim in [2, -3, 1.0, None]:
        with pytest.raises(ValueError, match="dim must be an int in"):
            fn(x, dim=dim)


def test_swiglu_rejects_odd_size_and_scalars():
    with pytest.raises(ValueError, match=r"x.shape\[dim\] must be even"):
        A.swiglu(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"x.shape\[dim\] must be even"):
        A.swiglu(torch.zeros(3, 4), dim=0)
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        A.swiglu(torch.tensor(1.0))
