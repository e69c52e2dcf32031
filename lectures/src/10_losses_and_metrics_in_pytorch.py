# %% [markdown]
# # 10. Losses and metrics in PyTorch
#
# PyTorch offers every loss both as a function (`torch.nn.functional.cross_entropy`) and
# as a module (`torch.nn.CrossEntropyLoss()`); metrics live in the separate
# `torchmetrics` package. This notebook walks through the details that trip people up:
# shapes, reductions, `ignore_index`, label smoothing, `BCELoss` vs
# `BCEWithLogitsLoss`, the metric protocol and a sigmoid trap in binary accuracy; and
# checks that `npfl_lib` behaves the same.

# %%
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import torchmetrics

import npfl_lib
import npfl_lib.functional as nf
import npfl_lib.metrics

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
N, C = (10_000, 100) if FULL else (8, 5)  # batch size and number of classes
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")


def same(name, ours, theirs):
    difference = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    print(f"{name:>44}: npfl_lib vs torch, max |difference| = {difference:.1e}")


# %% [markdown]
# ## Shapes: classes go in dimension 1
#
# `cross_entropy(input, target)` takes **logits** `input` of shape $(N, C)$ and class
# indices `target` of shape $(N,)$ (int64). For sequences or images the classes stay in
# dimension 1: logits $(N, C, d_1, \dots)$ and targets $(N, d_1, \dots)$. A common bug
# is passing $(N, L, C)$ logits of a sequence model: transpose them first.

# %%
logits = torch.randn(N, C, device=device)
target = torch.randint(C, (N,), device=device)
same(
    "(N, C) logits, (N,) targets", nf.cross_entropy(logits, target), F.cross_entropy(logits, target)
)
sequence_logits = torch.randn(N, 7, C, device=device)  # (N, L, C) from a sequence model
sequence_target = torch.randint(C, (N, 7), device=device)
loss = F.cross_entropy(sequence_logits.transpose(1, 2), sequence_target)  # (N, C, L)
same(
    "(N, C, L) logits, (N, L) targets",
    nf.cross_entropy(sequence_logits.transpose(1, 2), sequence_target),
    loss,
)

# %% [markdown]
# ## Reductions
#
# `reduction="mean"` (the default) averages the per-example losses, `"sum"` adds them,
# `"none"` returns them all (e.g. to weight them yourself).

# %%
for reduction in ["none", "mean", "sum"]:
    theirs = torch.nn.CrossEntropyLoss(reduction=reduction)(logits, target)
    ours = nf.cross_entropy(logits, target, reduction=reduction)
    same(f"reduction={reduction!r}, shape {tuple(theirs.shape)}", ours, theirs)

# %% [markdown]
# ## `ignore_index` and label smoothing
#
# Targets equal to `ignore_index` (default $-100$) contribute nothing, and the **mean
# divides by the number of non-ignored targets**, not by $N$: padding in a batch of
# sequences does not dilute the loss. `label_smoothing` $= \alpha$ replaces the one-hot
# target by $(1-\alpha)\boldsymbol 1_\text{gold} + \frac{\alpha}{C}$.

