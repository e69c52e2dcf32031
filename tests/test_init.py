"""Tests for npfl_lib.init against torch.nn.init."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib import init

SHAPES = [(3, 5), (4, 3, 5), (6, 3, 3, 3), (2, 3, 4, 5, 6)]
DTYPES = [torch.float64, torch.float32]


# --- calculate_gain -----------------------------------------------------------------


@pytest.mark.parametrize("nonlinearity", init.NONLINEARITIES)
def test_calculate_gain_matches_torch(nonlinearity):
    assert init.calculate_gain(nonlinearity) == torch.nn.init.calculate_gain(nonlinearity)


@pytest.mark.parametrize("param", [None, 0, 0.2, 1, -0.5])
def test_calculate_gain_leaky_relu_param(param):
    expected = torch.nn.init.calculate_gain("leaky_relu", param)
    assert init.calculate_gain("leaky_relu", param) == expected
    assert init.calculate_gain("relu") == math.sqrt(2.0)
    assert init.calculate_gain("leaky_relu", 0) == init.calculate_gain("relu")


@pytest.mark.parametrize("param", [True, "0.1", [0.1]])
def test_calculate_gain_bad_param(param):
    with pytest.raises(ValueError, match="param"):
        init.calculate_gain("leaky_relu", param)


@pytest.mark.parametrize("nonlinearity", ["softmax", "ReLU", "", None])
def test_calculate_gain_bad_nonlinearity(nonlinearity):
    with pytest.raises(ValueError, match="nonlinearity must be one of .*'relu'"):
        init.calculate_gain(nonlinearity)


# --- fans -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_fans_match_torch(shape):
    w = torch.empty(shape)
    expected = torch.nn.init._calculate_fan_in_and_fan_out(w)
    assert init._calculate_fan_in_and_fan_out(w) == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=5))
def test_fans_match_torch_hypothesis(shape):
    w = torch.empty(shape)
    assert init._calculate_fan_in_and_fan_out(w) == torch.nn.init._calculate_fan_in_and_fan_out(w)


@pytest.mark.parametrize(
    "fn",
    [
        init.uniform_fan_in_,
        init.xavier_uniform_,
        init.xavier_normal_,
        init.kaiming_uniform_,
        init.kaiming_normal_,
    ],
)
def test_fewer_than_two_dims_rejected(fn):
    for shape in [(5,), ()]:
        with pytest.raises(ValueError, match="tensor must have at least 2 dimensions"):
            fn(torch.empty(shape))
    with pytest.raises(TypeError, match="tensor must be a floating-point"):
        fn(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        fn([[1.0, 2.0]])


# --- equality with torch.nn.init given the same generator ------------------------

CASES = [
    ("xavier_uniform_", {}),
    ("xavier_uniform_", {"gain": 5.0 / 3}),
    ("xavier_normal_", {}),
    ("xavier_normal_", {"gain": 0.5}),
    ("kaiming_uniform_", {}),
    ("kaiming_uniform_", {"a": 0.2, "mode": "fan_out"}),
    ("kaiming_uniform_", {"nonlinearity": "relu"}),
    ("kaiming_normal_", {}),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "tanh"}),
    ("kaiming_normal_", {"a": 0.1, "mode": "FAN_IN"}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_equals_torch_with_same_generator(name, kwargs, shape, dtype):
    ours = getattr(init, name)(
        torch.empty(shape, dtype=dtype), generator=torch.Generator().manual_seed(1), **kwargs
    )
    theirs = getattr(torch.nn.init, name)(
        torch.empty(shape, dtype=dtype), generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert ours.dtype == dtype
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("shape", SHAPES)
def test_uniform_fan_in_equals_linear_default(shape, dtype, rtol):
    ours = init.uniform_fan_in_(
        torch.empty(shape, dtype=dtype), generator=torch.Generator().manual_seed(2)
    )
    # torch.nn.Linear.reset_parameters writes this init as kaiming_uniform_(a=sqrt(5)).
    theirs = torch.nn.init.kaiming_uniform_(
        torch.empty(shape, dtype=dtype), a=math.sqrt(5), generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=0)


def test_uniform_fan_in_equals_nn_linear():
    torch.manual_seed(3)
    linear = torch.nn.Linear(7, 4)
    w = init.uniform_fan_in_(torch.empty(4, 7), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(w, linear.weight.detach(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("name", "kwargs"), [*CASES, ("uniform_fan_in_", {})])
def test_cpu_generator_on_any_device(name, kwargs, device):
    """A CPU generator draws on the CPU; the values are then copied to the device."""
    fn = getattr(init, name)
    w = torch.empty(5, 6, device=device)
    out = fn(w, generator=torch.Generator().manual_seed(4), **kwargs)
    assert out is w and w.device.type == device.type
    expected = fn(torch.empty(5, 6), generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(w.cpu(), expected)


@pytest.mark.parametrize(("name", "kwargs"), [*CASES, ("uniform_fan_in_", {})])
def test_draw_then_copy_path_gives_the_same_values(name, kwargs, monkeypatch):
    """The other-device branch (draw on the generator's device, copy) on a CPU-only box."""
    fn = getattr(init, name)
    expected = fn(torch.empty(4, 6), generator=torch.Generator().manual_seed(6), **kwargs)
    monkeypatch.setattr(init, "_on_generator_device", lambda tensor, generator: False)
    w = torch.empty(4, 6)
    assert fn(w, generator=torch.Generator().manual_seed(6), **kwargs) is w
    assert torch.equal(w, expected)


# --- statistics on large tensors ------------------------------------------------


def _check_moments(w: torch.Tensor, std: float) -> None:
    w = w.double()
    n = w.numel()
    assert abs(w.mean().item()) < 5 * std / math.sqrt(n)
    assert w.std().item() == pytest.approx(std, rel=0.02)


def _check_uniform(w: torch.Tensor, bound: float) -> None:
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # the whole interval is used
    _check_moments(w, bound / math.sqrt(3.0))


def _check_normal(w: torch.Tensor, std: float) -> None:
    _check_moments(w, std)
    within_one_std = (w.abs() <= std).double().mean().item()
    assert within_one_std == pytest.approx(0.6827, abs=0.01)


@pytest.mark.parametrize("shape", [(400, 500), (64, 32, 3, 3)])
def test_statistics(shape, device, generator):
    fan_in, fan_out = init._calculate_fan_in_and_fan_out(torch.empty(shape))
    w = torch.empty(shape, device=device)

    _check_uniform(init.uniform_fan_in_(w, generator=generator), 1 / math.sqrt(fan_in))

    glorot_std = 2.0 * math.sqrt(2.0 / (fan_in + fan_out))
    _check_uniform(
        init.xavier_uniform_(w, gain=2.0, generator=generator), glorot_std * math.sqrt(3)
    )
    _check_normal(init.xavier_normal_(w, gain=2.0, generator=generator), glorot_std)

    he_std = math.sqrt(2.0) / math.sqrt(fan_in)
    kaiming_uniform = init.kaiming_uniform_(w, nonlinearity="relu", generator=generator)
    _check_uniform(kaiming_uniform, he_std * math.sqrt(3))
    _check_normal(init.kaiming_normal_(w, nonlinearity="relu", generator=generator), he_std)

    leaky_std = math.sqrt(2.0 / (1 + 0.3**2)) / math.sqrt(fan_out)
    _check_normal(init.kaiming_normal_(w, a=0.3, mode="fan_out", generator=generator), leaky_std)


# --- in place, autograd, edge cases, bad arguments -------------------------------


def test_in_place_on_parameter_without_autograd(generator):
    w = torch.nn.Parameter(torch.zeros(4, 3))
    for fn in [init.uniform_fan_in_, init.xavier_uniform_, init.kaiming_normal_]:
        out = fn(w, generator=generator)
        assert out is w and w.grad_fn is None and w.requires_grad
        assert (w != 0).all()
    b = torch.nn.Parameter(torch.ones(3))
    assert init.zeros_(b) is b and torch.equal(b, torch.zeros(3)) and b.grad_fn is None


def test_zeros_(device):
    w = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    assert init.zeros_(w) is w
    assert torch.equal(w, torch.zeros_like(w))
    with pytest.raises(TypeError, match="tensor"):
        init.zeros_(torch.ones(3, dtype=torch.int32))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 2, 2)])
