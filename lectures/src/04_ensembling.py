# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

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
from npfl_lib.datasets import MNIST, load_digits
from npfl_lib.ensemble import average_probabilities, bootstrap_indices
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
MODELS = 10 if FULL else 5
EPOCHS = 20 if FULL else 15
TRAIN_SIZE = None if FULL else 500  # None = the whole training set
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## The variance argument, simulated: the planar disc
#
# Picture the correct answer as the centre of a plane and every model's prediction as
# a point drawn uniformly from the unit disc around it: the error $\varepsilon_i$ is a
# point of the disc, with $V = \mathbb E\|\varepsilon_i\|^2 = \frac12$. We average $M$
# such predictions and measure the squared distance from the centre. Then we repeat
# with correlated models: every error is $\varepsilon_i = (s + u_i)/\sqrt 2$, where
# the offset $s$ is shared by all models and $u_i$ is the model's own, both from the
# disc. Dividing by $\sqrt 2$ (not by 2) keeps each model's error as large as before,
# $V = \frac12$, and the shared part makes $C = \mathbb E[\varepsilon_i^T\varepsilon_j]
# = \frac12\mathbb E\|s\|^2 = \frac14$.

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
    points = (shared + disc(TRIALS, m)) / 2**0.5  # each error still has variance V
    correlated.append((points.mean(1) ** 2).sum(-1).mean().item())
V, C = 0.5, 0.25  # theory: E||uniform point of the unit disc||^2 = 1/2; C = V / 2


def theory(m, c):
    return V / m + (m - 1) / m * c


print(f"one model: E[squared error] = {independent[0]:.3f} (independent), ", end="")
print(f"{correlated[0]:.3f} (correlated); theory V = {V}")
for m, ind, cor in zip(sizes, independent, correlated, strict=True):
    print(
        f"M = {m:2d}: independent {ind:.4f} (theory V/M = {theory(m, 0):.4f}), "
        f"correlated {cor:.4f} (theory V/M + (M-1)C/M = {theory(m, C):.4f})"
    )

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
single, averaged = disc(500), disc(500, 10).mean(1)
axes[0].scatter(*single.T, s=4, label="one model")
axes[0].scatter(*averaged.T, s=4, label="average of 10 models")
axes[0].plot(0, 0, "k+", ms=15)
axes[0].set(aspect="equal", title="predictions around the correct answer (+)")
axes[0].set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.75))  # room above the disc for the legend
axes[0].legend(loc="upper center", fontsize=8, markerscale=3)
axes[1].loglog(sizes, independent, "o", label="independent errors (C = 0)")
axes[1].loglog(sizes, [theory(m, 0) for m in sizes], "C0:", label="theory V / M")
axes[1].loglog(sizes, correlated, "s", color="C1", label="correlated errors (C = V/2)")
axes[1].loglog(sizes, [theory(m, C) for m in sizes], "C1:", label="theory V/M + (M-1)C/M")
axes[1].axhline(C, color="gray", lw=0.8, ls="--", label="C: the limit for M → ∞")
axes[1].set(xlabel="number of models M", ylabel="mean squared error", title="error of the average")
axes[1].set_xticks(sizes, [str(m) for m in sizes])
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## An ensemble of MLPs from different random seeds
#
# We train `MODELS` MLPs that differ only in the seed (initialization and batch order),
# then average their predicted **probabilities** (not their logits or their votes), as
# `npfl_lib.ensemble.average_probabilities` does. We measure dev accuracy and dev
# negative log-likelihood (NLL): on 200 dev examples one example is 0.5% of accuracy,
# while the NLL also sees how confident every prediction is. (The default runs use the
# 8x8 digits; `NPFL_FULL=1` uses MNIST when it is cached, see `npfl_lib.datasets.MNIST`.)

# %%
data = MNIST() if FULL and MNIST.is_cached() else load_digits()
print(data)
X_train = data.train.inputs[:TRAIN_SIZE].flatten(1)
y_train = data.train.targets[:TRAIN_SIZE]
X_dev, y_dev = data.dev.inputs.flatten(1), data.dev.targets
INPUTS = X_train.shape[1]


