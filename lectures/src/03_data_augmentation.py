# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Data augmentation
#
# More training data is the most reliable regularizer. When we cannot collect more, we
# can **generate** more: transform each training example in a way that keeps its label
# (a digit shifted by a pixel is still the same digit). The network then sees a
# slightly different version of every example in every epoch and cannot memorize them.
#
# Two newer augmentations also change the labels:
#
# - **mixup** (Zhang et al., 2018) blends two examples and their target distributions,
#   $\tilde x = \lambda x_i + (1-\lambda) x_j$,
#   $\tilde{\boldsymbol y} = \lambda \boldsymbol y_i + (1-\lambda)\boldsymbol y_j$, with
#   $\lambda \sim \operatorname{Beta}(\alpha, \alpha)$;
# - **CutMix** (Yun et al., 2019) pastes a random rectangle of $x_j$ into $x_i$ and mixes
#   the targets in proportion to the pasted area.

# %%
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F  # pad, affine_grid, grid_sample: npfl_lib has no image ops

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib.datasets import load_digits
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
# the device (the GPU when there is one), every seed, one CPU thread: see help(npfl_lib.setup)
device = npfl_lib.setup(42)
TRAIN_SIZE = 300  # a small training set, where augmentation matters most
EPOCHS = 100 if FULL else 30
SEEDS = 5 if FULL else 3
print(f"device: {device}, full size: {FULL}, CPU threads: {torch.get_num_threads()}")

digits = load_digits()
print(digits)

# %% [markdown]
# ## Label-preserving image transforms
#
# For digits, small shifts and rotations keep the label; a horizontal flip does not
# (a flipped 2 is no digit, and a flipped 3 looks like an epsilon): which transforms
# preserve the label depends on the data. **Cutout** (DeVries & Taylor, 2017) hides a
# random square of the image, so the network cannot rely on any single region. The
# transforms below are written with plain torch operations on a batch of images
# `(N, 1, H, W)`; their random numbers come from a CPU `generator` and are moved to the
# images' device.


