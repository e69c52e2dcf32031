"""Variants of the regularization solution cells, for the tests of the tests.

Each ``code`` is the whole replacement content of the solution cell ``cell``.
WRONG and DELEGATING variants must lose the points of every test cell in ``fails``;
ALTERNATIVE variants are correct and must get full points.
"""

_DROPOUT_HEAD = '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    if not 0 <= p < 1:
        raise ValueError(f"p must lie in [0, 1), got {p}")
    if not training or p == 0:
        return x
    device = generator.device if generator is not None else x.device
'''

_L2_HEAD = '''def l2_penalty(module):
    """The L2 penalty of the weights."""
'''

_L1_HEAD = '''def l1_step_(parameters, lr, l1):
    """The lecture's L1 update, in place."""
'''

_SMOOTH_HEAD = '''def smooth_labels(target, num_classes, label_smoothing):
    """Class indices to label-smoothed target distributions."""
'''

_MIXUP_HEAD = '''def mixup(inputs, target_probs, lam, perm):
    """MixUp with a given mixing weight and pairing."""
'''

WRONG = [
    # dropout
    {
        "cell": "dropout",
        "name": "dropout without the 1/(1-p) scaling",
        "code": _DROPOUT_HEAD
        + """    keep = torch.rand(x.shape, generator=generator, device=device) >= p
    return x * keep.to(x.device)
""",
        "fails": ["test_dropout"],
    },
    {
        "cell": "dropout",
        "name": "dropout with p as the keep probability",
        "code": _DROPOUT_HEAD
        + """    keep = torch.rand(x.shape, generator=generator, device=device) < p
    return x * keep.to(x.device) / p
""",
        "fails": ["test_dropout"],
    },
    {
        "cell": "dropout",
        "name": "dropout that ignores training=False",
        "code": '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    if not 0 <= p < 1:
        raise ValueError(f"p must lie in [0, 1), got {p}")
    device = generator.device if generator is not None else x.device
    keep = torch.rand(x.shape, generator=generator, device=device) >= p
    return x * keep.to(x.device) / (1 - p)
''',
        "fails": ["test_dropout"],
    },
    {
        "cell": "dropout",
        "name": "dropout mask drawn in the dtype of x",
        "code": _DROPOUT_HEAD
        + """    keep = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype) >= p
    return x * keep.to(x.device) / (1 - p)
""",
        "fails": ["test_dropout"],
    },
    {
        "cell": "dropout",
        "name": "dropout that accepts any p",
        "code": '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    if not training or p == 0:
        return x
    device = generator.device if generator is not None else x.device
    keep = torch.rand(x.shape, generator=generator, device=device) >= p
    return x * keep.to(x.device) / (1 - p)
''',
        "fails": ["test_dropout"],
    },
    # l2_penalty
    {
        "cell": "l2_penalty",
        "name": "L2 including the biases",
        "code": _L2_HEAD + "    return 0.5 * sum((w**2).sum() for w in module.parameters())\n",
        "fails": ["test_l2_penalty"],
    },
    {
        "cell": "l2_penalty",
        "name": "L2 without the 1/2",
        "code": _L2_HEAD
        + "    return sum((w**2).sum() for w in module.parameters() if w.ndim >= 2)\n",
        "fails": ["test_l2_penalty"],
    },
    {
        "cell": "l2_penalty",
        "name": "L2 excluding biases by name (penalizes LayerNorm scales)",
        "code": _L2_HEAD
        + """    return 0.5 * sum(
        (w**2).sum() for name, w in module.named_parameters() if not name.endswith("bias")
    )
""",
        "fails": ["test_l2_penalty"],
    },
    {
        "cell": "l2_penalty",
        "name": "L2 over state_dict() (detached: no gradient)",
        "code": _L2_HEAD
        + """    weights = [w for w in module.state_dict().values() if w.ndim >= 2]
    return 0.5 * sum((w**2).sum() for w in weights)
""",
        "fails": ["test_l2_penalty"],
    },
    # l1_step_
    {
        "cell": "l1_step",
        "name": "L1 without the clip (plain subgradient step)",
        "code": _L1_HEAD
        + """    with torch.no_grad():
        for theta in parameters:
            theta -= lr * l1 * theta.sign()
""",
        "fails": ["test_l1_step"],
    },
    {
        "cell": "l1_step",
        "name": "L1 step proportional to the weight (that is L2 decay)",
        "code": _L1_HEAD
        + """    with torch.no_grad():
        for theta in parameters:
            theta -= lr * l1 * theta
""",
        "fails": ["test_l1_step"],
    },
    {
        "cell": "l1_step",
        "name": "L1 update without torch.no_grad()",
        "code": _L1_HEAD
        + """    for theta in parameters:
        theta -= torch.clamp(theta.abs(), max=lr * l1) * theta.sign()
""",
        "fails": ["test_l1_step"],
    },
    {
        "cell": "l1_step",
        "name": "L1 update that rebinds instead of updating in place",
        "code": _L1_HEAD
        + """    with torch.no_grad():
        for theta in parameters:
            theta = theta - torch.clamp(theta.abs(), max=lr * l1) * theta.sign()
""",
        "fails": ["test_l1_step"],
    },
    # smooth_labels
    {
        "cell": "smooth_labels",
        "name": "label smoothing a/(K-1)",
        "code": _SMOOTH_HEAD
        + """    classes = torch.arange(num_classes, device=target.device)
    one_hot = (target.unsqueeze(-1) == classes).to(torch.get_default_dtype())
    return (1 - label_smoothing) * one_hot + label_smoothing / (num_classes - 1) * (1 - one_hot)
""",
        "fails": ["test_smooth_labels"],
    },
    {
        "cell": "smooth_labels",
        "name": "label smoothing without the (1 - a) factor",
        "code": _SMOOTH_HEAD
        + """    classes = torch.arange(num_classes, device=target.device)
    one_hot = (target.unsqueeze(-1) == classes).to(torch.get_default_dtype())
    return one_hot + label_smoothing / num_classes
""",
        "fails": ["test_smooth_labels"],
    },
    # mixup
    {
        "cell": "mixup",
        "name": "mixup mixing the targets with (1 - lam) and lam swapped",
        "code": _MIXUP_HEAD
        + """    perm = perm.to(inputs.device)
    mixed_inputs = lam * inputs + (1 - lam) * inputs[perm]
    return mixed_inputs, (1 - lam) * target_probs + lam * target_probs[perm]
""",
        "fails": ["test_mixup"],
    },
    {
        "cell": "mixup",
        "name": "mixup leaving the targets unmixed",
        "code": _MIXUP_HEAD
        + """    perm = perm.to(inputs.device)
    return lam * inputs + (1 - lam) * inputs[perm], target_probs
""",
        "fails": ["test_mixup"],
    },
    {
        "cell": "mixup",
        "name": "mixup overwriting its inputs in place",
        "code": _MIXUP_HEAD
        + """    perm = perm.to(inputs.device)
    partners, partner_probs = inputs[perm], target_probs[perm]
    mixed_inputs = inputs.mul_(lam).add_((1 - lam) * partners)
    return mixed_inputs, target_probs.mul_(lam).add_((1 - lam) * partner_probs)
""",
        "fails": ["test_mixup"],
    },
]

ALTERNATIVE = [
    {
        "cell": "dropout",
        "name": "dropout with a float mask times the reciprocal, copying in evaluation",
        "code": '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    if p < 0 or p >= 1:
        raise ValueError("p must lie in [0, 1)")
    if not training or p == 0:
        return x.clone()
    where = x.device if generator is None else generator.device
    u = torch.rand(x.shape, generator=generator, device=where).to(x.device)
    mask = torch.where(u >= p, 1.0, 0.0).to(x.dtype)
    return x * mask * (1.0 / (1.0 - p))
''',
    },
    {
        "cell": "l2_penalty",
        "name": "L2 from squared norms of the named weights",
        "code": _L2_HEAD
        + """    total = 0.0
    for _, weight in module.named_parameters():
        if weight.dim() > 1:
            total = total + torch.linalg.vector_norm(weight) ** 2
    return total / 2
""",
    },
    {
        "cell": "l1_step",
        "name": "L1 as soft thresholding, sign * max(|theta| - lr * l1, 0)",
        "code": _L1_HEAD
        + """    shrink = lr * l1
    for theta in list(parameters):
        with torch.no_grad():
            theta.copy_(theta.sign() * (theta.abs() - shrink).clamp(min=0))
""",
    },
    {
        "cell": "smooth_labels",
        "name": "label smoothing by full + scatter_",
        "code": _SMOOTH_HEAD
        + """    a, k = label_smoothing, num_classes
    out = torch.full((*target.shape, k), a / k, device=target.device)
    return out.scatter_(-1, target.unsqueeze(-1), 1 - a + a / k)
""",
    },
    {
        "cell": "mixup",
        "name": "mixup by torch.lerp",
        "code": _MIXUP_HEAD
        + """    x_perm = inputs[perm.to(inputs.device)]
    y_perm = target_probs[perm.to(target_probs.device)]
    return torch.lerp(x_perm, inputs, lam), torch.lerp(y_perm, target_probs, lam)
""",
    },
]

