"""Ensembling: average the predicted distributions of several models; bagging.

An ensemble of independently trained models is usually more accurate than each member,
because their errors are partly independent. Bagging (bootstrap aggregating) makes the
members differ further by training each on a bootstrap sample of the training set: n
examples drawn with replacement from the n available.
"""

from __future__ import annotations

import torch

from ._checks import check_float_tensor
from .data_feed import tensor_pair


def _module_device(model: torch.nn.Module, default: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default


@torch.no_grad()
def average_probabilities(models, inputs, batch_size=None, apply_softmax=True):
    """Returns the mean of the models' predicted class distributions.

    Every model is run in eval mode (restored afterwards) on its own device.

    Args:
        models (Sequence[torch.nn.Module]): The ensemble members, at least one.
        inputs (Tensor): Floating-point inputs of shape ``(N, ...)``.
        batch_size (int | None): Examples per forward pass; None runs all at once.
        apply_softmax (bool): True when the models output *logits* (as the course's
            models do): each model's softmax over the last dimension is averaged.
            False when they already output probabilities, which are averaged as-is.

    Returns:
        Tensor: ``(N, C)`` probabilities on ``inputs``' device, each row summing to 1.
    """
    models = list(models)
    if not models or not all(isinstance(m, torch.nn.Module) for m in models):
        raise ValueError("models must be a non-empty sequence of torch.nn.Module")
    check_float_tensor("inputs", inputs)
    if inputs.dim() == 0 or len(inputs) == 0:
        raise ValueError(f"inputs must hold at least one example, got shape {tuple(inputs.shape)}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    step = len(inputs) if batch_size is None else batch_size
    total = None
    for model in models:
        device = _module_device(model, inputs.device)
        was_training = model.training
        model.eval()
        outputs = torch.cat(
            [
                model(inputs[i : i + step].to(device)).to(inputs.device)
                for i in range(0, len(inputs), step)
            ]
        )
        model.train(was_training)
        probabilities = outputs.softmax(dim=-1) if apply_softmax else outputs
        total = probabilities if total is None else total + probabilities
    return total / len(models)


def bootstrap_indices(n, generator=None, device=None):
    """Draws ``n`` indices from ``range(n)`` uniformly *with replacement*.

    About 63.2% (1 - 1/e) of the examples appear at least once in such a sample.

    Args:
        n (int): Size of the data set, >= 1.
        generator (torch.Generator | None): Source of randomness (torch's global one when
            None). The numbers are drawn on the generator's device (so a CPU generator
            gives the same indices everywhere), then moved to ``device``.
        device (torch.device | str | None): Where the result lives; default: the
            generator's device, or the CPU.

    Returns:
        Tensor: int64 indices of shape ``(n,)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    indices = torch.randint(0, n, (n,), generator=generator, device=draw_device)
    return indices if device is None else indices.to(device)


def bootstrap_split(data, generator=None):
    """Returns a bagged training split: a bootstrap sample of ``data``'s examples.

    Args:
        data: An ``(inputs, targets)`` pair of tensors or a split with
            ``.inputs``/``.targets``.
        generator (torch.Generator | None): As in ``bootstrap_indices`` (the indices are
            drawn on its device, then moved to the data's device).

    Returns:
        tuple[Tensor, Tensor]: ``(inputs, targets)`` of the sample, on the data's device,
        ready for ``Trainer.fit``.
    """
    pair = (
        tensor_pair(data, "data")
        if isinstance(data, (tuple, list)) or hasattr(data, "inputs")
        else None
    )
    if pair is None:
        raise TypeError(
            f"data must be an (inputs, targets) pair or a split with .inputs/.targets, "
            f"got {type(data).__name__}"
        )
    inputs, targets = pair
    indices = bootstrap_indices(len(inputs), generator)
    return inputs[indices.to(inputs.device)], targets[indices.to(targets.device)]