# %%
def random_shift(images, max_shift=1, generator=None):
    """Shifts every image by up to ``max_shift`` pixels in each direction, filling with 0."""
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4)
    dy, dx = torch.randint(2 * max_shift + 1, (2, n, 1), generator=generator).to(images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]  # (n, 1, 1, w)
    examples = torch.arange(n, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[examples, channels, rows, cols]  # every image cut at its own offset


def cutout(images, size=3, fill=0.0, generator=None):
    """Cutout (DeVries & Taylor, 2017): sets a random size x size square of every image to
    ``fill`` (the square may stick out of the image); the label stays."""
    n, _, h, w = images.shape
    top = torch.randint(-(size // 2), h - size // 2, (n, 1, 1), generator=generator)
    left = torch.randint(-(size // 2), w - size // 2, (n, 1, 1), generator=generator)
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside[:, None].to(images.device), fill)


def random_rotation(images, max_degrees=15.0, generator=None):
    """Rotates every image by a random angle in [-max_degrees, max_degrees]."""
    angles = (torch.rand(len(images), generator=generator) * 2 - 1) * max_degrees
    angles = torch.deg2rad(angles).to(images.device, images.dtype)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def augment(images, generator=None):
    return random_shift(random_rotation(images, generator=generator), generator=generator)


gen = torch.Generator().manual_seed(0)
examples = digits.train.inputs[:6]
rows = {
    "original": examples,
    "shift": random_shift(examples, generator=gen),
    "rotation": random_rotation(examples, generator=gen),
    "both": augment(examples, generator=gen),
    "cutout (3x3, grey)": cutout(examples, fill=0.5, generator=gen),  # grey, to see it
    "horizontal flip (bad)": examples.flip(-1),
}
fig, axes = plt.subplots(len(rows), len(examples), figsize=(7, 7.5))
for r, (name, images) in enumerate(rows.items()):
    for c, image in enumerate(images):
        axes[r, c].imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
plt.suptitle("label-preserving transforms of digits " + str(digits.train.targets[:6].tolist()))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## mixup and CutMix, with their mixed labels
#
# Both take one-hot (or already soft) target distributions and return mixed ones. The
# title of every image shows its target probabilities that are not zero. Each image is
# mixed with another image of the batch chosen by a random permutation, which may
# pick the image itself: then the image and its one-hot label stay as they were.

# %%
images = digits.train.inputs[:8]
one_hot = nf.smooth_labels(digits.train.targets[:8], 10, 0.0)  # no smoothing = one-hot


def show_mixed(name, mixed_images, mixed_targets):
    fig, axes = plt.subplots(1, len(mixed_images), figsize=(13, 2.2))
    for ax, image, target in zip(axes, mixed_images, mixed_targets, strict=True):
        classes = (target > 0.005).nonzero().flatten().tolist()
        label = ", ".join(f"{i}: {target[i]:.2f}" for i in classes)
        ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(name, y=1.05)
    plt.show()


mixed = nf.mixup(images, one_hot, alpha=0.4, generator=torch.Generator().manual_seed(1))
show_mixed("mixup (alpha = 0.4)", *mixed)
cut = nf.cutmix(images, one_hot, alpha=1.0, generator=torch.Generator().manual_seed(1))
show_mixed("CutMix (alpha = 1.0)", *cut)

# %% [markdown]
# On ImageNet, the CutMix paper (Yun et al., 2019, Table 3) reports these results for a
# ResNet-50 (error rates in %, lower is better; \* taken from the original paper):
#
# | ResNet-50 on ImageNet | top-1 error | top-5 error |
# |---|---|---|
# | baseline | 23.68 | 7.05 |
# | + Cutout | 22.93 | 6.66 |
# | + mixup | 22.58 | 6.40 |
# | + Manifold mixup | 22.50 | 6.21 |
# | + DropBlock\* | 21.87 | 5.98 |
# | + CutMix | **21.40** | **5.92** |
#
# Cutout removes information (the hidden square), mixup blends two whole images into
# one that looks like neither; CutMix keeps every pixel natural and still teaches the
# network to use the whole image.

# %% [markdown]
# ## Does it help? A small experiment
#
# We train the same MLP on only 300 training digits, without augmentation, with small
# rotations, with one-pixel shifts and with mixup, and compare dev accuracy and dev
# negative log-likelihood (NLL, the cross-entropy of the dev labels). The loss with soft
# targets $\boldsymbol g$ is the full cross-entropy
# $-\sum_k g_k \log \operatorname{softmax}(\boldsymbol z)_k$,
# which `nf.cross_entropy` computes when the target is a probability tensor. The dev set
# has only 200 examples, so one example is 0.5% of accuracy: we train every method with
# `SEEDS` seeds and report the mean and the standard deviation over the seeds.

# %%
X_train = digits.train.inputs[:TRAIN_SIZE].to(device)
y_train = digits.train.targets[:TRAIN_SIZE].to(device)
X_dev, y_dev = digits.dev.inputs.to(device), digits.dev.targets.to(device)


def train(method, seed):
    """Returns the dev accuracy and dev NLL after every epoch, a tensor (EPOCHS, 2)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MLP(64, [200], 10).to(device)
    optimizer = Adam(model.parameters(), lr=0.003)
    dev_curve = []
    for _ in range(EPOCHS):
        for batch in torch.randperm(TRAIN_SIZE, generator=gen).split(50):
            inputs, targets = X_train[batch], nf.smooth_labels(y_train[batch], 10, 0.0)
            if method == "rotation":
                inputs = random_rotation(inputs, max_degrees=10.0, generator=gen)
            elif method == "shift":
                inputs = random_shift(inputs, generator=gen)
            elif method == "mixup":
                inputs, targets = nf.mixup(inputs, targets, alpha=0.4, generator=gen)
            optimizer.zero_grad()
            nf.cross_entropy(model(inputs.flatten(1)), targets).backward()
            optimizer.step()
        with torch.no_grad():
            logits = model(X_dev.flatten(1))
        accuracy = (logits.argmax(-1) == y_dev).float().mean().item()
        dev_curve.append((accuracy, nf.cross_entropy(logits, y_dev).item()))
    return torch.tensor(dev_curve)


methods = ["none", "rotation", "shift", "mixup"]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
epochs = range(1, EPOCHS + 1)
print(f"after {EPOCHS} epochs, mean ± standard deviation over {SEEDS} seeds:")
for method in methods:
    curves = torch.stack([train(method, seed) for seed in range(SEEDS)])  # (seeds, epochs, 2)
    mean, low, high = curves.mean(0), curves.amin(0), curves.amax(0)
    for k, ax in enumerate(axes):
        (line,) = ax.plot(epochs, mean[:, k], label=method)
        ax.fill_between(epochs, low[:, k], high[:, k], color=line.get_color(), alpha=0.2)
    final = curves[:, -1]
    print(
        f"{method:>10}: dev accuracy {final[:, 0].mean():.3f} ± {final[:, 0].std():.3f}, "
        f"dev NLL {final[:, 1].mean():.3f} ± {final[:, 1].std():.3f}"
    )
axes[0].set(xlabel="epoch", ylabel="dev accuracy", ylim=(0.8, 1.0))
axes[1].set(xlabel="epoch", ylabel="dev NLL", yscale="log")
axes[0].legend()
fig.suptitle(f"MLP on {TRAIN_SIZE} training digits: mean of {SEEDS} seeds, band from min to max")
plt.tight_layout()
plt.show()

# %% [markdown]
# Compare the differences between the methods with the spread over seeds: a
# difference smaller than the standard deviations is not evidence of anything. Also
# compare accuracy with NLL: mixup's dev NLL is higher even where its accuracy is not
# lower, because a model trained on mixed targets predicts less confident
# probabilities (as label smoothing does, notebook 6).

# %% [markdown]
# An augmentation helps only if its outputs look like real examples. A one-pixel shift
# moves an 8x8 digit by an eighth of its width, but how far are the real digits from
# the centre? We measure the spread of their centres of mass:

# %%
images = digits.train.inputs[:, 0]
mass = images.sum((1, 2))
rows = (images.sum(2) * torch.arange(8.0)).sum(1) / mass
cols = (images.sum(1) * torch.arange(8.0)).sum(1) / mass
print(f"centre of mass: row {rows.mean():.2f} ± {rows.std():.2f}, ", end="")
print(f"column {cols.mean():.2f} ± {cols.std():.2f} pixels")
plt.hist2d(cols.numpy(), rows.numpy(), bins=30, cmap="Blues")
plt.xlabel("column of the centre of mass")
plt.ylabel("row of the centre of mass")
plt.title("where the training digits are centred")
plt.colorbar(label="training digits per bin")
plt.show()

# %% [markdown]
# If the standard deviations are well below one pixel, the digits were centred when the
# data set was made, so a shifted digit is unlike any test digit: the shift then spends
# model capacity on variation the test data does not have.
#
# ## Try it yourself
#
# 1. Add the horizontal flip to `augment`. What happens to dev accuracy, and why?
# 2. Train with CutMix instead of mixup, and try `alpha` in {0.2, 1.0, 2.0}.
# 3. Use the whole training set (`TRAIN_SIZE = len(digits.train)`). Is augmentation
#    still as useful with more data?
