# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 9. Derivatives of the MLE losses
#
# Training by maximum likelihood pairs each output distribution with its negative
# log-likelihood loss. For every such pair the gradient of the loss with respect to
# the network's **output-layer input** (the logits $\boldsymbol z$, or the prediction
# for regression) has the same simple form, *prediction minus target*:
#
# | output | loss | $\partial\mathcal L / \partial\boldsymbol z$ |
# |---|---|---|
# | identity (Normal) | $(z - t)^2$ | $2(z - t)$ |
# | softmax (gold class) | $-\log o_\text{gold}$ | $\mathbf o - \mathbf 1_\text{gold}$ |
# | softmax (distribution $\mathbf g$) | $-\sum_i g_i \log o_i$ | $\mathbf o - \mathbf g$ |
# | sigmoid (Bernoulli) | $-g\log o - (1-g)\log(1-o)$ | $o - g$ |
#
# where $\boldsymbol o$ is the output distribution. We derive each one, then check the
# analytic gradients of `npfl_lib.functional` against autograd.

# %%
import copy
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.manual import ManualMLP, gradcheck

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
N, C = (1000, 50) if FULL else (64, 10)  # batch size and number of classes
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")


def autograd_of(loss_fn, z, *args, **kwargs):
    """The gradient of ``loss_fn(z, ...)`` with respect to ``z``, by autograd."""
    z = z.detach().requires_grad_()
    loss_fn(z, *args, **kwargs).backward()
    return z.grad


def compare(name, analytic, automatic):
    error = ((analytic - automatic).abs().max() / automatic.abs().max()).item()
    print(f"{name:>48}: max relative difference {error:.1e}")


# %% [markdown]
# ## Mean squared error
#
# $\frac{\partial}{\partial z}(z - t)^2 = 2(z - t)$. PyTorch's `mse_loss` averages over all
# $N$ elements by default, so its gradient is $\frac{2}{N}(\boldsymbol z - \boldsymbol t)$.

# %%
z = torch.randn(N, device=device, dtype=torch.float64)
t = torch.randn(N, device=device, dtype=torch.float64)
compare("MSE, 2 (z - t) / N", nf.mse_loss_grad(z, t), autograd_of(nf.mse_loss, z, t))
compare("MSE, sum: 2 (z - t)", 2 * (z - t), autograd_of(nf.mse_loss, z, t, reduction="sum"))

# %% [markdown]
# ## Softmax + negative log-likelihood: $\boldsymbol o - \boldsymbol 1_\text{gold}$
#
# With $o_i = \operatorname{softmax}(\boldsymbol z)_i$, the loss is
# $-\log o_\text{gold} = -z_\text{gold} + \log\sum_j e^{z_j}$. Differentiating,
#
# $$\frac{\partial\mathcal L}{\partial z_i} = -[i = \text{gold}] + \frac{e^{z_i}}{\sum_j e^{z_j}}
#   = o_i - [i = \text{gold}], \quad\text{i.e.}\quad
#   \nabla_{\boldsymbol z}\mathcal L = \boldsymbol o - \boldsymbol 1_\text{gold}.$$
#
# The gradient pushes the gold logit up by $1 - o_\text{gold}$ and every other logit down
# by its probability; it vanishes only when the model is certain and right.

# %%
z = torch.randn(N, C, device=device, dtype=torch.float64)
gold = torch.randint(C, (N,), device=device)
formula = (nf.softmax(z) - torch.eye(C, device=device, dtype=z.dtype)[gold]) / N
compare("softmax + NLL, (o - 1_gold) / N", formula, autograd_of(nf.cross_entropy, z, gold))
compare(
    "nf.cross_entropy_grad", nf.cross_entropy_grad(z, gold), autograd_of(nf.cross_entropy, z, gold)
)

# %% [markdown]
# ## Cross-entropy with a full target distribution: $\boldsymbol o - \boldsymbol g$
#
# For a target distribution $\boldsymbol g$ (e.g. smoothed labels, or mixup targets),
# $\mathcal L = -\sum_i g_i\log o_i = -\sum_i g_i z_i + \big(\sum_i g_i\big)\log\sum_j e^{z_j}$, so
#
# $$\frac{\partial\mathcal L}{\partial z_i} = -g_i + \Big(\sum_k g_k\Big) o_i = o_i - g_i
#   \quad\text{since } \textstyle\sum_k g_k = 1.$$

