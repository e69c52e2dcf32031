# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

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
from npfl_lib.nn import MLP
from npfl_lib.optim import SGD, Adam, AdamW, RMSprop, param_groups_no_decay

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
DEEP_WIDTH = 1000 if FULL else 200  # Glorot & Bengio used 1000 units per layer
STEPS = 2000 if FULL else 500  # full-batch training steps of the small experiments
OPT_EPOCHS = 30 if FULL else 8  # epochs of the optimizer comparison
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Saturating non-linearities and the modern activations
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
#
# That is the lecture's table of classical vs deep-learning choices for the hidden
# activation: the classical sigmoid and tanh; ReLU; and its smooth or leaky variants,
# **Leaky ReLU** $\max(x, 0.01x)$ (a small gradient for $x < 0$ too), **GELU**
# $x\,\Phi(x)$ ($\Phi$ the standard normal CDF, in BERT and GPT), **SiLU** (swish)
# $x\,\sigma(x)$, and the gated **SwiGLU** $\operatorname{SiLU}(a) \cdot b$ of two
# linear projections $a$ and $b$ of the input (in LLaMA-style transformers). The gallery
# shows each with its derivative, computed by autograd (for SwiGLU: in $a$, with $b$
# fixed).

# %%
x = torch.linspace(-6, 6, 601)


def with_derivative(f, x):
    """Returns f(x) and df/dx at every point of x, by autograd."""
    x = x.clone().requires_grad_()
    y = f(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), dy


def swiglu_of_gate(b):
    # nf.swiglu splits its last dimension into the gate a and the value b
    return lambda a: nf.swiglu(torch.stack([a, torch.full_like(a, b)], -1)).squeeze(-1)


functions = {
    "sigmoid": nf.sigmoid,
    "tanh": nf.tanh,
    "ReLU": nf.relu,
    "Leaky ReLU (0.01)": nf.leaky_relu,
    "GELU": nf.gelu,
    "SiLU (swish)": nf.silu,
    "SwiGLU, b = 1": swiglu_of_gate(1.0),
}
fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True)
for ax, (name, f) in zip(axes.flat[:-1], functions.items(), strict=True):
    y, dy = with_derivative(f, x)
    ax.plot(x, y, label=name)
    ax.plot(x, dy, "--", label="derivative")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(title=name, ylim=(-1.1, 2.1))
    ax.legend(loc="upper left", fontsize=8)
    at_five = with_derivative(f, torch.tensor([-5.0, 5.0]))[1]
    print(
        f"{name:>18}: max derivative {dy.max():.3f}, derivative at -5: {at_five[0]:.4f}, "
        f"at 5: {at_five[1]:.4f}"
    )
ax = axes.flat[-1]  # SwiGLU for several values b of the second projection
for b in [2.0, 1.0, 0.5, -1.0]:
    ax.plot(x, swiglu_of_gate(b)(x), label=f"b = {b}")
ax.axhline(0, color="gray", lw=0.5)
ax.set(title="SwiGLU(a, b) = SiLU(a) · b", ylim=(-2.1, 2.1))
ax.legend(loc="upper left", fontsize=8)
for ax in axes[1]:
    ax.set_xlabel("x (for SwiGLU: the gate a)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The smooth variants GELU and SiLU dip slightly below zero and have a derivative a
# little above 1 for positive inputs; unlike ReLU they pass some gradient for small
# negative inputs, and, unlike the sigmoid and tanh, none of them saturates for large
# positive inputs.

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
fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), layout="constrained")
panels = [(f"hidden unit {k}", features[:, k], -1) for k in range(3)]
panels.append(("P(inner circle)", positive, 0))
filled = []
for ax, (title, values, low) in zip(axes, panels, strict=True):
    levels = torch.linspace(low, 1, 21)  # fixed: -1..1 for tanh, 0..1 for a probability
    filled.append(ax.contourf(gx, gy, values.reshape(gx.shape), levels=levels, cmap="RdBu_r"))
    ax.scatter(*X.cpu().T, c=y.cpu(), s=5, cmap="bwr", edgecolors="k", linewidths=0.2)
    ax.set(title=title, aspect="equal", xticks=[], yticks=[])