def test_zero_element_tensors_are_a_no_op(shape):
    for fn in [
        init.uniform_fan_in_,
        init.xavier_uniform_,
        init.xavier_normal_,
        init.kaiming_uniform_,
        init.kaiming_normal_,
    ]:
        w = torch.empty(shape)
        assert fn(w) is w


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 3, 2, 2)])
@pytest.mark.parametrize("name", ["kaiming_uniform_", "kaiming_normal_"])
def test_kaiming_warns_on_zero_element_tensors_as_torch(name, shape):
    for module in (torch.nn.init, init):
        with pytest.warns(UserWarning, match="Initializing zero-element tensors is a no-op"):
            getattr(module, name)(torch.empty(shape))


# --- uniform_, normal_, constant_, ones_, zeros_ ------------------------------------

BASIC_CASES = [
    ("uniform_", {}),
    ("uniform_", {"a": -0.3, "b": 0.3}),
    ("uniform_", {"a": 2.0, "b": 2.0}),
    ("normal_", {}),
    ("normal_", {"mean": 1.5, "std": 0.1}),
    ("normal_", {"std": 0.0}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), ()])
@pytest.mark.parametrize(("name", "kwargs"), BASIC_CASES)
def test_uniform_and_normal_equal_torch(name, kwargs, shape, dtype, device):
    ours = getattr(init, name)(
        torch.empty(shape, dtype=dtype, device=device),
        generator=torch.Generator(device=device).manual_seed(5),
        **kwargs,
    )
    theirs = getattr(torch.nn.init, name)(
        torch.empty(shape, dtype=dtype, device=device),
        generator=torch.Generator(device=device).manual_seed(5),
        **kwargs,
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("name", "kwargs"), BASIC_CASES)
def test_uniform_and_normal_with_a_cpu_generator_on_any_device(name, kwargs, device):
    w = torch.empty(4, 6, device=device)
    assert getattr(init, name)(w, generator=torch.Generator().manual_seed(4), **kwargs) is w
    expected = getattr(init, name)(
        torch.empty(4, 6), generator=torch.Generator().manual_seed(4), **kwargs
    )
    assert torch.equal(w.cpu(), expected)


