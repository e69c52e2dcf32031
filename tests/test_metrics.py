"""Tests of npfl_lib.metrics against torchmetrics (MeanMetric, MeanSquaredError, Accuracy)."""

import math
import warnings

import pytest
import torch
import torchmetrics
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from npfl_lib.metrics import Accuracy, Mean, MeanSquaredError, Metric

DTYPES = [torch.float64, torch.float32]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def assert_rel_close(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(ours, theirs, rtol=RTOL[dtype], atol=0.0, equal_nan=True)


def run_both(ours, theirs, batches, compare) -> None:
    """Feeds the same batches to both metrics by calling them (torchmetrics' forward) and
    compares every per-batch value and the final compute(); then again with update()."""
    for batch in batches:
        compare(ours(*batch[0], **batch[1]), theirs(*batch[0], **batch[1]))
    compare(ours.compute(), theirs.compute())
    ours.reset()
    theirs.reset()
    for batch in batches:
        ours.update(*batch[0], **batch[1])
        theirs.update(*batch[0], **batch[1])
    compare(ours.compute(), theirs.compute())


def tm_compute(metric) -> torch.Tensor:
    """torchmetrics' compute() without its 'compute before update' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric.compute()


# ----------------------------------------------------------------------------------
# Metric (the base class)
# ----------------------------------------------------------------------------------


class Count(Metric):
    """The smallest metric: how many elements were seen."""

    def __init__(self):
        super().__init__()
        self.add_state("n", torch.int64)

    def update(self, x):
        self._add_to_state("n", x.numel())

    def compute(self):
        return self.n.clone()


def test_base_class_protocol(device):
    count = Count().to(device)
    assert count.device.type == device.type
    assert count(torch.zeros(3, device=device)) == 3  # this batch only
    assert count(torch.zeros(4, device=device)) == 4
    assert count.compute() == 7  # everything so far
    count.reset()
    assert count.compute() == 0
    assert "n" not in count.state_dict()  # states are not persistent, as in torchmetrics
    with pytest.raises(NotImplementedError):
        Metric().update()
    with pytest.raises(NotImplementedError):
        Metric().compute()


# ----------------------------------------------------------------------------------
# Mean
# ----------------------------------------------------------------------------------


def mean_pair(device, dtype, **kwargs):
    ours = Mean(**kwargs).to(device=device, dtype=dtype)
    theirs = torchmetrics.MeanMetric(**kwargs).to(device).set_dtype(dtype)
    return ours, theirs


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_matches_torchmetrics(device, dtype, generator):
    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    batches = [
        ((rand(5, 3),), {}),
        ((rand(5, 3), rand(5, 3).abs()), {}),  # elementwise weights
        ((rand(4, 3),), {"weight": rand(3).abs()}),  # weights broadcast over the rows
        ((2.5,), {"weight": 3.0}),  # Python numbers
        ((rand(6),), {"weight": 0.5}),
        ((torch.tensor([1, 2, 7], device=device),), {}),  # integer values are cast
    ]
    ours, theirs = mean_pair(device, dtype)
    run_both(ours, theirs, batches, lambda a, b: assert_rel_close(a, b, dtype))
    assert ours.weighted_sum.dtype == dtype


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.floats(-1e6, 1e6, allow_nan=False),
                st.floats(0.01, 100.0, allow_nan=False),
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mean_hypothesis(batches):
    ours, theirs = mean_pair("cpu", torch.float64)
    for batch in batches:
        value, weight = (
            torch.tensor(column, dtype=torch.float64) for column in zip(*batch, strict=True)
        )
        assert_rel_close(ours(value, weight), theirs(value, weight), torch.float64)
    assert_rel_close(ours.compute(), theirs.compute(), torch.float64)


def test_mean_empty_and_reset(device):
    ours, theirs = mean_pair(device, torch.float32)
    assert math.isnan(ours.compute()) and math.isnan(tm_compute(theirs))  # 0 / 0
    ours.update(torch.tensor([1.0, 2.0], device=device))
    ours.reset()
    assert math.isnan(ours.compute())
    ours.update(torch.tensor([5.0], device=device))
    assert ours.compute() == 5.0  # nothing left over from before the reset
    # A batch whose weights sum to zero has no mean, here as in torchmetrics.
    zero = torch.zeros(2, device=device)
    assert math.isnan(ours(zero + 1, zero)) and math.isnan(theirs(zero + 1, zero))


@pytest.mark.parametrize("nan_strategy", ["warn", "ignore", 0.5, "disable"])
def test_mean_nan_strategy(device, nan_strategy):
    ours, theirs = mean_pair(device, torch.float64, nan_strategy=nan_strategy)
    nan = math.nan
    value = torch.tensor([1.0, nan, 3.0, 4.0], dtype=torch.float64, device=device)
    weight = torch.tensor([1.0, 1.0, nan, 2.0], dtype=torch.float64, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch_value = ours(value, weight)
    assert any("NaN" in str(w.message) for w in caught) == (nan_strategy == "warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs(value.clone(), weight.clone())  # torchmetrics fills in place
    assert_rel_close(batch_value, expected, torch.float64)
    assert_rel_close(ours.compute(), theirs.compute(), torch.float64)


def test_mean_nan_error(device):
    mean = Mean(nan_strategy="error").to(device)
    with pytest.raises(ValueError, match="NaN"):
        mean(torch.tensor([1.0, math.nan], device=device))
    assert math.isnan(mean.compute())  # the rejected batch left no trace


def test_mean_detaches(device):
    value = torch.randn(4, device=device, requires_grad=True)
    mean = Mean().to(device)
    assert not mean(value * 2).requires_grad
    assert not mean.weighted_sum.requires_grad  # no graph kept alive across batches


def test_mean_bad_input():
    with pytest.raises(ValueError, match="nan_strategy"):
        Mean(nan_strategy="drop")
    with pytest.raises(TypeError, match="nan_strategy"):
        Mean(nan_strategy=1)
    mean = Mean()
    with pytest.raises(ValueError, match="weight"):
        mean.update(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="weight"):
        mean.update(torch.ones(3), torch.ones(2, 3))  # weight must broadcast to value, not back
    with pytest.raises(TypeError, match="value"):
        mean.update("one")
    with pytest.raises(TypeError, match="value"):
        mean.update(torch.ones(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="weight"):
        mean.update(1.0, weight=None)


# ----------------------------------------------------------------------------------
# MeanSquaredError
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squared", [True, False])
def test_mse_matches_torchmetrics(device, dtype, squared, generator):
    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    batches = [
        (rand(7), rand(7)),
        (rand(4, 3), rand(4, 3)),
        (rand(3, 4).T, rand(4, 3)),  # non-contiguous preds
        (rand(2, 3, 5) * 100, rand(2, 3, 5)),
        (rand(1), rand(1)),
    ]
    ours = MeanSquaredError(squared=squared).to(device=device, dtype=dtype)
    theirs = torchmetrics.MeanSquaredError(squared=squared).to(device).set_dtype(dtype)
    # torchmetrics' view(-1) rejects non-contiguous tensors, so it gets contiguous copies.
    for preds, target in batches:
        assert_rel_close(ours(preds, target), theirs(preds.contiguous(), target), dtype)
    assert_rel_close(ours.compute(), theirs.compute(), dtype)
    ours.reset()
    theirs.reset()
    for preds, target in batches:
        ours.update(preds, target)
        theirs.update(preds.contiguous(), target)
    assert_rel_close(ours.compute(), theirs.compute(), dtype)


def test_mse_empty_and_reset(device):
    ours = MeanSquaredError().to(device)
    theirs = torchmetrics.MeanSquaredError().to(device)
    assert math.isnan(ours.compute()) and math.isnan(tm_compute(theirs))
    ours(torch.ones(3, device=device), torch.zeros(3, device=device))
    ours.reset()
    assert math.isnan(ours.compute())
    ours(torch.full((2,), 3.0, device=device), torch.ones(2, device=device))
    assert ours.compute() == 4.0


def test_mse_default_dtype_state_like_torchmetrics(generator):
    # float64 inputs, float32 state: the sums are rounded to float32 in both libraries.
    preds = torch.randn(50, generator=generator, dtype=torch.float64)
    target = torch.randn(50, generator=generator, dtype=torch.float64)
    ours, theirs = MeanSquaredError(), torchmetrics.MeanSquaredError()
    torch.testing.assert_close(ours(preds, target), theirs(preds, target), rtol=0, atol=0)


def test_mse_bad_input():
    mse = MeanSquaredError()
    with pytest.raises(TypeError, match="squared"):
        MeanSquaredError(squared="yes")
    with pytest.raises(TypeError, match="preds"):
        mse.update(torch.ones(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(TypeError, match="target"):
        mse.update(torch.ones(3), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="preds and target"):
        mse.update(torch.ones(3), torch.ones(3, 1))
    mse(torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="preds and target"):
        mse(torch.ones(3), torch.ones(4))  # a rejected batch must not erase the running state
    assert mse.compute() == 1.0


# ----------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------


def acc_pair(device, **kwargs):
    from_logits = kwargs.pop("from_logits", False)
    ours = Accuracy(**kwargs, from_logits=from_logits).to(device)
    theirs = torchmetrics.Accuracy(**kwargs).to(device)
    return ours, theirs


def assert_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # Both divide the same integer counts in float32: bitwise equal.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def make_batches(kind, shape, num, dtype, device, generator, ignore_index=None, n_batches=4):
    """Random (preds, target) batches: kind is "probs", "logits" or "labels" for
    binary/multilabel (shape = target shape) or "mc_probs", "mc_logits", "mc_labels" for
    multiclass with ``num`` classes (class dim 1 added to preds for probs/logits)."""
    batches = []
    for _ in range(n_batches):
        target = torch.randint(0, 2 if kind[:3] != "mc_" else num, shape, generator=generator)
        if kind in ("probs", "logits", "labels"):
            preds = torch.randn(shape, generator=generator, dtype=dtype)
        else:
            pshape = (shape[0], num, *shape[1:])
            preds = torch.randn(pshape, generator=generator, dtype=dtype)
        if kind == "probs":
            preds = preds.sigmoid()
        elif kind == "logits":
            preds = preds * 3
        elif kind == "labels":
            preds = (preds > 0).long()
        elif kind == "mc_probs":
            preds = preds.softmax(dim=1)
        elif kind == "mc_labels":
            preds = preds.argmax(dim=1)
        if ignore_index is not None:
            drop = torch.rand(shape, generator=generator) < 0.3
            target[drop] = ignore_index
        batches.append(((preds.to(device), target.to(device)), {}))
    return batches


CASES = [
    # (accuracy kwargs, kind, target shape, ignore_index)
    ({"task": "binary"}, "probs", (20,), None),
    ({"task": "binary"}, "logits", (20,), None),
    ({"task": "binary"}, "labels", (20,), None),
    ({"task": "binary", "threshold": 0.3}, "probs", (8, 3, 2), None),
    ({"task": "binary", "ignore_index": -1}, "logits", (20,), -1),
    ({"task": "binary", "ignore_index": 255}, "probs", (6, 5), 255),
    ({"task": "multiclass", "num_classes": 4}, "mc_probs", (20,), None),
    ({"task": "multiclass", "num_classes": 4}, "mc_logits", (20,), None),
    ({"task": "multiclass", "num_classes": 4}, "mc_labels", (20,), None),
    ({"task": "multiclass", "num_classes": 3}, "mc_logits", (10, 7), None),  # [N, C, d]
    ({"task": "multiclass", "num_classes": 3}, "mc_labels", (5, 2, 3), None),
    ({"task": "multiclass", "num_classes": 5, "ignore_index": -100}, "mc_logits", (20,), -100),
    ({"task": "multiclass", "num_classes": 5, "ignore_index": 1}, "mc_probs", (8, 3), 1),
    ({"task": "multilabel", "num_labels": 3}, "probs", (20, 3), None),
    ({"task": "multilabel", "num_labels": 3}, "logits", (20, 3), None),
    ({"task": "multilabel", "num_labels": 4}, "labels", (20, 4), None),
    ({"task": "multilabel", "num_labels": 2, "threshold": 0.7}, "probs", (6, 2, 5), None),
    ({"task": "multilabel", "num_labels": 3, "ignore_index": -1}, "logits", (20, 3), -1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("kwargs", "kind", "shape", "ignore_index"), CASES)
def test_accuracy_matches_torchmetrics(device, dtype, generator, kwargs, kind, shape, ignore_index):
    batches = make_batches(
        kind, shape, kwargs.get("num_classes"), dtype, device, generator, ignore_index
    )
    ours, theirs = acc_pair(device, **kwargs)
    run_both(ours, theirs, batches, assert_equal)
    assert ours.compute().dtype == torch.float32 and ours.compute().device.type == device.type


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    num_classes=st.integers(2, 5),
    extra=st.sampled_from([(), (3,)]),
    ignore_index=st.sampled_from([None, -1, 0]),
    seed=st.integers(0, 2**16),
)
def test_accuracy_multiclass_hypothesis(n, num_classes, extra, ignore_index, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (n, *extra)
    batches = make_batches(
        "mc_logits", shape, num_classes, torch.float32, "cpu", generator, ignore_index, 2
    )
    ours, theirs = acc_pair(
        "cpu", task="multiclass", num_classes=num_classes, ignore_index=ignore_index
    )
    run_both(ours, theirs, batches, assert_equal)


def test_accuracy_default_average_is_micro_for_every_task():
    # torchmetrics 1.9: Accuracy(task=...) uses average="micro" for multiclass and multilabel
    # (binary has no average); only the MulticlassAccuracy/MultilabelAccuracy classes,
    # constructed directly, default to "macro". We match Accuracy(task=...).
    assert torchmetrics.Accuracy(task="multiclass", num_classes=3).average == "micro"
    assert torchmetrics.Accuracy(task="multilabel", num_labels=2).average == "micro"
    assert MulticlassAccuracy(3).average == MultilabelAccuracy(2).average == "macro"
    preds, target = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 2])
    ours = Accuracy("multiclass", num_classes=3)(preds, target)
    assert ours == 0.75 and ours != MulticlassAccuracy(3)(preds, target)
    preds = torch.tensor([[1, 0], [1, 1], [0, 0]])
    target = torch.tensor([[1, -1], [0, -1], [0, 1]])
    ours = Accuracy("multilabel", num_labels=2, ignore_index=-1)(preds, target)  # 2 of 4 counted
    assert ours == 0.5 and ours != MultilabelAccuracy(2, ignore_index=-1)(preds, target)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_accuracy_sigmoid_trap(device, task):
    # Logits that all happen to lie in [0, 1]: every sigmoid is > 0.5, so all are positive.
    logits = torch.tensor([[0.2, 0.4], [0.6, 0.9]], device=device)
    target = torch.ones(2, 2, dtype=torch.long, device=device)
    kwargs = {"task": task, "num_labels": 2} if task == "multilabel" else {"task": task}
    ours, theirs = acc_pair(device, **kwargs)
    # torchmetrics and from_logits=False read them as probabilities: 0.2 and 0.4 are "negative".
    assert ours(logits, target) == theirs(logits, target) == 0.5
    right = ((logits.sigmoid() > 0.5) == target).float().mean()
    assert Accuracy(**kwargs, from_logits=True).to(device)(logits, target) == right == 1.0


def test_accuracy_sigmoid_trap_is_decided_per_batch(device):
    outside = torch.tensor([-2.0, 0.3, 3.0], device=device)  # squashed: 0.3 -> 0.57 > 0.5
    inside = torch.tensor([0.3, 0.6, 0.4], device=device)  # not squashed: 0.3 < 0.5
    target = torch.tensor([0, 1, 1], device=device)
    ones = torch.ones(3, dtype=torch.long, device=device)
    ours, theirs = acc_pair(device, task="binary")
    assert_equal(ours(outside, target), theirs(outside, target))
    assert_equal(ours(inside, ones), theirs(inside, ones))
    assert_equal(ours.compute(), theirs.compute())
    assert ours.compute() == torch.tensor(4 / 6)  # the same logit 0.3 counted both ways
    fixed = Accuracy("binary", from_logits=True).to(device)
    fixed.update(outside, target)
    fixed.update(inside, ones)
    assert fixed.compute() == 1.0
    # An ignored element outside [0, 1] still triggers the sigmoid, as in torchmetrics.
    ours, theirs = acc_pair(device, task="binary", ignore_index=-1)
    preds = torch.tensor([0.3, 0.6, 5.0], device=device)
    target = torch.tensor([1, 1, -1], device=device)
    assert_equal(ours(preds, target), theirs(preds, target))
    assert ours.compute() == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"task": "binary"},
        {"task": "multiclass", "num_classes": 3},
        {"task": "multilabel", "num_labels": 2},
    ],
)
def test_accuracy_empty_state_and_reset(device, kwargs):
    ours, theirs = acc_pair(device, **kwargs, ignore_index=-1)
    assert ours.compute() == tm_compute(theirs) == 0.0  # no elements: 0, not nan
    shape = (4, 2) if kwargs["task"] == "multilabel" else (4,)
    all_ignored = torch.full(shape, -1, device=device)
    preds = torch.zeros(shape, dtype=torch.long, device=device)
    assert_equal(ours(preds, all_ignored), theirs(preds, all_ignored))
    ours(preds, torch.zeros(shape, dtype=torch.long, device=device))
    assert ours.compute() == 1.0
    ours.reset()
    assert ours.compute() == 0.0 and ours.total == 0
    ours(preds, torch.ones(shape, dtype=torch.long, device=device))
    assert ours.compute() == 0.0 and ours.total == preds.numel()


def test_accuracy_bool_preds(device):
    preds = torch.tensor([True, False, True], device=device)
    target = torch.tensor([1, 1, 1], device=device)
    ours, theirs = acc_pair(device, task="binary")
    assert_equal(ours(preds, target), theirs(preds, target))


def test_to_device_and_dtype(device):
    acc = Accuracy("binary").to(device)
    assert acc.correct.device.type == device.type and acc.total.device.type == device.type
    assert acc.to(torch.float64).correct.dtype == torch.int64  # counts stay integers
    mean = Mean().to(device).to(torch.float64)
    assert mean.weighted_sum.dtype == torch.float64 and mean.device.type == device.type
    mean(torch.tensor([1.0, 2.0], device=device))
    assert mean.compute().device.type == device.type
    back = mean.to("cpu")
    assert back.compute() == 1.5 and back.compute().device.type == "cpu"


def test_inputs_on_another_device(device):
    if device.type == "cpu":
        pytest.skip("needs a second device")
    acc = Accuracy("multiclass", num_classes=3)  # states on the CPU, data on the GPU
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], device=device)
    assert acc(logits, torch.tensor([1, 2], device=device)) == 0.5
    assert acc.compute().device.type == "cpu"
    mean = Mean()
    mean(torch.tensor([1.0, 3.0], device=device), weight=torch.tensor([1.0, 3.0], device=device))
    assert mean.compute() == 2.5


def test_device_mismatch_is_rejected():
    # "meta" tensors stand in for a second device on a CPU-only machine.
    meta = torch.zeros(3, device="meta")
    with pytest.raises(ValueError, match="value and weight"):
        Mean().update(meta, torch.ones(3))
    with pytest.raises(ValueError, match="preds and target"):
        MeanSquaredError().update(meta, torch.ones(3))
    with pytest.raises(ValueError, match="preds and target"):
        Accuracy("binary").update(meta, torch.ones(3, dtype=torch.long))


def test_accuracy_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        Accuracy("regression")
    with pytest.raises(ValueError, match="num_classes"):
        Accuracy("multiclass")
    with pytest.raises(ValueError, match="num_classes"):
        Accuracy("multiclass", num_classes=1)
    with pytest.raises(TypeError, match="num_classes"):
        Accuracy("multiclass", num_classes=3.0)
    with pytest.raises(ValueError, match="num_labels"):
        Accuracy("multilabel")
    with pytest.raises(ValueError, match="num_labels"):
        Accuracy("multilabel", num_labels=0)
    for threshold in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            Accuracy("binary", threshold=threshold)
    with pytest.raises(TypeError, match="ignore_index"):
        Accuracy("binary", ignore_index=0.5)
    with pytest.raises(TypeError, match="from_logits"):
        Accuracy("binary", from_logits="yes")


def test_accuracy_bad_batches():
    long = torch.long
    binary = Accuracy("binary")
    with pytest.raises(ValueError, match="preds and target"):
        binary(torch.rand(4), torch.ones(5, dtype=long))
    with pytest.raises(ValueError, match="target"):
        binary(torch.rand(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="target"):
        binary(torch.rand(3), torch.tensor([0, 1, -1]))  # -1 is only fine as ignore_index
    with pytest.raises(ValueError, match="preds"):
        binary(torch.tensor([0, 2, 1]), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="preds"):
        binary(torch.tensor([0.5, math.nan]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="target"):
        binary(torch.rand(3), torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="preds"):
        binary([0.1, 0.9], torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="preds"):
        binary(torch.ones(2, dtype=torch.complex64), torch.tensor([0, 1]))

    multiclass = Accuracy("multiclass", num_classes=3, ignore_index=-100)
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.randn(4, 2), torch.zeros(4, dtype=long))  # 2 classes, not 3
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.randn(5, 3), torch.zeros(4, dtype=long))  # N differs
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.randn(4, 3, 2), torch.zeros(4, 3, dtype=long))  # [N, C, d] vs [N, d]
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.rand(4), torch.zeros(4, dtype=long))  # float preds need a class dim
    with pytest.raises(ValueError, match="preds and target"):
        multiclass(torch.zeros(4, dtype=long), torch.zeros(5, dtype=long))
    with pytest.raises(ValueError, match="target"):
        multiclass(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target"):
        multiclass(torch.randn(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="preds"):
        multiclass(torch.tensor([[0.2, math.nan, 0.1]]), torch.tensor([1]))

    multilabel = Accuracy("multilabel", num_labels=3)
    with pytest.raises(ValueError, match="num_labels"):
        multilabel(torch.rand(4, 2), torch.zeros(4, 2, dtype=long))
    with pytest.raises(ValueError, match="num_labels"):
        multilabel(torch.rand(3), torch.zeros(3, dtype=long))
    with pytest.raises(ValueError, match="preds and target"):
        multilabel(torch.rand(4, 3), torch.zeros(4, 3, 1, dtype=long))
    with pytest.raises(ValueError, match="target"):
        multilabel(torch.rand(1, 3), torch.tensor([[0, 1, 2]]))

    # A rejected batch leaves the running state as it was.
    multiclass(torch.tensor([0, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="target"):
        multiclass(torch.tensor([0, 1]), torch.tensor([0, 7]))
    assert multiclass.compute() == 0.5 and multiclass.total == 2
