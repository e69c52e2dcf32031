# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10. Losses and metrics in PyTorch
#
# PyTorch offers every loss both as a function (`torch.nn.functional.cross_entropy`) and
# as a module (`torch.nn.CrossEntropyLoss()`); metrics live in the separate
# `torchmetrics` package. This notebook walks through the details that trip people up:
# shapes (unbatched inputs, probability targets), reductions, `ignore_index`, label
# smoothing, `NLLLoss`, `BCELoss` vs `BCEWithLogitsLoss` (loss and gradient), the metric
# protocol, a sigmoid trap in binary accuracy, multilabel accuracy and `ignore_index`
# in metrics; and checks that `npfl_lib` behaves the same.

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
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
N, C = (10_000, 100) if FULL else (8, 5)  # batch size and number of classes
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")


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
# Two more accepted forms. A single example may be passed **unbatched**: logits of shape
# $(C,)$ and a 0-dimensional class index. And the target may be a **distribution**
# over the classes instead of an index: a float tensor of the logits' shape, each row
# summing to one (e.g. smoothed or mixed labels); the loss is then the full
# cross-entropy $-\sum_k g_k \log \operatorname{softmax}(\boldsymbol z)_k$. The dtype
# tells the two kinds of target apart: int64 indices, float probabilities.

