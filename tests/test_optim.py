"""npfl_lib.optim's optimizer classes against torch.optim (foreach=False) on a small MLP."""

import copy
import io

import pytest
import torch

from npfl_lib.optim import SGD, Adam, AdamW, RMSprop, param_groups_no_decay

TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-7},
}

# (our class, torch's class, keyword arguments): every configuration the lecture covers.
CONFIGS = {
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.1}),
    "sgd-momentum": (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    "sgd-dampening": (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.8, "dampening": 0.3}),
    "sgd-nesterov": (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd-wd": (SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1}),
    "rmsprop": (RMSprop, torch.optim.RMSprop, {"lr": 0.01}),
    "rmsprop-centered": (RMSprop, torch.optim.RMSprop, {"lr": 0.01, "centered": True}),
    "rmsprop-momentum": (RMSprop, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9}),
    "rmsprop-wd": (
        RMSprop,
        torch.optim.RMSprop,
        {
            "lr": 0.01,
            "alpha": 0.9,
            "eps": 1e-6,
            "weight_decay": 0.1,
            "momentum": 0.5,
            "centered": True,
        },
    ),
    "adam": (Adam, torch.optim.Adam, {"lr": 0.01}),
    "adam-wd": (
        Adam,
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    ),
    "adamw": (AdamW, torch.optim.AdamW, {"lr": 0.01}),
    "adamw-wd": (AdamW, torch.optim.AdamW, {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3}),
}


def make_mlp(dtype, device, seed=0):
    """Linear(5, 8) - tanh - Linear(8, 3), initialized from a seeded generator."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.5)
    return model.to(device=device, dtype=dtype)


def make_data(dtype, device, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    return inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)


def loss_of(model, data):
    inputs, targets = data
    return ((model(inputs) - targets) ** 2).mean()


def train(model, optimizer, data, steps, scheduler=None):
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(model, data).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def assert_same_parameters(model, reference, dtype):
    for (name, actual), expected in zip(
        model.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(actual, expected, **TOLERANCES[dtype], msg=name)


def torch_optimizer(torch_class, params, **kwargs):
    return torch_class(params, foreach=False, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_twenty_steps_match_torch(config, dtype, device):
    ours_class, torch_class, kwargs = CONFIGS[config]
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    train(model, ours_class(model.parameters(), **kwargs), data, steps=20)
    train(reference, torch_optimizer(torch_class, reference.parameters(), **kwargs), data, 20)
    assert_same_parameters(model, reference, dtype)
    # The comparison is not vacuous: the parameters did move.
    assert not torch.equal(model[0].weight, make_mlp(dtype, device)[0].weight)


@pytest.mark.parametrize("scheduler", ["step", "lambda"])
@pytest.mark.parametrize("config", ["sgd-nesterov", "rmsprop-wd", "adam-wd", "adamw-wd"])
def test_parameter_groups_and_scheduler_match_torch(config, scheduler, device):
    ours_class, torch_class, kwargs = CONFIGS[config]
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)

    def groups(net):
        # Different lr and weight decay per layer; the first group overrides both.
        return [
            {"params": net[0].parameters(), "lr": kwargs["lr"] * 3, "weight_decay": 0.05},
            {"params": net[2].parameters()},
        ]

    def make_scheduler(optimizer):
        if scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)

    ours = ours_class(groups(model), **kwargs)
    theirs = torch_optimizer(torch_class, groups(reference), **kwargs)
    train(model, ours, data, 20, make_scheduler(ours))
    train(reference, theirs, data, 20, make_scheduler(theirs))
    assert_same_parameters(model, reference, dtype)
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]


def test_scheduler_changes_the_update(device):
    """The lr is read from the group at each step: a scheduler that zeroes it freezes training."""
    model, data = make_mlp(torch.float64, device), make_data(torch.float64, device)
    optimizer = AdamW(model.parameters(), lr=0.01, weight_decay=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 1.0 if epoch < 2 else 0.0
    )
    train(model, optimizer, data, 2, scheduler)
    frozen = copy.deepcopy(model)
    train(model, optimizer, data, 3, scheduler)
    assert_same_parameters(model, frozen, torch.float64)


@pytest.mark.parametrize("config", ["sgd-dampening", "rmsprop-wd", "adam-wd", "adamw-wd"])
def test_state_dict_round_trip(config, device):
    ours_class, torch_class, kwargs = CONFIGS[config]
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    optimizer = ours_class(model.parameters(), **kwargs)
    train(model, optimizer, data, 10)

    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    resumed = ours_class(resumed_model.parameters(), **kwargs)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))

    train(model, optimizer, data, 10)
    train(resumed_model, resumed, data, 10)
    for actual, expected in zip(resumed_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(actual, expected)
    # And both equal torch's 20 uninterrupted steps.
    reference = make_mlp(dtype, device)
    train(reference, torch_optimizer(torch_class, reference.parameters(), **kwargs), data, 20)
    assert_same_parameters(model, reference, dtype)


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
@pytest.mark.parametrize("config", ["sgd-momentum", "rmsprop-wd", "adam-wd", "adamw-wd"])
def test_state_dict_interchangeable_with_torch(config, direction, device):
    """State keys mirror torch's, so checkpoints move between the two implementations."""
    ours_class, torch_class, kwargs = CONFIGS[config]
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)

    def make(which, params):
        if which == "ours":
            return ours_class(params, **kwargs)
        return torch_optimizer(torch_class, params, **kwargs)

    first, second = direction.split("-to-")
    optimizer = make(first, model.parameters())
    train(model, optimizer, data, 10)
    resumed_model = copy.deepcopy(model)
    resumed = make(second, resumed_model.parameters())
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(resumed_model, resumed, data, 10)

    reference = make_mlp(dtype, device)
    train(reference, torch_optimizer(torch_class, reference.parameters(), **kwargs), data, 20)
    assert_same_parameters(resumed_model, reference, dtype)