def train_model(seed, X, y, callbacks=()):
    npfl_lib.set_seed(seed)
    model = MLP(INPUTS, [200], 10)
    optimizer = Adam(model.parameters(), lr=0.01)
    trainer = npfl_lib.Trainer(model, optimizer, nf.cross_entropy, device=device)
    trainer.fit((X, y), epochs=EPOCHS, batch_size=50, callbacks=callbacks, verbose=0)
    return model


def scores(probabilities):
    """Dev accuracy and dev NLL of predicted probabilities."""
    accuracy = (probabilities.argmax(-1) == y_dev).float().mean().item()
    nll = nf.nll_loss(probabilities.clamp_min(1e-12).log(), y_dev).item()
    return accuracy, nll


def mean_std(values):
    values = torch.tensor(values)
    return f"{values.mean():.3f} ± {values.std():.3f}"


models = [train_model(seed, X_train, y_train) for seed in range(MODELS)]
single = [scores(average_probabilities([m], X_dev)) for m in models]
ensemble = [scores(average_probabilities(models[:m], X_dev)) for m in range(1, MODELS + 1)]
for m in range(MODELS):
    print(
        f"model {m}: dev accuracy {single[m][0]:.3f}, NLL {single[m][1]:.3f}; "
        f"ensemble of models 0..{m}: accuracy {ensemble[m][0]:.3f}, NLL {ensemble[m][1]:.3f}"
    )
print(f"single models, mean ± std: accuracy {mean_std([s[0] for s in single])}, ", end="")
print(f"NLL {mean_std([s[1] for s in single])}")

# %% [markdown]
# Compare the ensemble with the *spread* of the single models, not with one of them: an
# ensemble gain smaller than the single models' standard deviation says little. If, as
# on these small digits, the gain is within that spread, the members make nearly the
# same errors ($C$ close to $V$ in the disc experiment) and averaging cannot remove
# much. The NLL usually shows a gain more clearly than the accuracy: averaging makes the
# probabilities of uncertain examples less extreme.
#
# ## Averaging checkpoints: an ensemble from one run
#
# Training several models costs several runs. The checkpoints of *one* run, saved at
# its last few epochs, also differ a little, and two cheap ensembles come from them:
# averaging their predicted probabilities (an ensemble of checkpoints), or averaging
# their **weights** into one model (checkpoint averaging, as in Polyak averaging and
# stochastic weight averaging), which costs no more at inference than a single model.
# Weights can be averaged only along one run: two independently trained networks
# differ by a permutation of their hidden units, and their weight average is useless.


# %%
class KeepLastCheckpoints:
    """Keeps a copy of the model's weights after each of the last `count` epochs."""

    def __init__(self, count):
        self.count, self.states = count, []

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch >= EPOCHS - self.count:
            state = trainer.model.state_dict()
            self.states.append({name: value.clone() for name, value in state.items()})


checkpoints = KeepLastCheckpoints(count=min(5, EPOCHS))
run = train_model(MODELS, X_train, y_train, callbacks=[checkpoints])
snapshots = []
for state in checkpoints.states:
    snapshot = MLP(INPUTS, [200], 10).to(device)
    snapshot.load_state_dict(state)
    snapshots.append(snapshot)
averaged = MLP(INPUTS, [200], 10).to(device)
averaged.load_state_dict(
    {
        name: torch.stack([s[name] for s in checkpoints.states]).mean(0)
        for name in checkpoints.states[0]
    }
)
for name, result in [
    ("last checkpoint", scores(average_probabilities([run], X_dev))),
    (f"ensemble of the last {len(snapshots)}", scores(average_probabilities(snapshots, X_dev))),
    (
        f"weight average of the last {len(snapshots)}",
        scores(average_probabilities([averaged], X_dev)),
    ),
    ("for comparison: 2 independent models", scores(average_probabilities(models[:2], X_dev))),
]:
    print(f"{name:>38}: dev accuracy {result[0]:.3f}, NLL {result[1]:.3f}")

