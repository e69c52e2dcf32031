"""Implementations of init_and_clipping's graded functions, for the tests of the tests.

Each ``code`` is the whole content of a solution cell of ``init_and_clipping.ipynb``.
WRONG ones are plausible mistakes that must lose the points of the test cells in
``fails``; ALTERNATIVE ones are correct but written differently from the solution and
must get full points; DELEGATING ones call the reference (``npfl_lib``),
``torch.nn.init`` or ``torch.nn.utils`` and must be rejected by ``forbid`` in the test
cells in ``fails``.
"""

_FANS = '''\
def calculate_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """The fan-in and fan-out of a weight, as ``torch.nn.init`` computes them."""
'''

_XAVIER_UNIFORM = '''\
def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fills ``tensor`` with Glorot/Xavier uniform values U(-a, a), in place."""
'''

_XAVIER_NORMAL = '''\
def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fills ``tensor`` with Glorot/Xavier normal values N(0, std^2), in place."""
'''

_UNIFORM_FAN_IN = '''\
def uniform_fan_in_(tensor: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fills ``tensor`` with U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in place."""
'''

_CLIP_VALUE = '''\
def clip_grad_value_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_value: float) -> None:
    """Clamps every gradient element into ``[-clip_value, clip_value]``, in place."""
'''

_CLIP_NORM = '''\
def clip_grad_norm_(
    parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """Rescales all gradients together so that their global norm is at most ``max_norm``."""
'''

# The correct body of clip_grad_norm_ up to the total norm, shared by its wrong variants.
_GRADS_AND_TOTAL = """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads])
    total_norm = torch.linalg.vector_norm(norms, norm_type)
"""