@pytest.mark.parametrize("config", ["sgd-wd", "rmsprop-wd", "adam-wd", "adamw-wd"])
def test_parameters_without_grad_are_skipped(config, device):
    ours_class, torch_class, kwargs = CONFIGS[config]
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    unused = torch.nn.Parameter(torch.ones(4, 4, dtype=dtype, device=device))
    reference, reference_unused = copy.deepcopy(model), copy.deepcopy(unused)

    optimizer = ours_class([*model.parameters(), unused], **kwargs)
    train(model, optimizer, data, 5)
    train(
        reference,
        torch_optimizer(torch_class, [*reference.parameters(), reference_unused], **kwargs),
        data,
        5,
    )
    assert unused.grad is None
    assert torch.equal(unused, torch.ones(4, 4, dtype=dtype, device=device))  # not even decayed
    assert len(optimizer.state[unused]) == 0
    assert_same_parameters(model, reference, dtype)


def test_closure_and_zero_grad(device):
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    ours = SGD(model.parameters(), lr=0.1, momentum=0.9)
    theirs = torch_optimizer(torch.optim.SGD, reference.parameters(), lr=0.1, momentum=0.9)

    def closure_for(net, optimizer):
        def closure():
            optimizer.zero_grad()
            loss = loss_of(net, data)
            loss.backward()
            return loss

        return closure

    for _ in range(5):
        loss = ours.step(closure_for(model, ours))
        expected = theirs.step(closure_for(reference, theirs))
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    assert_same_parameters(model, reference, dtype)
    assert ours.step() is None
    ours.zero_grad()
    assert all(param.grad is None for param in model.parameters())


def test_step_counter_is_int_and_moves_before_the_update(device):
    model, data = make_mlp(torch.float64, device), make_data(torch.float64, device)
    optimizer = Adam(model.parameters())
    train(model, optimizer, data, 3)
    steps = [optimizer.state[param]["step"] for param in model.parameters()]
    assert steps == [3, 3, 3, 3] and all(type(step) is int for step in steps)


