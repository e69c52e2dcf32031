"""benchmarks/gpu_check.sh on a machine without CUDA, and the parts of it that need none.

The GPU run itself is described in docs/benchmarks.md ("The GPU check").
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_skips_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "gpu_check: SKIPPED, nothing was run" in done.stdout
    assert re.search("no GPU device here|sees no CUDA device", done.stdout)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["status"] == "skipped" and summary["phases"] == {}
    assert "SKIPPED" in (tmp_path / "gpu_check.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.txt"]


def test_every_module_with_device_tests_is_run_on_cuda():
    uses_device = re.compile(r"def test_\w+\([^)]*\bdevice\b")
    chosen = set(gpu_check.cuda_test_files())
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if uses_device.search(path.read_text()):
            assert f"tests/{path.name}" in chosen, path.name


def test_pytest_results_are_counted_and_cases_compared(tmp_path):
    results = tmp_path / "results.jsonl"
    records = [
        {"device_cases": {"cpu": 3, "cuda": 3}},
        {"nodeid": "a[cuda]", "when": "setup", "outcome": "passed"},
        {"nodeid": "a[cuda]", "when": "call", "outcome": "passed"},
        {"nodeid": "b[cuda]", "when": "call", "outcome": "failed", "message": "assert 1 == 2"},
        {"nodeid": "b[cuda]", "when": "call", "outcome": "failed", "message": "assert 1 == 2"},
        {"nodeid": "c[cuda]", "when": "setup", "outcome": "skipped"},
        {"nodeid": "d[cuda]", "when": "teardown", "outcome": "failed", "message": "boom"},
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = gpu_check.tests_result(results, 1, 2.0, rehearse=False)
    assert result["status"] == "failed"
    assert result["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "error": 1}
    assert result["failures"] == ["b[cuda] (call): assert 1 == 2", "d[cuda] (teardown): boom"]
    results.write_text(
        json.dumps({"device_cases": {"cpu": 3, "cuda": 2}}) + "\n" + json.dumps(records[2]) + "\n"
    )
    incomplete = gpu_check.tests_result(results, 0, 1.0, rehearse=False)
    assert incomplete["status"] == "failed" and "no CUDA case" in incomplete["error"]


def test_summary_reads_as_text(tmp_path):
    summary = gpu_check.Summary(tmp_path)
    summary.set("machine", {"device_name": "NVIDIA H100 80GB HBM3", "torch": "2.11.0"})
    loops = {"(c) Trainer.fit": {"wall_s": 0.2}, "(a) plain DataLoader loop": {"wall_s": 2.7}}
    goals = {"(c) Trainer.fit": {"goal_s": 0.25, "met": True}}
    phase = {"status": "passed", "rows": 55000, "epochs": 3, "loops": loops, "goals": goals}
    summary.phase("train_epoch", phase)
    text = (tmp_path / "gpu_check.txt").read_text()
    assert "NVIDIA H100 80GB HBM3" in text and "goal <= 0.25 s on one H100: met" in text
    assert json.loads((tmp_path / "gpu_check.json").read_text())["phases"]["train_epoch"]


def test_wheel_pins_are_one_version_each():
    pins = gpu_check.requirements()
    names = [re.sub(r"[-_.]+", "-", name).lower() for name, _ in pins]
    assert len(names) == len(set(names)) and len(pins) > 10
    assert {"nbclient", "ipykernel", "expecttest", "pyzmq"} <= set(names)
    assert gpu_check._older("7.4.4", "8") and gpu_check._older("6.79.1", "6.80")
    assert not gpu_check._older("8.3.1rc1", "8") and not gpu_check._older("1.10", "1.3")