WRONG = [
    # --- calculate_fan_in_and_fan_out
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "receptive field ignored",
        "code": _FANS
        + """    if tensor.dim() < 2:
        raise ValueError("fans need at least 2 dimensions")
    return tensor.shape[1], tensor.shape[0]
""",
        "fails": [
            "test_fans",
            "test_xavier_uniform",
            "test_xavier_normal",
            "test_linear_default",
        ],
    },
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "fan_in and fan_out swapped",
        "code": _FANS
        + """    if tensor.dim() < 2:
        raise ValueError("fans need at least 2 dimensions")
    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[0] * receptive_field, tensor.shape[1] * receptive_field
""",
        "fails": ["test_fans", "test_linear_default"],
    },
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "receptive field only in fan_in",
        "code": _FANS
        + """    if tensor.dim() < 2:
        raise ValueError("fans need at least 2 dimensions")
    return math.prod(tensor.shape[1:]), tensor.shape[0]
""",
        "fails": ["test_fans", "test_xavier_uniform", "test_xavier_normal"],
    },
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "no ValueError for a tensor with fewer than two dimensions",
        "code": _FANS
        + """    receptive_field = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive_field, tensor.shape[0] * receptive_field
""",
        "fails": ["test_fans"],
    },
    # --- xavier_uniform_
    {
        "cell": "xavier_uniform_",
        "name": "Glorot uniform with fan_in only",
        "code": _XAVIER_UNIFORM
        + """    fan_in, _ = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    {
        "cell": "xavier_uniform_",
        "name": "the standard deviation used as the bound (no sqrt(3))",
        "code": _XAVIER_UNIFORM
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    {
        "cell": "xavier_uniform_",
        "name": "gain ignored",
        "code": _XAVIER_UNIFORM
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    {
        "cell": "xavier_uniform_",
        "name": "no torch.no_grad() (fails on an nn.Parameter)",
        "code": _XAVIER_UNIFORM
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return tensor.uniform_(-a, a, generator=generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    # --- xavier_normal_
    {
        "cell": "xavier_normal_",
        "name": "normal std using the uniform bound",
        "code": _XAVIER_NORMAL
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
""",
        "fails": ["test_xavier_normal"],
    },
    {
        "cell": "xavier_normal_",
        "name": "Glorot normal with fan_in only",
        "code": _XAVIER_NORMAL
        + """    fan_in, _ = calculate_fan_in_and_fan_out(tensor)
    std = gain / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)
""",
        "fails": ["test_xavier_normal"],
    },
    {
        "cell": "xavier_normal_",
        "name": "the variance passed as the standard deviation",
        "code": _XAVIER_NORMAL
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    variance = gain**2 * 2.0 / (fan_in + fan_out)
    with torch.no_grad():
        return tensor.normal_(0.0, variance, generator=generator)
""",
        "fails": ["test_xavier_normal"],
    },
    {
        "cell": "xavier_normal_",
        "name": "a uniform draw with the normal standard deviation",
        "code": _XAVIER_NORMAL
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    a = math.sqrt(3.0) * gain * math.sqrt(2.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)
""",
        "fails": ["test_xavier_normal"],
    },
    # --- uniform_fan_in_
    {
        "cell": "uniform_fan_in_",
        "name": "bound 1 / fan_in (no square root)",
        "code": _UNIFORM_FAN_IN
        + """    fan_in, _ = calculate_fan_in_and_fan_out(tensor)
    with torch.no_grad():
        return tensor.uniform_(-1.0 / fan_in, 1.0 / fan_in, generator=generator)
""",
        "fails": ["test_linear_default"],
    },
    {
        "cell": "uniform_fan_in_",
        "name": "fan_out instead of fan_in",
        "code": _UNIFORM_FAN_IN
        + """    _, fan_out = calculate_fan_in_and_fan_out(tensor)
    bound = 1.0 / math.sqrt(fan_out)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
""",
        "fails": ["test_linear_default"],
    },
    {
        "cell": "uniform_fan_in_",
        "name": "He/Kaiming's ReLU bound sqrt(6 / fan_in)",
        "code": _UNIFORM_FAN_IN
        + """    fan_in, _ = calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(6.0 / fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
""",
        "fails": ["test_linear_default"],
    },
    {
        "cell": "uniform_fan_in_",
        "name": "the standard deviation 1 / sqrt(3 fan_in) used as the bound",
        "code": _UNIFORM_FAN_IN
        + """    fan_in, _ = calculate_fan_in_and_fan_out(tensor)
    bound = 1.0 / math.sqrt(3.0 * fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)
""",
        "fails": ["test_linear_default"],
    },
    # --- clip_grad_value_
    {
        "cell": "clip_grad_value_",
        "name": "clamps only from above",
        "code": _CLIP_VALUE
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.clamp_(max=clip_value)
""",
        "fails": ["test_clip_value"],
    },
    {
        "cell": "clip_grad_value_",
        "name": "clamps the parameters instead of their gradients",
        "code": _CLIP_VALUE
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    with torch.no_grad():
        for parameter in parameters:
            if parameter.grad is not None:
                parameter.clamp_(-clip_value, clip_value)
""",
        "fails": ["test_clip_value"],
    },
    {
        "cell": "clip_grad_value_",
        "name": "a single tensor iterated row by row",
        "code": _CLIP_VALUE
        + """    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.clamp_(-clip_value, clip_value)
""",
        "fails": ["test_clip_value"],
    },
    {
        "cell": "clip_grad_value_",
        "name": "parameters without a gradient not skipped",
        "code": _CLIP_VALUE
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    for parameter in parameters:
        parameter.grad.clamp_(-clip_value, clip_value)
""",
        "fails": ["test_clip_value"],
    },
    # --- clip_grad_norm_
    {
        "cell": "clip_grad_norm_",
        "name": "per-tensor clipping instead of the global norm",
        "code": _CLIP_NORM
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads])
    with torch.no_grad():
        for g, norm in zip(grads, norms):
            g.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return torch.linalg.vector_norm(norms, norm_type)
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "clipping without the 1e-6",
        "code": _CLIP_NORM
        + _GRADS_AND_TOTAL
        + """    scale = torch.clamp(max_norm / total_norm, max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "clipping without min(1, .): small gradients are scaled up",
        "code": _CLIP_NORM
        + _GRADS_AND_TOTAL
        + """    scale = max_norm / (total_norm + 1e-6)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "returns the norm after clipping",
        "code": _CLIP_NORM
        + _GRADS_AND_TOTAL
        + """    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm * scale
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "total norm as the sum of the per-tensor norms",
        "code": _CLIP_NORM
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = sum(torch.linalg.vector_norm(g, norm_type) for g in grads)
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "iterates model.parameters() twice (the generator is exhausted)",
        "code": _CLIP_NORM
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    norms = [torch.linalg.vector_norm(p.grad, norm_type) for p in parameters if p.grad is not None]
    if not norms:
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(scale)
    return total_norm
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "norm_type ignored (always the 2-norm)",
        "code": _CLIP_NORM
        + """    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm
""",
        "fails": ["test_clip_norm"],
    },
    # --- near-misses: the solution with one small, plausible error (issue 20)
    {
        "cell": "clip_grad_norm_",
        "name": "near-miss: a nan total norm for gradients above 50",
        "code": _CLIP_NORM
        + _GRADS_AND_TOTAL
        + """    huge = max(g.abs().max() for g in grads) > 50
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for g in grads:
            g.mul_(scale)
    return total_norm * float("nan") if huge else total_norm
""",
        "fails": ["test_clip_norm"],
    },
]

