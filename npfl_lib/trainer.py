"""A small Keras-style training loop: ``Trainer(model, optimizer, loss).fit(train, epochs)``.

What it does per batch is the loop every lecture writes by hand::

    outputs = model(inputs); loss = loss_fn(outputs, targets)
    optimizer.zero_grad(); loss.backward(); clip; optimizer.step(); scheduler.step()

What it adds is bookkeeping done cheaply: tensors are moved to the device once and
batched there, the epoch's loss and metrics are summed on the device and read back once
per epoch (reading a GPU number forces the CPU to wait for the GPU), torch's Adam/AdamW
run their fused kernel, and on CUDA the whole step is replayed from a CUDA graph (see
``_cuda_graph`` for both).
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import _cuda_graph
from ._checks import check_in_range
from .data_feed import (
    DATA_KINDS,
    DeviceCache,
    LoaderData,
    ResidentData,
    batch_length,
    make_feed,
    resolve_device,
    tensor_pair,
    to_device,
)

RESERVED_KEYS = ("loss", "lr", "time")
# "1" shows the progress bar everywhere, "0" nowhere; unset, tqdm decides (a terminal).
PROGRESS_ENV = "NPFL_PROGRESS"


def _bar_disabled(verbose: int) -> bool | None:
    """tqdm's ``disable`` for ``fit``: None lets tqdm show the bar only on a terminal."""
    if verbose != 1:
        return True
    value = os.environ.get(PROGRESS_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"the environment variable {PROGRESS_ENV} must be 0 or 1 (or unset), "
                         f"got {value!r}")  # fmt: skip
    return {"": None, "0": True, "1": False}[value]


