"""Weight penalties and label smoothing (being written; see the lead's notes)."""

from __future__ import annotations

import torch

__all__ = ["regularized_parameters"]


def regularized_parameters(
    module: torch.nn.Module, exclude_bias: bool = True
) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that weight penalties and weight decay act on.

    The lecture regularizes weights only: a bias shifts a unit's output and does not
    make the function more complex, so it is not penalized. Following the common
    convention (e.g. of AdamW recipes), every parameter with at most one dimension
    counts as a bias (biases and normalization scales/shifts).

    Args:
        module: The model whose named parameters are inspected.
        exclude_bias: If False, every parameter is returned.

    Returns:
        ``(name, parameter)`` pairs in ``module.named_parameters()`` order.
    """
    return [
        (name, parameter)
        for name, parameter in module.named_parameters()
        if not (exclude_bias and parameter.ndim <= 1)
    ]
