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
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
EPOCHS = 100 if FULL else 60
TRAIN_SIZE = 500  # a small training set, so that the model without dropout overfits
HIDDEN = 400
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

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
# ## Dropout trains an ensemble
#
# Every mask selects a **subnetwork**; a layer of $n$ units has $2^n$ of them, all
# sharing weights. Training with dropout trains this exponential ensemble, and running
# the whole network without dropout approximates the ensemble's average prediction
# (exactly for a single linear layer, approximately with non-linearities).
#
# Below we train MLPs without and with dropout ($p = 0.5$ on the hidden layer) on a
# small training set and follow training and dev loss and accuracy.

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


def train(dropout):
    torch.manual_seed(0)
    model = MLP(64, [HIDDEN], 10, dropout=dropout).to(device)
    initial = model.layers[0].weight.detach().clone()  # kept to show what was learned
    optimizer = Adam(model.parameters(), lr=0.003)
    history = []
    for _ in range(EPOCHS):
        model.train()  # dropout on
        for batch in torch.randperm(TRAIN_SIZE, device=device).split(20):
            optimizer.zero_grad()
            nf.cross_entropy(model(X_train[batch]), y_train[batch]).backward()
            optimizer.step()
        history.append(evaluate(model, X_train, y_train) + evaluate(model, X_dev, y_dev))
    learned = model.layers[0].weight.detach() - initial  # layers[0] is the first nn.Linear
    return model, torch.tensor(history), learned.cpu()


results = {p: train(p) for p in [0.0, 0.5]}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for p, (_, history, _) in results.items():
    epochs = range(1, EPOCHS + 1)
    for column, name, style in [(0, "train", "--"), (2, "dev", "-")]:
        axes[0].plot(epochs, history[:, column], style, label=f"{name}, dropout {p}")
        axes[1].plot(epochs, history[:, column + 1], style, label=f"{name}, dropout {p}")
    print(
        f"dropout {p}: train loss {history[-1, 0]:.4f}, dev loss {history[-1, 2]:.4f}, "
        f"dev accuracy {history[-1, 3]:.3f}"
    )
axes[0].set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.8, 1.001))
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Weight scaling vs averaging the subnetworks
#
# We compare the deterministic prediction of the dropout-trained model with a
# **Monte-Carlo** average of the probabilities of many random subnetworks
# (dropout left on at test time):

# %%
model = results[0.5][0]
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
# responds to. Both models started from the same random weights, so we show what
# training **added** to them (final minus initial weights) for the 12 units that
# changed most in each model.

# %%
fig, axes = plt.subplots(2, 12, figsize=(13, 2.6))
for row, p in enumerate(results):
    learned = results[p][2]
    for col, unit in enumerate(learned.norm(dim=1).argsort(descending=True)[:12]):
        axes[row, col].imshow(learned[unit].reshape(8, 8), cmap="RdBu_r")
        axes[row, col].axis("off")
    axes[row, 0].set_title(f"dropout {p}", loc="left", fontsize=9)
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
# 2. Add dropout on the *input* (e.g. $p = 0.2$ on the pixels) by applying `nf.dropout`
#    to `X_train[batch]`.
# 3. Why do we call `model.eval()` before evaluation? Evaluate the dropout model in
#    training mode and compare.
