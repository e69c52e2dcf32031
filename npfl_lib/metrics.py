"""Streaming metrics: accumulate statistics over batches, then compute the value.

The protocol is torchmetrics': ``update(...)`` adds a batch to the running state,
``compute()`` turns the running state into the metric's value, ``reset()`` clears the
state, and calling the metric, ``metric(preds, target)``, returns the value on *that batch
alone* while also adding the batch to the running state (torchmetrics' ``forward``)::

    acc = Accuracy("multiclass", num_classes=10)
    for x, y in loader:
        batch_acc = acc(model(x), y)  # this batch only
    epoch_acc = acc.compute()  # every batch since the last reset()
    acc.reset()

Every state here is a *sum* (of values, weights, squared errors or counts) that starts at
zero, so ``reset()`` zeroes the states and merging a batch into the running state is
addition; sums are also what make the per-batch value and the running value consistent.

``Metric`` is a ``torch.nn.Module`` (like torchmetrics' metrics) because the states are
then registered buffers: ``metric.to(device)`` moves them, and ``metric.to(torch.float64)``
changes the dtype of the floating-point ones, exactly as for a model, with no device
bookkeeping of our own. The buffers are not persistent (not in ``state_dict()``), as in
torchmetrics. Inputs may live on another device than the metric: statistics are computed
on the inputs' device and only the reduced sums move to the metric's device.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ._checks import check_float_tensor, check_in_range, check_index_tensor, check_same_shape

__all__ = ["Metric", "Mean", "MeanSquaredError", "Accuracy"]

NAN_STRATEGIES = ("error", "warn", "ignore", "disable")
TASKS = ("binary", "multiclass", "multilabel")


class Metric(nn.Module):
    """Base class of a streaming metric whose states are sums kept on the metric's device.

    A subclass registers its states with ``add_state`` in ``__init__`` and implements
    ``update`` (add one batch's statistics with ``_add_to_state``) and ``compute``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state_names: list[str] = []

    def add_state(self, name: str, dtype: torch.dtype | None = None) -> None:
        """Registers a zero scalar state (``dtype`` defaults to torch's default dtype)."""
        dtype = torch.get_default_dtype() if dtype is None else dtype
        self.register_buffer(name, torch.zeros((), dtype=dtype), persistent=False)
        self._state_names.append(name)

    @property
    def device(self) -> torch.device:
        """The device the states live on."""
        return getattr(self, self._state_names[0]).device

    def _add_to_state(self, name: str, value: torch.Tensor | int) -> None:
        state = getattr(self, name)
        # In place, so the state keeps its dtype: a float64 batch sum is rounded into a
        # float32 state, as in torchmetrics (use metric.to(torch.float64) for float64 sums).
        state += value.to(state.device) if isinstance(value, torch.Tensor) else value

    def reset(self) -> None:
        """Clears the running state (every state back to zero)."""
        for name in self._state_names:
            getattr(self, name).zero_()

    def update(self, *args, **kwargs) -> None:
        """Adds one batch to the running state."""
        raise NotImplementedError

    def compute(self) -> torch.Tensor:
        """Returns the metric over every batch added since the last ``reset()``."""
        raise NotImplementedError

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """Returns the metric on this batch alone and adds the batch to the running state.

        Args:
            *args: Passed to ``update``.
            **kwargs: Passed to ``update``.

        Returns:
            torch.Tensor: ``compute()`` of a fresh metric updated with this batch only.
        """
        running = [getattr(self, name).clone() for name in self._state_names]
        self.reset()
        try:
            self.update(*args, **kwargs)
            value = self.compute()
        finally:
            # Also runs when update() rejects the batch, so the running state survives.
            for name, saved in zip(self._state_names, running, strict=True):
                getattr(self, name).add_(saved)
        return value


def _as_real_tensor(
    name: str, x: torch.Tensor | float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``x`` (tensor, number or nested sequence) as a detached tensor of ``dtype``."""
    if not isinstance(x, torch.Tensor):
        try:
            return torch.as_tensor(x, dtype=dtype, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{name} must be a number or a torch.Tensor, got {type(x).__name__}"
            ) from None
    if x.is_complex():
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    # A metric is a measurement: keeping the autograd graph would leak memory across batches.
    return x.detach().to(dtype)


def _check_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raises ValueError unless ``a`` and ``b`` are on the same device."""
    if a.device != b.device:
        raise ValueError(
            f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}"
        )


class Mean(Metric):
    """Weighted mean of a stream of values, like ``torchmetrics.MeanMetric``.

    ``compute()`` returns ``sum(weight * value) / sum(weight)`` over every element seen since
    the last ``reset()``; before any update that is ``0 / 0 = nan``, as in torchmetrics.
    The sums are kept in torch's default dtype (float32); ``metric.to(torch.float64)``
    keeps them in float64 (torchmetrics: ``metric.set_dtype(torch.float64)``).

    Args:
        nan_strategy (str | float): What to do with NaN in ``value`` or ``weight``:
            ``"warn"`` (default, as torchmetrics' MeanMetric) drops those elements with a
            UserWarning; ``"ignore"`` drops them silently; ``"error"`` raises ValueError;
            ``"disable"`` does not look (a NaN makes the mean NaN); a float replaces the
            NaN elements' value by it and their weight by 1.

    Example:
        >>> mean = Mean()
        >>> mean(torch.tensor([1.0, 2.0, 3.0]))
        tensor(2.)
        >>> mean(torch.tensor([10.0]), weight=3.0)
        tensor(10.)
        >>> mean.compute()  # (1 + 2 + 3 + 3 * 10) / (1 + 1 + 1 + 3)
        tensor(6.)
    """

    def __init__(self, nan_strategy: str | float = "warn") -> None:
        super().__init__()
        if isinstance(nan_strategy, str) and nan_strategy not in NAN_STRATEGIES:
            raise ValueError(
                f"nan_strategy must be one of {NAN_STRATEGIES} or a float, got {nan_strategy!r}"
            )
        if not isinstance(nan_strategy, (str, float)):
            raise TypeError(
                f"nan_strategy must be one of {NAN_STRATEGIES} or a float, "
                f"got {type(nan_strategy).__name__}"
            )
        self.nan_strategy = nan_strategy
        self.add_state("weighted_sum")
        self.add_state("weight_sum")

    def update(self, value: torch.Tensor | float, weight: torch.Tensor | float = 1.0) -> None:
        """Adds values to the mean.

        Args:
            value (torch.Tensor | float): A number or a tensor of any shape (every element
                counts); cast to the metric's dtype.
            weight (torch.Tensor | float): Weight of each element of ``value``; must
                broadcast to ``value``'s shape. Default 1 (the plain mean).
        """
        dtype = self.weighted_sum.dtype
        value = _as_real_tensor("value", value, dtype, self.device)
        weight = _as_real_tensor("weight", weight, dtype, value.device)
        _check_same_device("value", value, "weight", weight)
        try:
            weight = weight.broadcast_to(value.shape)
        except RuntimeError:
            raise ValueError(
                f"weight must broadcast to value's shape {tuple(value.shape)}, "
                f"got {tuple(weight.shape)}"
            ) from None
        if self.nan_strategy != "disable":
            nan = value.isnan() | weight.isnan()
            if nan.any():
                if self.nan_strategy == "error":
                    raise ValueError("value and weight must not contain NaN (nan_strategy='error')")
                if isinstance(self.nan_strategy, float):
                    value = value.masked_fill(nan, self.nan_strategy)
                    weight = weight.masked_fill(nan, 1.0)
                else:
                    if self.nan_strategy == "warn":
                        warnings.warn(
                            "Mean: dropping the elements where value or weight is NaN "
                            "(nan_strategy='warn')",
                            UserWarning,
                            stacklevel=2,
                        )
                    value, weight = value[~nan], weight[~nan]
        self._add_to_state("weighted_sum", (value * weight).sum())
        self._add_to_state("weight_sum", weight.sum())

    def compute(self) -> torch.Tensor:
        """Returns the weighted mean (``nan`` if the weights sum to zero)."""
        return self.weighted_sum / self.weight_sum


class MeanSquaredError(Metric):
    """Mean squared error over every element seen, like ``torchmetrics.MeanSquaredError``.

    ``compute()`` returns ``sum((preds - target)**2) / count`` over every element of every
    batch since the last ``reset()`` (the root of it if ``squared=False``); before any
    update that is ``0 / 0 = nan``, as in torchmetrics. The sum is kept in torch's default
    dtype (float32); ``metric.to(torch.float64)`` keeps it in float64. torchmetrics'
    ``num_outputs`` (one error per output column) is not implemented.

    Args:
        squared (bool): ``True`` (default) for the MSE, ``False`` for its square root (RMSE).

    Example:
        >>> mse = MeanSquaredError()
        >>> mse(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0]))
        tensor(2.)
    """

    def __init__(self, squared: bool = True) -> None:
        super().__init__()
        if not isinstance(squared, bool):
            raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
        self.squared = squared
        self.add_state("sum_squared_error")
        self.add_state("total", torch.int64)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of predictions and targets.

        Args:
            preds (torch.Tensor): Floating-point predictions, any shape.
            target (torch.Tensor): Floating-point targets, the same shape as ``preds``.
        """
        check_float_tensor("preds", preds)
        check_float_tensor("target", target)
        check_same_shape("preds", preds, "target", target)
        _check_same_device("preds", preds, "target", target)
        diff = preds.detach().reshape(-1) - target.detach().reshape(-1)
        self._add_to_state("sum_squared_error", (diff * diff).sum())
        self._add_to_state("total", diff.numel())

    def compute(self) -> torch.Tensor:
        """Returns the MSE (RMSE if ``squared=False``)."""
        mse = self.sum_squared_error / self.total
        return mse if self.squared else mse.sqrt()


def _check_count(name: str, value: int | None, task: str) -> None:
    """Raises unless ``value`` (num_classes or num_labels) is an integer >= 2."""
    if value is None:
        raise ValueError(f"{name} is required when task={task!r}, got None")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {value}")


def _check_values(name: str, tensor: torch.Tensor, count: int, ignore_index: int | None) -> None:
    """Raises ValueError unless every entry is in {0, ..., count - 1} or is ``ignore_index``."""
    bad = (tensor < 0) | (tensor >= count)
    allowed = f"{{0, ..., {count - 1}}}"
    if ignore_index is not None:
        bad &= tensor != ignore_index
        allowed += f" or ignore_index={ignore_index}"
    if bad.any():
        raise ValueError(f"{name} must hold values in {allowed}, got {tensor[bad][0].item()}")


def _check_no_nan(preds: torch.Tensor) -> None:
    # torchmetrics would silently count a NaN as class 0 (threshold) or the NaN's class (argmax).
    if preds.isnan().any():
        raise ValueError("preds must not contain NaN")


class Accuracy(Metric):
    """Fraction of correct predictions, like ``torchmetrics.classification.Accuracy``.

    Every task uses the *micro* average: correct predictions / predictions over every
    element of every batch, with the elements whose target is ``ignore_index`` left out.
    That is torchmetrics 1.9's default for ``Accuracy(task=...)`` for all three tasks
    (``average="micro"``). For ``"multiclass"`` it is the usual accuracy; for
    ``"multilabel"`` each (sample, label) pair counts once. (torchmetrics'
    ``MulticlassAccuracy`` and ``MultilabelAccuracy`` classes, used directly, default to
    ``average="macro"`` instead, the mean of per-class accuracies.) No elements at all
    (before any update, or all ignored) give 0, torchmetrics' ``zero_division=0``.

    Inputs per task (``target`` holds integer class indices, torch.int64):

    - ``"binary"``: ``preds`` and ``target`` of the same shape; ``target`` in {0, 1};
      ``preds`` are integer labels in {0, 1} or floats: probabilities, predicted positive
      when ``> threshold`` (strictly).
    - ``"multilabel"``: as binary, with shape ``[N, num_labels, ...]``.
    - ``"multiclass"``: ``target`` ``[N, ...]`` in {0, ..., num_classes - 1}; ``preds`` are
      probabilities or logits ``[N, num_classes, ...]`` (the predicted class is the argmax
      over dim 1, the same for both since softmax is monotonic) or class indices ``[N, ...]``.

    The sigmoid trap (binary and multilabel, ``from_logits=False``): like torchmetrics, a
    float batch is taken as logits, and squashed with a sigmoid, only if some value lies
    outside [0, 1]; decided anew for every batch (over all of it, ignored elements
    included). A batch of logits that all happen to lie in [0, 1] is thresholded as if
    it were probabilities, so a logit of 0.2 (probability 0.55) counts as negative:

    >>> logits = torch.tensor([0.2, 0.4, 0.6, 0.9])  # sigmoid > 0.5: all four positive
    >>> target = torch.tensor([1, 1, 1, 1])
    >>> Accuracy("binary")(logits, target)  # 0.2 and 0.4 taken as probabilities < 0.5
    tensor(0.5000)
    >>> Accuracy("binary", from_logits=True)(logits, target)  # sigmoid on every batch
    tensor(1.)

    Pass ``from_logits=True`` whenever ``preds`` are logits.

    Args:
        task (str): ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes (int | None): Number of classes (>= 2); required for ``"multiclass"``.
        num_labels (int | None): Number of labels (>= 2); required for ``"multilabel"``.
        threshold (float): Probability above which a binary/multilabel prediction is
            positive, in [0, 1]. Default 0.5. Unused for ``"multiclass"``.
        ignore_index (int | None): Target value whose elements are left out of the metric.
        from_logits (bool): Binary/multilabel float ``preds`` are logits: apply a sigmoid to
            every batch. Default ``False``: torchmetrics' rule above. Unused for
            ``"multiclass"`` (the argmax does not depend on it).
    """

    def __init__(
        self,
        task: str,
        num_classes: int | None = None,
        num_labels: int | None = None,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        from_logits: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "multiclass":
            _check_count("num_classes", num_classes, task)
        if task == "multilabel":
            _check_count("num_labels", num_labels, task)
        check_in_range("threshold", threshold, 0.0, 1.0)
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise TypeError(f"ignore_index must be None or an int, got {ignore_index!r}")
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be a bool, got {type(from_logits).__name__}")
        self.task = task
        self.num_classes = num_classes
        self.num_labels = num_labels
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.add_state("correct", torch.int64)
        self.add_state("total", torch.int64)

    def extra_repr(self) -> str:
        return (
            f"task={self.task!r}, num_classes={self.num_classes}, num_labels={self.num_labels}, "
            f"threshold={self.threshold}, ignore_index={self.ignore_index}, "
            f"from_logits={self.from_logits}"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch of predictions and targets (shapes: see the class docstring).

        Args:
            preds (torch.Tensor): Probabilities, logits or integer class labels.
            target (torch.Tensor): Integer class indices (or ``ignore_index``).
        """
        check_index_tensor("target", target)
        if not isinstance(preds, torch.Tensor):
            raise TypeError(f"preds must be a torch.Tensor, got {type(preds).__name__}")
        if preds.is_complex():
            raise TypeError(f"preds must be a real tensor, got {preds.dtype}")
        _check_same_device("preds", preds, "target", target)
        preds = preds.detach()  # the sigmoid below need not record a graph
        if self.task == "multiclass":
            labels = self._multiclass_labels(preds, target)
        else:
            labels = self._binary_labels(preds, target)
        if self.ignore_index is None:
            counted = torch.ones_like(target, dtype=torch.bool)
        else:
            counted = target != self.ignore_index
        self._add_to_state("correct", ((labels == target) & counted).sum())
        self._add_to_state("total", counted.sum())

    def _multiclass_labels(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predicted class indices of shape ``target.shape``, after validating the inputs."""
        if preds.is_floating_point():
            expected = (*target.shape[:1], self.num_classes, *target.shape[1:])
            if target.ndim == 0 or preds.shape != expected:
                raise ValueError(
                    f"preds (probabilities or logits) must have shape [N, num_classes, ...] = "
                    f"{expected} for target of shape {tuple(target.shape)}, "
                    f"got {tuple(preds.shape)}"
                )
            _check_no_nan(preds)
            preds = preds.argmax(dim=1)
        else:
            check_index_tensor("preds", preds)
            check_same_shape("preds", preds, "target", target)
            _check_values("preds", preds, self.num_classes, None)
        _check_values("target", target, self.num_classes, self.ignore_index)
        return preds

    def _binary_labels(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predicted labels in {0, 1} of shape ``target.shape``, after validating the inputs."""
        check_same_shape("preds", preds, "target", target)
        if self.task == "multilabel" and (preds.ndim < 2 or preds.shape[1] != self.num_labels):
            raise ValueError(
                f"preds and target must have shape [N, num_labels, ...] with "
                f"num_labels={self.num_labels}, got {tuple(preds.shape)}"
            )
        _check_values("target", target, 2, self.ignore_index)
        if not preds.is_floating_point():
            _check_values("preds", preds, 2, None)
            return preds
        _check_no_nan(preds)
        if self.from_logits or ((preds < 0) | (preds > 1)).any():
            preds = preds.sigmoid()
        return preds > self.threshold

    def compute(self) -> torch.Tensor:
        """Returns the accuracy as a float32 scalar (0 if no element was counted)."""
        total = self.total.float()
        return torch.where(total > 0, self.correct.float() / total, 0.0)