# %%
g = nf.softmax(torch.randn(N, C, device=device, dtype=torch.float64))
compare(
    "full cross-entropy, (o - g) / N", (nf.softmax(z) - g) / N, autograd_of(nf.cross_entropy, z, g)
)
compare(
    "nf.cross_entropy_grad (probabilities)",
    nf.cross_entropy_grad(z, g),
    autograd_of(nf.cross_entropy, z, g),
)
smoothed = autograd_of(nf.cross_entropy, z, gold, label_smoothing=0.1)
compare("label smoothing 0.1", nf.cross_entropy_grad(z, gold, label_smoothing=0.1), smoothed)

# %% [markdown]
# ## Sigmoid + binary cross-entropy: $o - g$
#
# With $o = \sigma(z)$ we use $\frac{\partial\sigma}{\partial z} = \sigma(1-\sigma)$:
#
# $$\frac{\partial}{\partial z}\big[-g\log\sigma(z) - (1 - g)\log(1 - \sigma(z))\big]
#   = -g(1 - o) + (1 - g)\,o = o - g.$$

# %%
z1 = 3 * torch.randn(N, device=device, dtype=torch.float64)
g1 = torch.rand(N, device=device, dtype=torch.float64)
bce = nf.binary_cross_entropy_with_logits
compare("sigmoid + BCE, (o - g) / N", (nf.sigmoid(z1) - g1) / N, autograd_of(bce, z1, g1))
compare(
    "nf.binary_cross_entropy_with_logits_grad",
    nf.binary_cross_entropy_with_logits_grad(z1, g1),
    autograd_of(bce, z1, g1),
)

# %% [markdown]
# ## Why the likelihood loss matters: MSE on a sigmoid saturates
#
# Suppose a binary model with gold label $g = 1$ predicts the logit $z$. With the
# likelihood loss (BCE) the gradient is $\sigma(z) - 1$: close to $-1$ when the model is
# confidently wrong ($z \ll 0$). With the squared error $(\sigma(z) - 1)^2$ on the
# probability instead, the chain rule adds the factor $\sigma'(z)$:
# $2(\sigma(z) - 1)\,\sigma(z)(1 - \sigma(z))$, which **vanishes** for $z \ll 0$: the
# more wrong the model, the less it learns.

# %%
zs = torch.linspace(-8, 8, 401, dtype=torch.float64)
ones = torch.ones_like(zs)
bce_grad = nf.binary_cross_entropy_with_logits_grad(zs, ones, reduction="none")
mse_grad = autograd_of(lambda z: nf.mse_loss(nf.sigmoid(z), ones, reduction="sum"), zs)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].plot(zs, bce(zs, ones, reduction="none"), label="BCE  $-\\log\\sigma(z)$")
axes[0].plot(zs, (nf.sigmoid(zs) - 1) ** 2, label="MSE  $(\\sigma(z) - 1)^2$")
axes[0].set(xlabel="logit z (gold label 1)", ylabel="loss", title="loss")
axes[1].plot(zs, bce_grad, label="BCE: $\\sigma(z) - 1$")
axes[1].plot(zs, mse_grad, label="MSE: $2(\\sigma(z) - 1)\\sigma'(z)$")
axes[1].set(xlabel="logit z (gold label 1)", ylabel="dL/dz", title="gradient")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()
print(f"at z = -8: BCE gradient {bce_grad[0]:.4f}, MSE gradient {mse_grad[0]:.6f}")

# %% [markdown]
# ## Backpropagation through a whole MLP
#
# The output-layer gradient $\boldsymbol o - \boldsymbol 1_\text{gold}$ is where
# backpropagation starts. `npfl_lib.manual.ManualMLP` continues it by hand through a
# hidden layer (see its docstring for the equations); `gradcheck` compares its
# gradients with finite differences.

# %%
mlp = ManualMLP(8, 16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
x = torch.randn(5, 8, dtype=torch.float64)
targets = torch.randint(4, (5,))
grads = mlp.backward(x, targets)


def loss_of(W1, b1, W2, b2):
    """The MLP's loss as a function of its parameters, as gradcheck needs it."""
    probe = copy.copy(mlp)  # a shallow copy whose parameters we may replace
    probe.W1, probe.b1, probe.W2, probe.b2 = W1, b1, W2, b2
    return probe.loss(x, targets)


names = ["W1", "b1", "W2", "b2"]
report = gradcheck(loss_of, [mlp.parameters()[n] for n in names], [grads[n] for n in names])
print(report)

# %% [markdown]
# ## Try it yourself
#
# 1. Derive the gradient of the Huber loss and check it with `autograd_of(nf.huber_loss, ...)`.
# 2. Check that with a target distribution that does **not** sum to one, the gradient
#    is $(\sum_k g_k)\,\boldsymbol o - \boldsymbol g$, not $\boldsymbol o - \boldsymbol g$.
# 3. Plot the softmax + NLL gradient of the gold logit against $o_\text{gold}$. Where is
#    it largest?