# %% [markdown]
# Checkpoints of one run are much more alike than independently trained models (and
# the earlier ones are less trained), so they gain less than a real ensemble, or
# nothing at all. Checkpoint averaging pays off most with a large learning rate at the
# end of training: the weights then jump around a minimum, and their average lies
# closer to its centre.
#
# ## Bagging
#
# **Bagging** (bootstrap aggregating) trains each model on a **bootstrap sample**, $N$
# examples drawn *with replacement* from the $N$ training examples. A bootstrap sample
# contains a fraction $1 - (1 - \frac1N)^N \approx 1 - \frac1e$ of the distinct
# examples, some of them several times:

# %%
n = len(y_train)
indices = bootstrap_indices(n, generator=torch.Generator().manual_seed(0))
print(f"N = {n}: the bootstrap sample holds {indices.unique().numel() / n:.3f} of the examples")
print(f"1 - (1 - 1/N)^N = {1 - (1 - 1 / n) ** n:.3f}, 1 - 1/e = {1 - torch.e**-1:.3f}")

# %% [markdown]
# Bagging is the way to make models differ when training itself has no randomness:
# a **convex** model such as logistic regression reaches the same optimum from any
# initialization, so an ensemble of seeds is one model repeated, and only different
# training data make the members differ. A neural network is not convex: different
# seeds already give different models, and bagging then mostly costs each member a
# third of the distinct training examples. We check both, with `MODELS` members each:
# logistic regression (a linear layer trained to convergence on the full batch) and
# the MLP above.


# %%
def train_logistic(seed, X, y, steps=100):
    torch.manual_seed(seed)
    model = torch.nn.Linear(INPUTS, 10).to(device)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    X, y = X.to(device), y.to(device)

    def closure():
        optimizer.zero_grad()
        loss = nf.cross_entropy(model(X), y) + 1e-3 * nf.l2_penalty(model)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


samples = [
    bootstrap_indices(n, generator=torch.Generator().manual_seed(100 + seed))
    for seed in range(MODELS)
]
logistic_seeds = [train_logistic(seed, X_train, y_train) for seed in range(MODELS)]
logistic_bagged = [
    train_logistic(seed, X_train[sample], y_train[sample]) for seed, sample in enumerate(samples)
]
mlp_bagged = [
    train_model(seed, X_train[sample], y_train[sample]) for seed, sample in enumerate(samples)
]
counts = range(1, MODELS + 1)
curves = {
    "logistic regression, seeds": [logistic_seeds[:m] for m in counts],
    "logistic regression, bagging": [logistic_bagged[:m] for m in counts],
    "MLP, seeds": [models[:m] for m in counts],
    "MLP, bagging": [mlp_bagged[:m] for m in counts],
}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for (name, members), style in zip(curves.items(), ["o--", "s--", "o-", "s-"], strict=True):
    results = [scores(average_probabilities(group, X_dev)) for group in members]
    for k, ax in enumerate(axes):
        ax.plot(counts, [r[k] for r in results], style, label=name)
    print(f"{name:>30}: {MODELS} members: dev accuracy {results[-1][0]:.3f}, ", end="")
    print(f"NLL {results[-1][1]:.3f} (1 member: {results[0][0]:.3f}, {results[0][1]:.3f})")
for k, ax in enumerate(axes):
    ax.set(xlabel="number of models", xticks=list(counts))
    ax.set_ylabel(["dev accuracy", "dev NLL"][k])
axes[0].legend(fontsize=8)
fig.suptitle("ensembles of seeds and bagging, for a convex model and an MLP")
plt.tight_layout()
plt.show()

# %% [markdown]
# The logistic regressions trained from different seeds are the same model, so their
# ensemble does not change with more members; bagging makes them differ, and its
# ensemble improves on a single bagged member. For a model as stable as logistic
# regression it does not beat the single model trained on all the data: bagging pays
# off for high-variance models such as decision trees (random forests). The MLPs from
# different seeds already differ, and bagging mostly gives them less data.
#
# ## Try it yourself
#
# 1. In the disc simulation, let the error be $\sqrt\rho\, s + \sqrt{1-\rho}\, u_i$.
#    Derive $C$ from $\rho$ and compare the simulation with the theory curve.
# 2. Average the models' *logits* instead of their probabilities (or take a majority
#    vote). Does the ensemble accuracy or NLL change?
# 3. Save a checkpoint every epoch with a larger learning rate at the end of training.
#    When does the weight average beat the last checkpoint?
