"""Tests of npfl_lib.trainer (and its data feeding, npfl_lib.data_feed)."""

import contextlib
import glob
import math
import warnings

import pytest
import torch
import torchmetrics
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib import _cuda_graph
from npfl_lib import optim as npfl_optim
from npfl_lib.data_feed import DeviceCache
from npfl_lib.trainer import Trainer, resolve_device

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
N, D, C = 103, 5, 3
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_data(dtype=torch.float32, n=N, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, D, generator=generator, dtype=dtype)
    targets = torch.randint(0, C, (n,), generator=generator)
    return inputs, targets


def make_model(dtype=torch.float32, seed=1):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, C))
    return model.to(dtype)


def make_trainer(model, device="cpu", lr=1e-2, metrics=True, **kwargs):
    metrics = {"accuracy": torchmetrics.Accuracy("multiclass", num_classes=C)} if metrics else None
    optimizer = kwargs.pop("optimizer", None) or torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.nn.CrossEntropyLoss()
    return Trainer(model, optimizer, loss, metrics=metrics, device=device, **kwargs)


class Split(torch.utils.data.Dataset):
    """Like npfl_lib.datasets' splits: .inputs/.targets, and also a Dataset."""

    def __init__(self, inputs, targets):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


class PlainDataset(torch.utils.data.Dataset):
    """A Dataset the resident path cannot take."""

    def __init__(self, inputs, targets):
        self.pairs = list(zip(inputs, targets, strict=True))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


