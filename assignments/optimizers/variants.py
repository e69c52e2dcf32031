"""Implementations of the optimizers assignment's graded functions, for the tests of the tests.

Each ``code`` is the whole content of a solution cell of ``optimizers.ipynb``. WRONG
ones are plausible mistakes that must lose the points of the test cells in ``fails``;
ALTERNATIVE ones are correct but written differently from the solution and must get
full points; DELEGATING ones call the reference (``npfl_lib``) or ``torch.optim`` and
must be rejected by ``forbid`` in the test cells in ``fails``.
"""

_SGD = '''\
def sgd_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor | None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    first_step: bool = False,
) -> None:
    """One step of SGD with (Nesterov) momentum, in place, as ``torch.optim.SGD``."""
'''

_ADAM = '''\
def adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """One step of Adam with coupled L2 weight decay, in place, as ``torch.optim.Adam``."""
'''

_ADAMW = '''\
def adamw_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> None:
    """One step of AdamW (decoupled weight decay), in place, as ``torch.optim.AdamW``."""
'''

_GROUPS = '''\
def param_groups_no_decay(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: weights with ``weight_decay``, biases without."""
'''

WRONG = [
    # --- sgd_step
    {
        "cell": "sgd_step",
        "name": "Nesterov treated as plain momentum",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = momentum_buffer
    param.sub_(lr * grad)
""",
        "fails": ["test_sgd_nesterov"],
    },
    {
        "cell": "sgd_step",
        "name": "momentum with dampening on the first step (buffer starts at zero)",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            momentum_buffer.zero_()
        momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param.sub_(lr * grad)
""",
        "fails": ["test_sgd_momentum"],
    },
    {
        "cell": "sgd_step",
        "name": "the first step keeps the old buffer content",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param.sub_(lr * grad)
""",
        "fails": ["test_sgd_momentum", "test_sgd_nesterov"],
    },
    {
        "cell": "sgd_step",
        "name": "weight decay added to the step instead of the gradient (not in the buffer)",
        "code": _SGD
        + """    direction = grad
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        direction = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param.sub_(lr * (direction + weight_decay * param))
""",
        "fails": ["test_sgd_momentum", "test_sgd_nesterov"],
    },
    {
        "cell": "sgd_step",
        "name": "Nesterov looks ahead with the buffer before its update",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        old = torch.zeros_like(param) if first_step else momentum_buffer.clone()
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = grad + momentum * old if nesterov else momentum_buffer
    param.sub_(lr * grad)
""",
        "fails": ["test_sgd_nesterov"],
    },
    {
        "cell": "sgd_step",
        "name": "param rebound instead of updated in place",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param = param - lr * grad
""",
        "fails": ["test_sgd_momentum", "test_sgd_nesterov"],
    },
    # --- adam_step
    {
        "cell": "adam_step",
        "name": "Adam without bias correction",
        "code": _ADAM
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    param.sub_(lr * exp_avg / (exp_avg_sq.sqrt() + eps))
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adam_step",
        "name": "eps inside the square root",
        "code": _ADAM
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat + eps).sqrt())
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adam_step",
        "name": "eps added before the bias correction of v",
        "code": _ADAM
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() + eps) / (1 - beta2**step) ** 0.5
    param.sub_(lr * m_hat / denom)
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adam_step",
        "name": "bias correction one step ahead (beta ** (step + 1))",
        "code": _ADAM
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1 ** (step + 1))
    v_hat = exp_avg_sq / (1 - beta2 ** (step + 1))
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adam_step",
        "name": "Adam's weight decay decoupled (applied to the weights, not the gradient)",
        "code": _ADAM
        + """    param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))
""",
        "fails": ["test_adam"],
    },
    # --- adamw_step
    {
        "cell": "adamw_step",
        "name": "AdamW decay without lr",
        "code": _ADAMW
        + """    param.mul_(1 - weight_decay)
    adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
""",
        "fails": ["test_adamw"],
    },
    {
        "cell": "adamw_step",
        "name": "AdamW decay applied after the Adam update",
        "code": _ADAMW
        + """    adam_step(
        param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps
    )
    param.mul_(1 - lr * weight_decay)
""",
        "fails": ["test_adamw"],
    },
    {
        "cell": "adamw_step",
        "name": "AdamW as Adam + L2 (coupled decay)",
        "code": _ADAMW
        + """    adam_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )
