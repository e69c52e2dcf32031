"""npfl_lib driven through PyTorch's own test databases, not only through our inputs.

* ``op_db`` (``torch.testing._internal.common_methods_invocations``): the OpInfos of the
  torch functions npfl_lib re-implements. Every reference sample (which includes the
  ordinary samples) is run through both, in float64 and float32; values and the
  gradients of every floating-point input that requires grad must agree. Every error
  input must make npfl_lib raise too.
* ``optim_db`` (``torch.testing._internal.common_optimizers``): every configuration torch
  tests SGD, RMSprop, Adam and AdamW with. Each runs 20 steps equal to torch's
  (``foreach=False``), and state dicts move both ways mid-training; every error input
  must make npfl_lib raise the same exception type (or warn the same warning), or the
  ValueError of its refusal where the input uses a refused option. On CUDA this
  includes torch's ``capturable=True`` configurations.

Options npfl_lib refuses (the README's table of refused options) are tested for their
refusal here: a sample or configuration that uses one must raise.

``expecttest`` (in the test extra) is needed to import the databases; importing them
takes about 10 s.
"""

import copy
import warnings

import pytest
import torch

pytest.importorskip("expecttest")

with warnings.catch_warnings():  # the import adds warning filters; keep the session's own
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

# Importing torch's test utilities freezes torch.backends' flags for the rest of the
# process (torch.backends.disable_global_flags()); other tests may set them, so undo it.
setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)

from npfl_lib import optim  # noqa: E402
from npfl_lib.functional import activations, dropout, losses  # noqa: E402
from npfl_lib.optim._validate import FIXED_OPTIONS  # noqa: E402

DTYPES = [torch.float64, torch.float32]

# --------------------------------------------------------------------------- op_db

# OpInfo name -> npfl_lib's counterpart, called with the sample's args and kwargs.
OPS = {
    "sigmoid": activations.sigmoid,
    "tanh": activations.tanh,
    "nn.functional.relu": activations.relu,
    "nn.functional.leaky_relu": activations.leaky_relu,
    "nn.functional.gelu": activations.gelu,
    "nn.functional.silu": activations.silu,
    "softmax": activations.softmax,
    "log_softmax": activations.log_softmax,
    "nn.functional.dropout": dropout,
    "nn.functional.mse_loss": losses.mse_loss,
    "nn.functional.huber_loss": losses.huber_loss,
    "nn.functional.nll_loss": losses.nll_loss,
    "nn.functional.cross_entropy": losses.cross_entropy,
    "nn.functional.binary_cross_entropy": losses.binary_cross_entropy,
    "nn.functional.binary_cross_entropy_with_logits": losses.binary_cross_entropy_with_logits,
}
OPINFOS = {op.name: op for op in op_db if op.name in OPS and op.variant_test_name == ""}

# Keyword arguments of torch's that npfl_lib refuses (a TypeError, as for any unknown
# keyword): per-class or per-element loss weights are not part of the lecture.
REFUSED_KWARGS = {"weight", "pos_weight"}

# npfl_lib's formulas are not torch's kernels (e.g. gelu through erfc, tanh through
# expm1), so results may differ in the last bits; on the CPU they agree to 1e-12 in
# float64, which leaves room for CUDA's kernels.
TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1.3e-6, "atol": 1e-6},
}


def test_every_counterpart_has_an_opinfo():
    assert set(OPINFOS) == set(OPS)


