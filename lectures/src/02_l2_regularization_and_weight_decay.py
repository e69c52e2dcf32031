# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. L2 regularization and weight decay
#
# A model with many parameters can fit the noise in a small training set
# (**overfitting**). **Regularization** is any change to training that aims to lower
# the generalization error but not the training error. The classic one adds a norm
# of the weights to the loss:
#
# $$\tilde{\mathcal L}(\boldsymbol\theta) = \mathcal L(\boldsymbol\theta)
#   + \frac{\lambda}{2}\|\boldsymbol w\|_2^2 \quad (L^2), \qquad
#   \tilde{\mathcal L}(\boldsymbol\theta) = \mathcal L(\boldsymbol\theta)
#   + \lambda\|\boldsymbol w\|_1 \quad (L^1),$$
#
# where $\boldsymbol w$ are the weights; biases are usually not regularized.

# %%
import copy
import math
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.datasets import load_digits
from npfl_lib.nn import MLP
from npfl_lib.optim import SGD, Adam, AdamW

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
EPOCHS = 40 if FULL else 12  # epochs of the Adam vs AdamW experiment
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Polynomial regression: Bishop's example
#
# The lecture illustrates overfitting with polynomial fits; we use the classic example
# of Bishop (*Pattern Recognition and Machine Learning*, Section 1.1), not the lecture's
# own three fits (whose data we do not have, so our numbers differ from the slide's).
# Ten points $x_i \in [0, 1]$ with targets $t_i = \sin(2\pi x_i) + \varepsilon$ are fit
# by a polynomial of degree $M = 9$, $y(x) = \sum_{j=0}^{9} w_j x^j$, minimizing
#
# $$\frac{1}{2}\sum_i \big(y(x_i) - t_i\big)^2 + \frac{\lambda}{2}\sum_{j=1}^{9} w_j^2 .$$
#
# As for a network's biases, the constant term $w_0$ is not penalized (Bishop's
# formula penalizes it too). With the design matrix $\Phi_{ij} = x_i^j$ and
# $\boldsymbol D = \operatorname{diag}(0, 1, \dots, 1)$ the minimum has the closed form
# $\boldsymbol w = (\Phi^T\Phi + \lambda \boldsymbol D)^{-1}\Phi^T \boldsymbol t$. We
# compare three values of $\lambda$: none, $\ln\lambda = -18$ and $\ln\lambda = 0$.

# %%
# seed 36: ten points that happen to cover [0, 1] well, like the lecture's picture
poly = npfl_lib.datasets.polynomial_regression(train_size=10, seed=36)
print(poly)
x_train, t_train = poly.train.inputs.double().flatten(), poly.train.targets.double().flatten()
x_test, t_test = poly.test.inputs.double().flatten(), poly.test.targets.double().flatten()
DEGREE = 9


def design(x):
    return x[:, None] ** torch.arange(DEGREE + 1, dtype=x.dtype)


def ridge(lam):
    """The minimizer (Phi^T Phi + lam D)^-1 Phi^T t, D = diag(0, 1, ..., 1), computed stably.

    Phi^T Phi of a degree-9 polynomial is too ill-conditioned to invert reliably, so we
    solve the equivalent least-squares problem [Phi; sqrt(lam) E] w = [t; 0] instead,
    where E is the identity without its first row (w_0, the bias, is not penalized).
    """
    Phi = design(x_train)
    E = torch.eye(DEGREE + 1, dtype=Phi.dtype)[1:]
    A = torch.cat([Phi, math.sqrt(lam) * E])
    b = torch.cat([t_train, torch.zeros(DEGREE, dtype=t_train.dtype)])
    return torch.linalg.lstsq(A, b[:, None]).solution.flatten()


