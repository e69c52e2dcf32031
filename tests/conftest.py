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
