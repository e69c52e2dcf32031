"""Benchmark: what running the test cells out of the kernel costs (issue 12).

    python benchmarks/trusted_calls.py [--calls 200] [--size 1000] [--repeats 3]

Runs the grading worker (``python -m npfl_course.worker``, no sandbox) on small
notebooks, each way: the test cells in the worker with the student's names as proxies
(what ``npfl-course autograde`` does) and ``--tests-in-kernel`` (the test cells in the
student's kernel, as nbgrader runs them). The notebooks:

* ``empty``: a setup cell and one test cell without calls (the per-notebook cost: the
  worker imports torch and npfl_lib, opens a second client to the kernel);
* ``scalar``: one test cell making ``--calls`` calls of ``add(1, 2)``;
* ``tensor``: one test cell making ``--calls`` calls of ``scale(x)`` on a float64
  tensor of ``--size`` elements;
* ``cells``: ``--calls / 10`` test cells of 10 scalar calls each (the per-cell cost: the
  student's names are looked up once per test cell).

Prints the fastest of ``--repeats`` wall times per notebook and way, and the difference
per call and per test cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_course import source_cell  # noqa: E402

from npfl_course.autograde.merge import MAX_EXECUTED_BYTES  # noqa: E402
from npfl_course.worker import ResultChannel, worker_command  # noqa: E402

SETUP = "import torch\nfrom npfl_lib.grading import check_close"
ANSWERS = "def add(a, b):\n    return a + b\n\ndef scale(x):\n    return 2 * x"


def notebooks(calls: int, size: int) -> dict[str, nbformat.NotebookNode]:
    loop = f"for _ in range({calls}):\n    "
    bodies = {
        "empty": ["assert 1 + 2 == 3"],
        "scalar": [loop + "assert add(1, 2) == 3"],
        "tensor": [
            f"x = torch.ones({size}, dtype=torch.float64)\n" + loop + "check_close(scale(x), 2 * x)"
        ],  # fmt: skip
        "cells": ["for _ in range(10):\n    assert add(1, 2) == 3"] * max(calls // 10, 1),
    }
    result = {}
    for name, tests in bodies.items():
        notebook = nbformat.v4.new_notebook()
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        notebook.cells = [source_cell("readonly", "setup", SETUP),
                          source_cell("solution", "answers", ANSWERS)]  # fmt: skip
        notebook.cells += [
            source_cell("test", f"test_{i}", body, 1) for i, body in enumerate(tests)
        ]
        result[name] = notebook
    return result


def run(notebook: nbformat.NotebookNode, in_kernel: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        nbformat.write(notebook, Path(folder) / "in.ipynb")
        with ResultChannel() as channel:
            command = worker_command("in.ipynb", channel, 600, 8192)
            command += ["--tests-in-kernel"] if in_kernel else []
            start = time.perf_counter()
            subprocess.run(command, cwd=folder, check=True, pass_fds=channel.fds,
                           stderr=subprocess.DEVNULL)  # fmt: skip
            took = time.perf_counter() - start
            executed = json.loads(channel.read(MAX_EXECUTED_BYTES))
    errors = [o for c in executed["cells"] for o in c.get("outputs", [])
              if o["output_type"] == "error"]  # fmt: skip
    if errors:
        raise SystemExit(f"a test failed: {errors[0]['ename']}: {errors[0]['evalue']}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.calls < 10 or args.size < 1 or args.repeats < 1:
        parser.error("--calls must be >= 10, --size and --repeats >= 1")
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; fastest of {args.repeats}")
    times = {}
    for name, notebook in notebooks(args.calls, args.size).items():
        for in_kernel in (False, True):
            times[name, in_kernel] = min(run(notebook, in_kernel) for _ in range(args.repeats))
            way = "in the kernel" if in_kernel else "in the worker"
            print(f"{name:7} tests {way:13}: {times[name, in_kernel]:6.2f} s")
    extra = {name: times[name, False] - times[name, True] for name, _ in times}
    cells = max(args.calls // 10, 1)
    print(f"per notebook (empty): {extra['empty']:+.2f} s")
    print(f"per call, scalar: {(extra['scalar'] - extra['empty']) / args.calls * 1e3:+.2f} ms")
    print(f"per call, {args.size} float64: "
          f"{(extra['tensor'] - extra['empty']) / args.calls * 1e3:+.2f} ms")  # fmt: skip
    per_cell = (extra["cells"] - extra["scalar"]) / (cells - 1) if cells > 1 else 0.0
    print(f"per test cell beyond its calls: {per_cell * 1e3:+.1f} ms")


if __name__ == "__main__":
    main()
