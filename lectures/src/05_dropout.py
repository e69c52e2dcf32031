# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Dropout
#
# **Dropout** (Srivastava et al., 2014) sets every input of a layer to zero with
# probability $p$ during training, a new random mask in every step. A unit cannot rely
# on any particular other unit being present, which discourages co-adaptation.
#
# PyTorch (and `npfl_lib.functional.dropout`) implement **inverted dropout**: `p` is the
# *drop* probability, and the kept values are scaled by $\frac{1}{1-p}$ during training:
#
# $$\boldsymbol y = \frac{\boldsymbol m \odot \boldsymbol x}{1 - p}, \qquad
#   m_i \sim \operatorname{Bernoulli}(1 - p).$$
#
# Then $\mathbb E[y_i] = \frac{(1-p)\,x_i}{1-p} = x_i$: the expected output equals the
# input, so at inference time dropout is simply the identity and needs no rescaling.

# %%
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.datasets import load_digits
from npfl_lib.nn import MLP, Dropout
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
EPOCHS = 100 if FULL else 40
TRAIN_SIZE = 500  # a small training set, so that the model without dropout overfits
HIDDEN = 400
SEEDS = 5 if FULL else 3
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## The implementation at work

# %%
gen = torch.Generator().manual_seed(0)
x = torch.ones(2, 10)
print("training, p = 0.5:\n", nf.dropout(x, p=0.5, training=True, generator=gen))
print(
    "inference (training=False) returns the input itself:",
    nf.dropout(x, p=0.5, training=False) is x,
)

# %% [markdown]
# ## Why inference needs no scaling: the expectation
#
# We average many dropout samples of the same input and watch the mean approach the
# input, for several drop probabilities.

# %%
x = torch.linspace(-1, 1, 1000)
samples = 2000
fig, ax = plt.subplots(figsize=(7, 3.5))
for p in [0.1, 0.5, 0.8]:
    outputs = torch.stack([nf.dropout(x, p=p, generator=gen) for _ in range(samples)])
    running_mean = outputs.cumsum(0) / torch.arange(1, samples + 1)[:, None]
    error = (running_mean - x).abs().mean(1)
    ax.loglog(range(1, samples + 1), error, label=f"p = {p}")
    print(f"p = {p}: mean |average of {samples} samples - x| = {error[-1]:.4f}")
ax.set(xlabel="number of dropout samples averaged", ylabel="mean |average - x|")
ax.set_title("the average of dropout outputs converges to the input")
ax.legend()
plt.show()

# %% [markdown]
# ## The original, non-inverted form
#
# The original dropout paper (Srivastava et al., 2014) does not scale during training:
# it multiplies by the mask alone, $\boldsymbol y = \boldsymbol m \odot \boldsymbol x$,
# whose expectation is $(1 - p)\,\boldsymbol x$, and so at inference it **scales the
# outputs** (equivalently, the next layer's weights) by $1 - p$ to match. Both forms
# give the same expected output during training and the same network at inference, up
# to where the constant $1-p$ sits; the inverted form is preferred because the trained
# network is used unchanged.

# %%
p = 0.5
x = torch.linspace(-1, 1, 5)
masks = torch.rand(20_000, 5, generator=gen) >= p  # keep with probability 1 - p
non_inverted_train = (masks * x).mean(0)  # average training output, non-inverted
inverted_train = (masks * x / (1 - p)).mean(0)  # average training output, inverted
print("input x:                          ", x.numpy().round(3))
print("non-inverted: mean training output", non_inverted_train.numpy().round(3))
print("              inference (1-p) * x ", ((1 - p) * x).numpy().round(3))
print("inverted:     mean training output", inverted_train.numpy().round(3))
print("              inference x         ", x.numpy().round(3))

# %% [markdown]
# ## Dropout trains an ensemble
#
# Every mask selects a **subnetwork**; a layer of $n$ units has $2^n$ of them, all
# sharing weights. Training with dropout trains this exponential ensemble, and running
# the whole network without dropout (**weight scaling**) approximates the ensemble's
# prediction. For a single linear layer the match is exact for the *logits*: they are
# linear in the mask, so the full network's logits are the subnetworks' average logits.
# After a softmax it is not the average of the subnetworks' *probabilities*: the
# softmax of the average logits is their **renormalized geometric mean**,
# $\operatorname{softmax}(\mathbb E[\boldsymbol z])_k \propto
# \exp \mathbb E[\log \operatorname{softmax}(\boldsymbol z)_k]$. With non-linear hidden
# layers weight scaling is an approximation of either.
#
# Below we train MLPs without and with dropout on a small training set, with the
# drop probabilities of Srivastava et al.: $p = 0.2$ on the input pixels and
# $p = 0.5$ on the hidden layer. We follow training and dev loss (the negative
# log-likelihood, NLL) and accuracy. The dev set has 200 examples, so we train each
# with `SEEDS` seeds and show the mean and the spread.

# %%
digits = load_digits()
X_train = digits.train.inputs[:TRAIN_SIZE].flatten(1).to(device)
y_train = digits.train.targets[:TRAIN_SIZE].to(device)
X_dev, y_dev = digits.dev.inputs.flatten(1).to(device), digits.dev.targets.to(device)


