"""Implementations of the regularized_training assignment's graded functions, for the
tests of the tests.

Each ``code`` is the whole content of a solution cell of ``regularized_training.ipynb``.
WRONG ones are plausible mistakes that must lose the points of the test cells in
``fails``; ALTERNATIVE ones are correct but written differently from the solution and
must get full points; DELEGATING ones call the course library's ready-made parts
(``npfl_lib.optim.param_groups_no_decay``, ``npfl_lib.nn.MLP``) and must be rejected by
``forbid`` in the test cells in ``fails``.
"""

_BUILD = '''def build(dropout, weight_decay, label_smoothing, hidden_layer=256, learning_rate=3e-3):
    """Builds the model, its optimizer and its loss for the given regularization."""
'''

_TRAIN = '''def train(
    train_data,
    dev_data,
    dropout=0.3,
    weight_decay=0.05,
    label_smoothing=0.1,
    epochs=20,
    batch_size=50,
    seed=42,
):
    """Trains a model made by build() with npfl_lib.Trainer."""
'''

# The solution's model, reused by the variants that get something else wrong.
_MODEL = """    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(INPUT_SIZE, hidden_layer),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden_layer, NUM_CLASSES),
    )
"""
_GROUPS = """    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
"""
_LOSS = """    loss = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
"""

WRONG = [
    {
        "cell": "build",
        "name": "no label smoothing",
        "code": _BUILD
        + _MODEL
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    return model, optimizer, torch.nn.CrossEntropyLoss()
""",
        "fails": ["test_build_loss"],
    },
    {
        "cell": "build",
        "name": "label smoothing alpha / (K - 1) on the wrong classes",
        "code": _BUILD
        + _MODEL
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)

    def loss(logits, targets):
        log_p = torch.log_softmax(logits, dim=1)
        k = logits.shape[1]
        smoothed = torch.full_like(log_p, label_smoothing / (k - 1))
        smoothed.scatter_(1, targets[:, None], 1 - label_smoothing)
        return -(smoothed * log_p).sum(dim=1).mean()

    return model, optimizer, loss
""",
        "fails": ["test_build_loss"],
    },
    {
        "cell": "build",
        "name": "weight decay on the biases too",
        "code": _BUILD
        + _MODEL
        + """    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, weight_decay=weight_decay
    )
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_optimizer"],
    },
    {
        "cell": "build",
        "name": "Adam with coupled L2 weight decay instead of AdamW",
        "code": _BUILD
        + _MODEL
        + _GROUPS
        + """    optimizer = torch.optim.Adam(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_optimizer"],
    },
    {
        "cell": "build",
        "name": "AdamW with the default weight decay instead of weight_decay",
        "code": _BUILD
        + _MODEL
        + """    weights = [p for p in model.parameters() if p.dim() >= 2]
    biases = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": weights}, {"params": biases, "weight_decay": 0.0}], lr=learning_rate
    )
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_optimizer"],
    },
    {
        "cell": "build",
        "name": "dropout missing",
        "code": _BUILD
        + """    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(INPUT_SIZE, hidden_layer),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_layer, NUM_CLASSES),
    )
"""
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_model"],
    },
    {
        "cell": "build",
        "name": "dropout given the keep probability 1 - dropout",
        "code": _BUILD
        + _MODEL.replace("Dropout(dropout)", "Dropout(1 - dropout)")
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_model"],
    },
    {
        "cell": "build",
        "name": "dropout on the logits instead of the hidden units",
        "code": _BUILD
        + """    model = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(INPUT_SIZE, hidden_layer),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden_layer, NUM_CLASSES),
        torch.nn.Dropout(dropout),
    )
"""
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_model"],
    },
    {
        "cell": "train",
        "name": "never calls fit",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model, optimizer, loss = build(dropout, weight_decay, label_smoothing)
    metrics = {"accuracy": npfl_lib.metrics.Accuracy("multiclass", num_classes=NUM_CLASSES)}
    trainer = npfl_lib.Trainer(model, optimizer, loss, metrics=metrics, device=DEVICE)
    history = [trainer.evaluate(dev_data) for _ in range(epochs)]
    for logs in history:
        logs["dev_accuracy"] = logs["accuracy"]
    return model, history
""",
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "ignores its hyperparameters (build with hard-coded values)",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model, optimizer, loss = build(0.3, 0.05, 0.1)
    metrics = {"accuracy": npfl_lib.metrics.Accuracy("multiclass", num_classes=NUM_CLASSES)}
    trainer = npfl_lib.Trainer(model, optimizer, loss, metrics=metrics, device=DEVICE)
    history = trainer.fit(train_data, epochs, batch_size=batch_size, dev=dev_data, verbose=0)
    return model, history
