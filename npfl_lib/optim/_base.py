"""The loop shared by the optimizer classes: state lives here, the math in ``kernels``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._validate import _check_dense


class KernelOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose :meth:`step` calls a per-parameter kernel.

    Subclasses implement :meth:`_update`. Everything else (parameter groups,
    ``zero_grad``, ``state_dict``/``load_state_dict``, hooks, learning-rate schedulers)
    is ``torch.optim.Optimizer``'s. Hyperparameters are read from the parameter group
    at every step, so a scheduler's new ``lr`` is used at once.

    Step counter: ``state["step"]`` is a plain Python ``int``. It stays exact however
    long training runs (torch keeps a float32 tensor) and bias corrections are computed
    on the host, which is what torch's default, non-``capturable`` path does too; the
    price is that a step cannot be captured in a CUDA graph. A tensor counter found in a
    loaded ``torch.optim`` state dict is converted to an ``int``.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for param_state in self.state.values():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = int(param_state["step"].item())

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Performs one optimization step on every parameter that has a gradient.

        Parameters whose ``grad`` is ``None`` (unused in the forward pass, or frozen)
        are skipped entirely: no update, no weight decay, no state, as in torch.

        Args:
            closure (Callable | None): Re-evaluates the model and returns the loss; it
                is called with gradients enabled, before the update.

        Returns:
            The closure's loss, or ``None`` without a closure.

        Raises:
            ValueError: A group's hyperparameter out of range (nothing is updated then).
            TypeError: A sparse gradient (not supported).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group first, so a bad value (say a schedule's negative lr) raises
        # before any parameter has moved.
        for group in self.param_groups:
            self._check_group(group)
            for param in group["params"]:
                if param.grad is not None:
                    _check_dense("grad", param.grad)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, self.state[param], group)
        return loss

    def _check_group(self, group: dict[str, Any]) -> None:
        """Raises ValueError/TypeError if a group's hyperparameters are out of range."""
        raise NotImplementedError

    def _update(
        self,
        param: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
    ) -> None:
        """Updates one parameter in place, creating its ``state`` on first use.

        The state is written back only after the kernel succeeded, so an error leaves
        it as it was.
        """
        raise NotImplementedError