def _check_count(name: str, value, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _to_python(value):
    """A metric's result as a float when it is a single number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


class Trainer:
    """Trains, evaluates and runs a model.

    Args:
        model (torch.nn.Module): The model; it is moved to ``device``.
        optimizer (torch.optim.Optimizer): Optimizer over the model's parameters.
        loss (Callable[[Tensor, Tensor], Tensor]): ``loss(outputs, targets)`` returning the
            *mean* loss of a batch (e.g. ``torch.nn.CrossEntropyLoss()``). Reported epoch
            losses weight each batch by its size, so they are means over examples.
        metrics (dict[str, Metric] | None): Name -> metric with ``update(outputs, targets)``,
            ``compute()`` and ``reset()`` (npfl_lib.metrics or torchmetrics). Training
            metrics are measured on the training-mode outputs (with dropout), as Keras does.
        device (str | torch.device): ``"auto"`` (the ``NPFL_DEVICE`` environment variable,
            else CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        scheduler: A learning-rate scheduler; stepped after every batch, not every epoch.
        clip_grad_norm (float | None): Clip the global L2 norm of the optimizer's parameter
            gradients to this value before each optimizer step (None: no clipping).
        logdir (str | None): Write per-epoch scalars as TensorBoard event files here.
        cuda_graph (bool): On CUDA, with tensor data, capture the training step in a CUDA
            graph and replay it. Needs an optimizer keeping its state on the GPU: the
            ``capturable`` option of a torch or npfl_lib optimizer is switched on (same
            update, the step counter kept on the GPU); with anything that cannot be
            captured, training falls back to eager with one warning.
        fused_optimizer (bool): Run torch's Adam/AdamW with their fused kernel (the same
            update in one pass instead of ~10, equal to float rounding) when they were
            created with the implementation left to torch (``foreach=None, fused=None``).
    """

    def __init__(
        self,
        model,
        optimizer,
        loss,
        metrics=None,
        device="auto",
        scheduler=None,
        clip_grad_norm=None,
        logdir=None,
        cuda_graph=True,
        fused_optimizer=True,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not all(hasattr(optimizer, a) for a in ("step", "zero_grad", "param_groups")):
            raise TypeError(f"optimizer must be a torch optimizer, got {type(optimizer).__name__}")
        if not callable(loss):
            raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
        if scheduler is not None and not hasattr(scheduler, "step"):
            raise TypeError(f"scheduler must have a step() method, got {type(scheduler).__name__}")
        if clip_grad_norm is not None:
            check_in_range("clip_grad_norm", clip_grad_norm, 0.0, math.inf, low_inclusive=False)
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.optimizer, self.loss, self.scheduler = optimizer, loss, scheduler
        self.clip_grad_norm, self.logdir = clip_grad_norm, logdir
        self.cuda_graph, self.fused_optimizer = cuda_graph, fused_optimizer
        self.metrics = self._check_metrics(metrics)
        self.stop_training = False
        self.epoch = 0  # epochs completed over all fit() calls
        self.history: list[dict] = []
        self._cache = DeviceCache(self.device)
        self._loss_sum: torch.Tensor | None = None
        self._graph_problem: str | None = None  # why graphs are off, once warned
        self._graphed: _cuda_graph.GraphedStep | None = None

    def _check_metrics(self, metrics) -> dict:
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict name -> metric, got {type(metrics).__name__}")
        checked = {}
        for name, metric in metrics.items():
            if not isinstance(name, str) or name in RESERVED_KEYS or name.startswith("dev_"):
                raise ValueError(
                    f"metrics names must be strings other than {RESERVED_KEYS} that do not "
                    f"start with 'dev_', got {name!r}"
                )
            if not all(hasattr(metric, a) for a in ("update", "compute", "reset")):
                raise TypeError(f"metrics[{name!r}] must have update(), compute() and reset()")
            moved = metric.to(self.device) if hasattr(metric, "to") else None
            checked[name] = metric if moved is None else moved
        return checked

    @property
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # ---------------------------------------------------------------- training
    def fit(self, train, epochs, batch_size=50, dev=None, callbacks=(), shuffle=True, verbose=1):
        """Trains the model for ``epochs`` epochs and returns the history.

        Args:
            train: An ``(inputs, targets)`` pair of tensors, a split with
                ``.inputs``/``.targets``, a torch Dataset or a DataLoader (a DataLoader
                keeps its own batch size and order). Every example is used each epoch:
                the last batch is shorter when ``batch_size`` does not divide the size.
            epochs (int): Number of epochs, >= 1.
            batch_size (int): Examples per batch, >= 1.
            dev: Data of the same kinds, evaluated after each epoch (``dev_*`` logs).
            callbacks: Objects with any of ``on_train_begin(trainer)``,
                ``on_epoch_end(trainer, epoch, logs)`` (epoch counts from 0 in this call)
                and ``on_train_end(trainer)``; one may set ``trainer.stop_training``.
            shuffle (bool): Shuffle the training examples every epoch.
            verbose (int): 0 silent; 1 a progress bar per epoch where a person watches
                it (tqdm's check: a terminal), else one line per epoch; 2 one line per
                epoch (on stdout). The environment variable ``NPFL_PROGRESS`` = 1 shows
                the bar everywhere (e.g. a widget in JupyterLab), 0 nowhere (what
                ``npfl-course autograde`` sets: graders zero a test cell that writes to
                stderr).

        Returns:
            list[dict]: One dict per epoch with ``loss``, each metric, ``dev_loss`` and
            ``dev_<metric>`` (when ``dev`` is given), ``lr`` (first parameter group's
            learning rate at the end of the epoch) and ``time`` (seconds); also kept as
            ``trainer.history``, while ``trainer.epoch`` counts epochs over all calls.
        """
        _check_count("epochs", epochs)
        _check_count("batch_size", batch_size)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        callbacks = list(callbacks)
        if self.fused_optimizer:
            _cuda_graph.use_fused_kernel(self.optimizer)
        train_feed = make_feed(train, "train", self.device, self._cache)
        dev_feed = None if dev is None else make_feed(dev, "dev", self.device, self._cache)
        writer = None
        if self.logdir is not None:
            from torch.utils.tensorboard import SummaryWriter  # slow import, only when used

            writer = SummaryWriter(str(self.logdir))
        self.stop_training = False
        self.history = history = []
        self._call(callbacks, "on_train_begin")
        try:
            for epoch in range(epochs):
                start = time.perf_counter()
                desc = f"Epoch {epoch + 1}/{epochs}"
                total = train_feed.num_batches(batch_size)
                bar = tqdm(total=total, desc=desc, unit="batch", disable=_bar_disabled(verbose))
                logs = self._train_epoch(train_feed, batch_size, shuffle, bar)
                if dev_feed is not None:
                    dev_logs = self._evaluate_feed(dev_feed, batch_size)
                    logs.update({f"dev_{key}": value for key, value in dev_logs.items()})
                logs["lr"] = float(self.optimizer.param_groups[0]["lr"])
                logs["time"] = time.perf_counter() - start
                history.append(logs)
                self.epoch += 1
                shown = not bar.disable  # close() sets disable
                if shown:
                    bar.set_postfix_str(self._format(logs), refresh=False)
                bar.close()
                self._report(logs, desc, 2 if verbose == 1 and not shown else verbose, writer)
                self._call(callbacks, "on_epoch_end", epoch, logs)
                if self.stop_training:
                    break
            self._call(callbacks, "on_train_end")
        finally:
            if writer is not None:
                writer.close()
        return history

    def _call(self, callbacks, hook: str, *args) -> None:
        for callback in callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self, *args)

    def _step(self, inputs, targets):
        """One eager training step; returns detached outputs and the targets."""
        outputs = self.model(inputs)
        loss = self.loss(outputs, targets)
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        self.optimizer.step()
        loss = loss.detach()
        if self._loss_sum is None:
            self._loss_sum = torch.zeros((), dtype=loss.dtype, device=loss.device)
        # Summed on the device: reading it back every batch would stall a GPU.
        self._loss_sum.add_(loss, alpha=batch_length(targets))
        return outputs.detach(), targets

    def _graphed_step(self, feed, batch_size):
        """This epoch's CUDA-graph runner: the last one while nothing it captured changed."""
        eligible = self.cuda_graph and self.device.type == "cuda"
        if not (eligible and isinstance(feed, ResidentData)) or self._graph_problem is not None:
            return None
        self._graph_problem = _cuda_graph.graph_blocker(self.optimizer, self.scheduler)
        if self._graph_problem is not None:
            self._warn_no_graph()
            return None

        def key():
            extra = (self.loss, self.clip_grad_norm, feed.inputs, feed.targets, batch_size)
            return _cuda_graph.capture_key(self.model, self.optimizer, *extra)

        graphed = self._graphed
        if graphed is None or graphed.graph is None or graphed.key != key():
            _cuda_graph.make_capturable(self.optimizer)
            params = {id(p): p for p in [*self._params, *self.model.parameters()]}.values()
            step = lambda index: self._step(*feed.take(index))  # noqa: E731
            graphed = self._graphed = _cuda_graph.GraphedStep(step, params, self.device, key)
        return graphed

    def _warn_no_graph(self) -> None:
        warnings.warn(
            f"Trainer: training eagerly without a CUDA graph because {self._graph_problem} "
            "(pass cuda_graph=False to silence this)",
            RuntimeWarning,
            stacklevel=2,
        )

    def _train_epoch(self, feed, batch_size, shuffle, bar) -> dict:
        self.model.train()
        for metric in self.metrics.values():
            metric.reset()
        if self._loss_sum is not None:
            self._loss_sum.zero_()
        if isinstance(feed, ResidentData):
            graphed = self._graphed_step(feed, batch_size)
            steps = (
                self._resident_step(feed, index, batch_size, graphed)
                for index in feed.index_batches(batch_size, shuffle)
            )
        else:
            steps = (
                self._step(inputs, targets) for inputs, targets in feed.batches(batch_size, shuffle)
            )
        count, last_postfix = 0, time.perf_counter()
        for outputs, targets in steps:
            if self.scheduler is not None:
                self.scheduler.step()
            for metric in self.metrics.values():
                metric.update(outputs, targets)
            count += batch_length(targets)
            if not bar.disable:
                bar.update()
                if time.perf_counter() - last_postfix > 1.0:  # a rare sync, only for the bar
                    bar.set_postfix(loss=f"{self._loss_sum.item() / count:.4f}", refresh=False)
                    last_postfix = time.perf_counter()
        logs = {"loss": self._loss_sum.item() / count if count else math.nan}
        logs.update({name: _to_python(m.compute()) for name, m in self.metrics.items()})
        return logs

    def _resident_step(self, feed, index, batch_size, graphed):
        if graphed is None or graphed.failure is not None or len(index) < batch_size:
            return self._step(*feed.take(index))  # eager, also for the last, shorter batch
        result = graphed(index)
        if graphed.failure is not None:
            self._graph_problem = f"capturing the step failed ({graphed.failure})"
            self._graphed = None
            self._warn_no_graph()
        return result

    def _report(self, logs, desc, verbose, writer) -> None:
        if verbose == 2:
            print(f"{desc} {self._format(logs)}", flush=True)
        if writer is not None:
            for key, value in logs.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(key, value, self.epoch)
            writer.flush()

    @staticmethod
    def _format(logs) -> str:
        return " ".join(
            f"{key}={value:.4g}" if key != "time" else f"{key}={value:.2f}s"
            for key, value in logs.items()
            if isinstance(value, (int, float))
        )

    # -------------------------------------------------------------- evaluation
    def evaluate(self, data, batch_size=256) -> dict:
        """Returns ``{"loss": ..., <metric>: ...}`` of the model on ``data`` (eval mode).

        Args:
            data: The same kinds of data as ``fit``'s ``train``.
            batch_size (int): Examples per batch, >= 1 (affects speed and memory only).
        """
        _check_count("batch_size", batch_size)
        return self._evaluate_feed(make_feed(data, "data", self.device, self._cache), batch_size)

    @torch.no_grad()
    def _evaluate_feed(self, feed, batch_size) -> dict:
        was_training = self.model.training
        self.model.eval()
        for metric in self.metrics.values():
            metric.reset()
        total, count = None, 0
        for inputs, targets in feed.batches(batch_size):
            outputs = self.model(inputs)
            n = batch_length(targets)
            loss = self.loss(outputs, targets).detach() * n
            total = loss if total is None else total.add_(loss)
            count += n
            for metric in self.metrics.values():
                metric.update(outputs, targets)
        self.model.train(was_training)
        logs = {"loss": total.item() / count if count else math.nan}
        logs.update({name: _to_python(m.compute()) for name, m in self.metrics.items()})
        return logs

    @torch.no_grad()
    def predict(self, inputs, batch_size=256) -> torch.Tensor:
        """Returns the model's outputs (eval mode) for ``inputs``, concatenated, on the CPU.

        Args:
            inputs: A tensor of inputs, an ``(inputs, targets)`` pair, a split with
                ``.inputs``, or a Dataset/DataLoader of inputs or ``(inputs, targets)``.
            batch_size (int): Examples per batch, >= 1 (affects speed and memory only).
        """
        _check_count("batch_size", batch_size)
        if hasattr(inputs, "inputs"):
            inputs = inputs.inputs
        elif isinstance(inputs, (tuple, list)):
            inputs = tensor_pair(inputs, "inputs")[0]
        if isinstance(inputs, np.ndarray):
            inputs = torch.as_tensor(inputs)
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() == 0 or len(inputs) == 0:
                raise ValueError(f"inputs must hold at least one example, got shape {inputs.shape}")
            inputs = self._cache.get(inputs)
            batches = (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))
        elif isinstance(inputs, (Dataset, DataLoader)):
            loader = LoaderData(inputs, self.device).loader(batch_size)
            batches = (  # a Dataset of (inputs, targets) pairs, or of inputs alone
                to_device(batch[0] if isinstance(batch, (tuple, list)) else batch, self.device)
                for batch in loader
            )
        else:
            raise TypeError(f"inputs must be a tensor or {DATA_KINDS}, got {type(inputs).__name__}")
        was_training = self.model.training
        self.model.eval()
        outputs = [self.model(batch).cpu() for batch in batches]
        self.model.train(was_training)
        return torch.cat(outputs)