DELEGATING = [
    {
        "cell": "dropout",
        "name": "torch.nn.functional.dropout",
        "code": '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    return torch.nn.functional.dropout(x, p, training)
''',
        "fails": ["test_dropout"],
    },
    {
        "cell": "dropout",
        "name": "the reference npfl_lib.functional.dropout",
        "code": '''def dropout(x, p=0.5, training=True, generator=None):
    """Inverted dropout."""
    import npfl_lib.functional

    return npfl_lib.functional.dropout(x, p, training, generator)
''',
        "fails": ["test_dropout"],
    },
    {
        "cell": "l2_penalty",
        "name": "the reference npfl_lib.functional.l2_penalty",
        "code": _L2_HEAD
        + """    import npfl_lib.functional

    return npfl_lib.functional.l2_penalty(module)
""",
        "fails": ["test_l2_penalty"],
    },
    {
        "cell": "l1_step",
        "name": "the reference npfl_lib.optim.l1_step_",
        "code": _L1_HEAD
        + """    from npfl_lib.optim import l1_step_ as reference

    reference(parameters, lr, l1)
""",
        "fails": ["test_l1_step"],
    },
    {
        "cell": "l1_step",
        "name": "torch.nn.functional.softshrink",
        "code": _L1_HEAD
        + """    with torch.no_grad():
        for theta in parameters:
            theta.copy_(torch.nn.functional.softshrink(theta, lr * l1))
""",
        "fails": ["test_l1_step"],
    },
    {
        "cell": "smooth_labels",
        "name": "the reference npfl_lib.functional.smooth_labels",
        "code": _SMOOTH_HEAD
        + """    from npfl_lib.functional import smooth_labels as reference

    return reference(target, num_classes, label_smoothing)
""",
        "fails": ["test_smooth_labels"],
    },
    {
        "cell": "mixup",
        "name": "the reference's mixing helper npfl_lib.functional.augmentation._mix",
        "code": _MIXUP_HEAD
        + """    from npfl_lib.functional.augmentation import _mix

    return _mix(lam, inputs, perm), _mix(lam, target_probs, perm)
""",
        "fails": ["test_mixup"],
    },
]