def test_lecture_bound_is_uniform_of_one_over_sqrt_n(generator):
    """U[-1/sqrt(n), 1/sqrt(n)] from uniform_ is uniform_fan_in_, draw for draw."""
    n = 7
    ours = init.uniform_(
        torch.empty(4, n), -1 / math.sqrt(n), 1 / math.sqrt(n), torch.Generator().manual_seed(8)
    )
    expected = init.uniform_fan_in_(torch.empty(4, n), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "args"), [("constant_", (0.25,)), ("constant_", (-3,)), ("ones_", ()), ("zeros_", ())]
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_ones_zeros_equal_torch(name, args, dtype, device):
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=dtype, device=device))
    ours = getattr(init, name)(w, *args)
    assert ours is w and w.grad_fn is None
    expected = getattr(torch.nn.init, name)(torch.empty(3, 4, dtype=dtype, device=device), *args)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 2)])
@pytest.mark.parametrize(
    ("name", "args"), [("uniform_", ()), ("normal_", ()), ("constant_", (1.0,)), ("ones_", ())]
)
def test_basic_initializers_on_zero_element_tensors(name, args, shape):
    w = torch.empty(shape)
    assert getattr(init, name)(w, *args) is w


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda w: init.uniform_(w, 1.0, 0.0), ValueError, r"a <= b"),
        (lambda w: init.uniform_(w, 0.0, math.inf), ValueError, "b"),
        (lambda w: init.uniform_(w, math.nan, 1.0), ValueError, "a"),
        (lambda w: init.uniform_(w, "0", 1.0), TypeError, "a"),
        (lambda w: init.normal_(w, std=-1.0), ValueError, "std"),
        (lambda w: init.normal_(w, mean=math.inf), ValueError, "mean"),
        (lambda w: init.normal_(w, std=None), TypeError, "std"),
        (lambda w: init.constant_(w, "a"), TypeError, "val"),
        (lambda w: init.uniform_(w, generator=0), TypeError, "generator"),
        (lambda w: init.ones_(w.long()), TypeError, "tensor"),
        (lambda w: init.constant_([1.0], 1.0), TypeError, "tensor"),
    ],
)
def test_basic_initializers_bad_arguments(call, error, match):
    w = torch.zeros(3)
    with pytest.raises(error, match=match):
        call(w)
    assert torch.equal(w, torch.zeros(3))


@pytest.mark.parametrize("fn", [init.kaiming_uniform_, init.kaiming_normal_])
def test_kaiming_bad_arguments(fn):
    w = torch.empty(3, 4)
    with pytest.raises(ValueError, match=r"mode must be one of \('fan_in', 'fan_out'\)"):
        fn(w, mode="fan_avg")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        fn(w, nonlinearity="swish")
    with pytest.raises(ValueError, match="a .*negative slope"):
        fn(w, a=True)
    with pytest.raises(ValueError, match="a .*negative slope"):
        fn(w, a=None)
    fn(w, a=None, nonlinearity="relu")  # a is ignored unless leaky_relu, as in torch


@pytest.mark.parametrize("fn", [init.xavier_uniform_, init.xavier_normal_])
@pytest.mark.parametrize("gain", [-1.0, math.nan])
def test_xavier_bad_gain(fn, gain):
    with pytest.raises(ValueError, match="gain"):
        fn(torch.empty(3, 4), gain=gain)
