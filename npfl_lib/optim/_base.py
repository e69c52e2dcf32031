"""The loop shared by the optimizer classes: state lives here, the math in ``kernels``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._validate import _check_dense, _check_fixed_option, _step_count


def _step_dtype() -> torch.dtype:
    """The dtype of a capturable step counter: torch's (float32 unless the default is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _zero_step(param: torch.Tensor, group: dict[str, Any]) -> int | torch.Tensor:
    """A new counter: ``0``, or a 0-dim tensor on ``param``'s device when capturable."""
    if group.get("capturable"):
        return torch.zeros((), dtype=_step_dtype(), device=param.device)
    return 0


def _step_as(step: Any, param: torch.Tensor, group: dict[str, Any]) -> int | torch.Tensor:
    """A loaded or switched counter in the group's form (checked: a whole number >= 0)."""
    if not group.get("capturable"):
        return _step_count(step)
    if (
        isinstance(step, torch.Tensor)
        and step.is_floating_point()
        and step.dim() == 0
        and step.device == param.device
    ):
        return step  # already torch's capturable form (load_state_dict moved it here)
    return torch.tensor(float(_step_count(step)), dtype=_step_dtype(), device=param.device)


class KernelOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose :meth:`step` calls a per-parameter kernel.

    Subclasses implement :meth:`_update`. Everything else (parameter groups,
    ``zero_grad``, ``state_dict``/``load_state_dict``, hooks, learning-rate schedulers)
    is ``torch.optim.Optimizer``'s. Hyperparameters are read from the parameter group
    at every step, so a scheduler's new ``lr`` is used at once.

    Step counter: ``state["step"]`` is a plain Python ``int``. It stays exact however
    long training runs (torch keeps a float32 tensor) and bias corrections are computed
    on the host, which is what torch's default, non-``capturable`` path does too; the
    price is that such a step cannot be captured in a CUDA graph. A tensor or float
    counter found in a loaded state dict (torch's, or an older torch's) is converted to
    an ``int``.

    With ``capturable=True`` (torch's option, in the optimizers that count steps) the
    counter is instead a 0-dim float tensor on the parameter's device (float32, or
    float64 when that is torch's default dtype: torch's choice), incremented in place,
    and the kernels compute from it on the device: no step reads a number back to the
    host, so the Trainer can record a whole training step in a CUDA graph and replay
    it. A float32 counter is exact up to 2^24 (16.7 million) steps. Switching
    ``capturable`` on or off in a group converts the existing counters at the next step.

    Options: every group holds all of torch's option keys (``maximize``, ``foreach``,
    ...), so state dicts move between npfl_lib and torch both ways. Options are checked
    wherever they arrive: in the constructor, in a group dict, by :meth:`add_param_group`,
    by :meth:`load_state_dict` (before anything is replaced) and again at every
    :meth:`step`. Those listed in ``_fixed_options`` (``foreach``, ``fused``,
    ``differentiable``) are accepted only at the value npfl_lib implements; any other
    value raises a ValueError that says why.
    """

    # torch options that this optimizer accepts only at npfl_lib's value (_validate.FIXED_OPTIONS).
    _fixed_options: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        self._check_group(defaults)  # the defaults too, even where every group overrides them
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group (see ``torch.optim.Optimizer``), after checking it with the defaults
        filled in: a bad option raises and the group is not added."""
        if isinstance(param_group, dict):
            self._check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict (npfl_lib's or torch's), after checking its groups and step
        counters: a bad one raises and the optimizer is left as it was."""
        for group in state_dict["param_groups"]:
            self._check_group({**self.defaults, **group})
        for param_state in state_dict["state"].values():
            if "step" in param_state:
                _step_count(param_state["step"])
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            # A checkpoint from an older version may lack option keys: the defaults fill
            # them in, as torch's optimizers do.
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for group in self.param_groups:
            for param in group["params"]:
                param_state = self.state.get(param)
                if param_state and "step" in param_state:
                    param_state["step"] = _step_as(param_state["step"], param, group)

    def _current_step(self, state: dict[str, Any], param: torch.Tensor, group: dict[str, Any]):
        """``state["step"]``, converted first if the group's ``capturable`` changed."""
        step = state["step"]
        if group.get("capturable"):
            if not (isinstance(step, torch.Tensor) and step.device == param.device):
                step = state["step"] = _step_as(step, param, group)
        elif isinstance(step, torch.Tensor):
            step = state["step"] = _step_count(step)  # reads the tensor once
        return step

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
        """Raises ValueError/TypeError if a group's hyperparameters or options are bad.

        Subclasses check their hyperparameters and call this for the fixed options.
        """
        for name in self._fixed_options:
            _check_fixed_option(name, group[name])

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
