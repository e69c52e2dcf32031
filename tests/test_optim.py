"""npfl_lib.optim's optimizer classes against torch.optim (foreach=False) on a small MLP."""

import copy
import io

import pytest
import torch

from npfl_lib.optim import SGD, Adam, AdamW, RMSprop, adam_step, param_groups_no_decay

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
    """add_param_group refuses a bad value; one a schedule writes into a group, step() does."""
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = optimizer_class([first], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        optimizer.add_param_group({"params": [second], "lr": -1.0})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": [second]})
    optimizer.param_groups[1]["lr"] = -1.0
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


# ------------------------------------------------------- torch's options, wherever they arrive

CLASSES = {"SGD": SGD, "RMSprop": RMSprop, "Adam": Adam, "AdamW": AdamW}


def one_param(value=1.0, grad=1.0):
    param = torch.nn.Parameter(torch.tensor([value], dtype=torch.float64))
    param.grad = torch.tensor([grad], dtype=torch.float64)
    return param


def test_maximize_in_a_param_group_is_honoured():
    """The issue's example: maximize=True in a group dict steps uphill, as torch."""
    param = one_param()
    SGD([{"params": [param], "maximize": True}], lr=0.1).step()
    assert param.item() == pytest.approx(1.1)
    reference = one_param()
    torch.optim.SGD([{"params": [reference], "maximize": True}], lr=0.1).step()
    assert torch.equal(param, reference)


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.parametrize("where", ["constructor", "group", "add_param_group", "edited"])
def test_maximize_matches_torch_wherever_it_arrives(name, where, device):
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    reference_optimizer = torch_optimizer(
        torch_class, reference.parameters(), lr=0.01, maximize=True
    )
    if where == "constructor":
        optimizer = ours_class(model.parameters(), lr=0.01, maximize=True)
    elif where == "group":
        optimizer = ours_class([{"params": model.parameters(), "maximize": True}], lr=0.01)
    elif where == "add_param_group":
        optimizer = ours_class(model[0].parameters(), lr=0.01, maximize=True)
        optimizer.add_param_group({"params": model[2].parameters()})  # maximize from defaults
        assert optimizer.param_groups[1]["maximize"] is True
    else:
        optimizer = ours_class(model.parameters(), lr=0.01)
        optimizer.param_groups[0]["maximize"] = True
    train(model, optimizer, data, 5)
    train(reference, reference_optimizer, data, 5)
    assert_same_parameters(model, reference, dtype)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("where", ["constructor", "group"])
def test_amsgrad_matches_torch(name, where, device):
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    kwargs = {"lr": 0.05, "betas": (0.5, 0.6), "weight_decay": 0.1}
    if where == "constructor":
        optimizer = ours_class(model.parameters(), amsgrad=True, **kwargs)
    else:
        optimizer = ours_class([{"params": model.parameters(), "amsgrad": True}], **kwargs)
    train(model, optimizer, data, 20)
    theirs = torch_optimizer(torch_class, reference.parameters(), amsgrad=True, **kwargs)
    train(reference, theirs, data, 20)
    assert_same_parameters(model, reference, dtype)
    state = optimizer.state[model[0].weight]
    assert torch.equal(state["max_exp_avg_sq"], theirs.state[reference[0].weight]["max_exp_avg_sq"])


@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_decoupled_weight_decay_matches_torch(decoupled, device):
    """Adam(decoupled_weight_decay=True) is AdamW, as in torch; the group value decides."""
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    kwargs = {"lr": 0.05, "weight_decay": 0.3, "decoupled_weight_decay": decoupled}
    train(model, Adam(model.parameters(), **kwargs), data, 10)
    train(reference, torch_optimizer(torch.optim.Adam, reference.parameters(), **kwargs), data, 10)
    assert_same_parameters(model, reference, dtype)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "maximize": True}),
        ("RMSprop", {"lr": 0.01, "maximize": True, "centered": True}),
        ("Adam", {"lr": 0.01, "maximize": True, "amsgrad": True}),
        ("Adam", {"lr": 0.01, "weight_decay": 0.2, "decoupled_weight_decay": True}),
        ("AdamW", {"lr": 0.01, "amsgrad": True}),
    ],
)
def test_torch_state_dict_options_are_honoured(name, kwargs, device):
    """A torch checkpoint's maximize/amsgrad/decoupled_weight_decay take effect after loading."""
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    theirs = torch_optimizer(torch_class, model.parameters(), **kwargs)
    train(model, theirs, data, 5)
    ours = ours_class(model.parameters(), lr=kwargs["lr"])  # no options given here
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for key, value in kwargs.items():
        assert ours.param_groups[0][key] == value
    train(model, ours, data, 5)
    train(reference, torch_optimizer(torch_class, reference.parameters(), **kwargs), data, 10)
    assert_same_parameters(model, reference, dtype)