class Recorder(torch.nn.Module):
    """A linear model that remembers the first input feature of each training batch."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)
        self.seen = []

    def forward(self, inputs):
        if self.training:
            self.seen.append(inputs[:, 0].detach().cpu().clone())
        return self.linear(inputs)


def strip_time(history):
    return [{k: v for k, v in logs.items() if k != "time"} for logs in history]


# ------------------------------------------------------------------ data kinds, history
@pytest.mark.parametrize("kind", ["tuple", "split", "tensor_dataset", "dataset", "loader"])
def test_fit_accepts_every_data_kind(kind, device):
    inputs, targets = make_data()
    data = {
        "tuple": (inputs, targets),
        "split": Split(inputs, targets),
        "tensor_dataset": torch.utils.data.TensorDataset(inputs, targets),
        "dataset": PlainDataset(inputs, targets),
        "loader": torch.utils.data.DataLoader(PlainDataset(inputs, targets), batch_size=20),
    }[kind]
    trainer = make_trainer(make_model(), device)
    history = trainer.fit(data, epochs=3, batch_size=25, dev=data, verbose=0)
    assert len(history) == 3 and trainer.history is history and trainer.epoch == 3
    assert list(history[0]) == ["loss", "accuracy", "dev_loss", "dev_accuracy", "lr", "time"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(isinstance(v, float) for logs in history for v in logs.values())
    assert next(trainer.model.parameters()).device.type == device.type


def test_history_keys_without_dev_or_metrics():
    inputs, targets = make_data()
    history = make_trainer(make_model(), metrics=False).fit((inputs, targets), 2, verbose=0)
    assert [list(logs) for logs in history] == [["loss", "lr", "time"]] * 2
    assert all(logs["time"] > 0 and logs["lr"] == 1e-2 for logs in history)


def test_resident_kinds_give_identical_histories():
    inputs, targets = make_data()
    histories = []
    for data in [(inputs, targets), Split(inputs, targets)]:
        torch.manual_seed(5)
        histories.append(strip_time(make_trainer(make_model()).fit(data, 2, 16, verbose=0)))
    assert histories[0] == histories[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("shuffle", "fused"), [(False, True), (True, True), (True, False)])
def test_fit_equals_hand_written_loop(dtype, shuffle, fused, device):
    inputs, targets = make_data(dtype)
    model, reference = make_model(dtype), make_model(dtype)
    trainer = make_trainer(
        model, device, metrics=False, clip_grad_norm=0.5, fused_optimizer=fused, cuda_graph=False
    )
    torch.manual_seed(3)
    history = trainer.fit((inputs, targets), epochs=2, batch_size=20, shuffle=shuffle, verbose=0)
    assert trainer.optimizer.param_groups[0]["fused"] is (True if fused else None)

    reference.to(device)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=fused or None)
    x, y = inputs.to(device), targets.to(device)
    torch.manual_seed(3)
    for epoch in range(2):
        order = torch.randperm(N, device=device) if shuffle else torch.arange(N, device=device)
        losses = []
        for start in range(0, N, 20):
            index = order[start : start + 20]
            loss = torch.nn.functional.cross_entropy(reference(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
            optimizer.step()
            losses.append(loss.item() * len(index))
        assert history[epoch]["loss"] == pytest.approx(sum(losses) / N, rel=RTOL[dtype])
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=RTOL[dtype], atol=0)


# ----------------------------------------------------------------------- partial batches
@pytest.mark.parametrize("kind", ["tuple", "dataset"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_last_partial_batch_is_trained_on(kind, shuffle, device):
    inputs = torch.arange(N, dtype=torch.float32).unsqueeze(1)
    targets = torch.zeros(N, dtype=torch.long)
    data = (inputs, targets) if kind == "tuple" else PlainDataset(inputs, targets)
    model = Recorder()
    trainer = make_trainer(model, device, metrics=False)
    trainer.fit(data, epochs=2, batch_size=50, shuffle=shuffle, verbose=0)
    assert [len(batch) for batch in model.seen] == [50, 50, 3] * 2
    for epoch in range(2):
        seen = torch.cat(model.seen[3 * epoch : 3 * epoch + 3]).sort().values
        assert torch.equal(seen, torch.arange(N, dtype=torch.float32))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 50), shuffle=st.booleans())
def test_every_example_seen_once_per_epoch(n, batch_size, shuffle):
    inputs = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    model = Recorder()
    history = make_trainer(model, metrics=False).fit(
        (inputs, torch.zeros(n, dtype=torch.long)), 1, batch_size, shuffle=shuffle, verbose=0
    )
    assert torch.equal(torch.cat(model.seen).sort().values, inputs[:, 0])
    assert all(len(batch) == batch_size for batch in model.seen[:-1])
    assert math.isfinite(history[0]["loss"])


# ------------------------------------------------------------------- evaluate / predict
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_size", [1, 7, 50, 1000])
def test_evaluate_matches_manual_computation(dtype, batch_size, device):
    inputs, targets = make_data(dtype)
    model = make_model(dtype)
    torch.nn.init.normal_(model[0].weight, std=2.0)  # a less trivial accuracy
    trainer = make_trainer(model, device)
    model.train()
    logs = trainer.evaluate((inputs, targets), batch_size=batch_size)
    assert model.training  # the mode is restored
    with torch.no_grad():
        outputs = model.eval()(inputs.to(device))
        loss = torch.nn.functional.cross_entropy(outputs, targets.to(device)).item()
        accuracy = (outputs.argmax(1).cpu() == targets).double().mean().item()
    assert list(logs) == ["loss", "accuracy"]
    assert logs["loss"] == pytest.approx(loss, rel=RTOL[dtype])
    assert logs["accuracy"] == pytest.approx(accuracy, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_predict_matches_model_in_eval_mode(dtype, device):
    inputs, targets = make_data(dtype)
    model = torch.nn.Sequential(
        torch.nn.Linear(D, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, C)
    )
    trainer = make_trainer(model.to(dtype), device)
    with torch.no_grad():
        expected = model.eval()(inputs.to(device)).cpu()
    model.train()
    bare = torch.utils.data.DataLoader(inputs, batch_size=9)  # batches of inputs alone
    for data in [
        inputs,
        (inputs, targets),
        Split(inputs, targets),
        PlainDataset(inputs, targets),
        bare,
    ]:
        outputs = trainer.predict(data, batch_size=10)
        assert outputs.device.type == "cpu" and outputs.shape == (N, C)
        torch.testing.assert_close(outputs, expected, rtol=RTOL[dtype], atol=1e-12)
    assert model.training


def test_training_metrics_and_loss_with_frozen_model():
    # With lr=0 the model never changes, so the epoch logs equal the full-data values.
    inputs, targets = make_data(torch.float64)
    model = make_model(torch.float64)
    trainer = make_trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0))
    history = trainer.fit((inputs, targets), 2, batch_size=13, dev=(inputs, targets), verbose=0)
    expected = trainer.evaluate((inputs, targets), batch_size=N)
    for logs in history:
        assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-10)
        assert logs["dev_loss"] == pytest.approx(expected["loss"], rel=1e-10)
        assert logs["accuracy"] == logs["dev_accuracy"] == pytest.approx(expected["accuracy"])


# --------------------------------------------------------- scheduler, clipping, logging
def test_scheduler_steps_every_batch():
    inputs, targets = make_data()
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = make_trainer(model, optimizer=optimizer, scheduler=scheduler)
    history = trainer.fit((inputs, targets), epochs=3, batch_size=50, verbose=0)  # 3 batches
    assert [logs["lr"] for logs in history] == [0.5**3, 0.5**6, 0.5**9]


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clip_grad_norm_is_applied(max_norm):
    inputs, targets = make_data(torch.float64)
    model = make_model(torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = min(1.0, max_norm / (norm.item() + 1e-6))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = make_trainer(model, optimizer=optimizer, clip_grad_norm=max_norm)
    trainer.fit((inputs, targets), epochs=1, batch_size=N, verbose=0)
    for param, old, grad in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(param.detach(), old - scale * grad, rtol=1e-10, atol=1e-12)
    assert (scale < 1) == (max_norm < 1)


def test_tensorboard_event_file_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    inputs, targets = make_data()
    trainer = make_trainer(make_model(), logdir=tmp_path)
    history = trainer.fit((inputs, targets), 2, dev=(inputs, targets), verbose=0)
    files = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"loss", "accuracy", "dev_loss", "dev_accuracy", "lr"} <= set(events.Tags()["scalars"])
    logged = [event.value for event in events.Scalars("dev_loss")]
    assert logged == pytest.approx([logs["dev_loss"] for logs in history], rel=1e-6)


@pytest.mark.parametrize(
    ("verbose", "progress", "shown"),
    [(0, "", None), (0, "1", None), (1, "1", "bar"), (1, "", "lines"), (1, "0", "lines"),
     (2, "", "lines"), (2, "1", "lines")],
)  # fmt: skip
def test_verbosity(verbose, progress, shown, capsys, monkeypatch):
    monkeypatch.setenv("NPFL_PROGRESS", progress)
    inputs, targets = make_data()
    make_trainer(make_model()).fit((inputs, targets), 2, dev=(inputs, targets), verbose=verbose)
    captured = capsys.readouterr()
    if shown is None:
        assert captured.out == "" and captured.err == ""
    elif shown == "bar":
        assert "Epoch 2/2" in captured.err and "dev_accuracy=" in captured.err
        assert captured.out == ""
    else:  # not a terminal (pytest captures): lines on stdout, nothing on stderr
        lines = captured.out.splitlines()
        assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 loss=")
        assert captured.err == ""


def test_a_wrong_progress_setting_is_named(monkeypatch):
    monkeypatch.setenv("NPFL_PROGRESS", "yes")
    with pytest.raises(ValueError, match="NPFL_PROGRESS must be 0 or 1"):
        make_trainer(make_model()).fit(make_data(), 1)


# ------------------------------------------------------------------------ callbacks
def test_callback_protocol_and_stop_training():
    calls = []

    class Probe:
        def on_train_begin(self, trainer):
            calls.append("begin")

        def on_epoch_end(self, trainer, epoch, logs):
            calls.append((epoch, sorted(logs)))
            trainer.stop_training = epoch == 2

        def on_train_end(self, trainer):
            calls.append("end")

    class OnlyEpochEnd:
        def on_epoch_end(self, trainer, epoch, logs):
            calls.append("partial")

    inputs, targets = make_data()
    history = make_trainer(make_model()).fit(
        (inputs, targets), 10, callbacks=[Probe(), OnlyEpochEnd()], verbose=0
    )
    assert len(history) == 3
    keys = ["accuracy", "loss", "lr", "time"]
    assert calls == ["begin"] + [
        (e, keys) if i == 0 else "partial" for e in range(3) for i in (0, 1)
    ] + ["end"]


# ------------------------------------------------------------------------- devices
def test_npfl_device_is_honoured(monkeypatch):
    monkeypatch.setenv("NPFL_DEVICE", "cpu")
    assert make_trainer(make_model(), device="auto").device == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("NPFL_DEVICE", "definitely-not-a-device")
    with pytest.raises(ValueError, match="NPFL_DEVICE"):
        make_trainer(make_model(), device="auto")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device wins
    monkeypatch.delenv("NPFL_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="device"):
        resolve_device("cuda")
    monkeypatch.setenv("NPFL_DEVICE", "cuda")
    with pytest.raises(ValueError, match="NPFL_DEVICE"):
        resolve_device("auto")


def test_device_cache_reuses_copies_until_modified():
    cache = DeviceCache(torch.device("meta"), size=2)
    tensor = torch.zeros(4)
    first = cache.get(tensor)
    assert first.device.type == "meta" and cache.get(tensor) is first
    tensor.add_(1)  # an in-place change must not be served stale
    second = cache.get(tensor)
    assert second is not first and cache.get(tensor) is second
    others = [torch.zeros(2), torch.zeros(3)]
    for other in others:
        cache.get(other)
    assert len(cache._entries) == 2  # bounded
    cpu_cache = DeviceCache(torch.device("cpu"))
    assert cpu_cache.get(tensor) is tensor


# ----------------------------------------------------------------------- bad input
def test_bad_arguments():
    inputs, targets = make_data()
    model = make_model()
    trainer = make_trainer(model)
    data = (inputs, targets)
    cases = [
        (ValueError, "epochs", lambda: trainer.fit(data, 0)),
        (ValueError, "epochs", lambda: trainer.fit(data, -2)),
        (TypeError, "epochs", lambda: trainer.fit(data, 1.5)),
        (ValueError, "batch_size", lambda: trainer.fit(data, 1, batch_size=0)),
        (TypeError, "batch_size", lambda: trainer.fit(data, 1, batch_size=True)),
        (ValueError, "verbose", lambda: trainer.fit(data, 1, verbose=3)),
        (TypeError, "train", lambda: trainer.fit([[1, 2], [3, 4]], 1)),
        (TypeError, "train", lambda: trainer.fit("data", 1)),
        (ValueError, "train", lambda: trainer.fit((inputs, targets[:-1]), 1)),
        (ValueError, "train", lambda: trainer.fit((inputs, targets, targets), 1)),
        (ValueError, "train", lambda: trainer.fit((inputs[:0], targets[:0]), 1)),
        (TypeError, "dev", lambda: trainer.fit(data, 1, dev=42)),
        (ValueError, "batch_size", lambda: trainer.evaluate(data, batch_size=0)),
        (TypeError, "data", lambda: trainer.evaluate(None)),
        (ValueError, "batch_size", lambda: trainer.predict(inputs, batch_size=-1)),
        (TypeError, "inputs", lambda: trainer.predict(42)),
        (ValueError, "inputs", lambda: trainer.predict(inputs[:0])),
        (ValueError, "device", lambda: make_trainer(model, device="tpu9")),
        (TypeError, "device", lambda: make_trainer(model, device=3)),
        (ValueError, "clip_grad_norm", lambda: make_trainer(model, clip_grad_norm=0.0)),
        (ValueError, "clip_grad_norm", lambda: make_trainer(model, clip_grad_norm=-1)),
        (TypeError, "model", lambda: Trainer(lambda x: x, trainer.optimizer, trainer.loss)),
        (TypeError, "optimizer", lambda: Trainer(model, object(), trainer.loss)),
        (TypeError, "loss", lambda: Trainer(model, trainer.optimizer, "ce")),
        (
            TypeError,
            "scheduler",
            lambda: Trainer(model, trainer.optimizer, trainer.loss, scheduler=1),
        ),
        (
            TypeError,
            "metrics",
            lambda: Trainer(model, trainer.optimizer, trainer.loss, metrics=[1]),
        ),
        (
            TypeError,
            "metrics",
            lambda: Trainer(model, trainer.optimizer, trainer.loss, metrics={"a": 1}),
        ),
    ]
    for name in ["loss", "lr", "time", "dev_acc", 3]:
        metrics = {name: torchmetrics.MeanMetric()}
        cases.append(
            (
                ValueError,
                "metrics",
                lambda m=metrics: Trainer(model, trainer.optimizer, trainer.loss, m),
            )
        )
    for error, name, call in cases:
        with pytest.raises(error, match=name):
            call()


# -------------------------------------------------------------- fused optimizer kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_kernel_only_where_the_choice_was_left_to_torch(dtype, device):
    inputs, targets = make_data(dtype)
    results = {}
    for label, kwargs in [("default", {}), ("foreach", {"foreach": False}), ("off", None)]:
        model = make_model(dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, **(kwargs or {}))
        trainer = make_trainer(
            model, device, optimizer=optimizer, fused_optimizer=kwargs is not None
        )
        torch.manual_seed(0)
        trainer.fit((inputs, targets), 3, 20, verbose=0)
        results[label] = [p.detach().cpu() for p in model.parameters()]
        expected = True if label == "default" else None
        assert all(group["fused"] is expected for group in optimizer.param_groups)
    for fused, plain in zip(results["default"], results["off"], strict=True):
        torch.testing.assert_close(fused, plain, rtol=RTOL[dtype], atol=RTOL[dtype])
    sgd = torch.optim.SGD(make_model().parameters(), lr=0.1)
    _cuda_graph.use_fused_kernel(sgd)
    assert sgd.param_groups[0]["fused"] is None


def test_fused_kernel_keeps_existing_state(device):
    params = [torch.nn.Parameter(torch.ones(3, device=device))]
    adam = torch.optim.Adam(params, lr=0.1)
    params[0].grad = torch.ones(3, device=device)
    adam.step()  # on CUDA, the unfused step count lives on the CPU: it must move
    _cuda_graph.use_fused_kernel(adam)
    adam.step()  # the fused kernel continues from step 1
    assert adam.param_groups[0]["fused"] and adam.state[params[0]]["step"].item() == 2.0


# ---------------------------------------------------------------- CUDA graph decisions
@pytest.mark.cuda  # a branch of its own on CUDA machines
def test_graph_blocker_reasons():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = torch.optim.Adam(params)
    assert _cuda_graph.graph_blocker(adam, None) is None  # capturable gets switched on
    assert _cuda_graph.graph_blocker(torch.optim.SGD(params, lr=0.1, momentum=0.9), None) is None

    class Handmade(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

        def step(self):
            pass

    assert "capturable" in _cuda_graph.graph_blocker(Handmade(params), None)
    for name in ("SGD", "RMSprop", "Adam", "AdamW"):  # npfl_lib's: capturable gets switched on
        assert _cuda_graph.graph_blocker(getattr(npfl_optim, name)(params, lr=0.1), None) is None
    scheduler = torch.optim.lr_scheduler.StepLR(adam, 1)
    assert "scheduler" in _cuda_graph.graph_blocker(adam, scheduler)
    cpu_lr = torch.optim.Adam(params, lr=torch.tensor(0.01), capturable=True)
    assert "CPU tensor" in _cuda_graph.graph_blocker(
        cpu_lr, torch.optim.lr_scheduler.StepLR(cpu_lr, 1)
    )
    if torch.cuda.is_available():
        gpu_lr = torch.optim.Adam(params, lr=torch.tensor(0.01, device="cuda"), capturable=True)
        scheduler = torch.optim.lr_scheduler.StepLR(gpu_lr, 1)
        assert _cuda_graph.graph_blocker(gpu_lr, scheduler) is None
        ours = npfl_optim.AdamW(params, lr=torch.tensor(0.01, device="cuda"))
        assert _cuda_graph.graph_blocker(ours, torch.optim.lr_scheduler.StepLR(ours, 1)) is None
        sgd = npfl_optim.SGD(params, lr=torch.tensor(0.01, device="cuda"))
        assert "lr" in _cuda_graph.graph_blocker(sgd, None)


def test_make_capturable_switches_torch_and_npfl_lib_optimizers():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = torch.optim.AdamW(params)
    params[0].grad = torch.ones(2)
    adam.step()  # the step count now lives on the CPU
    _cuda_graph.make_capturable(adam)
    assert adam.param_groups[0]["capturable"] is True
    assert adam.state[params[0]]["step"].dtype == torch.float32
    assert adam._warned_capturable_if_run_uncaptured  # eager warm-up steps are intended
    ours = npfl_optim.AdamW(params)
    ours.step()  # the step count is an int
    _cuda_graph.make_capturable(ours)
    assert ours.param_groups[0]["capturable"] is True
    step = ours.state[params[0]]["step"]
    assert isinstance(step, torch.Tensor) and step.item() == 1.0 and step.device == params[0].device


# ------------------------------------------- CUDA-graph orchestration, simulated on CPU
class FakeStream:
    def wait_stream(self, other):
        pass


class SimulatedGraphedStep(_cuda_graph.GraphedStep):
    """Captures nothing: "replay" runs the recorded eager step on the static index.

    This checks the Trainer's side of the graph path on any machine: warm-up steps,
    replays of full batches, eager shorter batches, reuse and re-capture, fallback.
    """

    fail = False
    instances = []

    def __init__(self, *args):
        super().__init__(*args)
        self.captures = self.replays = 0
        SimulatedGraphedStep.instances.append(self)

    def _capture(self, index):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.static_index, self.captures = index.clone(), self.captures + 1
        owner = self

        class Graph:
            def replay(self):
                owner.replays += 1
                owner.static_outputs, owner.static_targets = owner.eager_step(owner.static_index)

        self.graph, self.key = Graph(), self.key_fn()


@pytest.fixture
def simulated_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(_cuda_graph, "GraphedStep", SimulatedGraphedStep)
    SimulatedGraphedStep.instances, SimulatedGraphedStep.fail = [], False
    return SimulatedGraphedStep


def _simulated_fit(graph, fail=False, callbacks=(), make_optimizer=None):
    inputs, targets = make_data(torch.float64, n=203)
    model = make_model(torch.float64)
    make_optimizer = make_optimizer or (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    optimizer = make_optimizer(model.parameters())
    trainer = make_trainer(model, optimizer=optimizer, clip_grad_norm=1.0, cuda_graph=graph)
    trainer.device = torch.device("cuda", 0)  # the data stay on the CPU
    SimulatedGraphedStep.fail = fail
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.fit((inputs, targets), 3, 50, callbacks=callbacks, verbose=0)
        history += trainer.fit((inputs, targets), 2, 50, verbose=0)
    caught = [w for w in caught if str(w.message).startswith("Trainer")]
    return strip_time(history), [p.detach().clone() for p in model.parameters()], caught


def test_simulated_graph_path_equals_eager(simulated_cuda):
    graph, eager = _simulated_fit(True), _simulated_fit(False)
    assert graph[0] == eager[0] and not graph[2]
    assert all(torch.equal(a, b) for a, b in zip(graph[1], eager[1], strict=True))
    (step,) = simulated_cuda.instances  # captured once, reused by the second fit
    # 5 epochs x 4 full batches (+ an eager batch of 3): 3 warm-up steps, the rest replayed.
    assert step.captures == 1 and step.replays == 5 * 4 - 3


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_simulated_graph_path_with_npfl_lib_optimizers(simulated_cuda, name):
    """npfl_lib's optimizers take the graph path too: capturable switched on, their step
    counters turned into device tensors; the same updates as eager capturable steps."""
    kwargs = {"lr": 0.01} if name != "SGD" else {"lr": 0.1, "momentum": 0.9}
    optimizer_class = getattr(npfl_optim, name)
    graph = _simulated_fit(True, make_optimizer=lambda p: optimizer_class(p, **kwargs))
    capturable = {"capturable": True} if name != "SGD" else {}
    eager = _simulated_fit(
        False, make_optimizer=lambda p: optimizer_class(p, **kwargs, **capturable)
    )
    assert graph[0] == eager[0] and not graph[2]
    assert all(torch.equal(a, b) for a, b in zip(graph[1], eager[1], strict=True))
    (step,) = simulated_cuda.instances
    assert step.captures == 1 and step.replays == 5 * 4 - 3
    int_steps = _simulated_fit(False, make_optimizer=lambda p: optimizer_class(p, **kwargs))
    for a, b in zip(graph[1], int_steps[1], strict=True):  # float32 bias corrections
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_simulated_recapture_after_lr_change(simulated_cuda):
    class HalveLearningRate:
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.optimizer.param_groups[0]["lr"] *= 0.5

    graph = _simulated_fit(True, callbacks=[HalveLearningRate()])
    eager = _simulated_fit(False, callbacks=[HalveLearningRate()])
    assert graph[0] == eager[0]
    # lr changed after epochs 1, 2 and 3 of the first fit: 1 + 3 captures, the 2nd fit reuses.
    assert len(simulated_cuda.instances) == 4


def test_simulated_capture_failure_warns_once_and_trains_on(simulated_cuda):
    graph, eager = _simulated_fit(True, fail=True), _simulated_fit(False)
    assert graph[0] == eager[0]
    assert len(graph[2]) == 1 and "capturing the step failed" in str(graph[2][0].message)
    assert len(simulated_cuda.instances) == 1


# ------------------------------------------------------------- CUDA graph (GPU only)
def test_capture_key_tracks_what_a_graph_bakes_in():
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    data = torch.zeros(4)

    def key(batch_size=50):
        return _cuda_graph.capture_key(model, optimizer, data, batch_size)

    first = key()
    assert key() == first
    assert key(batch_size=49) != first
    optimizer.param_groups[0]["lr"] = 0.05  # e.g. a callback decaying the learning rate
    assert key() != first
    second = key()
    model[0].weight.data = model[0].weight.data.clone()  # a replaced parameter storage
    assert key() != second
    third = key()
    with torch.no_grad():
        model[0].weight.mul_(2)  # in-place updates are what a graph replays: no change
    assert key() == third


def _graph_vs_eager(make_optimizer, loss=None, scheduler=None, callbacks=(), n=203, batch_size=50):
    inputs, targets = make_data(n=n)
    results = []
    for graph in (True, False):
        model = make_model()
        model[1] = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.2))
        model.cuda()
        optimizer = make_optimizer(model)
        trainer = Trainer(
            model,
            optimizer,
            loss or torch.nn.CrossEntropyLoss(),
            metrics={"accuracy": torchmetrics.Accuracy("multiclass", num_classes=C)},
            device="cuda",
            scheduler=scheduler(optimizer) if scheduler else None,
            clip_grad_norm=1.0,
            cuda_graph=graph,
        )
        torch.manual_seed(7)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = trainer.fit((inputs, targets), 4, batch_size, callbacks=callbacks, verbose=0)
            history += trainer.fit((inputs, targets), 2, batch_size, verbose=0)
        results.append(
            (strip_time(history), [p.detach().cpu() for p in model.parameters()], caught)
        )
    return results


def _assert_same(graph, eager):
    for logs_graph, logs_eager in zip(graph[0], eager[0], strict=True):
        assert logs_graph == pytest.approx(logs_eager, rel=1e-5)
    for a, b in zip(graph[1], eager[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@cuda_only
def test_cuda_graph_equals_eager():
    def adam(model):
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, capturable=True)

    graph, eager = _graph_vs_eager(adam)
    _assert_same(graph, eager)
    assert not graph[2] and not eager[2]


@cuda_only
@pytest.mark.parametrize("capturable", [True, False])
def test_cuda_graph_with_npfl_lib_adamw_equals_eager(capturable):
    """The course's AdamW is captured too (its step counter moved to the GPU); eager with
    capturable=False computes the bias corrections on the host in float64, so the two
    differ by float32 rounding there (see tests/test_optim.py)."""

    def adamw(model):
        return npfl_optim.AdamW(
            model.parameters(), lr=1e-2, weight_decay=0.1, capturable=capturable
        )

    graph, eager = _graph_vs_eager(adamw)
    _assert_same(graph, eager)
    assert not graph[2] and not eager[2]


@cuda_only
def test_cuda_graph_recaptured_when_a_callback_changes_lr():
    class HalveLearningRate:
        def on_epoch_end(self, trainer, epoch, logs):
            for group in trainer.optimizer.param_groups:
                group["lr"] *= 0.5

    def adam(model):
        return torch.optim.Adam(model.parameters(), lr=1e-2)  # capturable gets switched on

    graph, eager = _graph_vs_eager(adam, callbacks=[HalveLearningRate()])
    _assert_same(graph, eager)
    assert [logs["lr"] for logs in graph[0]] == [1e-2 / 2**k for k in (0, 1, 2, 3, 4, 4)]


@cuda_only
def test_cuda_graph_with_tensor_lr_scheduler_equals_eager():
    def adam(model):
        lr = torch.tensor(1e-2, device="cuda")
        return torch.optim.Adam(model.parameters(), lr=lr, capturable=True)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.99)

    graph, eager = _graph_vs_eager(adam, scheduler=schedule)
    _assert_same(graph, eager)
    assert not graph[2]


@cuda_only
def test_cuda_graph_falls_back_with_one_warning():
    def sgd(model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def syncing_loss(outputs, targets):
        loss = torch.nn.functional.cross_entropy(outputs, targets)
        if loss.item() > 1e9:  # a host sync cannot be captured
            raise AssertionError
        return loss

    graph, eager = _graph_vs_eager(sgd, loss=syncing_loss)
    _assert_same(graph, eager)
    assert len(graph[2]) == 1 and "capturing the step failed" in str(graph[2][0].message)

    def lr_scheduler(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, 1)

    graph, eager = _graph_vs_eager(sgd, scheduler=lr_scheduler)
    _assert_same(graph, eager)
    assert len(graph[2]) == 1 and "scheduler" in str(graph[2][0].message)
