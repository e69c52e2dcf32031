"""Implementations of the ensembling assignment's graded functions, for the tests of the
tests.

Each ``code`` is the whole content of a solution cell of ``ensembling.ipynb``. WRONG
ones are plausible mistakes that must lose the points of the test cells in ``fails``;
ALTERNATIVE ones are correct but written differently from the solution and must get
full points; DELEGATING ones call the reference (``npfl_lib.ensemble``,
``npfl_lib.metrics``) or a torch built-in doing the job (``RandomSampler``) and must be
rejected by ``forbid`` in the test cells in ``fails``.
"""

_AVERAGE = '''def average_probabilities(models, inputs):
    """Returns the ensemble's predicted distribution: the mean of the members' ones."""
'''

_ACCURACY = '''def accuracy(probabilities, targets):
    """Returns the fraction of examples whose most probable class is the target."""
'''

_BOOTSTRAP = '''def bootstrap_indices(n, generator):
    """Returns a bootstrap sample of range(n): n indices drawn uniformly WITH replacement."""
'''

_TRAIN = '''def train_ensemble(train_data, k, seed, bagging=False, epochs=5, batch_size=50):
    """Trains k members that differ in their seed (and, with bagging, in their data)."""
'''

# Training one member as the solution does, for the variants that get the loop wrong.
_FIT = """        optimizer = torch.optim.AdamW(model.parameters(), lr=0.03)
        trainer = npfl_lib.Trainer(model, optimizer, torch.nn.CrossEntropyLoss(), device=DEVICE)
        trainer.fit((inputs, targets), epochs, batch_size=batch_size, verbose=0)
"""