def _fresh(value):
    """A leaf copy of a tensor argument (keeping requires_grad), anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    return value


def _call(fn, sample):
    """Calls ``fn`` on fresh copies of the sample; returns the output and the tensors
    whose gradients are compared (the floating-point ones that require grad)."""
    input = _fresh(sample.input)
    args = [_fresh(arg) for arg in sample.args]
    kwargs = {key: _fresh(value) for key, value in sample.kwargs.items()}
    tensors = [input, *args, *kwargs.values()]
    differentiable = [
        t
        for t in tensors
        if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
    ]
    return fn(input, *args, **kwargs), differentiable


def _grads(output, inputs, upstream):
    if not inputs or not output.requires_grad:
        return [None] * len(inputs)
    return torch.autograd.grad(output, inputs, upstream, allow_unused=True)


def _is_random_dropout(name, sample):
    p, training = sample.kwargs.get("p", 0.5), sample.kwargs.get("training", True)
    return name == "nn.functional.dropout" and training and 0 < p < 1


def _check_random_dropout(sample, dtype):
    """A random mask cannot equal torch's: every unit is dropped (0) or kept and scaled
    by 1 / (1 - p), as in torch, and the gradient is the same mask over 1 - p."""
    p = sample.kwargs.get("p", 0.5)
    output, inputs = _call(dropout, sample)
    x = sample.input.detach()
    kept = output.detach() != 0
    expected = torch.where(kept, x / (1 - p), torch.zeros_like(x))
    torch.testing.assert_close(output.detach(), expected, **TOLERANCES[dtype])
    (grad,) = _grads(output, inputs, torch.ones_like(output))
    torch.testing.assert_close(grad, kept.to(dtype) / (1 - p), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_opinfo_samples_match_torch(name, dtype, device):
    opinfo, ours = OPINFOS[name], OPS[name]
    generator = torch.Generator().manual_seed(0)
    compared = refused = 0
    for index, sample in enumerate(opinfo.reference_inputs(device, dtype, requires_grad=True)):
        where = (
            f"{name} sample {index}: {sample.summary() if hasattr(sample, 'summary') else sample}"
        )
        if REFUSED_KWARGS & set(sample.kwargs):
            with pytest.raises(TypeError, match="unexpected keyword argument"):
                _call(ours, sample)
            refused += 1
            continue
        if _is_random_dropout(name, sample):
            _check_random_dropout(sample, dtype)
            compared += 1
            continue
        expected, expected_inputs = _call(opinfo.op, sample)
        actual, actual_inputs = _call(ours, sample)
        torch.testing.assert_close(
            actual,
            expected,
            equal_nan=True,
            **TOLERANCES[dtype],
            msg=lambda m, where=where: f"{where}\n{m}",
        )
        assert actual.requires_grad == expected.requires_grad, where
        upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
        upstream = upstream.to(device=expected.device, dtype=expected.dtype)
        expected_grads = _grads(expected, expected_inputs, upstream)
        actual_grads = _grads(actual, actual_inputs, upstream)
        for position, (grad, reference) in enumerate(
            zip(actual_grads, expected_grads, strict=True)
        ):
            if reference is None:  # not used by torch's result: zero
                reference = torch.zeros_like(expected_inputs[position])
            if grad is None:
                grad = torch.zeros_like(actual_inputs[position])
            torch.testing.assert_close(
                grad,
                reference,
                equal_nan=True,
                **TOLERANCES[dtype],
                msg=lambda m, where=where, p=position: f"{where}, gradient of input {p}\n{m}",
            )
        compared += 1
    assert compared > 0


@pytest.mark.parametrize("name", [name for name in OPS if OPINFOS[name].error_inputs_func])
def test_opinfo_error_inputs_raise(name, device):
    """Where torch raises, npfl_lib raises too (a ValueError or TypeError naming the
    argument, where torch may raise a RuntimeError)."""
    opinfo, ours = OPINFOS[name], OPS[name]
    for error_input in opinfo.error_inputs(device):
        sample = error_input.sample_input
        with pytest.raises((ValueError, TypeError)):
            _call(ours, sample)


# ------------------------------------------------------------------------- optim_db

OPTIMIZERS = {"SGD": optim.SGD, "RMSprop": optim.RMSprop, "Adam": optim.Adam, "AdamW": optim.AdamW}
OPTIM_INFOS = {info.name: info for info in optim_db if info.name in OPTIMIZERS}
OPTIM_TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-7},
}
STEPS = 20


def test_every_optimizer_has_an_optimizer_info():
    assert set(OPTIM_INFOS) == set(OPTIMIZERS)


def _model(dtype, device):
    """Linear(5, 8) - tanh - Linear(8, 3), initialized from a seeded generator."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.5)
    return model.to(device=device, dtype=dtype)


def _data(dtype, device):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    return inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)


def _train(model, optimizer, data, steps):
    inputs, targets = data
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(inputs) - targets) ** 2).mean().backward()
        optimizer.step()