def evaluate(model, X, y):
    model.eval()  # dropout off
    with torch.no_grad():
        logits = model(X)
    return nf.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def train(dropout, seed):
    """Trains with dropout 0.2 on the inputs and `dropout` on the hidden layer (or none)."""
    torch.manual_seed(seed)
    mlp = MLP(64, [HIDDEN], 10, dropout=dropout)
    model = torch.nn.Sequential(Dropout(0.2 if dropout else 0.0), mlp).to(device)
    first = mlp.layers[0]  # the first nn.Linear
    initial = first.weight.detach().clone()  # kept to show what was learned
    optimizer = Adam(model.parameters(), lr=0.003)
    history = []
    for _ in range(EPOCHS):
        model.train()  # dropout on
        for batch in torch.randperm(TRAIN_SIZE, device=device).split(50):
            optimizer.zero_grad()
            nf.cross_entropy(model(X_train[batch]), y_train[batch]).backward()
            optimizer.step()
        history.append(evaluate(model, X_train, y_train) + evaluate(model, X_dev, y_dev))
    learned = first.weight.detach() - initial
    return model, torch.tensor(history), learned.cpu()


results = {p: [train(p, seed) for seed in range(SEEDS)] for p in [0.0, 0.5]}
NAMES = {0.0: "no dropout", 0.5: "dropout 0.2 / 0.5"}
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
epochs = range(1, EPOCHS + 1)
print(f"after {EPOCHS} epochs, mean ± standard deviation over {SEEDS} seeds:")
for p, runs in results.items():
    histories = torch.stack([history for _, history, _ in runs])  # (seeds, epochs, 4)
    mean, low, high = histories.mean(0), histories.amin(0), histories.amax(0)
    for column, name, style in [(0, "train", "--"), (2, "dev", "-")]:
        for ax, offset in zip(axes, [0, 1], strict=True):
            color = "C0" if p == 0 else "C1"
            ax.plot(
                epochs, mean[:, column + offset], style, color=color, label=f"{name}, {NAMES[p]}"
            )
            ax.fill_between(
                epochs, low[:, column + offset], high[:, column + offset], color=color, alpha=0.15
            )
    final = histories[:, -1]
    print(
        f"{NAMES[p]:>17}: train NLL {final[:, 0].mean():.4f} ± {final[:, 0].std():.4f}, "
        f"dev NLL {final[:, 2].mean():.3f} ± {final[:, 2].std():.3f}, "
        f"dev accuracy {final[:, 3].mean():.3f} ± {final[:, 3].std():.3f}"
    )
axes[0].set(xlabel="epoch", ylabel="NLL (cross-entropy)", yscale="log", title="loss")
axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.8, 1.001))
axes[1].legend(loc="lower right")
fig.suptitle(f"mean of {SEEDS} seeds, band from min to max")
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the two panels separately. Dropout clearly **regularizes**: the training loss
# stays several times higher and the gap between training and dev shrinks. On
# 500 digits that does not buy a better dev score: compare the printed dev NLL and
# accuracy with their standard deviations before calling either setting better. (On
# MNIST with larger networks, Srivastava et al. measured a clear gain.)
#
# ### Weight scaling vs averaging the subnetworks
#
# We compare the deterministic prediction of the dropout-trained model with a
# **Monte-Carlo** average of the probabilities of many random subnetworks
# (dropout left on at test time):

# %%
model = results[0.5][0][0]  # the dropout model of seed 0
model.train()  # dropout on: every forward pass is a random subnetwork
with torch.no_grad():
    for count in [1, 10, 100]:
        probs = torch.stack([nf.softmax(model(X_dev)) for _ in range(count)]).mean(0)
        accuracy = (probs.argmax(-1) == y_dev).float().mean().item()
        print(f"average of {count:3d} subnetworks: dev accuracy {accuracy:.3f}")
print(f"full network, no dropout:     dev accuracy {evaluate(model, X_dev, y_dev)[1]:.3f}")

# %% [markdown]
# ## The learned features of the first layer
#
# Every hidden unit of the first layer has 64 input weights: an 8x8 image of what it
# responds to. Both models (seed 0) started from the same random weights, so we show
# what training **added** to them (final minus initial weights) for the 12 units that
# changed most in each model. All 24 images share one symmetric colour scale (white is
# no change), so their strengths can be compared.

# %%
learned = {p: runs[0][2] for p, runs in results.items()}
limit = max(weights.abs().max().item() for weights in learned.values())
fig, axes = plt.subplots(2, 12, figsize=(13, 2.8))
for row, (p, weights) in enumerate(learned.items()):
    for col, unit in enumerate(weights.norm(dim=1).argsort(descending=True)[:12]):
        image = axes[row, col].imshow(
            weights[unit].reshape(8, 8), cmap="RdBu_r", vmin=-limit, vmax=limit
        )
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
    axes[row, 0].set_ylabel(NAMES[p], rotation=0, ha="right", va="center")
    print(f"{NAMES[p]:>17}: norms of the changes shown ", end="")
    print(weights.norm(dim=1).sort(descending=True).values[:12].numpy().round(2))
fig.colorbar(image, ax=axes, label="change of weight", shrink=0.9)
plt.show()

# %% [markdown]
# On 8x8 digits and a few hundred examples the difference between the two rows is
# subtle. On MNIST (Srivastava et al., 2014, Figure 7) the features learned without
# dropout look like noise, and with dropout like localized strokes and spots: a unit
# that cannot count on its neighbours has to detect something meaningful on its own.
#
# ## Try it yourself
#
# 1. Try $p \in \{0.2, 0.8\}$. Where is the best dev accuracy, and how does the train
#    loss react?
# 2. Keep the dropout on the hidden layer but remove it from the inputs (and the
#    other way round). Which of the two does more here?
# 3. Why do we call `model.eval()` before evaluation? Evaluate the dropout model in
#    training mode and compare.