def test_adamw_loading_an_adam_checkpoint_stays_decoupled(device):
    """torch.optim.AdamW forces decoupled_weight_decay=True when it loads a state; so do we."""
    params = [one_param()]
    checkpoint = torch.optim.Adam(params, weight_decay=0.1).state_dict()
    optimizer = AdamW([one_param()])
    optimizer.load_state_dict(checkpoint)
    assert optimizer.param_groups[0]["decoupled_weight_decay"] is True


# Each optimizer's torch options that npfl_lib refuses unless at the value it implements.
REFUSED = {
    "SGD": {"foreach": True, "differentiable": True, "fused": True},
    "RMSprop": {"foreach": True, "differentiable": True},
    "Adam": {"foreach": True, "differentiable": True, "fused": True},
    "AdamW": {"foreach": True, "differentiable": True, "fused": True},
}
REFUSED_CASES = [
    (name, option, value) for name in REFUSED for option, value in REFUSED[name].items()
]


@pytest.mark.parametrize(("name", "option", "value"), REFUSED_CASES)
@pytest.mark.parametrize(
    "where", ["constructor", "group", "add_param_group", "load_state_dict", "edited"]
)
def test_refused_options_raise_wherever_they_arrive(name, option, value, where):
    ours_class = CLASSES[name]
    first, second = one_param(), one_param()
    match = rf"{option}={value}.*not supported"
    if where == "constructor":
        with pytest.raises(ValueError, match=match):
            ours_class([first], **{option: value})
        return
    if where == "group":
        with pytest.raises(ValueError, match=match):
            ours_class([{"params": [first], option: value}])
        return
    optimizer = ours_class([first])
    if where == "add_param_group":
        with pytest.raises(ValueError, match=match):
            optimizer.add_param_group({"params": [second], option: value})
        assert len(optimizer.param_groups) == 1
    elif where == "load_state_dict":
        checkpoint = copy.deepcopy(optimizer.state_dict())
        checkpoint["param_groups"][0][option] = value
        with pytest.raises(ValueError, match=match):
            optimizer.load_state_dict(checkpoint)
        assert optimizer.param_groups[0][option] in (None, False)
    else:
        optimizer.param_groups[0][option] = value
        with pytest.raises(ValueError, match=match):
            optimizer.step()
        assert first.item() == 1.0


@pytest.mark.parametrize("name", list(CLASSES))
def test_the_values_npfl_lib_implements_are_accepted(name):
    """foreach=False/None, fused=None/False, differentiable=False."""
    ours_class, param = CLASSES[name], one_param()
    kwargs = {option: False for option in REFUSED[name]}
    optimizer = ours_class([param], lr=0.1, **kwargs)
    optimizer.step()
    assert param.item() < 1.0
    # A torch checkpoint made with the defaults (foreach=None, fused=None) loads as is.
    reference = getattr(torch.optim, name)([one_param()], lr=0.1)
    optimizer.load_state_dict(reference.state_dict())


FLAGS = {
    "SGD": ["maximize", "nesterov"],
    "RMSprop": ["maximize", "centered", "capturable"],
    "Adam": ["maximize", "amsgrad", "decoupled_weight_decay", "capturable"],
    "AdamW": ["maximize", "amsgrad", "decoupled_weight_decay", "capturable"],
}


@pytest.mark.parametrize(("name", "option"), [(n, o) for n in FLAGS for o in FLAGS[n]])
def test_option_flags_must_be_bools(name, option):
    ours_class = CLASSES[name]
    with pytest.raises(TypeError, match=option):
        ours_class([{"params": [one_param()], option: "yes"}], lr=0.1)


@pytest.mark.parametrize("name", ["RMSprop", "Adam", "AdamW"])
@pytest.mark.parametrize("step", ["float", "tensor"])
def test_loaded_float_step_steps_on(name, step, device):
    """Older torch checkpoints hold state["step"] as a float; torch steps on, so do we."""
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    theirs = torch_optimizer(torch_class, model.parameters(), lr=0.01)
    train(model, theirs, data, 1)
    checkpoint = copy.deepcopy(theirs.state_dict())
    for param_state in checkpoint["state"].values():
        param_state["step"] = 1.0 if step == "float" else torch.tensor(1.0)
    reference = copy.deepcopy(model)
    ours = ours_class(model.parameters(), lr=0.01)
    ours.load_state_dict(copy.deepcopy(checkpoint))  # loading shares the state's tensors
    assert all(type(state["step"]) is int for state in ours.state.values())
    train(model, ours, data, 3)
    resumed = torch_optimizer(torch_class, reference.parameters(), lr=0.01)
    resumed.load_state_dict(copy.deepcopy(checkpoint))
    train(reference, resumed, data, 3)
    assert_same_parameters(model, reference, dtype)


