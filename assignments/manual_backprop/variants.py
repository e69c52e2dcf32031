"""Variants of the manual_backprop solution cells, for the tests of the tests.

Each ``code`` is the whole replacement content of the solution cell ``cell``.
WRONG and DELEGATING variants must lose the points of every test cell in ``fails``;
ALTERNATIVE variants are correct and must get full points.
"""

_FORWARD_HEAD = '''def forward(params, x, activation="tanh"):
    """The forward pass of the MLP on a batch."""
'''

_BACKWARD_HEAD = '''def backward(params, x, targets, cache, activation="tanh"):
    """The gradients of the mean cross-entropy with respect to every parameter."""
'''

_SGD_HEAD = '''def sgd_step(params, grads, lr):
    """One SGD step, in place."""
'''

_TRAIN_HEAD = '''def train(inputs, targets, num_classes, activation="tanh", generator=None):
    """Trains a one-hidden-layer MLP with minibatch SGD and returns its parameters."""
'''

# The body of a correct training loop, with the hyperparameters left to fill in.
_TRAIN_LOOP = """    params = init_params(inputs.shape[1], hidden_size, num_classes, generator,
                         inputs.dtype, inputs.device)
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for start in range(0, len(inputs), batch_size):
            batch = order[start:start + batch_size]
            x, t = inputs[batch], targets[batch]
            cache = forward(params, x, activation)
            sgd_step(params, backward(params, x, t, cache, activation), lr)
    return params
"""

