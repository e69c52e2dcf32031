"""Backpropagation by hand: a one-hidden-layer MLP without autograd, and a gradient checker.

``ManualMLP`` computes, for a batch ``x`` of N examples and gold classes ``t``::

    h   = act(x @ W1 + b1)          # hidden layer, act = tanh or relu
    z   = h @ W2 + b2               # logits
    o   = softmax(z)                # class probabilities
    L   = mean_i -log o[i, t_i]     # mean cross-entropy

and its ``backward`` applies the chain rule from the loss back to every parameter::

    dL/dz  = (o - onehot(t)) / N    # the famous softmax + cross-entropy gradient
    dL/dW2 = h.T @ dL/dz            dL/db2 = sum over the batch of dL/dz
    dL/dh  = dL/dz @ W2.T
    dL/da  = dL/dh * act'(a)        # a = x @ W1 + b1; tanh' = 1 - h**2, relu' = [a > 0]
    dL/dW1 = x.T @ dL/da            dL/db1 = sum over the batch of dL/da

``gradcheck`` verifies such hand-written gradients with central finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._checks import (
    check_float_tensor,
    check_in_range,
    check_index_tensor,
    check_nonnegative,
    check_same_shape,
)

__all__ = ["ManualMLP", "gradcheck", "GradcheckReport"]

ACTIVATIONS = ("tanh", "relu")


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    # Subtracting the row maximum keeps exp() from overflowing; it cancels out.
    shifted = z - z.amax(dim=1, keepdim=True)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ManualMLP:
    """A one-hidden-layer MLP classifier with hand-written forward and backward passes.

    The parameters are plain tensors (``requires_grad=False``); weights are stored as
    ``[in_features, out_features]`` so that a layer is ``x @ W + b``. They are
    initialized like ``torch.nn.Linear``: every weight and bias of a layer drawn from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), in the order W1, b1, W2, b2 (with the same
    seed, W1 equals ``nn.Linear(input_size, hidden_size).weight.T``, and so on).

    Args:
        input_size (int): Number of input features D.
        hidden_size (int): Number of hidden units H.
        num_classes (int): Number of classes C.
        activation (str): Hidden activation, ``"tanh"`` or ``"relu"``.
        generator (torch.Generator | None): Source of randomness for the initialization
            (default: torch's global one). It may be a CPU generator for a CUDA model:
            the numbers are drawn on the CPU and then moved to ``device``.
        dtype (torch.dtype): Floating-point dtype of the parameters.
        device (torch.device | str | None): Device of the parameters (default: torch's
            default device, normally the CPU).

    Attributes:
        W1 (torch.Tensor): ``[D, H]`` hidden weights.  b1 (torch.Tensor): ``[H]``.
        W2 (torch.Tensor): ``[H, C]`` output weights.  b2 (torch.Tensor): ``[C]``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        activation: str = "tanh",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden_size", hidden_size)
        _check_positive_int("num_classes", num_classes)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        self.activation = activation
        device = torch.device(device) if device is not None else torch.get_default_device()
        gen_device = generator.device if generator is not None else device

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            sample = torch.empty(shape, dtype=dtype, device=gen_device)
            return sample.uniform_(-bound, bound, generator=generator).to(device)

        # Drawn as [out, in] like nn.Linear.weight (same random stream), stored transposed.
        self.W1 = uniform((hidden_size, input_size), input_size).T.contiguous()
        self.b1 = uniform((hidden_size,), input_size)
        self.W2 = uniform((num_classes, hidden_size), hidden_size).T.contiguous()
        self.b2 = uniform((num_classes,), hidden_size)
        self._cache: dict[str, torch.Tensor] | None = None

    def parameters(self) -> dict[str, torch.Tensor]:
        """Returns the parameters by name: ``{"W1", "b1", "W2", "b2"}`` (the tensors themselves)."""
        return {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}

    def _check_x(self, x: torch.Tensor) -> None:
        check_float_tensor("x", x)
        if x.dim() != 2 or x.shape[1] != self.W1.shape[0]:
            raise ValueError(
                f"x must have shape [N, {self.W1.shape[0]}], got {tuple(x.shape)}; "
                "flatten images with x.flatten(1)"
            )
        if x.dtype != self.W1.dtype or x.device != self.W1.device:
            raise TypeError(
                f"x must have the parameters' dtype {self.W1.dtype} and device "
                f"{self.W1.device}, got {x.dtype} on {x.device}"
            )

    def _check_targets(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        check_index_tensor("targets", targets)
        if targets.device != x.device:
            raise ValueError(f"targets must be on x's device {x.device}, got {targets.device}")
        if targets.shape != x.shape[:1]:
            raise ValueError(
                f"targets must have shape [N] = {tuple(x.shape[:1])}, got {tuple(targets.shape)}"
            )
        num_classes = self.W2.shape[1]
        if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"targets must be class indices in [0, {num_classes - 1}]")

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check_x(x)
        a = x @ self.W1 + self.b1
        h = a.tanh() if self.activation == "tanh" else a.clamp(min=0)
        log_probs = _log_softmax(h @ self.W2 + self.b2)
        self._cache = {"x": x, "a": a, "h": h, "log_probs": log_probs}
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the class probabilities ``[N, C]`` and keeps what ``backward`` needs.

        Args:
            x (torch.Tensor): ``[N, D]`` inputs of the parameters' dtype and device.
        """
        return self._forward(x)["log_probs"].exp()

    __call__ = forward

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Returns the mean softmax cross-entropy ``mean_i -log o[i, t_i]`` (0-dim tensor).

        Args:
            x (torch.Tensor): ``[N, D]`` inputs.
            targets (torch.Tensor): ``[N]`` int64 gold classes in ``[0, C)``.
        """
        self._check_x(x)
        self._check_targets(x, targets)
        log_probs = self._forward(x)["log_probs"]
        return -log_probs[torch.arange(len(targets), device=x.device), targets].mean()

    def backward(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns the gradients of ``loss(x, targets)`` (the MEAN over the batch).

        Reuses the values kept by the last ``forward``/``loss`` call when it was given
        this very ``x`` object (and no ``sgd_step`` happened since); otherwise runs the
        forward pass first.

        Args:
            x (torch.Tensor): ``[N, D]`` inputs.
            targets (torch.Tensor): ``[N]`` int64 gold classes in ``[0, C)``.

        Returns:
            dict[str, torch.Tensor]: ``{"W1", "b1", "W2", "b2"}`` gradients, each shaped
            like its parameter.
        """
        self._check_x(x)
        self._check_targets(x, targets)
        cache = self._cache
        if cache is None or cache["x"] is not x:
            cache = self._forward(x)
        a, h = cache["a"], cache["h"]

        d_logits = cache["log_probs"].exp()
        d_logits[torch.arange(len(targets), device=x.device), targets] -= 1
        d_logits /= len(targets)  # the loss is a mean over the batch
        d_h = d_logits @ self.W2.T
        d_a = d_h * (1 - h**2) if self.activation == "tanh" else d_h * (a > 0)
        return {
            "W1": x.T @ d_a,
            "b1": d_a.sum(dim=0),
            "W2": h.T @ d_logits,
            "b2": d_logits.sum(dim=0),
        }

    def sgd_step(self, gradients: dict[str, torch.Tensor], lr: float) -> None:
        """Updates every parameter in place: ``param -= lr * gradients[name]``.

        Args:
            gradients (dict[str, torch.Tensor]): As returned by ``backward``.
            lr (float): Non-negative learning rate.
        """
        check_nonnegative("lr", lr)
        params = self.parameters()
        if set(gradients) != set(params):
            raise ValueError(
                f"gradients must have the keys {sorted(params)}, got {sorted(gradients)}"
            )
        for name, param in params.items():
            check_float_tensor(f"gradients[{name!r}]", gradients[name])
            param.sub_(lr * gradients[name])
        self._cache = None  # computed with the old parameters


@dataclass
class GradcheckReport:
    """The result of ``gradcheck``; ``bool(report)`` is ``report.passed``.

    Attributes:
        passed (bool): Whether every element satisfies
            ``|analytic - numeric| <= atol + rtol * |numeric|``.
        max_abs_error (float): Largest ``|analytic - numeric|``.
        max_rel_error (float): Largest ``|analytic - numeric| / max(|analytic|, |numeric|)``
            (0 where both are 0).
        where (tuple[int, tuple[int, ...]] | None): ``(input index, element index)`` of
            the worst element, the one that exceeds its tolerance the most (None when no
            input has elements).
        analytic (list[torch.Tensor]): The checked gradients (float64), one per input.
        numeric (list[torch.Tensor]): The finite-difference gradients, one per input.
    """

    passed: bool
    max_abs_error: float
    max_rel_error: float
    where: tuple[int, tuple[int, ...]] | None
    analytic: list[torch.Tensor]
    numeric: list[torch.Tensor]

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        text = (
            f"gradcheck {verdict}: max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}"
        )
        if self.where is not None:
            i, index = self.where
            text += (
                f"; worst at input {i}, element {index}: analytic "
                f"{self.analytic[i][index].item():.10g}, numeric "
                f"{self.numeric[i][index].item():.10g}"
            )
        return text


def gradcheck(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    analytic: torch.Tensor | Sequence[torch.Tensor] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> GradcheckReport:
    """Compares a gradient with central finite differences, in float64.

    Each element ``x_j`` of each input is nudged both ways and the derivative estimated
    as ``(fn(x_j + eps) - fn(x_j - eps)) / (2 * eps)``, whose error is O(eps**2), far
    better than the one-sided O(eps). This costs two calls of ``fn`` per element, so
    use small inputs.

    Args:
        fn (Callable[..., torch.Tensor]): Called as ``fn(*inputs)``; must return a scalar
            (one-element) tensor.
        inputs (torch.Tensor | Sequence[torch.Tensor]): Floating-point tensors at which to
            check; they are copied to float64 and never modified.
        analytic (torch.Tensor | Sequence[torch.Tensor] | None): The gradients to check,
            one per input, each shaped like its input. If None, autograd's gradients
            of ``fn`` are checked.
        eps (float): Positive finite-difference step.
        atol (float): Non-negative absolute tolerance.
        rtol (float): Non-negative relative tolerance (relative to the numeric gradient).

    Returns:
        GradcheckReport: ``passed``, the largest errors and where the worst element is.
    """
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    for i, x in enumerate(inputs):
        check_float_tensor(f"inputs[{i}]", x)
    check_in_range("eps", eps, 0.0, math.inf, low_inclusive=False)
    check_nonnegative("atol", atol)
    check_nonnegative("rtol", rtol)
    xs = [x.detach().to(torch.float64).clone() for x in inputs]

    def evaluate() -> float:
        out = fn(*xs)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise ValueError("fn must return a scalar (one-element) tensor")
        return out.item()

    if analytic is None:
        analytic = _autograd(fn, xs)
    else:
        analytic = [analytic] if isinstance(analytic, torch.Tensor) else list(analytic)
        if len(analytic) != len(xs):
            raise ValueError(f"analytic must hold {len(xs)} gradients, got {len(analytic)}")
        for i, (g, x) in enumerate(zip(analytic, xs, strict=True)):
            check_float_tensor(f"analytic[{i}]", g)
            check_same_shape(f"analytic[{i}]", g, f"inputs[{i}]", x)
        analytic = [
            g.detach().to(device=x.device, dtype=torch.float64)
            for g, x in zip(analytic, xs, strict=True)
        ]

    numeric = []
    with torch.no_grad():
        for x in xs:
            grad = torch.zeros_like(x)
            flat_x, flat_grad = x.view(-1), grad.view(-1)
            for j in range(flat_x.numel()):
                original = flat_x[j].item()
                flat_x[j] = original + eps
                f_plus = evaluate()
                flat_x[j] = original - eps
                f_minus = evaluate()
                flat_x[j] = original
                flat_grad[j] = (f_plus - f_minus) / (2 * eps)
            numeric.append(grad)
    return _report(analytic, numeric, atol, rtol)


def _autograd(fn: Callable[..., torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    leaves = [x.clone().requires_grad_(True) for x in xs]
    out = fn(*leaves)
    if not isinstance(out, torch.Tensor) or out.numel() != 1:
        raise ValueError("fn must return a scalar (one-element) tensor")
    # allow_unused: an input fn ignores has a zero gradient, not an error.
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return [
        torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, xs, strict=True)
    ]


def _report(
    analytic: list[torch.Tensor], numeric: list[torch.Tensor], atol: float, rtol: float
) -> GradcheckReport:
    max_abs = max_rel = 0.0
    worst, where = -math.inf, None
    for i, (a, n) in enumerate(zip(analytic, numeric, strict=True)):
        if a.numel() == 0:
            continue
        # NaN must not pass for agreement: count it as an infinite error.
        error = (a - n).abs().nan_to_num(nan=math.inf)
        scale = torch.maximum(a.abs(), n.abs())
        zero = torch.zeros_like(error)
        rel = torch.where(error == 0, zero, error / scale).nan_to_num(nan=math.inf)
        # How many times its tolerance each element misses by: > 1 fails.
        tolerance = atol + rtol * n.abs()
        excess = torch.where(error == 0, zero, error / tolerance).nan_to_num(nan=math.inf)
        max_abs = max(max_abs, error.max().item())
        max_rel = max(max_rel, rel.max().item())
        j = int(excess.view(-1).argmax())
        if excess.view(-1)[j].item() > worst:
            worst = excess.view(-1)[j].item()
            where = (i, tuple(int(k) for k in torch.unravel_index(torch.tensor(j), a.shape)))
    passed = where is None or worst <= 1.0
    return GradcheckReport(passed, max_abs, max_rel, where, analytic, numeric)