@pytest.mark.parametrize("step", [1.5, -1.0, float("nan"), "1"])
def test_loaded_step_that_is_not_a_count_is_refused(step):
    param = one_param()
    optimizer = Adam([param])
    optimizer.step()
    checkpoint = copy.deepcopy(optimizer.state_dict())
    checkpoint["state"][0]["step"] = step
    with pytest.raises((TypeError, ValueError), match="step"):
        optimizer.load_state_dict(checkpoint)
    assert optimizer.state[param]["step"] == 1


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize(
    "betas",
    [
        (0.9, torch.tensor(0.99)),
        (torch.tensor(0.9), 0.99),
        (torch.tensor(0.9), torch.tensor(0.99)),
    ],
)
def test_tensor_betas_are_refused(name, betas):
    """Mixed float/tensor betas: torch raises too. Two tensors: see the README's table."""
    with pytest.raises(ValueError, match="betas"):
        CLASSES[name]([one_param()], betas=betas)
    optimizer = CLASSES[name]([one_param()])
    with pytest.raises(ValueError, match="betas"):
        optimizer.add_param_group({"params": [one_param()], "betas": betas})


@pytest.mark.parametrize("name", list(CLASSES))
def test_tensor_lr_matches_torch(name, device):
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    train(model, ours_class(model.parameters(), lr=torch.tensor(0.01)), data, 10)
    theirs = torch_optimizer(torch_class, reference.parameters(), lr=torch.tensor(0.01))
    train(reference, theirs, data, 10)
    assert_same_parameters(model, reference, dtype)


@pytest.mark.parametrize("name", list(CLASSES))
def test_tensor_lr_must_have_one_element(name):
    with pytest.raises(ValueError, match="lr"):
        CLASSES[name]([one_param()], lr=torch.tensor([0.1, 0.1]))