def _refusal(kwargs):
    """How npfl_lib refuses kwargs (a regex of its ValueError), or None if it takes them.

    Options at a value npfl_lib does not implement, and tensor betas (which torch's
    CUDA configurations pass to its capturable steps; npfl_lib's take numbers).
    """
    refused = [
        name
        for name, value in kwargs.items()
        if name in FIXED_OPTIONS and not any(value is ok for ok in FIXED_OPTIONS[name][0])
    ]
    if refused:
        return rf"({'|'.join(refused)})=.* is not supported"
    if any(isinstance(beta, torch.Tensor) for beta in kwargs.get("betas", ())):
        return "betas must be two numbers"
    return None


def _assert_same(model, reference, dtype, where):
    for (name, actual), expected in zip(
        model.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(
            actual,
            expected,
            **OPTIM_TOLERANCES[dtype],
            msg=lambda m, name=name: f"{where}: {name}\n{m}",
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optim_db_configurations_match_torch(name, dtype, device):
    info, ours_class = OPTIM_INFOS[name], OPTIMIZERS[name]
    torch_class = info.optim_cls
    data = _data(dtype, device)
    compared = refused = 0
    for config in info.optim_inputs_func(device=device, dtype=dtype):
        where = f"{name}({config.kwargs}) [{config.desc}]"
        assert config.params is None, where  # torch's configurations use the model's
        kwargs = config.kwargs
        refusal = _refusal(kwargs)
        if refusal is not None:
            with pytest.raises(ValueError, match=refusal):
                ours_class(_model(dtype, device).parameters(), **kwargs)
            refused += 1
            continue
        torch_kwargs = {"foreach": False, **kwargs}

        # 20 steps from the same start.
        model, reference = _model(dtype, device), _model(dtype, device)
        _train(model, ours_class(model.parameters(), **kwargs), data, STEPS)
        _train(reference, torch_class(reference.parameters(), **torch_kwargs), data, STEPS)
        _assert_same(model, reference, dtype, where)
        assert not torch.equal(model[0].weight, _model(dtype, device)[0].weight), where

        # State dicts both ways: 10 steps with one, 10 more with the other.
        for first, second in ((torch_class, ours_class), (ours_class, torch_class)):
            model = _model(dtype, device)
            optimizer = first(
                model.parameters(), **torch_kwargs if first is torch_class else kwargs
            )
            _train(model, optimizer, data, STEPS // 2)
            resumed = second(
                model.parameters(), **torch_kwargs if second is torch_class else kwargs
            )
            resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            _train(model, resumed, data, STEPS // 2)
            _assert_same(
                model, reference, dtype, f"{where}, {first.__module__} -> {second.__module__}"
            )

        # torch's implementation choices: False is npfl_lib's own path, True is refused.
        for impl in info.supported_impls:
            if impl in kwargs:
                continue
            ours_class(_model(dtype, device).parameters(), **kwargs, **{impl: False})
            with pytest.raises(ValueError, match=rf"{impl}=True is not supported"):
                ours_class(_model(dtype, device).parameters(), **kwargs, **{impl: True})
        compared += 1
    assert compared > 0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optim_db_error_inputs_raise(name, device):
    info, ours_class = OPTIM_INFOS[name], OPTIMIZERS[name]
    errors = info.optim_error_inputs_func(device=device, dtype=torch.float64)
    for error_input in errors:
        config = error_input.optimizer_error_input
        params = config.params
        if params is None:
            params = [torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64, device=device))]
        where = f"{name}({config.kwargs}) [{config.desc}]"
        refusal = _refusal(config.kwargs)
        if refusal is not None:  # e.g. torch's RuntimeError for foreach=True, fused=True
            expectation = pytest.raises(ValueError, match=refusal)
        elif issubclass(error_input.error_type, Warning):
            expectation = pytest.warns(error_input.error_type, match=error_input.error_regex)
        else:
            expectation = pytest.raises(error_input.error_type)
        try:
            if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
                with expectation:
                    ours_class(params, **config.kwargs)
            else:
                optimizer = ours_class(params, **config.kwargs)
                with expectation:
                    optimizer.step()
        except pytest.fail.Exception as failure:
            pytest.fail(f"{where}: expected {error_input.error_type.__name__}: {failure}")