fig.colorbar(filled[0], ax=axes[:3], label="tanh feature", ticks=[-1, 0, 1], shrink=0.8)
fig.colorbar(filled[3], ax=axes[3], label="probability", ticks=[0, 0.5, 1], shrink=0.8)
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
        init.zeros_(layer.bias)  # torch's default bias is not zero
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
trained = {name: train_digits(initialize) for name, initialize in inits.items()}
limit = max(weights.abs().max().item() for weights, _ in trained.values())
fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
for ax, (name, (weights, accuracy)) in zip(axes, trained.items(), strict=True):
    distinct = torch.unique(weights, dim=0).shape[0]
    print(f"{name:>16}: dev accuracy {accuracy:.3f}, distinct hidden units {distinct} of 20")
    image = ax.imshow(weights, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set(title=f"{name}: {distinct} distinct of 20", xlabel="input pixel", yticks=[0, 5, 10, 15])
axes[0].set_ylabel("hidden unit")
fig.colorbar(image, ax=axes, label="trained first-layer weight (white = 0)")
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
# The "then-common" initialization is still PyTorch's default: `torch.nn.Linear` draws
# its weights from $U\big[-\frac{1}{\sqrt{n_\text{in}}}, \frac{1}{\sqrt{n_\text{in}}}\big]$
# (written as `kaiming_uniform_(w, a=sqrt(5))`; `npfl_lib.init.uniform_fan_in_` is the
# same), and its **biases are not zero**: they come from the same uniform
# distribution. The lecture's formulas assume zero biases, so the code below (and
# `npfl_lib.nn.MLP`) zeroes them explicitly with `init.zeros_`.

# %%
n_in = 500
layer = torch.nn.Linear(n_in, 100)  # PyTorch's default initialization
print(f"nn.Linear({n_in}, 100), 1/sqrt(n_in) = {n_in**-0.5:.4f}:")
print(f"  weights in [{layer.weight.min():.4f}, {layer.weight.max():.4f}], ", end="")
print(f"variance {layer.weight.var():.2e} (1/(3 n_in) = {1 / (3 * n_in):.2e})")
print(f"  biases in [{layer.bias.min():.4f}, {layer.bias.max():.4f}]: not zero")
print(f"  Glorot's bound sqrt(6/(n_in + n_out)) = {(6 / (n_in + 100)) ** 0.5:.4f}")

# %% [markdown]
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
        init.zeros_(layer.bias)  # torch's default bias is not zero
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
# ## Optimizers on one problem
#
# The other half of the lecture's table: the classical SGD, SGD with **momentum**,
# the adaptive **RMSProp** and **Adam**, and the decoupled-weight-decay versions
# **SGDW** and **AdamW**. We train the same MLP (same initialization, same batches) on
# the digits with each, at a learning rate typical for it. `npfl_lib.optim` has all but
# SGDW, which torch does not have either; it is SGD with momentum plus AdamW's decay
# step $w \leftarrow w - \alpha\lambda w$ before every update, written below in a few
# lines.


# %%
class SGDW(SGD):
    """SGD with momentum and decoupled weight decay (Loshchilov & Hutter, 2019): every
    step first decays the weights (not the biases) by lr * weight_decay, as AdamW does,
    then takes the SGD step on the data gradient alone."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, lr=lr, momentum=momentum)
        self.decoupled_weight_decay = weight_decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.dim() > 1:  # a weight matrix
                    param.mul_(1 - group["lr"] * self.decoupled_weight_decay)
        return super().step(closure)


optimizers = {  # name: (how to build the optimizer, line style)
    "SGD (lr 0.1)": (lambda m: SGD(m.parameters(), lr=0.1), "C0-"),
    "SGD + momentum 0.9 (lr 0.05)": (lambda m: SGD(m.parameters(), lr=0.05, momentum=0.9), "C1-"),
    "SGDW (as above, wd 0.01)": (
        lambda m: SGDW(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01),
        "C1--",
    ),
    "RMSProp (lr 0.001)": (lambda m: RMSprop(m.parameters(), lr=0.001), "C2-"),
    "Adam (lr 0.003)": (lambda m: Adam(m.parameters(), lr=0.003), "C3-"),
    "AdamW (as above, wd 0.01)": (
        lambda m: AdamW(param_groups_no_decay(m, 0.01), lr=0.003),
        "C3--",
    ),
}
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for name, (make_optimizer, style) in optimizers.items():
    npfl_lib.set_seed(0)  # the same initial model and the same batches for every optimizer
    model = MLP(64, [100], 10)
    trainer = npfl_lib.Trainer(model, make_optimizer(model), nf.cross_entropy, device=device)
    history = trainer.fit(
        (X_train, y_train), epochs=OPT_EPOCHS, batch_size=50, dev=(X_dev, y_dev), verbose=0
    )
    epochs = range(1, OPT_EPOCHS + 1)
    axes[0].plot(epochs, [h["loss"] for h in history], style, label=name)
    axes[1].plot(epochs, [h["dev_loss"] for h in history], style, label=name)
    dev_accuracy = (trainer.predict(X_dev).argmax(-1) == y_dev.cpu()).float().mean().item()
    print(
        f"{name:>30}: train loss {history[-1]['loss']:.4f}, "
        f"dev loss {history[-1]['dev_loss']:.4f}, dev accuracy {dev_accuracy:.3f}"
    )
axes[0].set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
axes[1].set(xlabel="epoch", ylabel="dev loss", yscale="log", title="dev loss (NLL)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3)
fig.tight_layout(rect=(0, 0.12, 1, 1))  # room for the legend below the plots
plt.show()

# %% [markdown]
# Each learning rate is a common default, not tuned: with a tuned learning rate (and
# schedule) plain SGD with momentum often ends as well as Adam. What the adaptive
# methods buy is that one learning rate works for many problems. The decay of SGDW and
# AdamW hardly changes a run this short; its effect is the regularization of
# notebook 2.

# %% [markdown]
# ## Try it yourself
#
# 1. Replace tanh by ReLU in the deep network (and `xavier_uniform_` by
#    `kaiming_uniform_`). How do the histograms change?
# 2. Give the circles network only two hidden units. Can it still separate the classes?
#    Plot its two features.
# 3. Make the deep network 20 layers deep. What happens to the gradients of the first
#    layers under each initialization?
