# %% [markdown]
# # 4. Ensembling
#
# An **ensemble** trains several models and averages their predictions. Why does that
# help? Let model $i$ make the error $\varepsilon_i$ on some example, with
# $\mathbb E[\varepsilon_i^2] = V$ and $\mathbb E[\varepsilon_i\varepsilon_j] = C$ for
# $i \ne j$. The average of $M$ models errs by $\frac{1}{M}\sum_i \varepsilon_i$, whose
# expected square is
#
# $$\mathbb E\Big[\Big(\frac{1}{M}\sum_i \varepsilon_i\Big)^2\Big]
#   = \frac{1}{M^2}\Big(M V + M(M-1) C\Big) = \frac{V}{M} + \frac{M-1}{M}\,C.$$
#
# Independent errors ($C = 0$) shrink as $1/M$; perfectly correlated errors ($C = V$)
# do not shrink at all. Ensembles work because differently initialized (or
# differently trained) networks make partly independent errors.

# %%
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.datasets import load_digits
from npfl_lib.ensemble import average_probabilities, bootstrap_indices
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = 10 if FULL else 5
EPOCHS = 20 if FULL else 5
TRAIN_SIZE = None if FULL else 500  # None = the whole training set
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

# %% [markdown]
# ## The variance argument, simulated: the planar disc
#
# Picture the correct answer as the centre of a plane and every model's prediction as
# a point drawn uniformly from the unit disc around it. We average $M$ such predictions
# and measure the squared distance from the centre. Then we repeat with correlated
# models: every prediction shares a common random offset (half of its error) with the
# others.

# %%
gen = torch.Generator().manual_seed(0)
TRIALS = 20_000


def disc(*shape):
    """Points drawn uniformly from the unit disc (radius sqrt(U) makes the density uniform)."""
    radius, angle = torch.rand(*shape, generator=gen).sqrt(), torch.rand(*shape, generator=gen)
    return torch.stack(
        [radius * torch.cos(2 * torch.pi * angle), radius * torch.sin(2 * torch.pi * angle)], -1
    )


sizes = [1, 2, 3, 5, 10, 20, 50]
independent, correlated = [], []
for m in sizes:
    independent.append((disc(TRIALS, m).mean(1) ** 2).sum(-1).mean().item())
    shared = disc(TRIALS, 1)
    points = (shared + disc(TRIALS, m)) / 2
    correlated.append((points.mean(1) ** 2).sum(-1).mean().item())
V = independent[0]
print(f"one model: V = E[squared error] = {V:.3f} (theory: 1/2)")
for m, ind, cor in zip(sizes, independent, correlated, strict=True):
    print(f"M = {m:2d}: independent {ind:.4f} (V/M = {V / m:.4f}), correlated {cor:.4f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
single, averaged = disc(500), disc(500, 10).mean(1)
axes[0].scatter(*single.T, s=4, label="one model")
axes[0].scatter(*averaged.T, s=4, label="average of 10 models")
axes[0].plot(0, 0, "k+", ms=15)
axes[0].set(aspect="equal", title="predictions around the correct answer (+)")
axes[0].legend(loc="upper right")
axes[1].loglog(sizes, independent, "o-", label="independent errors")
axes[1].loglog(sizes, [V / m for m in sizes], "k:", label="V / M")
axes[1].loglog(sizes, correlated, "s-", label="correlated errors")
axes[1].set(xlabel="number of models M", ylabel="mean squared error", title="error of the average")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## An ensemble of MLPs from different random seeds
#
# We train `MODELS` MLPs on digits that differ only in the seed (initialization and
# batch order), then average their predicted **probabilities** (not their logits or
# their votes), as `npfl_lib.ensemble.average_probabilities` does.

# %%
digits = load_digits()
X_train = digits.train.inputs[:TRAIN_SIZE].flatten(1)
y_train = digits.train.targets[:TRAIN_SIZE]
X_dev, y_dev = digits.dev.inputs.flatten(1), digits.dev.targets


def train_model(seed, X, y):
    npfl_lib.set_seed(seed)
    model = MLP(64, [200], 10)
    optimizer = Adam(model.parameters(), lr=0.002)
    trainer = npfl_lib.Trainer(model, optimizer, nf.cross_entropy, device=device)
    trainer.fit((X, y), epochs=EPOCHS, batch_size=50, verbose=0)
    return model


def accuracy(probabilities):
    return (probabilities.argmax(-1) == y_dev).float().mean().item()


models = [train_model(seed, X_train, y_train) for seed in range(MODELS)]
single = [accuracy(average_probabilities([m], X_dev)) for m in models]
ensemble = [accuracy(average_probabilities(models[:m], X_dev)) for m in range(1, MODELS + 1)]
for m in range(MODELS):
    print(f"model {m}: dev accuracy {single[m]:.3f}; ensemble of models 0..{m}: {ensemble[m]:.3f}")

# %% [markdown]
# ## Bagging
#
# **Bagging** (bootstrap aggregating) makes the models differ more: each is trained on a
# **bootstrap sample**, $N$ examples drawn *with replacement* from the $N$ training
# examples. A bootstrap sample contains a fraction $1 - (1 - \frac1N)^N \approx 1 - \frac1e$
# of the distinct examples, some of them several times:

# %%
n = len(y_train)
indices = bootstrap_indices(n, generator=torch.Generator().manual_seed(0))
print(f"N = {n}: the bootstrap sample holds {indices.unique().numel() / n:.3f} of the examples")
print(f"1 - (1 - 1/N)^N = {1 - (1 - 1 / n) ** n:.3f}, 1 - 1/e = {1 - torch.e**-1:.3f}")

bagged = []
for seed in range(MODELS):
    sample = bootstrap_indices(n, generator=torch.Generator().manual_seed(100 + seed))
    bagged.append(train_model(seed, X_train[sample], y_train[sample]))
bagging = [accuracy(average_probabilities(bagged[:m], X_dev)) for m in range(1, MODELS + 1)]

counts = range(1, MODELS + 1)
plt.plot(counts, ensemble, "o-", label="ensemble of seeds")
plt.plot(counts, bagging, "s-", label="bagging")
plt.plot(counts, single, "x", color="gray", label="individual models (seeds)")
plt.xlabel("number of models")
plt.ylabel("dev accuracy")
plt.title("accuracy vs number of models")
plt.legend()
plt.show()
print(f"ensemble of {MODELS} seeds: {ensemble[-1]:.3f}, bagging of {MODELS}: {bagging[-1]:.3f}")
print(f"mean single model: {sum(single) / MODELS:.3f}")

# %% [markdown]
# ## Try it yourself
#
# 1. In the disc simulation, let the shared offset be a fraction $\rho$ of the error
#    instead of one half. Derive $C$ from $\rho$ and compare with the simulation.
# 2. Average the models' *logits* instead of their probabilities (or take a majority
#    vote). Does the ensemble accuracy change?
# 3. Does bagging help more or less when every model is trained longer (`EPOCHS`)?