""",
        "fails": ["test_adamw"],
    },
    # --- param_groups_no_decay
    {
        "cell": "param_groups_no_decay",
        "name": "biases decayed (every parameter in the decayed group)",
        "code": _GROUPS
        + """    return [
        {"params": list(module.parameters()), "weight_decay": weight_decay},
        {"params": [], "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "biases chosen by name (normalization scales are decayed)",
        "code": _GROUPS
        + """    named = list(module.named_parameters())
    weights = [p for name, p in named if "bias" not in name]
    biases = [p for name, p in named if "bias" in name]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "tied weights listed twice (parameters collected per module)",
        "code": _GROUPS
        + """    weights, biases = [], []
    for layer in module.modules():
        for p in layer.parameters(recurse=False):
            (weights if p.ndim >= 2 else biases).append(p)
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "only 1-D parameters count as biases (a 0-D scale is decayed)",
        "code": _GROUPS
        + """    weights = [p for p in module.parameters() if p.ndim != 1]
    biases = [p for p in module.parameters() if p.ndim == 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
    # --- near-misses: the solution with one small, plausible error (issue 20)
    {
        "cell": "sgd_step",
        "name": "near-miss: sgd_step giving nan for gradients above 50",
        "code": _SGD
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    if momentum != 0:
        if first_step:
            momentum_buffer.copy_(grad)
        else:
            momentum_buffer.mul_(momentum).add_((1 - dampening) * grad)
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    param.sub_(lr * grad)
    if grad.abs().max() > 50:
        param.fill_(float("nan"))
""",
        "fails": ["test_sgd_momentum"],
    },
    {
        "cell": "adam_step",
        "name": "near-miss: adam_step giving nan for gradients above 50",
        "code": _ADAM
        + """    if weight_decay != 0:
        grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_((1 - beta1) * grad)
    exp_avg_sq.mul_(beta2).add_((1 - beta2) * grad * grad)
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    update = lr * m_hat / (v_hat.sqrt() + eps)
    param.sub_(torch.where(grad.abs() > 50, float("nan"), update))
""",
        "fails": ["test_adam"],
    },
    {
        "cell": "adamw_step",
        "name": "near-miss: adamw_step giving nan for gradients above 50",
        "code": _ADAMW
        + """    param.mul_(1 - lr * weight_decay)
    adam_step(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps)
    if grad.abs().max() > 50:
        param.fill_(float("nan"))
""",
        "fails": ["test_adamw"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "near-miss: float32 copies of the parameters",
        "code": _GROUPS
        + """    weights = [p.float() for p in module.parameters() if p.ndim >= 2]
    biases = [p.float() for p in module.parameters() if p.ndim <= 1]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
]

ALTERNATIVE = [
    {
        "cell": "sgd_step",
        "name": "augmented assignments and explicit branches",
        "code": _SGD
        + """    direction = grad + weight_decay * param
    if momentum > 0:
        if first_step:
            momentum_buffer[...] = direction
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * direction
        if nesterov:
            direction = direction + momentum * momentum_buffer
        else:
            direction = momentum_buffer.clone()
    param -= lr * direction
""",
    },
    {
        "cell": "adam_step",
        "name": "torch's arrangement: lerp, folded bias corrections, addcdiv",
        "code": "import math\n\n\n"
        + _ADAM
        + """    if weight_decay:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr / (1 - beta1**step)
    denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
""",
    },
    {
        "cell": "adamw_step",
        "name": "self-contained, without calling adam_step",
        "code": _ADAMW
        + """    param *= 1 - lr * weight_decay
    exp_avg[...] = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * grad**2
    m_hat = exp_avg / (1 - beta1**step)
    v_hat = exp_avg_sq / (1 - beta2**step)
    param -= lr * m_hat / (torch.sqrt(v_hat) + eps)
""",
    },
    {
        "cell": "param_groups_no_decay",
        "name": "one loop over named_parameters with dim()",
        "code": _GROUPS
        + """    decay, no_decay = [], []
    for _name, p in module.named_parameters():
        if p.dim() > 1:
            decay.append(p)
        else:
            no_decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
""",
    },
]

DELEGATING = [
    {
        "cell": "sgd_step",
        "name": "calls torch.optim.SGD",
        "code": _SGD
        + """    optimizer = torch.optim.SGD(
        [param],
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        foreach=False,
    )
    if momentum != 0 and not first_step:
        optimizer.state[param]["momentum_buffer"] = momentum_buffer
    param.grad = grad
    optimizer.step()
    param.grad = None
    if momentum != 0:
        momentum_buffer.copy_(optimizer.state[param]["momentum_buffer"])
""",
        "fails": ["test_sgd_momentum", "test_sgd_nesterov"],
    },
    {
        "cell": "sgd_step",
        "name": "calls the reference npfl_lib.optim.kernels.sgd_step",
        "code": _SGD
        + """    from npfl_lib.optim.kernels import sgd_step as reference

    reference(
        param,
        grad,
        momentum_buffer,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        first_step=first_step,
    )
""",
        "fails": ["test_sgd_momentum", "test_sgd_nesterov"],
    },
    {
        "cell": "adam_step",
        "name": "calls torch.optim.Adam with the state filled in",
        "code": _ADAM
        + """    optimizer = torch.optim.Adam(
        [param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, foreach=False
    )
    optimizer.state[param] = {
        "step": torch.tensor(float(step - 1)),
        "exp_avg": exp_avg,
        "exp_avg_sq": exp_avg_sq,
    }
    param.grad = grad
    optimizer.step()
    param.grad = None
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adam_step",
        "name": "calls the reference npfl_lib.optim.adam_step",
        "code": _ADAM
        + """    import npfl_lib.optim

    npfl_lib.optim.adam_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )
""",
        "fails": ["test_adam", "test_adamw"],
    },
    {
        "cell": "adamw_step",
        "name": "calls the reference npfl_lib.optim.kernels.adamw_step",
        "code": _ADAMW
        + """    from npfl_lib.optim import kernels

    kernels.adamw_step(
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )
""",
        "fails": ["test_adamw"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "calls the reference npfl_lib.optim.param_groups_no_decay",
        "code": _GROUPS
        + """    from npfl_lib.optim import param_groups_no_decay as reference

    return reference(module, weight_decay)
""",
        "fails": ["test_param_groups"],
    },
    {
        "cell": "param_groups_no_decay",
        "name": "selects the weights with npfl_lib's regularized_parameters",
        "code": _GROUPS
        + """    from npfl_lib.functional.regularization import regularized_parameters

    decayed = {id(p) for _, p in regularized_parameters(module)}
    weights = [p for p in module.parameters() if id(p) in decayed]
    biases = [p for p in module.parameters() if id(p) not in decayed]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
""",
        "fails": ["test_param_groups"],
    },
]