""",
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "one epoch per fit call, keeping only the last history",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model, optimizer, loss = build(dropout, weight_decay, label_smoothing)
    metrics = {"accuracy": npfl_lib.metrics.Accuracy("multiclass", num_classes=NUM_CLASSES)}
    trainer = npfl_lib.Trainer(model, optimizer, loss, metrics=metrics, device=DEVICE)
    for _ in range(epochs):
        history = trainer.fit(train_data, 1, batch_size=batch_size, dev=dev_data, verbose=0)
    return model, history
""",
        "fails": ["test_train"],
    },
    {
        "cell": "train",
        "name": "trains on the 200 dev examples instead of the training set",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model, optimizer, loss = build(dropout, weight_decay, label_smoothing)
    metrics = {"accuracy": npfl_lib.metrics.Accuracy("multiclass", num_classes=NUM_CLASSES)}
    trainer = npfl_lib.Trainer(model, optimizer, loss, metrics=metrics, device=DEVICE)
    history = trainer.fit(dev_data, epochs, batch_size=batch_size, dev=dev_data, verbose=0)
    return model, history
""",
        "fails": ["test_train"],
    },
]

ALTERNATIVE = [
    {
        "cell": "build",
        "name": "own module with functional dropout, groups by name, the course's AdamW",
        "code": _BUILD
        + """    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(INPUT_SIZE, hidden_layer)
            self.dropout = torch.nn.Dropout(p=dropout)
            self.output = torch.nn.Linear(hidden_layer, NUM_CLASSES)

        def forward(self, x):
            return self.output(self.dropout(torch.relu(self.hidden(x.flatten(1)))))

    model = Classifier()
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        (plain if name.endswith("bias") else decayed).append(parameter)
    optimizer = npfl_lib.optim.AdamW(
        [{"params": plain, "weight_decay": 0}, {"params": decayed}],
        lr=learning_rate,
        weight_decay=weight_decay,
    )
    loss = lambda logits, targets: torch.nn.functional.cross_entropy(  # noqa: E731
        logits, targets, label_smoothing=label_smoothing
    )
    return model, optimizer, loss
""",
    },
    {
        "cell": "build",
        "name": "hand-written smoothed cross-entropy and Adam(decoupled_weight_decay=True)",
        "code": _BUILD
        + _MODEL
        + _GROUPS
        + """    if "decoupled_weight_decay" in torch.optim.Adam.__init__.__code__.co_varnames:
        optimizer = torch.optim.Adam(groups, lr=learning_rate, decoupled_weight_decay=True)
    else:  # torch < 2.6
        optimizer = torch.optim.AdamW(groups, lr=learning_rate)

    def loss(logits, targets):
        log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        gold = log_p.gather(1, targets[:, None]).squeeze(1)
        per_example = -(1 - label_smoothing) * gold - label_smoothing * log_p.mean(dim=1)
        return per_example.mean()

    return model, optimizer, loss
""",
    },
    {
        "cell": "train",
        "name": "torch.manual_seed, torchmetrics, an (inputs, targets) pair",
        "code": _TRAIN
        + """    import torchmetrics

    torch.manual_seed(seed)
    model, optimizer, loss = build(
        dropout=dropout, weight_decay=weight_decay, label_smoothing=label_smoothing
    )
    trainer = npfl_lib.Trainer(
        model,
        optimizer,
        loss,
        metrics={"accuracy": torchmetrics.Accuracy("multiclass", num_classes=NUM_CLASSES)},
        device=DEVICE,
    )
    train_pair = (train_data.inputs, train_data.targets)
    history = trainer.fit(
        train_pair, epochs=epochs, batch_size=batch_size, dev=dev_data, verbose=0
    )
    return model, history
""",
    },
]

DELEGATING = [
    {
        "cell": "build",
        "name": "npfl_lib.optim.param_groups_no_decay",
        "code": _BUILD
        + _MODEL
        + """    groups = npfl_lib.optim.param_groups_no_decay(model, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_model", "test_build_optimizer", "test_build_loss", "test_train"],
    },
    {
        "cell": "build",
        "name": "npfl_lib.nn.MLP",
        "code": _BUILD
        + """    model = npfl_lib.nn.MLP(INPUT_SIZE, [hidden_layer], NUM_CLASSES, dropout=dropout)
"""
        + _GROUPS
        + """    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
"""
        + _LOSS
        + """    return model, optimizer, loss
""",
        "fails": ["test_build_model", "test_build_optimizer", "test_build_loss", "test_train"],
    },
    {
        "cell": "train",
        "name": "the parameter groups of npfl_lib.optim.param_groups_no_decay",
        "code": _TRAIN
        + """    npfl_lib.set_seed(seed)
    model, _, loss = build(dropout, weight_decay, label_smoothing)
    groups = npfl_lib.optim.param_groups_no_decay(model, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=3e-3)
    metrics = {"accuracy": npfl_lib.metrics.Accuracy("multiclass", num_classes=NUM_CLASSES)}
    trainer = npfl_lib.Trainer(model, optimizer, loss, metrics=metrics, device=DEVICE)
    history = trainer.fit(train_data, epochs, batch_size=batch_size, dev=dev_data, verbose=0)
    return model, history
""",
        "fails": ["test_train"],
    },
]

# Survivors of npfl-course check's mutants that are correct answers (issue 20).
ACCEPTED = [
    {
        "cell": "build",
        "mutation": "output off by a factor 1.001",
        "reason": "it scales the new model's initial parameters, torch's random draw, which "
        "the task leaves free: a model initialized 0.1 % larger is as correct",
    },
    {
        "cell": "build",
        "mutation": "one output element changed",
        "reason": "it changes one initial parameter (the last bias) of the new model, a random "
        "draw the task leaves free",
    },
    {
        "cell": "train",
        "mutation": "one output element changed",
        "reason": "the last leaf of (model, history) is the last epoch's 'time', wall-clock "
        "seconds that no test can pin",
    },
]
