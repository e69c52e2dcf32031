"""Modules: activations and dropout as ``torch.nn.Module``s, and a configurable MLP.

The modules wrap the from-scratch functions of ``npfl_lib.functional`` so they can be
stacked in a ``torch.nn.Sequential``; the linear layers are torch's own
``torch.nn.Linear``, initialized with ``npfl_lib.init``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import init as npfl_init
from ._checks import check_float_tensor, check_in_range
from .functional import (
    dropout,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    swiglu,
    tanh,
)

__all__ = [
    "ReLU",
    "Tanh",
    "Sigmoid",
    "LeakyReLU",
    "GELU",
    "SiLU",
    "Softmax",
    "LogSoftmax",
    "SwiGLU",
    "Dropout",
    "MLP",
]


def _check_dim(dim: object) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")


class ReLU(nn.Module):
    """``max(x, 0)`` elementwise; see ``npfl_lib.functional.relu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu(x)


class Tanh(nn.Module):
    """``tanh(x)`` elementwise; see ``npfl_lib.functional.tanh``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)


class Sigmoid(nn.Module):
    """``1 / (1 + exp(-x))`` elementwise; see ``npfl_lib.functional.sigmoid``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sigmoid(x)


class LeakyReLU(nn.Module):
    """``x`` for positive ``x``, else ``negative_slope * x``.

    Args:
        negative_slope (float): Finite slope for negative inputs. Default: 0.01.
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        finite = {"low_inclusive": False, "high_inclusive": False}
        check_in_range("negative_slope", negative_slope, -math.inf, math.inf, **finite)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class GELU(nn.Module):
    """``x * Phi(x)``, Phi the standard normal CDF; see ``npfl_lib.functional.gelu``.

    Args:
        approximate (str): ``"none"`` (exact) or ``"tanh"`` (the tanh approximation).
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be one of ('none', 'tanh'), got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(nn.Module):
    """``x * sigmoid(x)`` (swish); see ``npfl_lib.functional.silu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu(x)


class Softmax(nn.Module):
    """``exp(x) / sum(exp(x))`` along ``dim``: turns logits into probabilities.

    Args:
        dim (int): The dimension that sums to 1 (the class dimension). Default: -1.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        _check_dim(dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``dim``, computed stably; see ``functional.log_softmax``.

    Args:
        dim (int): The class dimension. Default: -1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_softmax(x, self.dim)


class SwiGLU(nn.Module):
    """``silu(a) * b`` where ``a, b`` are the two halves of ``x`` along ``dim``.

    The output is half as large as the input along ``dim``.

    Args:
        dim (int): The dimension split in two. Default: -1.
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        _check_dim(dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Dropout(nn.Module):
    """Inverted dropout, active only in training mode (``module.train()``).

    ``p`` is the probability to DROP a unit; kept units are scaled by ``1 / (1 - p)``
    during training, so in evaluation mode (``module.eval()``) the module is the identity.

    Args:
        p (float): Drop probability in ``[0, 1)``. Default: 0.5.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        check_in_range("p", p, 0.0, 1.0, high_inclusive=False)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


ACTIVATIONS = {
    "relu": ReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "leaky_relu": LeakyReLU,
    "gelu": GELU,
    "silu": SiLU,
}
# Normalizing over the class dimension (1) of the [N, output_size] output.
OUTPUT_ACTIVATIONS = {
    **ACTIVATIONS,
    "softmax": lambda: Softmax(dim=1),
    "log_softmax": lambda: LogSoftmax(dim=1),
}
INITS = ("torch", "glorot")


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class MLP(nn.Module):
    """A multilayer perceptron: Linear -> activation [-> Dropout] per hidden layer, then
    an output Linear and an optional output activation.

    Inputs of shape ``[N, *input_shape]`` (e.g. images ``[N, 1, 8, 8]``) are flattened
    to ``[N, prod(input_shape)]`` first. The forward pass has no data-dependent Python
    control flow, so it can be captured in a CUDA graph.

    Args:
        input_size (int | Sequence[int]): Number of input features, or the shape of one
            example (their product is used).
        hidden_layers (Sequence[int]): Sizes of the hidden layers, e.g. ``[128, 64]``;
            empty for a linear model.
        output_size (int): Number of outputs (e.g. classes).
        activation (str): Hidden activation: one of ``ACTIVATIONS``
            (relu, tanh, sigmoid, leaky_relu, gelu, silu).
        output_activation (str | None): None for raw outputs (logits, as the
            cross-entropy losses expect), or one of ``OUTPUT_ACTIVATIONS``
            (the hidden ones, "softmax", "log_softmax"); softmaxes use the class
            dimension 1.
        dropout (float): Drop probability in ``[0, 1)`` of a ``Dropout`` after each
            hidden activation; 0 adds no Dropout module.
        init (str): Weight initialization: ``"torch"`` (``uniform_fan_in_``, the
            ``torch.nn.Linear`` default) or ``"glorot"`` (``xavier_uniform_``). Biases
            start at zero in both cases.
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        hidden_layers: Sequence[int],
        output_size: int,
        activation: str = "relu",
        output_activation: str | None = None,
        dropout: float = 0.0,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if isinstance(input_size, Sequence):
            for size in input_size:
                _check_size("every entry of input_size", size)
            input_size = math.prod(input_size)
        _check_size("input_size", input_size)
        if not isinstance(hidden_layers, Sequence):
            raise TypeError(
                f"hidden_layers must be a sequence of ints such as [128, 64], "
                f"got {type(hidden_layers).__name__}"
            )
        for size in hidden_layers:
            _check_size("every entry of hidden_layers", size)
        _check_size("output_size", output_size)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if output_activation is not None and output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be None or one of {tuple(OUTPUT_ACTIVATIONS)}, "
                f"got {output_activation!r}"
            )
        check_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")

        self.input_size = input_size
        sizes = [input_size, *hidden_layers]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], output_size))
        if output_activation is not None:
            layers.append(OUTPUT_ACTIVATIONS[output_activation]())
        self.layers = nn.Sequential(*layers)

        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                if init == "torch":
                    npfl_init.uniform_fan_in_(layer.weight)
                else:
                    npfl_init.xavier_uniform_(layer.weight)
                npfl_init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``[N, *input_shape]`` inputs to ``[N, output_size]`` outputs."""
        check_float_tensor("x", x)
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.input_size:
            raise ValueError(
                f"x must have shape [N, ...] with {self.input_size} features per example, "
                f"got {tuple(x.shape)}"
            )
        return self.layers(x.flatten(1))

    def num_parameters(self) -> int:
        """Returns the number of parameter scalars: all weights and biases."""
        return sum(p.numel() for p in self.parameters())
