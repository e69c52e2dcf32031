# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Label smoothing
#
# With one-hot ("gold") targets, the cross-entropy $-\log o_\text{gold}$ reaches its
# minimum only when $o_\text{gold} = 1$, i.e. when the gold logit is **infinitely**
# larger than the others. The model is always rewarded for growing more confident,
# which encourages overfitting. **Label smoothing** (Szegedy et al., 2016) trains on
# the mixture of the gold distribution with the uniform one:
#
# $$\boldsymbol g = (1 - \alpha)\,\boldsymbol 1_\text{gold} + \frac{\alpha}{K},$$
#
# for $K$ classes and a small $\alpha$ such as $0.1$ (PyTorch's `label_smoothing`
# argument of `cross_entropy` uses exactly this convention).

# %%
import math
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.datasets import load_digits
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
EPOCHS = 100 if FULL else 30
TRAIN_SIZE = 500  # a small training set, so that overfitting shows
BATCH_SIZE, LR = 50, 0.01  # a large learning rate: the model overfits within EPOCHS
ALPHA = 0.1
SEEDS = 5 if FULL else 3
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Gold vs smoothed target distributions

# %%
K = 10
gold = torch.tensor([3])
fig, axes = plt.subplots(1, 3, figsize=(12, 2.8), sharey=True)
for ax, alpha in zip(axes, [0.0, 0.1, 0.3], strict=True):
    target = nf.smooth_labels(gold, K, alpha)[0]
    ax.bar(range(K), target)
    ax.set(title=f"alpha = {alpha}: gold {target[3]:.3f}, others {target[0]:.3f}", xticks=range(K))
axes[0].set_ylabel("target probability")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The optimal logits become finite
#
# Minimizing the cross-entropy with the smoothed target gives $\boldsymbol o = \boldsymbol g$,
# so the gold logit should exceed every other logit by
#
# $$\log\frac{1 - \alpha + \alpha/K}{\alpha/K},$$
#
# a finite margin. We minimize the loss over a free logit vector with gradient descent
# and compare:

# %%
for alpha in [0.0, ALPHA]:
    logits = torch.zeros(1, K, requires_grad=True)
    optimizer = Adam([logits], lr=0.1)
    margins = {}
    for step in range(1, 401):
        optimizer.zero_grad()
        nf.cross_entropy(logits, gold, label_smoothing=alpha).backward()
        optimizer.step()
        if step in (50, 100, 200, 400):
            margins[step] = f"{(logits[0, 3] - logits[0, 0]).item():.2f}"
    theory = math.log((1 - alpha + alpha / K) / (alpha / K)) if alpha else math.inf
    print(f"alpha = {alpha}: margin after {margins} steps; optimum {theory:.2f}")

# %% [markdown]
# Without smoothing the margin keeps growing for as long as we train; with smoothing it
# stops at the optimum.
#
# ## Effect on a real model: confidence and overfitting
#
# We train the same MLP on 500 digits with $\alpha = 0$ and $\alpha = 0.1$ using
# `npfl_lib.Trainer`, each with `SEEDS` seeds (the dev set has only 200 examples, so
# we look at the spread over seeds). Since the training loss now differs between the
# two runs, we compare them on the **unsmoothed** dev cross-entropy (the negative
# log-likelihood), recorded by a small callback after every epoch.

# %%
digits = load_digits()
train = (digits.train.inputs[:TRAIN_SIZE].flatten(1), digits.train.targets[:TRAIN_SIZE])
X_dev, y_dev = digits.dev.inputs.flatten(1), digits.dev.targets


class DevLikelihood:
    """Records the unsmoothed dev NLL and accuracy after every epoch."""

    def __init__(self):
        self.nll, self.accuracy = [], []

    def on_epoch_end(self, trainer, epoch, logs):
        logits = trainer.predict(X_dev)
        self.nll.append(nf.cross_entropy(logits, y_dev).item())
        self.accuracy.append((logits.argmax(-1) == y_dev).float().mean().item())


def run(alpha, seed):
    npfl_lib.set_seed(seed)
    model = MLP(64, [400], 10)

    def loss(outputs, targets):
        return nf.cross_entropy(outputs, targets, label_smoothing=alpha)

    trainer = npfl_lib.Trainer(model, Adam(model.parameters(), lr=LR), loss, device=device)
    recorder = DevLikelihood()
    trainer.fit(train, epochs=EPOCHS, batch_size=BATCH_SIZE, callbacks=[recorder], verbose=0)
    confidence = nf.softmax(trainer.predict(X_dev)).max(-1).values
    return torch.tensor([recorder.nll, recorder.accuracy]), confidence


