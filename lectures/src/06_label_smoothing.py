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
from npfl_lib.metrics import Accuracy
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
EPOCHS = 100 if FULL else 40
TRAIN_SIZE = 500  # a small training set, so that overfitting shows
BATCH_SIZE, LR = 20, 0.003  # many steps per epoch: the model overfits within EPOCHS
ALPHA = 0.1
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

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
    for step in range(1, 4001):
        optimizer.zero_grad()
        nf.cross_entropy(logits, gold, label_smoothing=alpha).backward()
        optimizer.step()
        if step in (500, 1000, 2000, 4000):
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
# `npfl_lib.Trainer`. Since the training loss now differs between the two runs, we
# compare them on the **unsmoothed** dev cross-entropy (the negative log-likelihood),
# recorded by a small callback after every epoch.

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


runs = {}
for alpha in [0.0, ALPHA]:
    npfl_lib.set_seed(0)
    model = MLP(64, [400], 10)

    def loss(outputs, targets, alpha=alpha):
        return nf.cross_entropy(outputs, targets, label_smoothing=alpha)

    trainer = npfl_lib.Trainer(
        model,
        Adam(model.parameters(), lr=LR),
        loss,
        metrics={"accuracy": Accuracy("multiclass", num_classes=10)},
        device=device,
    )
    recorder = DevLikelihood()
    history = trainer.fit(
        train, epochs=EPOCHS, batch_size=BATCH_SIZE, callbacks=[recorder], verbose=0
    )
    probabilities = nf.softmax(trainer.predict(X_dev))
    runs[alpha] = (history, recorder, probabilities.max(-1).values)

fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
for alpha, (history, recorder, confidence) in runs.items():
    epochs = range(1, len(recorder.nll) + 1)
    axes[0].plot(epochs, recorder.nll, label=f"alpha = {alpha}")
    axes[1].plot(epochs, recorder.accuracy, label=f"alpha = {alpha}")
    axes[2].hist(confidence.numpy(), bins=40, range=(0, 1), alpha=0.6, label=f"alpha = {alpha}")
    best = min(range(len(recorder.nll)), key=recorder.nll.__getitem__)
    print(f"alpha = {alpha}: train accuracy {history[-1]['accuracy']:.3f}, ", end="")
    print(f"dev accuracy {recorder.accuracy[-1]:.3f} (best {max(recorder.accuracy):.3f})")
    print(f"    dev NLL lowest {recorder.nll[best]:.3f} at epoch {best + 1}, ", end="")
    print(f"final {recorder.nll[-1]:.3f} after epoch {len(recorder.nll)}")
    print(f"    mean max probability {confidence.mean():.3f}, ", end="")
    print(f"{(confidence > 0.99).float().mean():.0%} of dev predictions above 0.99")
axes[0].set(xlabel="epoch", ylabel="dev NLL (unsmoothed)", title="dev negative log-likelihood")
axes[1].set(xlabel="epoch", ylabel="dev accuracy", title="dev accuracy")
axes[2].set(xlabel="max predicted probability", ylabel="dev examples", title="confidence")
axes[2].set_yscale("log")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# What to look for in the printed numbers and the plots:
#
# - **Confidence**: without smoothing, the model is rewarded for pushing every
#   probability towards 1; with smoothing no probability can usefully exceed
#   $1 - \alpha + \alpha/K$ (here 0.91), so the histogram ends there.
# - **Overfitting of the probabilities**: the unsmoothed model's dev NLL reaches its
#   lowest point and then rises while its accuracy holds: it becomes overconfident on
#   the dev examples it gets wrong. Compare the epoch of the lowest NLL with the last.
# - The smoothed model's NLL is *not* directly comparable: its capped probabilities
#   cost likelihood even on examples it gets right.
#
# ## Try it yourself
#
# 1. Try $\alpha \in \{0.05, 0.2, 0.5\}$. What happens to dev accuracy and to the
#    confidence histogram?
# 2. Print the largest predicted probability reachable with $\alpha = 0.1$ and
#    $K = 10$, and check it against the histogram.
# 3. Label smoothing makes the model less confident even when it is right. When could
#    that be a problem (think of using the probabilities downstream)?
