# %% [markdown]
# # 8. Convergence: activations, initialization and gradient clipping
#
# Whether a network trains at all depends on how gradients flow through it. This
# notebook looks at the derivatives of the usual non-linearities, at what a hidden
# layer learns, at why weights must not start equal, at the Glorot & Bengio (2010)
# experiment on initialization, and at gradient clipping.

# %%
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
import npfl_lib.init as init
from npfl_lib.clip import clip_grad_norm_, clip_grad_value_
from npfl_lib.datasets import circles, load_digits
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
DEEP_WIDTH = 1000 if FULL else 200  # Glorot & Bengio used 1000 units per layer
STEPS = 2000 if FULL else 500  # full-batch training steps of the small experiments
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

# %% [markdown]
# ## Saturating non-linearities
#
# $$\sigma'(x) = \sigma(x)\big(1 - \sigma(x)\big), \qquad
#   \tanh'(x) = 1 - \tanh^2(x), \qquad
#   \operatorname{ReLU}'(x) = [x > 0].$$
#
# The sigmoid and tanh **saturate**: for large $|x|$ their derivative is nearly zero,
# so a unit pushed far from zero passes almost no gradient back. The sigmoid's
# derivative is at most $\frac14$, so on its way back through a sigmoid the gradient
# is multiplied by at most $\frac14$ (the weights may scale it up again). ReLU passes
# the gradient unchanged for positive inputs (and not at all for negative ones).