runs = {alpha: [run(alpha, seed) for seed in range(SEEDS)] for alpha in [0.0, ALPHA]}
optimum = 1 - ALPHA + ALPHA / K  # the optimal probability of the gold class on training targets

fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
epochs = range(1, EPOCHS + 1)
print(f"mean ± standard deviation over {SEEDS} seeds:")
for alpha, results in runs.items():
    curves = torch.stack([curve for curve, _ in results])  # (seeds, 2, epochs)
    confidence = torch.cat([c for _, c in results])  # every seed's dev predictions
    for k in range(2):
        (line,) = axes[k].plot(epochs, curves[:, k].mean(0), label=f"alpha = {alpha}")
        axes[k].fill_between(
            epochs, curves[:, k].amin(0), curves[:, k].amax(0), color=line.get_color(), alpha=0.2
        )
    axes[2].hist(
        confidence.numpy(), bins=50, range=(0, 1), histtype="step", lw=2, label=f"alpha = {alpha}"
    )
    lowest, best = curves[:, 0].min(1)
    final = curves[:, :, -1]
    print(f"alpha = {alpha}: final dev accuracy {final[:, 1].mean():.3f} ± {final[:, 1].std():.3f}")
    print(f"    dev NLL lowest {lowest.mean():.3f} ± {lowest.std():.3f} ", end="")
    print(f"(at epochs {(best + 1).tolist()}), ", end="")
    print(f"final {final[:, 0].mean():.3f} ± {final[:, 0].std():.3f}")
    print(f"    mean max probability {confidence.mean():.3f}; of the dev predictions ", end="")
    print(f"{(confidence > 0.99).float().mean():.0%} above 0.99, ", end="")
    above = (confidence > optimum).float().mean()
    print(f"{above:.0%} above {optimum:.2f} (max {confidence.max():.3f})")
axes[0].set(xlabel="epoch", ylabel="dev NLL (unsmoothed)", title="dev negative log-likelihood")
axes[0].set_ylim(0.1, 0.5)  # zoomed in: the first epochs lie above
axes[1].set(xlabel="epoch", ylabel="dev accuracy", title="dev accuracy", ylim=(0.85, 1.0))
axes[2].axvline(optimum, color="k", ls=":", label=f"training optimum {optimum:.2f}")
axes[2].set(xlabel="max predicted probability", ylabel="dev predictions (all seeds)")
axes[2].set(title="confidence", yscale="log")
for ax in axes:
    ax.legend(loc="upper left" if ax is axes[2] else "best")
fig.suptitle(f"mean of {SEEDS} seeds, band from min to max")
plt.tight_layout()
plt.show()

# %% [markdown]
# What to look for in the printed numbers and the plots:
#
# - **Confidence**: without smoothing, the model is rewarded for pushing every
#   probability towards 1. With smoothing, the loss on a *training* example is lowest
#   when the gold probability is $1 - \alpha + \alpha/K$ (here 0.91, the dotted line),
#   so the confident predictions gather around it. It is the optimum of the training
#   loss, not a cap: nothing stops the network from predicting more on a dev example,
#   and many dev predictions do exceed it (see the printed fraction and maximum).
# - **Overfitting of the probabilities**: the unsmoothed model's dev NLL reaches its
#   lowest point and then rises (slowly in these short runs) while its accuracy holds:
#   it becomes overconfident on the dev examples it gets wrong. Compare the epoch of
#   the lowest NLL with the last.
# - The smoothed model's NLL is *not* directly comparable: its moderated probabilities
#   cost likelihood even on examples it gets right.
# - Compare the differences in dev accuracy with their standard deviations before
#   concluding that one setting is better.
#
# ## Try it yourself
#
# 1. Try $\alpha \in \{0.05, 0.2, 0.5\}$. What happens to dev accuracy and to the
#    confidence histogram?
# 2. Print the largest predicted probability reachable with $\alpha = 0.1$ and
#    $K = 10$, and check it against the histogram.
# 3. Label smoothing makes the model less confident even when it is right. When could
#    that be a problem (think of using the probabilities downstream)?