WRONG = [
    # forward
    {
        "cell": "forward",
        "name": "softmax without the max shift",
        "code": _FORWARD_HEAD
        + """    a = x @ params["W1"] + params["b1"]
    h = torch.tanh(a) if activation == "tanh" else torch.clamp(a, min=0)
    logits = h @ params["W2"] + params["b2"]
    exp = torch.exp(logits)
    return {"a": a, "h": h, "logits": logits, "probs": exp / exp.sum(dim=1, keepdim=True)}
""",
        "fails": ["test_forward"],
    },
    {
        "cell": "forward",
        "name": "softmax over the batch (dim 0) instead of the classes",
        "code": _FORWARD_HEAD
        + """    a = x @ params["W1"] + params["b1"]
    h = torch.tanh(a) if activation == "tanh" else torch.clamp(a, min=0)
    logits = h @ params["W2"] + params["b2"]
    exp = torch.exp(logits - logits.amax(dim=0, keepdim=True))
    return {"a": a, "h": h, "logits": logits, "probs": exp / exp.sum(dim=0, keepdim=True)}
""",
        "fails": ["test_forward"],
    },
    {
        "cell": "forward",
        "name": "forgets the hidden bias b1",
        "code": _FORWARD_HEAD
        + """    a = x @ params["W1"]
    h = torch.tanh(a) if activation == "tanh" else torch.clamp(a, min=0)
    logits = h @ params["W2"] + params["b2"]
    exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return {"a": a, "h": h, "logits": logits, "probs": exp / exp.sum(dim=1, keepdim=True)}
""",
        "fails": ["test_forward"],
    },
    # cross_entropy
    {
        "cell": "cross_entropy",
        "name": "log of the unshifted softmax",
        "code": '''def cross_entropy(logits, targets):
    """The mean softmax cross-entropy of a batch."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    rows = torch.arange(len(targets), device=logits.device)
    return -torch.log(probs[rows, targets]).mean()
''',
        "fails": ["test_cross_entropy"],
    },
    {
        "cell": "cross_entropy",
        "name": "sum over the batch instead of the mean",
        "code": '''def cross_entropy(logits, targets):
    """The mean softmax cross-entropy of a batch."""
    shifted = logits - logits.amax(dim=1, keepdim=True)
    log_probs = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))
    return -log_probs[torch.arange(len(targets), device=logits.device), targets].sum()
''',
        "fails": ["test_cross_entropy"],
    },
    # backward
    {
        "cell": "backward",
        "name": "gradient of the sum, not the mean, over the batch (no 1/N)",
        "code": _BACKWARD_HEAD
        + """    d_logits = cache["probs"].clone()
    d_logits[torch.arange(len(targets), device=x.device), targets] -= 1
    d_h = d_logits @ params["W2"].T
    d_a = d_h * (1 - cache["h"] ** 2) if activation == "tanh" else d_h * (cache["a"] > 0)
    return {"W1": x.T @ d_a, "b1": d_a.sum(dim=0),
            "W2": cache["h"].T @ d_logits, "b2": d_logits.sum(dim=0)}
""",
        "fails": ["test_backward", "test_train"],
    },
    {
        "cell": "backward",
        "name": "tanh derivative taken as 1 - a**2 instead of 1 - h**2",
        "code": _BACKWARD_HEAD
        + """    d_logits = cache["probs"].clone()
    d_logits[torch.arange(len(targets), device=x.device), targets] -= 1
    d_logits /= len(targets)
    d_h = d_logits @ params["W2"].T
    d_a = d_h * (1 - cache["a"] ** 2) if activation == "tanh" else d_h * (cache["a"] > 0)
    return {"W1": x.T @ d_a, "b1": d_a.sum(dim=0),
            "W2": cache["h"].T @ d_logits, "b2": d_logits.sum(dim=0)}
""",
        "fails": ["test_backward"],
    },
    {
        "cell": "backward",
        "name": "ReLU derivative from h >= 0 (always 1)",
        "code": _BACKWARD_HEAD
        + """    d_logits = cache["probs"].clone()
    d_logits[torch.arange(len(targets), device=x.device), targets] -= 1
    d_logits /= len(targets)
    d_h = d_logits @ params["W2"].T
    d_a = d_h * (1 - cache["h"] ** 2) if activation == "tanh" else d_h * (cache["h"] >= 0)
    return {"W1": x.T @ d_a, "b1": d_a.sum(dim=0),
            "W2": cache["h"].T @ d_logits, "b2": d_logits.sum(dim=0)}
""",
        "fails": ["test_backward"],
    },
    {
        "cell": "backward",
        "name": "overwrites cache['probs'] in place (no clone)",
        "code": _BACKWARD_HEAD
        + """    d_logits = cache["probs"]
    d_logits[torch.arange(len(targets), device=x.device), targets] -= 1
    d_logits /= len(targets)
    d_h = d_logits @ params["W2"].T
    d_a = d_h * (1 - cache["h"] ** 2) if activation == "tanh" else d_h * (cache["a"] > 0)
    return {"W1": x.T @ d_a, "b1": d_a.sum(dim=0),
            "W2": cache["h"].T @ d_logits, "b2": d_logits.sum(dim=0)}
""",
        "fails": ["test_backward"],
    },
    # sgd_step
    {
        "cell": "sgd_step",
        "name": "gradient ascent (param += lr * grad)",
        "code": _SGD_HEAD
        + """    for name, param in params.items():
        param += lr * grads[name]
""",
        "fails": ["test_sgd_step", "test_train"],
    },
    {
        "cell": "sgd_step",
        "name": "scales the gradients in place",
        "code": _SGD_HEAD
        + """    for name, param in params.items():
        param -= grads[name].mul_(lr)
""",
        "fails": ["test_sgd_step"],
    },
    {
        "cell": "sgd_step",
        "name": "replaces the parameter tensors instead of updating them",
        "code": _SGD_HEAD
        + """    for name in params:
        params[name] = params[name] - lr * grads[name]
""",
        "fails": ["test_sgd_step"],
    },
    # train
    {
        "cell": "train",
        "name": "learning rate far too small",
        "code": _TRAIN_HEAD
        + "    hidden_size, epochs, batch_size, lr = 64, 5, 32, 1e-4\n"
        + _TRAIN_LOOP,
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "one minibatch per epoch",
        "code": _TRAIN_HEAD
        + """    params = init_params(inputs.shape[1], 64, num_classes, generator,
                         inputs.dtype, inputs.device)
    for _ in range(5):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        x, t = inputs[order[:32]], targets[order[:32]]
        sgd_step(params, backward(params, x, t, forward(params, x, activation), activation), 0.5)
    return params
""",
        "fails": ["test_train"],
    },
    # near-misses: the solution with one small, plausible error (issue 20)
    {
        "cell": "forward",
        "name": "near-miss: forward giving nan for inputs above 50",
        "code": _FORWARD_HEAD
        + """    a = x @ params["W1"] + params["b1"]
    h = torch.tanh(a) if activation == "tanh" else torch.clamp(a, min=0)
    logits = h @ params["W2"] + params["b2"]
    exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    probs = exp / exp.sum(dim=1, keepdim=True)
    if x.abs().max() > 50:
        probs = probs * float("nan")
    return {"a": a, "h": h, "logits": logits, "probs": probs}
""",
        "fails": ["test_forward"],
    },
    {
        "cell": "backward",
        "name": "near-miss: backward giving nan for inputs above 50",
        "code": _BACKWARD_HEAD
        + """    rows = torch.arange(len(targets), device=x.device)
    d_logits = cache["probs"].clone()
    d_logits[rows, targets] -= 1
    d_logits /= len(targets)
    d_h = d_logits @ params["W2"].T
    d_a = d_h * (1 - cache["h"] ** 2) if activation == "tanh" else d_h * (cache["a"] > 0)
    d_w1 = x.T @ d_a
    if x.abs().max() > 50:
        d_w1 = d_w1 * float("nan")
    return {"W1": d_w1, "b1": d_a.sum(dim=0), "W2": cache["h"].T @ d_logits,
            "b2": d_logits.sum(dim=0)}
""",
        "fails": ["test_backward"],
    },
    {
        "cell": "train",
        "name": "near-miss: the trained parameters off by a factor 1.001",
        "code": _TRAIN_HEAD
        + "    hidden_size, epochs, batch_size, lr = 64, 5, 32, 0.5\n"
        + _TRAIN_LOOP.replace(
            "    return params", "    return {k: 1.001 * v for k, v in params.items()}"
        ),
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "near-miss: trains in float32 whatever the inputs' dtype",
        "code": _TRAIN_HEAD
        + "    hidden_size, epochs, batch_size, lr = 64, 5, 32, 0.5\n"
        + "    dtype = inputs.dtype\n"
        + "    inputs = inputs.float()\n"
        + _TRAIN_LOOP.replace(
            "    return params", "    return {k: v.to(dtype) for k, v in params.items()}"
        ),
        "fails": ["test_train"],
    },
]