fits = {"no regularization": 0.0, "ln λ = -18": math.exp(-18), "ln λ = 0": 1.0}
grid = torch.linspace(0, 1, 200, dtype=torch.float64)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), sharey=True)
print(f"{'fit':>18} {'train MSE':>10} {'test MSE':>10} {'||w||_1':>12} {'||w||_2':>12}")
print(" " * 42 + "(norms of w_1..w_9)")
for ax, (name, lam) in zip(axes, fits.items(), strict=True):
    w = ridge(lam)
    train_mse = nf.mse_loss(design(x_train) @ w, t_train).item()
    test_mse = nf.mse_loss(design(x_test) @ w, t_test).item()
    print(
        f"{name:>18} {train_mse:10.4f} {test_mse:10.4f} "
        f"{w[1:].abs().sum().item():12.2f} {w[1:].norm().item():12.2f}"
    )
    ax.plot(grid, torch.sin(2 * math.pi * grid), "g", alpha=0.5, label="sin(2πx)")
    ax.plot(grid, design(grid) @ w, "r", label="fit")
    ax.plot(x_train, t_train, "bo", mfc="none", label="train")
    ax.set(title=f"M = 9, {name}", xlabel="x", ylim=(-1.5, 1.5))
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Without regularization the polynomial passes through every training point, with huge
# coefficients and a wildly oscillating curve; a small $\lambda$ keeps the coefficients
# orders of magnitude smaller and the curve smooth; a large $\lambda$ shrinks them so
# much that the model underfits. Compare the train and test MSE and the norms printed
# above.
#
# ## $L^2$ regularization is a MAP estimate with a Gaussian prior
#
# Maximum likelihood maximizes $p(\boldsymbol X \mid \boldsymbol w)$. A **maximum a
# posteriori** (MAP) estimate also uses a prior: it maximizes
# $p(\mathbf w \mid \mathbf X) \propto p(\mathbf X \mid \mathbf w)\,p(\mathbf w)$
# (Bayes' rule).
# With Gaussian noise of variance $\sigma^2$ and the prior
# $w_j \sim \mathcal N(0, \sigma_w^2)$ on $w_1, \dots, w_9$ (a flat prior on the bias $w_0$),
#
# $$-\log p(\boldsymbol w \mid \boldsymbol X) = \frac{1}{2\sigma^2}\sum_i (y(x_i) - t_i)^2
#   + \frac{1}{2\sigma_w^2}\sum_{j=1}^{9} w_j^2 + \text{const},$$
#
# which is $\frac{1}{\sigma^2}$ times the ridge objective with $\lambda = \sigma^2 / \sigma_w^2$.
# We check that the closed-form solution is a stationary point of the negative log
# posterior computed with autograd:

# %%
noise_std, lam = 0.3, math.exp(-18)
prior_std = noise_std / math.sqrt(lam)
w = ridge(lam).requires_grad_()
Phi = design(x_train)
nll = ((Phi @ w - t_train) ** 2).sum() / (2 * noise_std**2)
neg_log_prior = (w[1:] ** 2).sum() / (2 * prior_std**2)  # no prior on the bias w_0
(nll + neg_log_prior).backward()
print("relative gradient of -log posterior at the ridge solution:")
print(f"  {w.grad.norm().item() / (Phi.T @ (Phi @ w - t_train)).norm().item():.2e}")

# %% [markdown]
# ## SGD with $L^2$ regularization is weight decay
#
# The gradient of $\frac{\lambda}{2}\|\boldsymbol w\|^2$ is $\lambda\boldsymbol w$, so an
# SGD step on the regularized loss is
#
# $$\boldsymbol w \leftarrow \boldsymbol w - \alpha\big(\nabla\mathcal L + \lambda\boldsymbol w\big)
#   = (1 - \alpha\lambda)\,\boldsymbol w - \alpha\nabla\mathcal L:$$
#
# each step first **decays** the weights by the factor $1 - \alpha\lambda$. We train two
# copies of one MLP on digits: one adds $\lambda$ times `nf.l2_penalty`
# ($\frac12\|\boldsymbol w\|^2$ of the weights only) to the loss, the
# other uses the optimizer's `weight_decay` on the same parameters
# (`npfl_lib.optim.param_groups_no_decay`).

# %%
digits = load_digits()
X_train = digits.train.inputs.flatten(1).to(device, torch.float64)
y_train = digits.train.targets.to(device)
X_dev = digits.dev.inputs.flatten(1).to(device)
y_dev = digits.dev.targets.to(device)

lr, lam = 0.1, 0.01
model_a = MLP(64, [100], 10).to(device, torch.float64)
model_b = copy.deepcopy(model_a)
opt_a = SGD(model_a.parameters(), lr=lr)
opt_b = SGD(npfl_lib.optim.param_groups_no_decay(model_b, lam), lr=lr)
for _step in range(50):
    batch = torch.randint(len(X_train), (50,), device=device)
    opt_a.zero_grad()
    loss_a = nf.cross_entropy(model_a(X_train[batch]), y_train[batch])
    (loss_a + lam * nf.l2_penalty(model_a)).backward()
    opt_a.step()
    opt_b.zero_grad()
    nf.cross_entropy(model_b(X_train[batch]), y_train[batch]).backward()
    opt_b.step()
diff = max(
    (a - b).abs().max().item()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True)
)
print(f"after 50 steps, max |L2-penalty weights - weight-decay weights| = {diff:.2e}")