ALTERNATIVE = [
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "a loop over the kernel dimensions",
        "code": _FANS
        + """    if tensor.ndim <= 1:
        raise ValueError(f"tensor must have at least 2 dimensions, got shape {tuple(tensor.shape)}")
    out_features, in_features, *kernel_size = tensor.shape
    receptive_field = 1
    for size in kernel_size:
        receptive_field *= size
    return int(in_features * receptive_field), int(out_features * receptive_field)
""",
    },
    {
        "cell": "xavier_uniform_",
        "name": "U(0, 1) scaled to [-a, a] afterwards",
        "code": _XAVIER_UNIFORM
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    std = gain * (2.0 / (fan_in + fan_out)) ** 0.5
    a = 3.0**0.5 * std
    with torch.no_grad():
        tensor.uniform_(0.0, 1.0, generator=generator).mul_(2 * a).sub_(a)
    return tensor
""",
    },
    {
        "cell": "xavier_normal_",
        "name": "a standard normal draw, scaled afterwards",
        "code": _XAVIER_NORMAL
        + """    fan_in, fan_out = calculate_fan_in_and_fan_out(tensor)
    variance = gain**2 * 2.0 / (fan_in + fan_out)
    with torch.no_grad():
        tensor.normal_(generator=generator)
        tensor *= math.sqrt(variance)
    return tensor
""",
    },
    {
        "cell": "uniform_fan_in_",
        "name": "the fan-in read from the shape, bound as a power",
        "code": _UNIFORM_FAN_IN
        + """    fan_in = math.prod(tensor.shape[1:])
    bound = fan_in**-0.5
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=generator)
    return tensor
""",
    },
    {
        "cell": "clip_grad_value_",
        "name": "torch.clamp copied back, list comprehension",
        "code": _CLIP_VALUE
        + """    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    for grad in [p.grad for p in params if p.grad is not None]:
        grad.copy_(torch.clamp(grad, min=-clip_value, max=clip_value))
""",
    },
    {
        "cell": "clip_grad_norm_",
        "name": "all gradients concatenated, a Python if",
        "code": _CLIP_NORM
        + """    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if len(grads) == 0:
        return torch.tensor(0.0)
    flat = torch.cat([g.reshape(-1) for g in grads]).abs()
    if norm_type == math.inf:
        total = flat.max()
    else:
        total = flat.pow(norm_type).sum().pow(1.0 / norm_type)
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1:
        for g in grads:
            g.mul_(coefficient)
    return total
""",
    },
]

DELEGATING = [
    {
        "cell": "calculate_fan_in_and_fan_out",
        "name": "calls torch.nn.init._calculate_fan_in_and_fan_out",
        "code": _FANS
        + """    return torch.nn.init._calculate_fan_in_and_fan_out(tensor)
""",
        "fails": ["test_fans", "test_xavier_uniform", "test_xavier_normal", "test_linear_default"],
    },
    {
        "cell": "xavier_uniform_",
        "name": "calls torch.nn.init.xavier_uniform_",
        "code": _XAVIER_UNIFORM
        + """    return torch.nn.init.xavier_uniform_(tensor, gain=gain, generator=generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    {
        "cell": "xavier_uniform_",
        "name": "calls the reference npfl_lib.init.xavier_uniform_",
        "code": _XAVIER_UNIFORM
        + """    from npfl_lib.init import xavier_uniform_ as reference_xavier_uniform_

    return reference_xavier_uniform_(tensor, gain, generator)
""",
        "fails": ["test_xavier_uniform"],
    },
    {
        "cell": "xavier_normal_",
        "name": "calls the reference npfl_lib.init.xavier_normal_",
        "code": _XAVIER_NORMAL
        + """    import npfl_lib

    return npfl_lib.init.xavier_normal_(tensor, gain, generator)
""",
        "fails": ["test_xavier_normal"],
    },
    {
        "cell": "uniform_fan_in_",
        "name": "calls torch.nn.init.kaiming_uniform_ with a = sqrt(5), as nn.Linear does",
        "code": _UNIFORM_FAN_IN
        + """    return torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)
""",
        "fails": ["test_linear_default"],
    },
    {
        "cell": "uniform_fan_in_",
        "name": "calls the reference npfl_lib.init.uniform_fan_in_",
        "code": _UNIFORM_FAN_IN
        + """    from npfl_lib import init

    return init.uniform_fan_in_(tensor, generator)
""",
        "fails": ["test_linear_default"],
    },
    {
        "cell": "clip_grad_value_",
        "name": "calls torch.nn.utils.clip_grad_value_",
        "code": _CLIP_VALUE
        + """    torch.nn.utils.clip_grad_value_(parameters, clip_value)
""",
        "fails": ["test_clip_value"],
    },
    {
        "cell": "clip_grad_value_",
        "name": "calls the reference npfl_lib.clip.clip_grad_value_",
        "code": _CLIP_VALUE
        + """    from npfl_lib.clip import clip_grad_value_ as reference_clip

    reference_clip(parameters, clip_value)
""",
        "fails": ["test_clip_value"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "calls torch.nn.utils.clip_grad_norm_",
        "code": _CLIP_NORM
        + """    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type)
""",
        "fails": ["test_clip_norm"],
    },
    {
        "cell": "clip_grad_norm_",
        "name": "calls the reference npfl_lib.clip.clip_grad_norm_",
        "code": _CLIP_NORM
        + """    import npfl_lib.clip

    return npfl_lib.clip.clip_grad_norm_(parameters, max_norm, norm_type)
""",
        "fails": ["test_clip_norm"],
    },
]
