# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Output activations and the MLP
#
# A neural network for classification or regression ends with an **output activation**
# that turns unbounded scores (*logits*) into the parameters of an output distribution.
# We train it by maximum likelihood, so the output distribution decides the activation:
#
# | target | distribution | output activation |
# |---|---|---|
# | real number | Normal | none (identity) |
# | yes/no | Bernoulli | $\sigma(x) = \frac{1}{1 + e^{-x}}$ |
# | one of $K$ classes | categorical | $\mathrm{softmax}(\mathbf z)_i = e^{z_i} / \sum_j e^{z_j}$ |
#
# This notebook checks the identities behind these choices with `npfl_lib.functional`,
# writes a one-hidden-layer MLP out by hand, counts its parameters, times a batched
# forward pass against a per-example loop and prints the computation graph.

# %%
import os
import time

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.nn import MLP

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
N_TIMING = 10_000 if FULL else 1_000  # examples in the timing experiment
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Sigmoid: the Bernoulli output
#
# A Bernoulli distribution has one parameter $p \in (0, 1)$. The network predicts an
# unbounded logit $x$ and $p = \sigma(x)$. The sigmoid's inverse is the **logit**
# (log-odds)
#
# $$x = \sigma^{-1}(p) = \log \frac{p}{1 - p},$$
#
# so the network's output is the log-odds of the positive class. We check that
# $\sigma(\log\frac{p}{1-p}) = p$:

# %%
p = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
logit = torch.log(p / (1 - p))
print("max |sigmoid(logit(p)) - p| =", (nf.sigmoid(logit) - p).abs().max().item())

# %% [markdown]
# ## Softmax: the categorical output
#
# For $K$ classes the network predicts logits $\boldsymbol z \in \mathbb R^K$ and
# $\boldsymbol p = \operatorname{softmax}(\boldsymbol z)$. Adding a constant $c$ to every
# logit multiplies numerator and denominator by $e^c$, so softmax is
# **shift-invariant**. Hence the logits of a distribution $\boldsymbol p$ are
# $z_i = \log p_i + c$ for any $c$ (softmax implementations subtract $\max_j z_j$ for
# numerical stability, using exactly this invariance).

# %%
probs = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
for c in [0.0, 3.7, -100.0]:
    recovered = nf.softmax(torch.log(probs) + c)
    print(f"c = {c:7.1f}: softmax(log p + c) = {recovered.numpy().round(6)}")

# %% [markdown]
# With two classes and logits $(0, x)$,
#
# $$\operatorname{softmax}([0, x])_1 = \frac{e^x}{e^0 + e^x} = \frac{1}{1 + e^{-x}} = \sigma(x),$$
#
# so the sigmoid is a two-class softmax whose first logit is fixed to zero.
#
# The right plot divides the logits by a **temperature** $T$ before the softmax,
# $\operatorname{softmax}(\boldsymbol z / T)$: $T < 1$ sharpens the distribution towards
# the largest logit (as $T \to 0$ it becomes one-hot, the argmax), $T > 1$ flattens it
# towards uniform. $T = 1$ is the plain softmax; the order of the probabilities never
# changes. (Temperatures appear when sampling from language models and in distillation.)

# %%
x = torch.linspace(-8, 8, 201, dtype=torch.float64)
two_class = nf.softmax(torch.stack([torch.zeros_like(x), x], dim=-1), dim=-1)[:, 1]
print("max |softmax([0, x])_1 - sigmoid(x)| =", (two_class - nf.sigmoid(x)).abs().max().item())

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(x, nf.sigmoid(x), lw=4, alpha=0.4, label=r"$\sigma(x)$")
axes[0].plot(x, two_class, "k--", label=r"softmax$([0, x])_1$")
axes[0].set(xlabel="logit $x$", ylabel="probability", title="sigmoid = two-class softmax")
axes[0].legend()
z = torch.tensor([2.0, 1.0, 0.1, -1.0], dtype=torch.float64)
for t in [0.5, 1.0, 3.0]:
    axes[1].plot(nf.softmax(z / t), "o-", label=f"temperature T = {t}")