# %% [markdown]
# ## Weight decay in a small network: the decision boundary
#
# The lecture's figure (from Hastie, Tibshirani & Friedman, *The Elements of Statistical
# Learning*, Figure 11.4): a network with one hidden layer of 10 sigmoid units on a
# noisy two-class problem, trained without weight decay and with weight decay 0.02,
# i.e. minimizing the summed cross-entropy plus $0.02\,\|\boldsymbol w\|^2$ (weights only).
# We use 100 training points of the two-moons set and measure on 2000 test points.

# %%
moons = npfl_lib.datasets.moons(train_size=100, test_size=2000, noise=0.3, seed=1)
X_moons, y_moons = moons.train.inputs.to(device), moons.train.targets.to(device)
X_moons_test, y_moons_test = moons.test.inputs.to(device), moons.test.targets.to(device)
gx, gy = torch.meshgrid(torch.linspace(-2, 3, 200), torch.linspace(-1.5, 2, 140), indexing="xy")
grid_points = torch.stack([gx.flatten(), gy.flatten()], 1).to(device)

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, decay in zip(axes, [0.0, 0.02], strict=True):
    torch.manual_seed(0)  # the same initial network for both
    model = MLP(2, [10], 2, activation="sigmoid").to(device)
    optimizer = Adam(model.parameters(), lr=0.1)
    for _step in range(800):  # full-batch steps
        optimizer.zero_grad()
        summed = nf.cross_entropy(model(X_moons), y_moons, reduction="sum")
        (summed + decay * 2 * nf.l2_penalty(model)).backward()  # l2_penalty = ||w||^2 / 2
        optimizer.step()
    with torch.no_grad():
        train_acc = (model(X_moons).argmax(-1) == y_moons).float().mean().item()
        test_acc = (model(X_moons_test).argmax(-1) == y_moons_test).float().mean().item()
        p_grid = nf.softmax(model(grid_points))[:, 1].reshape(gx.shape).cpu()
        norm = (2 * nf.l2_penalty(model)).sqrt().item()
    print(
        f"weight decay {decay}: train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}, ",
        end="",
    )
    print(f"||w|| = {norm:.1f}")
    filled = ax.contourf(gx, gy, p_grid, levels=20, cmap="RdBu_r", vmin=0, vmax=1, alpha=0.7)
    ax.contour(gx, gy, p_grid, levels=[0.5], colors="k", linewidths=2)
    ax.scatter(*X_moons.cpu().T, c=y_moons.cpu(), cmap="bwr", edgecolors="k", s=20)
    ax.set(
        title=f"weight decay {decay}: train {train_acc:.2f}, test {test_acc:.2f}",
        xlabel="$x_1$",
    )
axes[0].set_ylabel("$x_2$")
fig.colorbar(filled, ax=axes, label="P(red class)", ticks=[0, 0.5, 1])
plt.show()

# %% [markdown]
# Without weight decay the boundary (black, $P = 0.5$) bends around single training
# points; it fits the training set better and the test set worse. Weight decay keeps
# the weights small, so the sigmoids stay in their nearly linear range and the boundary
# stays smooth.

# %% [markdown]
# ## Adam + $L^2$ is not AdamW
#
# Adam divides each gradient coordinate by a running estimate of its magnitude,
# $\sqrt{\hat v}$. With an $L^2$ term in the loss, the decay gradient $\lambda w$ is
# divided too: a weight whose data gradient is large (large $\hat v$) is decayed
# *less*, and a weight whose data gradient is tiny is decayed *much more*, whatever
# $\lambda$ is. **AdamW** (Loshchilov & Hutter, 2019) decouples the two: it takes the
# Adam step on $\nabla\mathcal L$ alone and then decays every weight by the same factor,
# $w \leftarrow w - \alpha\lambda w$.
#
# The digits show the difference well: a few border pixels are (almost) always zero,
# so the first-layer weights reading them get (almost) no data gradient. We train the
# same MLP with Adam, Adam + $L^2$ (Adam's `weight_decay`) and AdamW, and follow the
# norm of the first-layer weights of these **rare pixels** and of all **other
# pixels** separately. (The same number means different things to the two optimizers:
# Adam's `weight_decay` scales a gradient, AdamW's the decay per step, so we pick
# values that shrink the other pixels' weights by a similar amount.)

# %%
X_float = X_train.float()
rare = (X_float > 0).float().mean(0) < 0.02  # pixels nonzero in < 2% of training images
print(f"{rare.sum().item()} of 64 pixels are nonzero in less than 2% of the training images")


