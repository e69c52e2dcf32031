"""Weight penalties (L2, L1) and label smoothing."""

from __future__ import annotations

import numbers

import torch

from .._checks import check_in_range, check_index_tensor

__all__ = ["regularized_parameters", "l2_penalty", "l1_penalty", "smooth_labels"]


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


def _weights(module: torch.nn.Module, exclude_bias: bool) -> list[torch.nn.Parameter]:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return [parameter for _, parameter in regularized_parameters(module, exclude_bias)]


def l2_penalty(module: torch.nn.Module, exclude_bias: bool = True) -> torch.Tensor:
    """The L2 penalty ``1/2 * sum(w ** 2)`` over :func:`regularized_parameters`.

    The factor 1/2 makes its gradient the weight itself, so adding
    ``weight_decay * l2_penalty(model)`` to the loss is the same as giving these
    parameters ``weight_decay`` in ``torch.optim.SGD`` (which adds ``weight_decay * w``
    to their gradients).

    Args:
        module (torch.nn.Module): The model whose weights are penalized.
        exclude_bias (bool): If True (default), parameters with at most one dimension
            (biases, normalization scales) are not penalized.

    Returns:
        torch.Tensor: A scalar that autograd differentiates; ``torch.zeros(())`` if no
        parameter is penalized.
    """
    weights = _weights(module, exclude_bias)
    if not weights:
        return torch.zeros(())
    return 0.5 * sum((weight * weight).sum() for weight in weights)


def l1_penalty(module: torch.nn.Module, exclude_bias: bool = True) -> torch.Tensor:
    """The L1 penalty ``sum(|w|)`` over :func:`regularized_parameters`.

    Its gradient is ``sign(w)`` (0 at ``w == 0``, as autograd takes it for ``abs``).

    Args:
        module (torch.nn.Module): The model whose weights are penalized.
        exclude_bias (bool): If True (default), parameters with at most one dimension
            (biases, normalization scales) are not penalized.

    Returns:
        torch.Tensor: A scalar that autograd differentiates; ``torch.zeros(())`` if no
        parameter is penalized.
    """
    weights = _weights(module, exclude_bias)
    if not weights:
        return torch.zeros(())
    return sum(weight.abs().sum() for weight in weights)


def smooth_labels(target: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """Class indices to label-smoothed target distributions.

    Returns ``(1 - a) * one_hot(target) + a / K`` with ``a = label_smoothing`` and
    ``K = num_classes``: the true class gets ``1 - a + a / K``, every other class
    ``a / K``. This is exactly the distribution that
    ``F.cross_entropy(logits, target, label_smoothing=a)`` uses internally, so
    ``F.cross_entropy(logits, smooth_labels(target, K, a))`` gives the same loss
    (classes along the last dimension here; move them to dim 1 for inputs of more
    than two dimensions).

    Args:
        target (torch.Tensor): Integer class indices in ``[0, K)``, any shape.
        num_classes (int): The number of classes ``K >= 1``.
        label_smoothing (float): The smoothing ``a`` in ``[0, 1]``; 0 gives one-hot
            targets, 1 the uniform distribution.

    Returns:
        torch.Tensor: Shape ``target.shape + (K,)``, the default float dtype, on
        ``target.device``.
    """
    check_index_tensor("target", target)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"label_smoothing must be a real number, got {type(label_smoothing).__name__}"
        )
    check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    if target.numel() > 0:
        low, high = target.min().item(), target.max().item()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target must hold class indices in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), got values in [{low}, {high}]"
            )
    classes = torch.arange(num_classes, device=target.device)
    one_hot = (target.unsqueeze(-1) == classes).to(torch.get_default_dtype())
    return (1 - label_smoothing) * one_hot + label_smoothing / num_classes
