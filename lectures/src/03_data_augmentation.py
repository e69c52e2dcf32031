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
device = "cuda" if torch.cuda.is_available() else "cpu"
TRAIN_SIZE = 300  # a small training set, where augmentation matters most
EPOCHS = 100 if FULL else 60
SEEDS = 5 if FULL else 2
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

digits = load_digits()
print(digits)

# %% [markdown]
# ## Label-preserving image transforms
#
# For digits, small shifts and rotations keep the label; a horizontal flip does not
# (a flipped 2 is no digit, and a flipped 3 looks like an epsilon): which transforms
# preserve the label depends on the data. The transforms below are written with plain
# torch operations on a batch of images `(N, 1, H, W)`; their random numbers come from a
# CPU `generator` and are moved to the images' device.


# %%
def random_shift(images, max_shift=1, generator=None):
    """Shifts every image by up to ``max_shift`` pixels in each direction, filling with 0."""
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4)
    shifts = torch.randint(2 * max_shift + 1, (n, 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)]
    )


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
    "horizontal flip (bad)": examples.flip(-1),
}
fig, axes = plt.subplots(len(rows), len(examples), figsize=(7, 6.5))
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
# title of every image shows its two largest target probabilities.

# %%
images = digits.train.inputs[:8]
one_hot = nf.smooth_labels(digits.train.targets[:8], 10, 0.0)  # no smoothing = one-hot


def show_mixed(name, mixed_images, mixed_targets):
    fig, axes = plt.subplots(1, len(mixed_images), figsize=(13, 2.2))
    for ax, image, target in zip(axes, mixed_images, mixed_targets, strict=True):
        top = target.topk(2)
        label = ", ".join(
            f"{i}: {p:.2f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
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
# ## Does it help? A small experiment
#
# We train the same MLP on only 300 training digits, without augmentation, with small
# rotations, with one-pixel shifts and with mixup, and compare dev accuracy. The loss with soft
# targets $\boldsymbol g$ is the full cross-entropy
# $-\sum_k g_k \log \operatorname{softmax}(\boldsymbol z)_k$,
# which `nf.cross_entropy` computes when the target is a probability tensor.

# %%
X_train = digits.train.inputs[:TRAIN_SIZE].to(device)
y_train = digits.train.targets[:TRAIN_SIZE].to(device)
X_dev, y_dev = digits.dev.inputs.to(device), digits.dev.targets.to(device)


def train(method, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MLP(64, [200], 10).to(device)
    optimizer = Adam(model.parameters(), lr=0.002)
    dev_accuracy = []
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
            predictions = model(X_dev.flatten(1)).argmax(-1)
        dev_accuracy.append((predictions == y_dev).float().mean().item())
    return dev_accuracy


methods = ["none", "rotation", "shift", "mixup"]
for method in methods:
    curves = torch.tensor([train(method, seed) for seed in range(SEEDS)])
    mean = curves.mean(0)
    plt.plot(range(1, EPOCHS + 1), mean, label=method)
    print(f"{method:>16}: final dev accuracy {mean[-1]:.3f} (best {mean.max():.3f})")
plt.xlabel("epoch")
plt.ylabel("dev accuracy")
plt.title(f"MLP on {TRAIN_SIZE} training digits (mean of {SEEDS} seed(s))")
plt.legend()
plt.show()

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
plt.colorbar()
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