def test_param_groups_no_decay(device):
    model = make_mlp(torch.float64, device)
    groups = param_groups_no_decay(model, 0.1)
    assert [len(group["params"]) for group in groups] == [2, 2]
    assert groups[0]["params"][0] is model[0].weight and groups[0]["params"][1] is model[2].weight
    assert groups[1]["params"][0] is model[0].bias and groups[1]["params"][1] is model[2].bias
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("config", ["sgd-wd", "adamw-wd"])
def test_param_groups_no_decay_with_optimizers(config, device):
    """Works with ours and torch.optim; biases are left undecayed."""
    ours_class, torch_class, kwargs = CONFIGS[config]
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    train(model, ours_class(param_groups_no_decay(model, 0.2), **kwargs), data, 10)
    theirs = torch_optimizer(torch_class, param_groups_no_decay(reference, 0.2), **kwargs)
    train(reference, theirs, data, 10)
    assert_same_parameters(model, reference, dtype)

    # With zero gradients only weight decay acts: weights shrink, biases stay.
    before = copy.deepcopy(model)
    optimizer = ours_class(param_groups_no_decay(model, 0.2), **kwargs)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert torch.equal(model[0].bias, before[0].bias)
    assert model[0].weight.abs().sum() < before[0].weight.abs().sum()


def test_param_groups_no_decay_empty_group():
    model = torch.nn.Linear(3, 2, bias=False)
    groups = param_groups_no_decay(model, 0.1)
    assert groups[1]["params"] == []
    for optimizer in (AdamW(groups), torch.optim.AdamW(param_groups_no_decay(model, 0.1))):
        assert len(optimizer.param_groups) == 2


def test_param_groups_no_decay_bad_input():
    with pytest.raises(TypeError, match="module"):
        param_groups_no_decay([torch.zeros(2)], 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups_no_decay(torch.nn.Linear(2, 2), -0.1)


def params():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SGD(params(), lr=-0.1), "lr"),
        (lambda: SGD(params(), momentum=-0.1), "momentum"),
        (lambda: SGD(params(), weight_decay=-0.1), "weight_decay"),
        (lambda: SGD(params(), dampening=float("nan")), "dampening"),
        (lambda: SGD(params(), nesterov=True), "nesterov"),
        (lambda: SGD(params(), momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
        (lambda: RMSprop(params(), lr=-0.1), "lr"),
        (lambda: RMSprop(params(), alpha=-0.1), "alpha"),
        (lambda: RMSprop(params(), eps=-1e-8), "eps"),
        (lambda: RMSprop(params(), weight_decay=-0.1), "weight_decay"),
        (lambda: RMSprop(params(), momentum=-0.1), "momentum"),
        (lambda: Adam(params(), lr=-0.1), "lr"),
        (lambda: Adam(params(), eps=-1e-8), "eps"),
        (lambda: Adam(params(), weight_decay=-0.1), "weight_decay"),
        (lambda: Adam(params(), betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: Adam(params(), betas=(-0.1, 0.999)), r"betas\[0\]"),
        (lambda: Adam(params(), betas=(0.9, 1.0)), r"betas\[1\]"),
        (lambda: Adam(params(), betas=(0.9,)), "betas"),
        (lambda: AdamW(params(), lr=-0.1), "lr"),
        (lambda: AdamW(params(), eps=-1e-8), "eps"),
        (lambda: AdamW(params(), weight_decay=-0.1), "weight_decay"),
        (lambda: AdamW(params(), betas=(0.9, 1.5)), r"betas\[1\]"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_type_is_a_type_error():
    with pytest.raises(TypeError, match="lr"):
        SGD(params(), lr="fast")


@pytest.mark.parametrize("optimizer_class", [SGD, RMSprop, Adam, AdamW])
def test_bad_group_value_raises_before_any_update(optimizer_class):
    """A schedule or add_param_group can put a bad value in a group: step() refuses it."""
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = optimizer_class([first], lr=0.1)
    optimizer.add_param_group({"params": [second], "lr": -1.0})
    first.grad, second.grad = torch.ones(2), torch.ones(2)
    with pytest.raises(ValueError, match="lr"):
        optimizer.step()
    assert torch.equal(first, torch.ones(2)) and torch.equal(second, torch.ones(2))


@pytest.mark.parametrize("optimizer_class", [SGD, RMSprop, Adam, AdamW])
def test_sparse_grad_is_rejected(optimizer_class):
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = optimizer_class(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    assert embedding.weight.grad.is_sparse
    before = embedding.weight.detach().clone()
    with pytest.raises(TypeError, match="sparse"):
        optimizer.step()
    assert torch.equal(embedding.weight, before)