# %%
padded = target.clone()
padded[: N // 2] = -100  # the first half is padding
per_example = F.cross_entropy(logits, padded, reduction="none")
print("per-example losses:", per_example.cpu().numpy().round(3))
mean = F.cross_entropy(logits, padded)
print(f"mean = {mean:.4f} = sum / non-ignored = {per_example.sum() / (padded != -100).sum():.4f}")
same("ignore_index=-100", nf.cross_entropy(logits, padded), mean)
same(
    "label_smoothing=0.1",
    nf.cross_entropy(logits, target, label_smoothing=0.1),
    F.cross_entropy(logits, target, label_smoothing=0.1),
)

# %% [markdown]
# ## `BCELoss` vs `BCEWithLogitsLoss`
#
# `binary_cross_entropy(p, g)` takes **probabilities**; `binary_cross_entropy_with_logits(z, g)`
# takes **logits** and computes $-g\log\sigma(z) - (1-g)\log(1-\sigma(z))$ in a stable
# way. Computing $\sigma(z)$ first loses precision: in float32 $\sigma(z)$ rounds to
# exactly 0 or 1 for large $|z|$, and $\log 0 = -\infty$. To avoid infinities,
# `BCELoss` **clamps** the logarithms at $-100$, so its loss can never exceed 100 and its
# gradient vanishes there. Always prefer the logits version.

# %%
z = torch.linspace(-200, 50, 501, device=device)
ones = torch.ones_like(z)
with_logits = F.binary_cross_entropy_with_logits(z, ones, reduction="none")
from_probs = F.binary_cross_entropy(torch.sigmoid(z), ones, reduction="none")
same("BCEWithLogits", nf.binary_cross_entropy_with_logits(z, ones, reduction="none"), with_logits)
same(
    "BCE on probabilities (with the -100 clamp)",
    nf.binary_cross_entropy(torch.sigmoid(z), ones, reduction="none"),
    from_probs,
)
print(f"logit -200, gold 1: with logits {with_logits[0]:.1f}, BCELoss(sigmoid) {from_probs[0]:.1f}")
print(f"sigmoid(-200) in float32 = {torch.sigmoid(torch.tensor(-200.0)).item()}")

plt.plot(z.cpu(), with_logits.cpu(), label="binary_cross_entropy_with_logits(z, 1)")
plt.plot(z.cpu(), from_probs.cpu(), "--", label="binary_cross_entropy(sigmoid(z), 1)")
plt.xlabel("logit z (gold label 1)")
plt.ylabel("loss")
plt.title("BCELoss clamps log at -100")
plt.legend()
plt.show()

# %% [markdown]
# ## torchmetrics: `update`, `compute`, `reset`, and what calling a metric returns
#
# A metric accumulates statistics over batches: `update(preds, target)` adds a batch,
# `compute()` returns the value over everything since the last `reset()`. Calling the
# metric, `metric(preds, target)`, **updates the state and returns the value on that
# batch alone**, which surprises people who print it expecting the running value.

# %%
batches = [(torch.randn(N, C), torch.randint(C, (N,))) for _ in range(3)]
ours = npfl_lib.metrics.Accuracy("multiclass", num_classes=C)
theirs = torchmetrics.Accuracy(task="multiclass", num_classes=C)
for k, (preds, labels) in enumerate(batches):
    batch_ours, batch_theirs = ours(preds, labels), theirs(preds, labels)
    print(
        f"batch {k}: torchmetrics {batch_theirs:.3f}, npfl_lib {batch_ours:.3f} (this batch only)"
    )
print(
    f"compute(): torchmetrics {theirs.compute():.3f}, npfl_lib {ours.compute():.3f} (all batches)"
)
theirs.reset()
ours.reset()
theirs.update(*batches[0])
ours.update(*batches[0])
print(
    f"reset(), update(batch 0): torchmetrics {theirs.compute():.3f}, npfl_lib {ours.compute():.3f}"
)

mean_theirs, mean_ours = torchmetrics.MeanMetric(), npfl_lib.metrics.Mean()
mse_theirs, mse_ours = torchmetrics.MeanSquaredError(), npfl_lib.metrics.MeanSquaredError()
for preds, labels in batches:
    mean_theirs.update(F.cross_entropy(preds, labels))
    mean_ours.update(F.cross_entropy(preds, labels))
    mse_theirs.update(preds[:, 0], labels.float())
    mse_ours.update(preds[:, 0], labels.float())
same("Mean of the batch losses", mean_ours.compute(), mean_theirs.compute())
same("MeanSquaredError", mse_ours.compute(), mse_theirs.compute())

# %% [markdown]
# ## The binary-accuracy sigmoid trap
#
# Binary `Accuracy` accepts probabilities or logits, and guesses which: **if every value
# of the batch lies in $[0, 1]$, it takes them as probabilities** (threshold 0.5),
# otherwise it applies a sigmoid first. A batch of *logits* that all happen to lie in
# $[0, 1]$ is thresholded as if they were probabilities, although every logit above 0
# means a probability above 0.5:

# %%
logits = torch.tensor([0.2, 0.4, 0.6, 0.9, -0.3, 1.5])
labels = torch.tensor([1, 1, 1, 1, 0, 1])
correct = ((logits > 0).long() == labels).float().mean().item()
print(f"true accuracy of these logits: {correct:.3f}")
for name, batch, gold in [
    ("all in [0, 1]", logits[:4], labels[:4]),
    ("one outside", logits, labels),
]:
    tm = torchmetrics.Accuracy(task="binary")(batch, gold)
    ours_default = npfl_lib.metrics.Accuracy("binary")(batch, gold)
    ours_logits = npfl_lib.metrics.Accuracy("binary", from_logits=True)(batch, gold)
    print(f"{name:>14}: torchmetrics {tm:.3f}, npfl_lib {ours_default:.3f}, ", end="")
    print(f"npfl_lib from_logits=True {ours_logits:.3f}")

# %% [markdown]
# The first four logits are all positive, so every prediction is "1" and all four are
# correct; torchmetrics thresholds 0.2 and 0.4 at 0.5 instead. `npfl_lib`'s default
# copies torchmetrics' rule, and `from_logits=True` always applies the sigmoid. With
# torchmetrics, apply `torch.sigmoid` yourself before passing logits.
#
# ## Try it yourself
#
# 1. Check that `F.cross_entropy(logits, target)` equals
#    `F.nll_loss(F.log_softmax(logits, 1), target)`.
#    Why does `nll_loss` expect *log*-probabilities?
# 2. Compute the mean of `F.cross_entropy(..., reduction="none")` over a batch with
#    ignored targets yourself, and find the mistake in `loss.mean()`.
# 3. Feed `torchmetrics.Accuracy(task="binary")` batches of logits from a trained model
#    where some batches happen to lie in $[0, 1]$: how large can the error of the
#    epoch accuracy get?