# %%
x = torch.linspace(-6, 6, 601)
functions = {
    "sigmoid": (nf.sigmoid, nf.sigmoid_grad),
    "tanh": (nf.tanh, nf.tanh_grad),
    "ReLU": (nf.relu, nf.relu_grad),
}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
for ax, (name, (f, df)) in zip(axes, functions.items(), strict=True):
    ax.plot(x, f(x), label=name)
    ax.plot(x, df(x), "--", label=f"{name}'")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(title=name, xlabel="x", ylim=(-1.1, 1.6))
    ax.legend()
    at_five = df(torch.tensor(5.0))
    print(f"{name:>8}: max derivative {df(x).max():.3f}, derivative at x = 5: {at_five:.4f}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The hidden layer as learned features
#
# Two concentric circles are not linearly separable in the input space. An MLP with a
# hidden layer of three tanh units learns three **features**
# $h_k = \tanh(\boldsymbol x^T\boldsymbol w_k + b_k)$, each a soft half-plane, and the
# output layer separates the classes *linearly in the space of these features*.

# %%
data = circles(train_size=400, noise=0.08, factor=0.4)
X, y = data.train.inputs.to(device), data.train.targets.to(device)
torch.manual_seed(0)
hidden = torch.nn.Linear(2, 3).to(device)
output = torch.nn.Linear(3, 2).to(device)
optimizer = Adam([*hidden.parameters(), *output.parameters()], lr=0.05)
for _ in range(STEPS):
    optimizer.zero_grad()
    nf.cross_entropy(output(nf.tanh(hidden(X))), y).backward()
    optimizer.step()
with torch.no_grad():
    accuracy = (output(nf.tanh(hidden(X))).argmax(-1) == y).float().mean().item()
print(f"training accuracy with 3 hidden units: {accuracy:.3f}")

grid = torch.linspace(-1.5, 1.5, 200)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
points = torch.stack([gx.flatten(), gy.flatten()], 1).to(device)
with torch.no_grad():
    features = nf.tanh(hidden(points)).cpu()
    positive = nf.softmax(output(nf.tanh(hidden(points))))[:, 1].cpu()
fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
panels = [(f"hidden unit {k}", features[:, k]) for k in range(3)] + [("P(inner circle)", positive)]
for ax, (title, values) in zip(axes, panels, strict=True):
    ax.contourf(gx, gy, values.reshape(gx.shape), levels=20, cmap="RdBu_r")
    ax.scatter(*X.cpu().T, c=y.cpu(), s=5, cmap="bwr", edgecolors="k", linewidths=0.2)
    ax.set(title=title, aspect="equal", xticks=[], yticks=[])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Zero (or constant) initialization does not break the symmetry
#
# If all hidden units start with the same weights, they compute the same value and get
# the same gradient, so they stay equal forever: the layer behaves like a single unit.
# With all weights **zero** it is worse: the output weights are zero, so no gradient
# reaches the hidden layer at all. Random initialization breaks this symmetry.

# %%
digits = load_digits()
X_train = digits.train.inputs.flatten(1).to(device)
y_train = digits.train.targets.to(device)
X_dev, y_dev = digits.dev.inputs.flatten(1).to(device), digits.dev.targets.to(device)


def train_digits(initialize):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, 20), torch.nn.Linear(20, 10)]
    for layer in layers:
        initialize(layer.weight)
        init.zeros_(layer.bias)
    model = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1]).to(device)
    optimizer = Adam(model.parameters(), lr=0.01)
    for _ in range(STEPS // 2):
        optimizer.zero_grad()
        nf.cross_entropy(model(X_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(X_dev).argmax(-1) == y_dev).float().mean().item()
    return model[0].weight.detach().cpu(), accuracy


inits = {
    "random (Glorot)": init.xavier_uniform_,
    "all zeros": init.zeros_,
    "all 0.1": lambda w: init.constant_(w, 0.1),
}
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
for ax, (name, initialize) in zip(axes, inits.items(), strict=True):
    weights, accuracy = train_digits(initialize)
    distinct = torch.unique(weights, dim=0).shape[0]
    print(f"{name:>16}: dev accuracy {accuracy:.3f}, distinct hidden units {distinct} of 20")
    ax.imshow(weights, aspect="auto", cmap="RdBu_r")
    ax.set(title=f"{name}: {distinct} distinct units", xlabel="input pixel", ylabel="hidden unit")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The Glorot & Bengio experiment
#
# A layer $\boldsymbol y = \boldsymbol W \boldsymbol x$ with $n_\text{in}$ inputs of
# variance $v$ and i.i.d. zero-mean weights of variance $\operatorname{Var}(W)$ outputs
# values of variance $n_\text{in}\operatorname{Var}(W)\,v$; backwards, the gradient's
# variance is multiplied by $n_\text{out}\operatorname{Var}(W)$. The then-common
# initialization $W \sim U\big[-\frac{1}{\sqrt{n_\text{in}}}, \frac{1}{\sqrt{n_\text{in}}}\big]$
# has $\operatorname{Var}(W) = \frac{1}{3n_\text{in}}$, so in a network of equal widths
# every layer divides the variance of the signal by about three (its standard deviation
# by $\sqrt 3 \approx 1.7$), forwards and backwards. Glorot & Bengio proposed the
# compromise
# $\operatorname{Var}(W) = \frac{2}{n_\text{in} + n_\text{out}}$, i.e.
#
# $$W \sim U\big[-a, a\big], \qquad a = \sqrt{\frac{6}{n_\text{in} + n_\text{out}}}.$$
#
# We build a network of five tanh layers, initialize it both ways, run one batch of
# digits forward and backward, and plot per layer the histograms of the activations
# and of the back-propagated gradients (with respect to each layer's pre-activations).


# %%
def deep_statistics(initialize, depth=5):
    gen = torch.Generator().manual_seed(0)
    sizes = [64] + [DEEP_WIDTH] * depth
    layers = [torch.nn.Linear(a, b).to(device) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    for layer in layers:
        initialize(layer.weight, generator=gen)
        init.zeros_(layer.bias)
    head = torch.nn.Linear(DEEP_WIDTH, 10).to(device)
    activations, pre_activations = [], []
    h = X_train
    for layer in layers:
        z = layer(h)
        z.retain_grad()  # keep the gradient of this intermediate tensor after backward()
        h = nf.tanh(z)
        pre_activations.append(z)
        activations.append(h.detach().flatten().cpu())
    nf.cross_entropy(head(h), y_train).backward()
    gradients = [z.grad.flatten().cpu() for z in pre_activations]
    return activations, gradients


results = {
    "U(±1/sqrt(n_in))": deep_statistics(init.uniform_fan_in_),
    "Glorot (xavier_uniform_)": deep_statistics(init.xavier_uniform_),
}
fig, axes = plt.subplots(2, 2, figsize=(13, 7))
for row, (name, (activations, gradients)) in enumerate(results.items()):
    print(name)
    for k, (a, g) in enumerate(zip(activations, gradients, strict=True)):
        axes[row, 0].hist(
            a.numpy(), bins=80, range=(-1, 1), histtype="step", label=f"layer {k + 1}"
        )
        axes[row, 1].hist(g.numpy(), bins=80, histtype="step", label=f"layer {k + 1}")
        print(f"  layer {k + 1}: activation std {a.std():.4f}, gradient std {g.std():.2e}")
    axes[row, 0].set(title=f"{name}: activations", yscale="log")
    axes[row, 1].set(title=f"{name}: back-propagated gradients", yscale="log")
    axes[row, 1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Compare the printed standard deviations: with the old initialization the activations
# shrink from layer to layer and the gradients are smallest in the lowest layers (the
# ratio of neighbouring layers is close to $\sqrt 3$ while tanh is nearly linear);
# with Glorot's initialization both stay at a similar scale across the layers.
#
# ## Gradient clipping: by value or by norm
#
# A single huge gradient can throw the parameters far away. **Clipping by value**
# clamps every coordinate into $[-c, c]$ and changes the gradient's direction;
# **clipping by norm** rescales the whole gradient,
# $\boldsymbol g \leftarrow \boldsymbol g \cdot \min\big(1, \frac{c}{\|\boldsymbol g\|}\big)$,
# and keeps its direction.


# %%
def show(vector):
    return "[" + ", ".join(f"{v:.3f}" for v in vector.tolist()) + "]"


gradients = torch.tensor([[3.0, 0.5], [0.6, 0.4], [-1.5, 2.5]])
fig, ax = plt.subplots(figsize=(5, 5))
for k, g in enumerate(gradients):
    by_value, by_norm = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    by_value.grad, by_norm.grad = g.clone(), g.clone()
    clip_grad_value_(by_value, 1.0)
    total_norm = clip_grad_norm_(by_norm, 1.0)
    for vector, color, label in [
        (g, "gray", "original"),
        (by_value.grad, "C1", "by value (1.0)"),
        (by_norm.grad, "C0", "by norm (1.0)"),
    ]:
        ax.annotate(
            "",
            xy=vector.tolist(),
            xytext=(0, 0),
            arrowprops=dict(arrowstyle="->", color=color, lw=2),
        )
        if k == 0:
            ax.plot([], [], color=color, label=label)
    angle = torch.rad2deg(torch.atan2(by_value.grad[1], by_value.grad[0]) - torch.atan2(g[1], g[0]))
    print(f"g = {show(g)}, norm {total_norm:.2f}:")
    print(f"    by value {show(by_value.grad)}, turned by {angle.abs():.1f} degrees")
    print(f"    by norm  {show(by_norm.grad)}, same direction")
ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, ls=":"))
ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, ls="--", color="C1"))
ax.set(xlim=(-2, 3.2), ylim=(-1.2, 3), aspect="equal", title="clipping three gradients")
ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# ## Try it yourself
#
# 1. Replace tanh by ReLU in the deep network (and `xavier_uniform_` by
#    `kaiming_uniform_`). How do the histograms change?
# 2. Give the circles network only two hidden units. Can it still separate the classes?
#    Plot its two features.
# 3. Make the deep network 20 layers deep. What happens to the gradients of the first
#    layers under each initialization?
