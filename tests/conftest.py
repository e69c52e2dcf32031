"""Shared pytest fixtures: every numerical test runs on the CPU and, when present, CUDA."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a test runs on: the CPU always, CUDA when available."""
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator, so random test inputs are reproducible."""
    return torch.Generator().manual_seed(0)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (``item.rep_call``), for fixtures that keep
    artifacts of failed tests (tests/test_browser.py)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