WRONG = [
    {
        "cell": "average_probabilities",
        "name": "averages the logits, then applies softmax",
        "code": _AVERAGE
        + """    with torch.no_grad():
        for model in models:
            model.eval()
        logits = torch.stack([model(inputs) for model in models]).mean(dim=0)
    return torch.softmax(logits, dim=1)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "average_probabilities",
        "name": "majority vote of the argmaxes",
        "code": _AVERAGE
        + """    with torch.no_grad():
        votes = 0
        for model in models:
            model.eval()
            logits = model(inputs)
            votes = votes + torch.nn.functional.one_hot(
                logits.argmax(dim=1), logits.shape[1]
            ).to(logits.dtype)
    return votes / len(models)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "average_probabilities",
        "name": "softmax without subtracting the maximum",
        "code": _AVERAGE
        + """    total = 0
    with torch.no_grad():
        for model in models:
            model.eval()
            exp = torch.exp(model(inputs))
            total = total + exp / exp.sum(dim=1, keepdim=True)
    return total / len(models)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "average_probabilities",
        "name": "models left in training mode (dropout on)",
        "code": _AVERAGE
        + """    with torch.no_grad():
        distributions = [torch.softmax(model(inputs), dim=1) for model in models]
    return torch.stack(distributions).mean(dim=0)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "average_probabilities",
        "name": "softmax over the batch dimension",
        "code": _AVERAGE
        + """    with torch.no_grad():
        for model in models:
            model.eval()
        distributions = [torch.softmax(model(inputs), dim=0) for model in models]
    return sum(distributions) / len(models)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "accuracy",
        "name": "argmax over the wrong axis (dim=0)",
        "code": _ACCURACY
        + """    predictions = probabilities.argmax(dim=0)
    return (predictions == targets).double().mean().item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "the number of correct predictions instead of the fraction",
        "code": _ACCURACY
        + """    return (probabilities.argmax(dim=1) == targets).sum().item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "compares the largest probability with the target",
        "code": _ACCURACY
        + """    return (probabilities.max(dim=1).values == targets).double().mean().item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "integer division",
        "code": _ACCURACY
        + """    correct = (probabilities.argmax(dim=1) == targets).sum()
    return (correct // len(targets)).item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "without replacement (a permutation)",
        "code": _BOOTSTRAP
        + """    return torch.randperm(n, generator=generator, device=generator.device)
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "torch's global generator instead of the given one",
        "code": _BOOTSTRAP
        + """    return torch.randint(0, n, (n,))
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "rounding n - 1 times a uniform number (the ends half as likely)",
        "code": _BOOTSTRAP
        + """    uniform = torch.rand(n, generator=generator, device=generator.device)
    return (uniform * (n - 1)).round().long()
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "off by one: never draws n - 1",
        "code": _BOOTSTRAP
        + """    high = max(n - 1, 1)
    return torch.randint(0, high, (n,), generator=generator, device=generator.device)
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "train_ensemble",
        "name": "the same seed for every member",
        "code": _TRAIN
        + """    members = []
    for i in range(k):
        npfl_lib.set_seed(seed)
        model = make_model()
        inputs, targets = train_data.inputs, train_data.targets
        if bagging:
            indices = bootstrap_indices(len(train_data), torch.Generator().manual_seed(seed))
            inputs, targets = inputs[indices], targets[indices]
"""
        + _FIT
        + """        members.append(model)
    return members
""",
        "fails": ["test_train_ensemble"],
    },
    {
        "cell": "train_ensemble",
        "name": "one model trained k times",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model = make_model()
    members = []
    for i in range(k):
        npfl_lib.set_seed(seed + i)
        inputs, targets = train_data.inputs, train_data.targets
        if bagging:
            generator = torch.Generator().manual_seed(seed + i)
            indices = bootstrap_indices(len(train_data), generator)
            inputs, targets = inputs[indices], targets[indices]
"""
        + _FIT
        + """        members.append(model)
    return members
""",
        "fails": ["test_train_ensemble"],
    },
    {
        "cell": "train_ensemble",
        "name": "ignores bagging",
        "code": _TRAIN
        + """    members = []
    for i in range(k):
        npfl_lib.set_seed(seed + i)
        model = make_model()
        inputs, targets = train_data.inputs, train_data.targets
"""
        + _FIT
        + """        members.append(model)
    return members
""",
        "fails": ["test_train_ensemble"],
    },
    {
        "cell": "train_ensemble",
        "name": "members never trained",
        "code": _TRAIN
        + """    members = []
    for i in range(k):
        npfl_lib.set_seed(seed + i)
        members.append(make_model().to(DEVICE))
    return members
""",
        "fails": ["test_train_ensemble"],
    },
    # Near-misses: the solution with one small, plausible error (issue 20).
    {
        "cell": "average_probabilities",
        "name": "near-miss: modifies its inputs in place",
        "code": _AVERAGE
        + """    distributions = []
    with torch.no_grad():
        for model in models:
            model.eval()
            distributions.append(torch.softmax(model(inputs), dim=1))
        inputs.mul_(0.5)
    return torch.stack(distributions).mean(dim=0)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "accuracy",
        "name": "near-miss: off by a factor 1.001",
        "code": _ACCURACY
        + """    predictions = probabilities.argmax(dim=1)
    return 1.001 * (predictions == targets).double().mean().item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "near-miss: computed in float32",
        "code": _ACCURACY
        + """    predictions = probabilities.argmax(dim=1)
    return (predictions == targets).float().mean().item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "near-miss: nan for logits above 50",
        "code": _ACCURACY
        + """    predictions = probabilities.argmax(dim=1)
    result = (predictions == targets).double().mean().item()
    return float("nan") if probabilities.abs().max() > 50 else result
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "near-miss: repeats its first index",
        "code": _BOOTSTRAP
        + """    indices = torch.randint(0, n, (n,), generator=generator, device=generator.device)
    indices[-1] = indices[0]
    return indices
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "near-miss: shifted by one, the first index repeated",
        "code": _BOOTSTRAP
        + """    indices = torch.randint(0, n, (n,), generator=generator, device=generator.device)
    return torch.cat([indices[:1], indices[:-1]])
""",
        "fails": ["test_bootstrap_indices"],
    },
]

ALTERNATIVE = [
    {
        "cell": "average_probabilities",
        "name": "exp(logits - logsumexp), a running sum, modes restored",
        "code": _AVERAGE
        + """    total = None
    for model in models:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(inputs)
        model.train(was_training)
        probabilities = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
        total = probabilities if total is None else total + probabilities
    return total / len(models)
""",
    },
    {
        "cell": "accuracy",
        "name": "torch.eq, sum and numel",
        "code": _ACCURACY
        + """    correct = torch.eq(torch.argmax(probabilities, dim=-1), targets).sum()
    return correct.item() / targets.numel()
""",
    },
    {
        "cell": "bootstrap_indices",
        "name": "floor of n times a uniform number",
        "code": _BOOTSTRAP
        + """    device = generator.device
    uniform = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return (uniform * n).floor().to(torch.int64).clamp_(max=n - 1)
""",
    },
    {
        "cell": "bootstrap_indices",
        "name": "torch.multinomial with replacement",
        "code": _BOOTSTRAP
        + """    weights = torch.ones(n, device=generator.device)
    return torch.multinomial(weights, n, replacement=True, generator=generator)
""",
    },
    {
        "cell": "train_ensemble",
        "name": "a list comprehension over a helper, Subset-free indexing on the device",
        "code": _TRAIN
        + """    def member(i):
        npfl_lib.set_seed(seed + i)
        model = make_model()
        data = (train_data.inputs.to(DEVICE), train_data.targets.to(DEVICE))
        if bagging:
            sample = bootstrap_indices(len(data[0]), torch.Generator().manual_seed(seed + i))
            data = tuple(tensor[sample.to(DEVICE)] for tensor in data)
        npfl_lib.Trainer(
            model,
            torch.optim.AdamW(model.parameters(), lr=0.03),
            torch.nn.CrossEntropyLoss(),
            device=DEVICE,
        ).fit(data, epochs=epochs, batch_size=batch_size, verbose=0)
        return model

    return [member(i) for i in range(k)]
""",
    },
]

DELEGATING = [
    {
        "cell": "average_probabilities",
        "name": "npfl_lib.ensemble.average_probabilities",
        "code": _AVERAGE
        + """    return npfl_lib.ensemble.average_probabilities(models, inputs)
""",
        "fails": ["test_average_probabilities"],
    },
    {
        "cell": "accuracy",
        "name": "npfl_lib.metrics.Accuracy",
        "code": _ACCURACY
        + """    classes = probabilities.shape[1]
    metric = npfl_lib.metrics.Accuracy("multiclass", num_classes=classes)
    return metric.to(probabilities.device)(probabilities, targets).item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "accuracy",
        "name": "torchmetrics.functional.accuracy",
        "code": _ACCURACY
        + """    import torchmetrics

    return torchmetrics.functional.accuracy(
        probabilities, targets, task="multiclass", num_classes=probabilities.shape[1]
    ).item()
""",
        "fails": ["test_accuracy"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "npfl_lib.ensemble.bootstrap_indices",
        "code": _BOOTSTRAP
        + """    return npfl_lib.ensemble.bootstrap_indices(n, generator)
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "bootstrap_indices",
        "name": "torch.utils.data.RandomSampler with replacement",
        "code": _BOOTSTRAP
        + """    sampler = torch.utils.data.RandomSampler(
        range(n), replacement=True, num_samples=n, generator=generator
    )
    return torch.tensor(list(sampler), dtype=torch.int64, device=generator.device)
""",
        "fails": ["test_bootstrap_indices"],
    },
    {
        "cell": "train_ensemble",
        "name": "npfl_lib.ensemble.bootstrap_split for bagging",
        "code": _TRAIN
        + """    members = []
    for i in range(k):
        npfl_lib.set_seed(seed + i)
        model = make_model()
        inputs, targets = train_data.inputs, train_data.targets
        if bagging:
            generator = torch.Generator().manual_seed(seed + i)
            inputs, targets = npfl_lib.ensemble.bootstrap_split(train_data, generator)
"""
        + _FIT
        + """        members.append(model)
    return members
""",
        "fails": ["test_train_ensemble"],
    },
]