# ------------------------------------------------------------------ capturable=True
# torch's capturable steps keep the step counter on the parameter's device, so that no
# step reads a number back to the host (a CUDA graph can replay it). torch allows them
# on GPUs only; on a CPU-only machine the comparison lets torch run its capturable code
# on the CPU too (its arithmetic does not depend on the device).
CAPTURABLE = {
    "adam": (Adam, {"lr": 0.01}),
    "adam-amsgrad-wd": (Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    "adamw-wd": (AdamW, {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3}),
    "adamw-tensor-lr": (AdamW, {"lr": "tensor", "maximize": True}),
    "rmsprop-centered": (RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
}


def capturable_kwargs(config, device):
    ours_class, kwargs = CAPTURABLE[config]
    if kwargs["lr"] == "tensor":
        kwargs = {**kwargs, "lr": torch.tensor(0.01, device=device)}
    return ours_class, kwargs


@pytest.fixture
def torch_capturable_anywhere(monkeypatch):
    """Lets torch's single-tensor Adam(W) and RMSprop run capturable steps on the CPU."""
    import importlib

    for name in ("adam", "rmsprop"):
        module = importlib.import_module(f"torch.optim.{name}")
        supported = getattr(module, "_get_capturable_supported_devices", None)
        if supported is None:
            pytest.skip(f"torch.optim.{name} has no _get_capturable_supported_devices")
        monkeypatch.setattr(
            module,
            "_get_capturable_supported_devices",
            lambda supports_xla=True, supported=supported: [*supported(supports_xla), "cpu"],
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", list(CAPTURABLE))
def test_capturable_steps_equal_torch_bit_for_bit(config, dtype, device, torch_capturable_anywhere):
    ours_class, kwargs = capturable_kwargs(config, device)
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    ours = ours_class(model.parameters(), capturable=True, **kwargs)
    train(model, ours, data, 20)
    torch_class = getattr(torch.optim, ours_class.__name__)
    theirs = torch_optimizer(torch_class, reference.parameters(), capturable=True, **kwargs)
    train(reference, theirs, data, 20)
    for actual, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(actual, expected)
    for param in model.parameters():
        step = ours.state[param]["step"]
        assert step.dim() == 0 and step.dtype == torch.float32 and step.device == param.device
        assert step.item() == 20.0


@pytest.mark.parametrize("config", list(CAPTURABLE))
def test_capturable_steps_equal_the_int_path_to_float32_corrections(config, device):
    """Capturable bias corrections are float32 tensors (torch's): ``1 - beta2^t`` then
    carries a relative error of up to ~1.3e-5 (beta2 = 0.999 rounded to float32, then
    cancellation), so one Adam update may differ by ~lr * 1e-5 from the int path, which
    computes them in float64 on the host. Bound checked here, in float64 parameters
    (where nothing else rounds): |difference| <= steps * lr * 5e-5 after 20 steps.
    RMSprop does not use its counter: bit for bit."""
    ours_class, kwargs = capturable_kwargs(config, device)
    dtype, steps = torch.float64, 20
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    train(model, ours_class(model.parameters(), capturable=True, **kwargs), data, steps)
    train(reference, ours_class(reference.parameters(), **kwargs), data, steps)
    bound = 0.0 if ours_class is RMSprop else steps * 0.01 * 5e-5
    for actual, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert (actual - expected).abs().max().item() <= bound
    assert not torch.equal(model[0].weight, make_mlp(dtype, device)[0].weight)


@pytest.mark.parametrize("name", ["RMSprop", "Adam", "AdamW"])
def test_capturable_state_dicts_move_to_torch_and_back(name, device, torch_capturable_anywhere):
    ours_class, torch_class = CLASSES[name], getattr(torch.optim, name)
    dtype = torch.float64
    model, data = make_mlp(dtype, device), make_data(dtype, device)
    reference = copy.deepcopy(model)
    theirs = torch_optimizer(torch_class, reference.parameters(), lr=0.01, capturable=True)
    train(reference, theirs, data, 6)
    for first, second in ((ours_class, torch_class), (torch_class, ours_class)):
        resumed = copy.deepcopy(make_mlp(dtype, device))
        kwargs = {"foreach": False} if first is torch_class else {}
        optimizer = first(resumed.parameters(), lr=0.01, capturable=True, **kwargs)
        train(resumed, optimizer, data, 3)
        kwargs = {"foreach": False} if second is torch_class else {}
        following = second(resumed.parameters(), lr=0.01, capturable=True, **kwargs)
        following.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        for param in resumed.parameters():
            step = following.state[param]["step"]
            assert isinstance(step, torch.Tensor) and step.device == param.device
        train(resumed, following, data, 3)
        for actual, expected in zip(resumed.parameters(), reference.parameters(), strict=True):
            assert torch.equal(actual, expected), (first.__module__, second.__module__)


def test_switching_capturable_converts_the_counter(device):
    model, data = make_mlp(torch.float64, device), make_data(torch.float64, device)
    optimizer = AdamW(model.parameters(), lr=0.01)
    train(model, optimizer, data, 2)
    optimizer.param_groups[0]["capturable"] = True  # what the Trainer does on a GPU
    train(model, optimizer, data, 3)
    steps = [optimizer.state[param]["step"] for param in model.parameters()]
    assert all(isinstance(step, torch.Tensor) and step.item() == 5.0 for step in steps)
    params = list(model.parameters())
    assert all(step.device == param.device for step, param in zip(steps, params, strict=True))
    optimizer.param_groups[0]["capturable"] = False
    train(model, optimizer, data, 1)
    assert [optimizer.state[param]["step"] for param in model.parameters()] == [6] * 4
    # A loaded state dict brings its groups' options (torch's rule): int counters under
    # capturable=True become tensors, and a capturable optimizer loading int ones is not.
    checkpoint = copy.deepcopy(optimizer.state_dict())
    checkpoint["param_groups"][0]["capturable"] = True
    optimizer.load_state_dict(checkpoint)
    assert all(state["step"].item() == 6.0 for state in optimizer.state.values())


def test_a_bad_tensor_step_is_refused_and_leaves_the_counter():
    param, grad = torch.ones(3), torch.ones(3)
    for step in (torch.tensor(1), torch.ones(2), torch.tensor(1.0, device="meta")):
        with pytest.raises(TypeError, match="step"):
            adam_step(param, grad, torch.zeros(3), torch.zeros(3), step=step, lr=0.1)
    assert torch.equal(param, torch.ones(3))
    param = one_param()
    optimizer = Adam([param], capturable=True)
    optimizer.step()
    optimizer.state[param]["exp_avg"] = torch.zeros(2, dtype=torch.float64)  # a broken state
    with pytest.raises(ValueError, match="exp_avg"):
        optimizer.step()
    assert optimizer.state[param]["step"].item() == 1.0  # the kernel refused: not counted