# %%
same(
    "unbatched: (C,) logits, () target",
    nf.cross_entropy(logits[0], target[0]),
    F.cross_entropy(logits[0], target[0]),
)
probabilities = F.softmax(torch.randn(N, C, device=device), dim=1)  # (N, C), rows sum to 1
same(
    "(N, C) probability targets",
    nf.cross_entropy(logits, probabilities),
    F.cross_entropy(logits, probabilities),
)
one_hot = F.one_hot(target, C).float()
print(
    "one-hot probability targets give the index loss:",
    torch.allclose(F.cross_entropy(logits, one_hot), F.cross_entropy(logits, target)),
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
# ## `NLLLoss` takes log-probabilities
#
# `cross_entropy` is `log_softmax` followed by `nll_loss`. `nll_loss(input, target)`
# only picks $-\text{input}[i, \text{target}_i]$ and averages: it expects
# **log-probabilities**, e.g. the output of a model ending in `LogSoftmax`. Given
# logits or probabilities it raises no error and returns a wrong number (even a
# negative "loss"):

# %%
log_probs = F.log_softmax(logits, dim=1)
loss_ce = F.cross_entropy(logits, target)
same("nll_loss(log_softmax(z)) vs cross_entropy(z)", nf.nll_loss(log_probs, target), loss_ce)
print(f"cross_entropy(z)             = {loss_ce:.4f}")
print(f"nll_loss(log_softmax(z))     = {F.nll_loss(log_probs, target):.4f}")
print(f"nll_loss(z), wrong: logits   = {F.nll_loss(logits, target):.4f}")
print(f"nll_loss(softmax(z)), wrong  = {F.nll_loss(log_probs.exp(), target):.4f}")

# %% [markdown]
# ## `BCELoss` vs `BCEWithLogitsLoss`
#
# `binary_cross_entropy(p, g)` takes **probabilities**; `binary_cross_entropy_with_logits(z, g)`
# takes **logits** and computes $-g\log\sigma(z) - (1-g)\log(1-\sigma(z))$ in a stable
# way. Computing $\sigma(z)$ first loses precision, and we look at the loss and at its
# gradient for the gold label 1 as the logit $z$ goes very negative (a confident, wrong
# prediction). The correct loss is $-\log\sigma(z) \approx -z$ with gradient
# $\sigma(z) - 1 \approx -1$: the larger the mistake, the steadier the push.

# %%
z = torch.linspace(-120, 10, 1301, device=device, requires_grad=True)
ones = torch.ones_like(z)
with_logits = F.binary_cross_entropy_with_logits(z, ones, reduction="none")
from_probs = F.binary_cross_entropy(torch.sigmoid(z), ones, reduction="none")
(grad_logits,) = torch.autograd.grad(with_logits.sum(), z)
(grad_probs,) = torch.autograd.grad(from_probs.sum(), z)
same(
    "BCEWithLogits",
    nf.binary_cross_entropy_with_logits(z, ones, reduction="none"),
    with_logits,
)
same(
    "BCE on probabilities (with the -100 clamp)",
    nf.binary_cross_entropy(torch.sigmoid(z), ones, reduction="none"),
    from_probs,
)
for value in [-20.0, -28.0, -30.0, -50.0, -88.0, -89.0, -110.0]:
    k = int(torch.argmin((z - value).abs()))
    print(
        f"z = {value:6.1f}: loss with logits {with_logits[k]:6.1f}, BCELoss(sigmoid) "
        f"{from_probs[k]:6.1f}; gradient {grad_logits[k]:5.2f} vs {grad_probs[k]:.3g}"
    )
print(f"sigmoid(-89.0) in float32 = {torch.sigmoid(torch.tensor(-89.0)).item()}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
z_cpu = z.detach().cpu()
axes[0].plot(z_cpu, with_logits.detach().cpu(), label="binary_cross_entropy_with_logits(z, 1)")
axes[0].plot(z_cpu, from_probs.detach().cpu(), "--", label="binary_cross_entropy(sigmoid(z), 1)")
axes[0].set(xlabel="logit z (gold label 1)", ylabel="loss", title="loss")
axes[1].plot(z_cpu, grad_logits.cpu(), label="with logits")
axes[1].plot(z_cpu, grad_probs.cpu(), "--", label="BCELoss(sigmoid(z))")
axes[1].set(xlabel="logit z (gold label 1)", ylabel="d loss / d z", title="gradient")
for ax in axes:
    ax.axvline(-27.6, color="gray", ls=":", lw=1)
    ax.axvline(-88.7, color="gray", ls="-.", lw=1)
axes[1].text(-26, -0.3, "z < -27.6:\np(1-p) < 1e-12", fontsize=8)
axes[1].text(-118, -0.3, "z < -88.7:\nexp(-z) = inf,\nsigmoid(z) = 0\nin float32", fontsize=8)
axes[0].legend(loc="upper right")
axes[1].legend(loc="center")
plt.tight_layout()
plt.show()

# %% [markdown]
# Two thresholds, both from computing $\sigma(z)$ first:
#
# - **From $z \approx -27.6$ the gradient vanishes** although the loss is still right.
#   `BCELoss`'s backward divides by $p(1-p)$ with $p = \sigma(z)$ and, to avoid dividing
#   by zero, by at least $10^{-12}$; below $z \approx \log 10^{-12} = -27.6$ the true
#   $p(1-p)$ is smaller, so the gradient becomes $-\sigma'(z)/10^{-12} \approx -e^{z}
#   \cdot 10^{12}$: $-0.69$ at $z = -28$, $-0.09$ at $-30$, practically 0 from $-50$. The
#   model stops learning from exactly the examples it gets most wrong.
# - **From $z \approx -88.7$ $\sigma(z)$ is 0** in float32: $\sigma(z) = 1/(1 + e^{-z})$
#   and $e^{-z}$ overflows to infinity beyond the largest float32 number,
#   $3.4 \cdot 10^{38} \approx e^{88.7}$. Then $\log 0 = -\infty$, which `BCELoss`
#   **clamps** at $-100$: the loss jumps to 100 and the gradient is exactly 0.
#
# `binary_cross_entropy_with_logits` computes $\log\sigma(z)$ from $z$ directly and is
# right everywhere. Always prefer the logits version.

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
# A tempting fix is `threshold=0.0`, "a logit above 0 is positive". It fails too: the
# threshold is applied *after* torchmetrics' own sigmoid whenever a value lies outside
# $[0, 1]$, and every sigmoid output exceeds 0, so then every prediction is positive:

# %%
logits = torch.tensor([2.0, -1.0, -3.0, 1.5, -0.5, 4.0])
labels = (logits > 0).long()  # the true labels: every prediction is right
print(f"true accuracy: {((logits > 0).long() == labels).float().mean():.3f}")
tm = torchmetrics.Accuracy(task="binary", threshold=0.0)(logits, labels)
ours = npfl_lib.metrics.Accuracy("binary", threshold=0.0)(logits, labels)
print(f"threshold=0.0 on logits: torchmetrics {tm:.3f}, npfl_lib {ours:.3f}")
right = torchmetrics.Accuracy(task="binary")(torch.sigmoid(logits), labels)
print(f"sigmoid first, threshold 0.5: torchmetrics {right:.3f}")

# %% [markdown]
# ## Multilabel accuracy and `ignore_index`
#
# In a **multilabel** problem every example has `num_labels` independent yes/no labels
# (a photo can show a cat *and* a dog): predictions and targets are $(N, L)$, with a
# sigmoid per label. `Accuracy(task="multilabel")` counts every (example, label) pair
# (the micro average of `task=...`), so it is not the fraction of examples with all
# labels right, which is much lower. `ignore_index` leaves out the elements whose
# target has that value, in the numerator and the denominator alike, as in the
# losses.

# %%
probs = torch.tensor([[0.9, 0.2, 0.7], [0.6, 0.8, 0.1], [0.3, 0.4, 0.9], [0.8, 0.6, 0.4]])
labels = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]])
tm = torchmetrics.Accuracy(task="multilabel", num_labels=3)(probs, labels)
ours = npfl_lib.metrics.Accuracy("multilabel", num_labels=3)(probs, labels)
exact = ((probs > 0.5).long() == labels).all(1).float().mean()
print(f"multilabel accuracy: torchmetrics {tm:.3f}, npfl_lib {ours:.3f}; ", end="")
print(f"examples with all labels right: {exact:.3f}")

preds = torch.tensor([0, 2, 1, 1, 0, 2])
gold = torch.tensor([0, 2, 2, -100, -100, 2])  # elements 3 and 4 are padding
tm = torchmetrics.Accuracy(task="multiclass", num_classes=3, ignore_index=-100)(preds, gold)
ours = npfl_lib.metrics.Accuracy("multiclass", num_classes=3, ignore_index=-100)(preds, gold)
print(f"ignore_index=-100: torchmetrics {tm:.3f}, npfl_lib {ours:.3f} (3 of 4 non-ignored right)")

# %% [markdown]
# ## Try it yourself
#
# 1. Pass probabilities (softmax outputs) to `F.cross_entropy` as if they were logits.
#    Does it raise an error? What happens to the loss and to its gradient?
# 2. Compute the mean of `F.cross_entropy(..., reduction="none")` over a batch with
#    ignored targets yourself, and find the mistake in `loss.mean()`.
# 3. Feed `torchmetrics.Accuracy(task="binary")` batches of logits from a trained model
#    where some batches happen to lie in $[0, 1]$: how large can the error of the
#    epoch accuracy get?