ALTERNATIVE = [
    {
        "cell": "forward",
        "name": "ReLU by torch.maximum, softmax through logsumexp",
        "code": _FORWARD_HEAD
        + """    a = torch.addmm(params["b1"], x, params["W1"])
    h = a.tanh() if activation == "tanh" else torch.maximum(a, torch.zeros_like(a))
    logits = torch.addmm(params["b2"], h, params["W2"])
    probs = torch.exp(logits - torch.logsumexp(logits, dim=1, keepdim=True))
    return dict(a=a, h=h, logits=logits, probs=probs)
""",
    },
    {
        "cell": "cross_entropy",
        "name": "logsumexp minus the gathered gold logit",
        "code": '''def cross_entropy(logits, targets):
    """The mean softmax cross-entropy of a batch."""
    gold = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    return (torch.logsumexp(logits, dim=1) - gold).mean()
''',
    },
    {
        "cell": "backward",
        "name": "one-hot from torch.eye, derivatives recomputed from a",
        "code": _BACKWARD_HEAD
        + """    n = x.shape[0]
    one_hot = torch.eye(cache["probs"].shape[1], dtype=x.dtype, device=x.device)[targets]
    d_z = (cache["probs"] - one_hot) / n
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    if activation == "tanh":
        slope = 1 - torch.tanh(cache["a"]) ** 2
    else:
        slope = (cache["a"] > 0).to(x.dtype)
    d_a = (d_z @ params["W2"].T) * slope
    grads = {}
    grads["W2"] = cache["h"].T @ d_z
    grads["b2"] = ones @ d_z
    grads["W1"] = x.T @ d_a
    grads["b1"] = ones @ d_a
    return grads
""",
    },
    {
        "cell": "sgd_step",
        "name": "add_ with alpha=-lr",
        "code": _SGD_HEAD
        + """    for name in params:
        params[name].add_(grads[name], alpha=-lr)
""",
    },
    {
        "cell": "train",
        "name": "wider layer, smaller steps, a while loop over batches",
        "code": _TRAIN_HEAD
        + """    params = init_params(
        inputs.shape[1], 100, num_classes, generator, dtype=inputs.dtype, device=inputs.device
    )
    for epoch in range(8):
        order = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
        start = 0
        while start < len(order):
            batch = order[start:start + 20]
            cache = forward(params, inputs[batch], activation)
            grads = backward(params, inputs[batch], targets[batch], cache, activation)
            sgd_step(params, grads, 0.2)
            start += 20
    return params
""",
    },
]

