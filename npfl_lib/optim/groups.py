"""Parameter groups that keep biases out of weight decay."""

from __future__ import annotations

from typing import Any

import torch

from .._checks import check_nonnegative
from ..functional.regularization import regularized_parameters


def param_groups_no_decay(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights with ``weight_decay``, biases without.

    Which parameters count as weights is decided by
    :func:`npfl_lib.functional.regularization.regularized_parameters` (every parameter
    with at least two dimensions), so weight decay and the explicit penalties of
    ``npfl_lib.functional`` act on the same tensors. Usage::

        optimizer = AdamW(param_groups_no_decay(model, 1e-2), lr=1e-3)

    works the same with ``torch.optim`` optimizers. A group may be empty (e.g. a model
    without biases); optimizers accept that.

    Args:
        module (torch.nn.Module): The model.
        weight_decay (float): Decay of the weights, ``>= 0``.

    Returns:
        list[dict]: ``[{"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0}]``, each list in
        ``module.named_parameters()`` order (shared parameters appear once).

    Raises:
        TypeError: ``module`` is not a ``torch.nn.Module``.
        ValueError: ``weight_decay`` is negative.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_nonnegative("weight_decay", weight_decay)
    decayed = {id(param) for _, param in regularized_parameters(module)}
    weights = [param for param in module.parameters() if id(param) in decayed]
    biases = [param for param in module.parameters() if id(param) not in decayed]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": 0.0},
    ]
