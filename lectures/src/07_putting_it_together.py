# %% [markdown]
# # 7. Putting it together
#
# How do we train a network well in practice? First **diagnose**:
#
# - **underfitting**: the training error itself is high: the model is too small, trains
#   too briefly, or is regularized too strongly: make it bigger or train longer;
# - **overfitting**: low training error but a much higher dev error, the dev loss rising
#   while the training loss keeps falling: regularize (dropout, weight decay, label
#   smoothing, augmentation), get more data, or stop earlier.
#
# Then choose hyperparameters on the **dev** set, and touch the **test** set once, at the
# very end.

# %%
import os

import matplotlib.pyplot as plt
import torch

import npfl_lib
import npfl_lib.functional as nf
from npfl_lib import EarlyStopping, KeepBestWeights, Trainer
from npfl_lib.datasets import load_digits
from npfl_lib.metrics import Accuracy
from npfl_lib.nn import MLP
from npfl_lib.optim import Adam, AdamW, param_groups_no_decay
from npfl_lib.plots import plot_history

FULL = os.environ.get("NPFL_FULL") == "1"  # NPFL_FULL=1 runs the full-size experiments
device = "cuda" if torch.cuda.is_available() else "cpu"
EPOCHS = 150 if FULL else 40
SMALL = 200  # examples in the small training set of the diagnosis experiment
BATCH_SIZE, LR = 10, 0.01  # small batches, many steps: the wide model overfits quickly
GRID = {"dropout": [0.0, 0.3, 0.5], "weight_decay": [0.0, 0.1, 0.5]}
if not FULL:
    GRID = {"dropout": [0.0, 0.5], "weight_decay": [0.0, 0.5]}
npfl_lib.set_seed(42)
print(f"device: {device}, full size: {FULL}")

digits = load_digits()
train = (digits.train.inputs.flatten(1), digits.train.targets)
dev = (digits.dev.inputs.flatten(1), digits.dev.targets)
test = (digits.test.inputs.flatten(1), digits.test.targets)


def make_trainer(model, optimizer, label_smoothing=0.0, **kwargs):
    def loss(outputs, targets):
        return nf.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    metrics = {"accuracy": Accuracy("multiclass", num_classes=10)}
    return Trainer(model, optimizer, loss, metrics=metrics, device=device, **kwargs)


# %% [markdown]
# ## Diagnosis: underfitting and overfitting
#
# An MLP with two tanh hidden units cannot represent ten classes well (underfitting); a
# wide MLP trained without regularization on only 200 examples memorizes them
# (overfitting).