DELEGATING = [
    {
        "cell": "forward",
        "name": "torch.softmax",
        "code": _FORWARD_HEAD
        + """    a = x @ params["W1"] + params["b1"]
    h = torch.tanh(a) if activation == "tanh" else torch.relu(a)
    logits = h @ params["W2"] + params["b2"]
    return {"a": a, "h": h, "logits": logits, "probs": torch.softmax(logits, dim=1)}
""",
        "fails": ["test_forward"],
    },
    {
        "cell": "cross_entropy",
        "name": "torch.nn.functional.cross_entropy",
        "code": '''def cross_entropy(logits, targets):
    """The mean softmax cross-entropy of a batch."""
    return torch.nn.functional.cross_entropy(logits, targets)
''',
        "fails": ["test_cross_entropy"],
    },
    {
        "cell": "backward",
        "name": "autograd (torch.autograd.grad)",
        "code": _BACKWARD_HEAD
        + """    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    a = x @ leaves["W1"] + leaves["b1"]
    h = torch.tanh(a) if activation == "tanh" else torch.relu(a)
    logits = h @ leaves["W2"] + leaves["b2"]
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    loss = -log_probs[torch.arange(len(targets), device=x.device), targets].mean()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
""",
        "fails": ["test_backward"],
    },
    {
        "cell": "backward",
        "name": "the reference npfl_lib.manual.ManualMLP",
        "code": _BACKWARD_HEAD
        + """    from npfl_lib.manual import ManualMLP

    (d, h), c = params["W1"].shape, params["W2"].shape[1]
    mlp = ManualMLP(d, h, c, activation, dtype=x.dtype, device=x.device)
    mlp.W1, mlp.b1, mlp.W2, mlp.b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    return mlp.backward(x, targets)
""",
        "fails": ["test_backward"],
    },
    {
        "cell": "sgd_step",
        "name": "torch.optim.SGD",
        "code": _SGD_HEAD
        + """    tensors = list(params.values())
    for name, param in params.items():
        param.grad = grads[name]
    torch.optim.SGD(tensors, lr=lr).step()
    for param in tensors:
        param.grad = None
""",
        "fails": ["test_sgd_step"],
    },
    {
        "cell": "train",
        "name": "trains npfl_lib's ManualMLP",
        "code": _TRAIN_HEAD
        + """    from npfl_lib.manual import ManualMLP

    mlp = ManualMLP(inputs.shape[1], 64, num_classes, activation, generator, device=inputs.device)
    for _ in range(5):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for start in range(0, len(inputs), 32):
            batch = order[start:start + 32]
            mlp.sgd_step(mlp.backward(inputs[batch], targets[batch]), 0.5)
    return mlp.parameters()
""",
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "torch.nn + autograd + torch.optim",
        "code": _TRAIN_HEAD
        + """    d = inputs.shape[1]
    model = torch.nn.Sequential(
        torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, num_classes)
    )
    model.to(inputs.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for start in range(0, len(inputs), 32):
            batch = order[start:start + 32]
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    first, last = model[0], model[2]
    return {"W1": first.weight.T, "b1": first.bias, "W2": last.weight.T, "b2": last.bias}
""",
        "fails": ["test_train"],
    },
]

# Mutants of npfl-course check that keep full points for a good reason (see the README).
ACCEPTED = [
    {
        "cell": "train",
        "mutation": "off-by-one range: `range(epochs)` -> `range(epochs - 1)`",
        "reason": "the number of epochs is the student's choice: 4 reach 90 % as well as 5",
    },
    {
        "cell": "train",
        "mutation": "nan for inputs above 50 in magnitude",
        "reason": "the inputs are images in [0, 1]; SGD on inputs above 50 diverges anyway",
    },
]