def train_adam(optimizer_class, weight_decay):
    torch.manual_seed(1)
    model = MLP(64, [200], 10).to(device)
    params = npfl_lib.optim.param_groups_no_decay(model, weight_decay)
    optimizer = optimizer_class(params, lr=0.003)
    rare_norms, other_norms = [], []
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(X_float), device=device).split(50):
            optimizer.zero_grad()
            nf.cross_entropy(model(X_float[batch]), y_train[batch]).backward()
            optimizer.step()
        first = model.layers[0].weight.detach()  # (hidden units, 64 pixels)
        rare_norms.append(first[:, rare].norm().item())
        other_norms.append(first[:, ~rare].norm().item())
    with torch.no_grad():
        accuracy = (model(X_dev).argmax(-1) == y_dev).float().mean().item()
    return rare_norms, other_norms, accuracy


runs = {
    "Adam": train_adam(Adam, 0.0),
    "Adam + L2 (weight_decay=0.001)": train_adam(Adam, 0.001),
    "AdamW (weight_decay=1.0)": train_adam(AdamW, 1.0),
}
reference = runs["Adam"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (rare_norms, other_norms, accuracy) in runs.items():
    axes[0].plot(range(1, EPOCHS + 1), rare_norms, label=name)
    axes[1].plot(range(1, EPOCHS + 1), other_norms, label=name)
    print(
        f"{name:>30}: rare-pixel weights at {rare_norms[-1] / reference[0][-1]:6.1%} of "
        f"Adam's norm, other weights at {other_norms[-1] / reference[1][-1]:6.1%}; "
        f"dev accuracy {accuracy:.3f}"
    )
axes[0].set(xlabel="epoch", ylabel="norm", title="first-layer weights of rare pixels")
axes[1].set(xlabel="epoch", ylabel="norm", title="first-layer weights of other pixels")
for ax in axes:
    ax.set_ylim(bottom=0)
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3)
fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the plots
plt.show()

# %% [markdown]
# Compare the printed percentages: with Adam + $L^2$ the shrinkage depends on how
# much gradient a weight receives, with AdamW it is the same fraction for both groups.

# %% [markdown]
# ## $L^1$ regularization and the clipped update
#
# The gradient of $\lambda\|\boldsymbol w\|_1$ is $\lambda\operatorname{sign}(\boldsymbol w)$:
# a constant push towards zero. Plain (sub)gradient steps overshoot zero and make the
# weight oscillate around it, so no weight becomes exactly zero. The **clipped
# update** takes the step $w \leftarrow w - \alpha\lambda\operatorname{sign}(w)$ but
# stops at zero when the step would cross it, which produces exact zeros: a **sparse**
# model. We compare the weights of a linear classifier trained with no penalty, with the
# $L^1$ penalty in the loss and with the clipped update.

# %%
L1_LAMBDA, L1_LR, L1_STEPS = 0.002, 0.1, (2000 if FULL else 300)
X_full, y_full = X_train.float(), y_train


def train_l1(mode):
    torch.manual_seed(2)
    model = torch.nn.Linear(64, 10).to(device)
    optimizer = SGD(model.parameters(), lr=L1_LR)
    for _ in range(L1_STEPS):
        batch = torch.randint(len(X_full), (100,), device=device)
        optimizer.zero_grad()
        loss = nf.cross_entropy(model(X_full[batch]), y_full[batch])
        if mode == "L1 penalty in the loss":
            loss = loss + L1_LAMBDA * nf.l1_penalty(model)
        loss.backward()
        optimizer.step()
        if mode == "L1 clipped update":
            npfl_lib.optim.l1_step_([model.weight], lr=L1_LR, l1=L1_LAMBDA)
    with torch.no_grad():
        accuracy = (model(X_dev).argmax(-1) == y_dev).float().mean().item()
    return model.weight.detach().flatten().cpu(), accuracy


fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
for ax, mode in zip(
    axes, ["no penalty", "L1 penalty in the loss", "L1 clipped update"], strict=True
):
    weights, accuracy = train_l1(mode)
    zeros = (weights == 0).float().mean().item()
    tiny = (weights.abs() < 1e-3).float().mean().item()
    print(f"{mode:>24}: exact zeros {zeros:6.1%}, |w| < 0.001: {tiny:6.1%}, ", end="")
    print(f"dev accuracy {accuracy:.3f}")
    ax.hist(weights.numpy(), bins=60)
    ax.set(title=f"{mode}\n{zeros:.0%} exact zeros", xlabel="weight")
axes[0].set_ylabel("count")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Try it yourself
#
# 1. Replace $\ln\lambda = -18$ in the polynomial example by a range of values and plot
#    train and test MSE against $\ln\lambda$. Which $\lambda$ would you pick, and on
#    which data should you pick it?
# 2. In the SGD experiment, also decay the biases (`exclude_bias=False` in
#    `nf.l2_penalty` and a plain `SGD(..., weight_decay=lam)`) and check that the two
#    runs still agree.
# 3. Increase `L1_LAMBDA` tenfold. How do sparsity and dev accuracy change?
