"""Training curves from a ``Trainer.fit`` history."""

from __future__ import annotations

import math


def _series(history: list[dict], key: str) -> list[float]:
    values = []
    for logs in history:
        value = logs.get(key, math.nan)
        values.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return values


def plot_history(history, path=None):
    """Plots each logged quantity per epoch: training and dev curves share a panel.

    Panels: ``loss`` and every metric (with its ``dev_`` counterpart when present), and
    the learning rate when it changes.

    Args:
        history (list[dict]): What ``Trainer.fit`` returned (one dict per epoch).
        path (str | os.PathLike | None): Save the figure there (the format follows the
            suffix, e.g. ``.png``). Saving uses matplotlib's Agg renderer directly, so it
            works without a display and leaves pyplot's state alone. When None, the
            figure is made with pyplot, so notebooks show it.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    if not isinstance(history, (list, tuple)) or not history:
        raise ValueError("history must be a non-empty list of per-epoch dicts (from fit)")
    if not all(isinstance(logs, dict) for logs in history):
        raise TypeError("history must be a list of dicts, one per epoch")
    keys = list(dict.fromkeys(key for logs in history for key in logs))
    names = [k for k in keys if not k.startswith("dev_") and k not in ("lr", "time")]
    names += [k[4:] for k in keys if k.startswith("dev_") and k[4:] not in names]
    learning_rates = _series(history, "lr")
    if len({lr for lr in learning_rates if not math.isnan(lr)}) > 1:
        names.append("lr")
    columns = min(len(names), 3) or 1
    rows = max(math.ceil(len(names) / columns), 1)
    size = (4.0 * columns, 3.0 * rows)
    if path is None:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size)
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=size)
    epochs = range(1, len(history) + 1)
    for position, name in enumerate(names, start=1):
        axes = figure.add_subplot(rows, columns, position)
        if name in keys:
            axes.plot(
                epochs, _series(history, name), marker=".", label="train" if name != "lr" else "lr"
            )
        if f"dev_{name}" in keys:
            axes.plot(epochs, _series(history, f"dev_{name}"), marker=".", label="dev")
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure
