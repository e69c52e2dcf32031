"""Tests of npfl_lib.plots.plot_history."""

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from npfl_lib.plots import plot_history  # noqa: E402

HISTORY = [
    {"loss": 1.0, "accuracy": 0.5, "dev_loss": 1.1, "dev_accuracy": 0.45, "lr": 0.1, "time": 1.0},
    {"loss": 0.6, "accuracy": 0.7, "dev_loss": 0.8, "dev_accuracy": 0.6, "lr": 0.05, "time": 1.0},
    {"loss": 0.4, "accuracy": 0.8, "dev_loss": 0.7, "dev_accuracy": 0.7, "lr": 0.025, "time": 1.0},
]


def test_saves_a_valid_png(tmp_path):
    path = tmp_path / "curves.png"
    figure = plot_history(HISTORY, path)
    assert isinstance(figure, Figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert plt.get_fignums() == []  # saving did not go through pyplot


def test_panels_and_curves():
    figure = plot_history(HISTORY, path=None)
    axes = figure.get_axes()
    assert [a.get_title() for a in axes] == ["loss", "accuracy", "lr"]
    loss_axes = axes[0]
    assert [line.get_label() for line in loss_axes.get_lines()] == ["train", "dev"]
    assert list(loss_axes.get_lines()[1].get_ydata()) == [1.1, 0.8, 0.7]
    assert list(loss_axes.get_lines()[0].get_xdata()) == [1, 2, 3]
    plt.close(figure)


def test_constant_lr_and_missing_dev_are_left_out(tmp_path):
    history = [{"loss": 1.0 - 0.1 * i, "lr": 0.1, "time": 0.5} for i in range(4)]
    figure = plot_history(history, tmp_path / "a.png")
    assert [a.get_title() for a in figure.get_axes()] == ["loss"]
    assert [line.get_label() for line in figure.get_axes()[0].get_lines()] == ["train"]


def test_dev_only_and_partial_entries(tmp_path):
    history = [{"dev_accuracy": 0.5}, {"dev_accuracy": 0.6, "loss": 0.3}]
    figure = plot_history(history, tmp_path / "b.png")
    titles = [a.get_title() for a in figure.get_axes()]
    assert titles == ["loss", "accuracy"]


@pytest.mark.parametrize(
    ("history", "error"),
    [([], ValueError), (None, ValueError), ({"loss": 1.0}, ValueError), ([1, 2], TypeError)],
)
def test_bad_history(history, error):
    with pytest.raises(error, match="history"):
        plot_history(history)
