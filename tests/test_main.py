"""Tests of the command line, ``python -m npfl_lib demo`` (npfl_lib/__main__.py)."""

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from npfl_lib.__main__ import main


def accuracies(text):
    return {
        split: float(re.search(rf"^{split} accuracy: ([0-9.]+)$", text, re.M).group(1))
        for split in ("dev", "test")
    }


@pytest.mark.slow
def test_demo_on_digits_reaches_95_percent(tmp_path, capsys):
    output = tmp_path / "curves.png"
    assert main(["demo", "--dataset", "digits", "--output", str(output), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "Data: digits" in captured.out
    # progress shown: not on a terminal (pytest captures), one line per epoch on stdout
    assert "Epoch 30/30" in captured.out and "Epoch" not in captured.err
    results = accuracies(captured.out)
    assert results["test"] >= 0.95 and results["dev"] >= 0.95
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(output)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_auto_uses_digits_without_cached_mnist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPFL_DATA", str(tmp_path))  # an empty data folder: nothing cached
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--epochs", "1", "--quiet", "--output", "", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "Data: digits" in captured.out and captured.err == ""
    assert 0.0 <= accuracies(captured.out)["test"] <= 1.0
    assert not list(tmp_path.glob("*.png"))  # --output '' writes no plot


def test_help_runs_as_a_module(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "npfl_lib", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--epochs", "--dataset", "--output", "--device"):
        assert option in result.stdout
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "demo" in capsys.readouterr().out


def test_console_script():
    script = Path(sys.executable).with_name("npfl-lib")
    if not script.exists():
        pytest.skip("the npfl-lib console script is not installed next to this Python")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--epochs", "many"], "--epochs"),
        (["demo", "--batch-size", "-5"], "--batch-size"),
        (["demo", "--dataset", "cifar"], "--dataset"),
        (["demo", "--device", "bogus"], "--device"),
        ([], "COMMAND"),
        (["train"], "COMMAND"),
    ],
)
def test_bad_arguments_exit_with_usage(args, name, capsys):
    with pytest.raises(SystemExit) as error:
        main(args)
    assert error.value.code == 2
    assert name in capsys.readouterr().err
