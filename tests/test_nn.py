"""Tests for npfl_lib.nn: activation/dropout modules and the MLP, against torch.nn."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib import nn

TOLERANCES = [(torch.float64, 1e-10), (torch.float32, 1e-5)]
# atol: float32 torch.nn.GELU loses relative accuracy in its tiny far-negative tail.
ATOL = {torch.float64: 1e-13, torch.float32: 1e-6}


def _x(shape, device, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=generator, dtype=dtype)).to(device)


# --- activation modules -------------------------------------------------------------

MODULE_PAIRS = [
    (nn.ReLU(), torch.nn.ReLU()),
    (nn.Tanh(), torch.nn.Tanh()),
    (nn.Sigmoid(), torch.nn.Sigmoid()),
    (nn.LeakyReLU(), torch.nn.LeakyReLU()),
    (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    (nn.GELU(), torch.nn.GELU()),
    (nn.GELU("tanh"), torch.nn.GELU("tanh")),
    (nn.SiLU(), torch.nn.SiLU()),
    (nn.Softmax(dim=1), torch.nn.Softmax(dim=1)),
    (nn.Softmax(), torch.nn.Softmax(dim=-1)),
    (nn.LogSoftmax(dim=0), torch.nn.LogSoftmax(dim=0)),
]


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize(("ours", "theirs"), MODULE_PAIRS, ids=lambda m: repr(m))
def test_activation_modules_match_torch(device, dtype, rtol, ours, theirs):
    x = _x((4, 5, 3), device, dtype)
    torch.testing.assert_close(ours(x), theirs(x), rtol=rtol, atol=ATOL[dtype])


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_swiglu_module(device, dtype, rtol, dim):
    x = _x((4, 6, 8), device, dtype)
    a, b = x.chunk(2, dim=dim)
    out = nn.SwiGLU(dim)(x)
    assert out.shape == a.shape
    torch.testing.assert_close(out, torch.nn.functional.silu(a) * b, rtol=rtol, atol=ATOL[dtype])


def test_module_reprs():
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(nn.Dropout(0.3)) == "Dropout(p=0.3)"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="p must lie in"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="p must lie in"):
        nn.Dropout(-0.1)
    with pytest.raises(ValueError, match="approximate must be one of"):
        nn.GELU("sigmoid")
    with pytest.raises(ValueError, match="negative_slope"):
        nn.LeakyReLU(math.inf)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.Softmax(dim=None)
    with pytest.raises(TypeError, match="dim must be an int"):
        nn.SwiGLU(dim=1.0)


# --- Dropout ----------------------------------------------------------------------


def test_dropout_train_and_eval(device):
    module = nn.Dropout(0.25)
    x = torch.ones(200, 100, device=device)
    assert module.training
    out = module(x)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(0.25, abs=0.01)
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / 0.75))
    module.eval()
    assert torch.equal(module(x), x)


# --- MLP structure ----------------------------------------------------------------


@pytest.mark.parametrize(("d", "h", "o"), [(4, 3, 2), (64, 100, 10), (1, 1, 1)])
def test_num_parameters_one_hidden_layer(d, h, o):
    assert nn.MLP(d, [h], o).num_parameters() == d * h + h * o + h + o


@settings(max_examples=30, deadline=None)
@given(
    input_shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    hidden=st.lists(st.integers(1, 8), max_size=4),
    output_size=st.integers(1, 5),
    dropout=st.sampled_from([0.0, 0.5]),
)
def test_num_parameters_general(input_shape, hidden, output_size, dropout):
    model = nn.MLP(tuple(input_shape), hidden, output_size, dropout=dropout)
    sizes = [math.prod(input_shape), *hidden, output_size]
    expected = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    assert model.num_parameters() == expected
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    n_dropout = sum(isinstance(m, nn.Dropout) for m in model.modules())
    assert n_linear == len(hidden) + 1
    assert n_dropout == (len(hidden) if dropout > 0 else 0)
    x = torch.randn(2, *input_shape)
    assert model(x).shape == (2, output_size)


def test_layer_order():
    model = nn.MLP(8, [6, 4], 3, activation="tanh", output_activation="softmax", dropout=0.1)
    kinds = [type(m) for m in model.layers]
    expected = [torch.nn.Linear, nn.Tanh, nn.Dropout] * 2 + [torch.nn.Linear, nn.Softmax]
    assert kinds == expected


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
def test_image_inputs(device, dtype, rtol):
    model = nn.MLP((1, 8, 8), [32], 10, output_activation="softmax").to(device, dtype)
    x = _x((5, 1, 8, 8), device, dtype)
    probs = model(x)
    assert probs.shape == (5, 10) and probs.dtype == dtype and probs.device.type == device.type
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5, device=device, dtype=dtype))
    flat = nn.MLP(64, [32], 10, output_activation="softmax").to(device, dtype)
    flat.load_state_dict(model.state_dict())
    torch.testing.assert_close(flat(x.flatten(1)), probs, rtol=rtol, atol=0)


# --- equality with torch.nn.Sequential ---------------------------------------------

TORCH_ACTIVATIONS = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "leaky_relu": torch.nn.LeakyReLU,
    "gelu": torch.nn.GELU,
    "silu": torch.nn.SiLU,
}
TORCH_OUTPUTS = {
    None: None,
    "softmax": lambda: torch.nn.Softmax(dim=1),
    "log_softmax": lambda: torch.nn.LogSoftmax(dim=1),
    "sigmoid": torch.nn.Sigmoid,
}


@pytest.mark.parametrize(("dtype", "rtol"), TOLERANCES)
@pytest.mark.parametrize("activation", list(TORCH_ACTIVATIONS))
@pytest.mark.parametrize("output_activation", list(TORCH_OUTPUTS))
def test_forward_equals_torch_sequential(device, dtype, rtol, activation, output_activation):
    torch.manual_seed(0)
    model = nn.MLP(
        (2, 3, 3), [7, 5], 4, activation, output_activation, dropout=0.3, init="glorot"
    ).to(device, dtype)
    layers = [torch.nn.Flatten()]
    for fan_in, fan_out in [(18, 7), (7, 5)]:
        layers += [
            torch.nn.Linear(fan_in, fan_out),
            TORCH_ACTIVATIONS[activation](),
            torch.nn.Dropout(0.3),
        ]
    layers.append(torch.nn.Linear(5, 4))
    if output_activation is not None:
        layers.append(TORCH_OUTPUTS[output_activation]())
    reference = torch.nn.Sequential(*layers).to(device, dtype)
    # Share the weights: our layers.i is the reference's i + 1 (after Flatten).
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            if isinstance(layer, torch.nn.Linear):
                reference[i + 1].weight.copy_(layer.weight)
                reference[i + 1].bias.copy_(layer.bias)
    model.eval()
    reference.eval()
    x = _x((6, 2, 3, 3), device, dtype)
    torch.testing.assert_close(model(x), reference(x), rtol=rtol, atol=ATOL[dtype])


# --- initialization ---------------------------------------------------------------


def test_torch_init_bounds_and_zero_biases():
    torch.manual_seed(0)
    model = nn.MLP(300, [200], 100)
    first, last = model.layers[0], model.layers[2]
    for layer, fan_in in [(first, 300), (last, 200)]:
        bound = 1 / math.sqrt(fan_in)
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.abs().max().item() > 0.99 * bound
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_glorot_bounds_and_zero_biases():
    torch.manual_seed(0)
    model = nn.MLP(300, [200], 100, init="glorot")
    for layer, (fan_in, fan_out) in [(model.layers[0], (300, 200)), (model.layers[2], (200, 100))]:
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.abs().max().item() > 0.99 * bound
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_init_is_reproducible_with_manual_seed():
    torch.manual_seed(1)
    a = nn.MLP(5, [4], 3)
    torch.manual_seed(1)
    b = nn.MLP(5, [4], 3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


# --- dropout in the MLP -----------------------------------------------------------


def test_eval_disables_dropout_and_train_enables_it(device):
    torch.manual_seed(0)
    model = nn.MLP(20, [256, 256], 5, dropout=0.5).to(device)
    x = _x((8, 20), device, torch.float32)
    model.eval()
    assert torch.equal(model(x), model(x))  # deterministic
    without_dropout = nn.MLP(20, [256, 256], 5).to(device)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    twins = [m for m in without_dropout.modules() if isinstance(m, torch.nn.Linear)]
    for ours, twin in zip(linears, twins, strict=True):
        twin.load_state_dict(ours.state_dict())
    torch.testing.assert_close(model(x), without_dropout(x))
    model.train()
    first, second = model(x), model(x)
    assert not torch.equal(first, second)
    assert not torch.allclose(first, without_dropout(x))
    dropped = (model.layers[:3](x) == 0).float().mean().item()  # Linear, ReLU, Dropout
    assert dropped > 0.6  # ReLU zeros about half, dropout half of the rest


def test_backward_reaches_every_parameter():
    model = nn.MLP((1, 4, 4), [8], 3, activation="gelu", dropout=0.2)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(6, 1, 4, 4)), torch.arange(6) % 3)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture():
    model = nn.MLP(16, [32], 4, dropout=0.0).cuda().eval()
    static_x = torch.randn(8, 16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        model(static_x)  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_x)
    new_x = torch.randn(8, 16, device="cuda")
    static_x.copy_(new_x)
    graph.replay()
    torch.testing.assert_close(static_out, model(new_x))


# --- bad arguments ----------------------------------------------------------------


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'tanh', 'sigmoid'"):
        nn.MLP(4, [3], 2, activation="softmax")
    with pytest.raises(ValueError, match="output_activation must be None or one of .*'softmax'"):
        nn.MLP(4, [3], 2, output_activation="argmax")
    with pytest.raises(ValueError, match=r"init must be one of \('torch', 'glorot'\)"):
        nn.MLP(4, [3], 2, init="he")
    for dropout in [1.0, -0.5, math.nan]:
        with pytest.raises(ValueError, match="dropout must lie in"):
            nn.MLP(4, [3], 2, dropout=dropout)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        nn.MLP(0, [3], 2)
    with pytest.raises(ValueError, match="every entry of input_size"):
        nn.MLP((1, 0, 8), [3], 2)
    with pytest.raises(ValueError, match="every entry of hidden_layers"):
        nn.MLP(4, [3, -1], 2)
    with pytest.raises(TypeError, match="hidden_layers must be a sequence"):
        nn.MLP(4, 3, 2)
    with pytest.raises(ValueError, match="output_size"):
        nn.MLP(4, [3], 2.0)


def test_mlp_bad_inputs():
    model = nn.MLP((1, 8, 8), [4], 2)
    with pytest.raises(ValueError, match="x must have shape .*64 features"):
        model(torch.randn(3, 1, 8, 7))
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(64))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        model(torch.ones(3, 64, dtype=torch.int64))
