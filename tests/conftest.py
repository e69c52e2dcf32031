"""Shared pytest fixtures: every numerical test runs on the CPU and, when present, CUDA.

CUDA cases carry the marker ``cuda``: every test taking the ``device`` fixture gets one,
and so does every test with "cuda" in its name or an explicit ``@pytest.mark.cuda`` (a
test with a branch of its own for CUDA machines). ``pytest -m cuda`` runs exactly these,
as ``benchmarks/gpu_check.sh`` does on a GPU machine. Without CUDA the ``device`` fixture
has no CUDA case, unless ``NPFL_COLLECT_CUDA=1``: then each is collected and skipped, so
``NPFL_COLLECT_CUDA=1 pytest --collect-only -q -m cuda`` lists them on any machine.
"""

import os

import pytest
import torch

CUDA_AVAILABLE = torch.cuda.is_available()
_CUDA_CASE = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs CUDA")],
    id="cuda",
)
DEVICES = ["cpu"] + ([_CUDA_CASE] if CUDA_AVAILABLE or os.environ.get("NPFL_COLLECT_CUDA") else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs on: the CPU always, CUDA when available."""
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator, so random test inputs are reproducible."""
    return torch.Generator().manual_seed(0)


def pytest_collection_modifyitems(items):
    """Marks ``cuda`` the tests named for CUDA (``test_cuda_graph_...``, ``test_seeds_cuda``)."""
    for item in items:
        if "cuda" in getattr(item, "originalname", item.name).lower():
            item.add_marker(pytest.mark.cuda)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (``item.rep_call``), for fixtures that keep
    artifacts of failed tests (tests/test_browser.py)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