axes[1].set(xlabel="class", ylabel="probability", xticks=range(len(z)), ylim=(0, 1))
axes[1].set_title("softmax(z / T) of the logits z = [2, 1, 0.1, -1]")
axes[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A one-hidden-layer MLP, written out
#
# For an input batch $\boldsymbol X \in \mathbb R^{N \times D}$ (one example per row),
# a hidden layer of $H$ units and $O$ outputs:
#
# $$\boldsymbol H = f(\boldsymbol X \boldsymbol W^{(h)} + \boldsymbol b^{(h)}), \qquad
#   \boldsymbol O = g(\boldsymbol H \boldsymbol W^{(o)} + \boldsymbol b^{(o)}),$$
#
# with $\boldsymbol W^{(h)} \in \mathbb R^{D \times H}$,
# $\boldsymbol b^{(h)} \in \mathbb R^{H}$, $\boldsymbol W^{(o)} \in \mathbb R^{H \times O}$,
# $\boldsymbol b^{(o)} \in \mathbb R^{O}$, a hidden activation $f$ (here ReLU) and an
# output activation $g$ (here softmax). The bias is broadcast over the rows. The model
# has
#
# $$D \cdot H + H \cdot O + H + O$$
#
# parameters. For 8x8 digit images ($D = 64$), $H = 100$ and $O = 10$:

# %%
D, H, K = 64, 100, 10  # inputs, hidden units, outputs (O in the formula)
model = MLP(D, [H], K)
formula = D * H + H * K + H + K
print(f"D*H + H*O + H + O = {formula}")
print(f"MLP(64, [100], 10).num_parameters() = {model.num_parameters()}")
print(f"sum of parameter sizes = {sum(p.numel() for p in model.parameters())}")

# %% [markdown]
# The forward pass with plain tensors (the library's `MLP` does the same with
# `torch.nn.Linear` layers, whose weight matrix is stored transposed, $O \times H$):

# %%
gen = torch.Generator().manual_seed(0)
W_h = (torch.randn(D, H, generator=gen) / D**0.5).to(device).requires_grad_()
b_h = torch.zeros(H, device=device, requires_grad=True)
W_o = (torch.randn(H, K, generator=gen) / H**0.5).to(device).requires_grad_()
b_o = torch.zeros(K, device=device, requires_grad=True)


def forward(X):
    hidden = nf.relu(X @ W_h + b_h)
    return hidden @ W_o + b_o  # logits; softmax gives the probabilities


X = torch.rand(5, D, device=device)
print("output probabilities of 5 random inputs (each row sums to 1):")
print(nf.softmax(forward(X)).detach().cpu().numpy().round(3))

# %% [markdown]
# ## Batches as matrices
#
# Processing one example at a time computes the same numbers as one matrix product of
# the whole batch, but the matrix product runs in optimized BLAS (or GPU) kernels
# instead of many small Python-level operations, each with its fixed overhead. We time
# both several times and keep the fastest run of each.

# %%
X = torch.rand(N_TIMING, D, device=device)


def fastest(function, repeats=7):
    """The fastest of `repeats` runs in seconds: the minimum is the run least disturbed
    by other programs (a single timing on a busy machine can be off severalfold)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU kernels run asynchronously: wait for them
        times.append(time.perf_counter() - start)
    return min(times), result


with torch.no_grad():
    forward(X)  # warm-up, so neither timing pays one-off setup costs
    t_batched, batched = fastest(lambda: forward(X))
    t_looped, looped = fastest(lambda: torch.stack([forward(x) for x in X]))

print(f"{N_TIMING} examples, fastest of 7 runs each:")
print(f"  batched {t_batched * 1e3:.2f} ms, loop {t_looped * 1e3:.1f} ms")
print(f"  the loop is {t_looped / t_batched:.1f}x slower")
print("max |batched - looped| =", (batched - looped).abs().max().item())

# %% [markdown]
# ## The computation graph
#
# When tensors require gradients, PyTorch records every operation in a graph of
# `grad_fn` nodes; `loss.backward()` walks it from the output back to the leaves
# (`AccumulateGrad` nodes, one per parameter) applying the chain rule. We print the
# graph of our MLP's logits, the network of the formulas above ($\boldsymbol X$ is
# a constant input, so it has no node):

# %%
names = {id(t): name for name, t in [("W_h", W_h), ("b_h", b_h), ("W_o", W_o), ("b_o", b_o)]}


def show_graph(node, depth=0):
    label = type(node).__name__
    if hasattr(node, "variable"):
        label += f"  <- {names.get(id(node.variable), '?')}"
    print("    " * depth + label)
    for child, _ in node.next_functions:
        if child is not None:
            show_graph(child, depth + 1)


logits = forward(torch.rand(5, D, device=device))
show_graph(logits.grad_fn)

# %% [markdown]
# `MmBackward0` is a matrix product, `AddBackward0` the bias, and the ReLU appears as the
# node `nf.relu` is built from. Adding the loss extends the graph at the top;
# `backward()` then fills `.grad` of every leaf with a tensor of the leaf's shape:

# %%
targets = torch.randint(K, (5,), device=device)
loss = nf.cross_entropy(logits, targets)
loss.backward()
for name, t in [("W_h", W_h), ("b_h", b_h), ("W_o", W_o), ("b_o", b_o)]:
    print(f"{name}: shape {tuple(t.shape)}, gradient shape {tuple(t.grad.shape)}")

# %% [markdown]
# ## Try it yourself
#
# 1. Compute `nf.softmax` of the logits `[1000., 0.]` and the naive formula
#    `z.exp() / z.exp().sum()`. Why does one of them return `nan`?
# 2. Change `H` and check the parameter count formula for two hidden layers
#    (`MLP(64, [H1, H2], 10)`): write the formula first, then compare.
# 3. Time the batched forward pass for batch sizes 1, 10, 100, ..., 100 000 and plot the
#    time per example. Where does batching stop helping on your machine?