# %%
small_train = (train[0][:SMALL], train[1][:SMALL])
experiments = {
    "2 hidden units, all data": (MLP(64, [2], 10, activation="tanh"), train, 50),
    f"500 hidden units, {SMALL} examples": (MLP(64, [500], 10), small_train, BATCH_SIZE),
}
histories = {}
for name, (model, data, batch_size) in experiments.items():
    npfl_lib.set_seed(0)
    trainer = make_trainer(model, Adam(model.parameters(), lr=LR))
    histories[name] = trainer.fit(data, epochs=EPOCHS, batch_size=batch_size, dev=dev, verbose=0)
    last = histories[name][-1]
    dev_losses = [h["dev_loss"] for h in histories[name]]
    best = min(range(len(dev_losses)), key=dev_losses.__getitem__)
    print(f"{name}: train accuracy {last['accuracy']:.3f}, dev accuracy {last['dev_accuracy']:.3f}")
    print(f"    final train loss {last['loss']:.4f}, final dev loss {last['dev_loss']:.4f}")
    print(f"    lowest dev loss {dev_losses[best]:.4f} at epoch {best + 1} of {len(dev_losses)}")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for ax, (name, history) in zip(axes, histories.items(), strict=True):
    epochs = range(1, len(history) + 1)
    ax.plot(epochs, [h["loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["dev_loss"] for h in history], label="dev loss")
    ax.set(title=name, xlabel="epoch", ylabel="loss", yscale="log")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Compare the printed numbers with the two symptoms: for the tiny model, both losses stay
# high and close together (underfitting); for the wide model, the training loss falls
# far below the dev loss, which stops improving after a few epochs (overfitting).
#
# ## Early stopping
#
# The simplest remedy for overfitting: evaluate on dev after every epoch, stop when the
# dev loss has not improved for `patience` epochs, and restore the weights of the best
# epoch (`KeepBestWeights`).

# %%
npfl_lib.set_seed(0)
model = MLP(64, [500], 10)
trainer = make_trainer(model, Adam(model.parameters(), lr=LR))
stopper = EarlyStopping(monitor="dev_loss", patience=5, mode="min")
history = trainer.fit(
    small_train,
    epochs=EPOCHS,
    batch_size=BATCH_SIZE,
    dev=dev,
    callbacks=[stopper, KeepBestWeights()],
    verbose=0,
)
dev_losses = [h["dev_loss"] for h in history]
best_epoch = min(range(len(dev_losses)), key=dev_losses.__getitem__) + 1
print(f"stopped after {len(history)} of {EPOCHS} epochs; best dev loss at epoch {best_epoch}")
print(f"dev accuracy of the restored weights: {trainer.evaluate(dev)['accuracy']:.3f}")

full_run = histories[f"500 hidden units, {SMALL} examples"]
plt.plot(
    range(1, len(full_run) + 1), [h["dev_loss"] for h in full_run], label="dev loss, no stopping"
)
plt.plot(range(1, len(history) + 1), dev_losses, "o-", ms=3, label="dev loss, early stopping")
plt.axvline(best_epoch, color="gray", ls=":", label=f"best epoch ({best_epoch})")
plt.xlabel("epoch")
plt.ylabel("dev loss")
plt.legend()
plt.show()

# %% [markdown]
# ## Choosing hyperparameters on dev
#
# We try every combination of a few values of dropout and AdamW weight decay, train
# with early stopping, and keep the combination with the best **dev** accuracy. (With
# more hyperparameters, random search beats a grid.)

# %%
results = {}
for dropout in GRID["dropout"]:
    for weight_decay in GRID["weight_decay"]:
        npfl_lib.set_seed(0)
        model = MLP(64, [500], 10, dropout=dropout)
        optimizer = AdamW(param_groups_no_decay(model, weight_decay), lr=LR)
        trainer = make_trainer(model, optimizer)
        callbacks = [EarlyStopping(monitor="dev_loss", patience=8, mode="min"), KeepBestWeights()]
        trainer.fit(
            small_train, EPOCHS, batch_size=BATCH_SIZE, dev=dev, callbacks=callbacks, verbose=0
        )
        accuracy = results[dropout, weight_decay] = trainer.evaluate(dev)["accuracy"]
        print(f"dropout {dropout}, weight decay {weight_decay}: dev accuracy {accuracy:.3f}")
best = max(results, key=results.get)
print(f"best on dev: dropout {best[0]}, weight decay {best[1]}")

table = torch.tensor([[results[d, w] for w in GRID["weight_decay"]] for d in GRID["dropout"]])
plt.imshow(table, cmap="viridis")
for i in range(table.shape[0]):
    for j in range(table.shape[1]):
        plt.text(j, i, f"{table[i, j]:.3f}", ha="center", va="center", color="w")
plt.xticks(range(len(GRID["weight_decay"])), GRID["weight_decay"])
plt.yticks(range(len(GRID["dropout"])), GRID["dropout"])
plt.xlabel("AdamW weight decay")
plt.ylabel("dropout")
plt.title(f"dev accuracy, {SMALL} training examples")
plt.colorbar()
plt.show()

# %% [markdown]
# ## The "good defaults" recipe, applied
#
# A good starting point for most MLPs, collecting what the previous notebooks showed:
#
# 1. **Optimizer**: AdamW, learning rate around $10^{-3}$, weight decay on the weights
#    only (not the biases), batch size 32-256, the learning rate decayed over training
#    (here cosine decay to zero).
# 2. **Architecture and initialization**: ReLU (or GELU/SiLU) hidden layers with Glorot
#    or He initialization (`init="glorot"` in `npfl_lib.nn.MLP`).
# 3. **Regularization**: dropout 0.1-0.5 on the hidden layers, label smoothing 0.1, data
#    augmentation when a label-preserving transformation exists.
# 4. **Monitoring**: evaluate on dev every epoch; keep the best weights (early
#    stopping); clip the gradient norm when the loss spikes.
#
# We apply it to the full digits training set and report the test accuracy once.

# %%
npfl_lib.set_seed(0)
model = MLP(64, [500], 10, dropout=0.5, init="glorot")
optimizer = AdamW(param_groups_no_decay(model, 0.1), lr=0.001)
batch_size = 50
steps = EPOCHS * -(-len(train[1]) // batch_size)  # ceil: the scheduler is stepped per batch
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
trainer = make_trainer(
    model, optimizer, label_smoothing=0.1, scheduler=scheduler, clip_grad_norm=1.0
)
history = trainer.fit(
    train, epochs=EPOCHS, batch_size=batch_size, dev=dev, callbacks=[KeepBestWeights()], verbose=0
)
print(f"dev accuracy {trainer.evaluate(dev)['accuracy']:.4f}")
print(f"test accuracy {trainer.evaluate(test)['accuracy']:.4f} (evaluated once, at the end)")
plot_history(history)
plt.show()

# %% [markdown]
# ## Try it yourself
#
# 1. Add a learning-rate dimension to the grid ($10^{-4}, 10^{-3}, 10^{-2}$). Which
#    hyperparameter matters most here?
# 2. Rerun the grid with three different seeds. Is the best combination stable, and
#    how large is the seed-to-seed spread compared with the differences in the grid?
# 3. Remove the ingredients of the recipe one at a time (dropout, label smoothing,
#    weight decay, the schedule). Which one costs the most dev accuracy?
