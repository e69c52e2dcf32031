"""Optimizers written from scratch: SGD, RMSprop, Adam and AdamW, as ``torch.optim``.

The per-step math of each optimizer is a small function on one parameter tensor in
:mod:`npfl_lib.optim.kernels` (``sgd_step``, ``rmsprop_step``, ``adam_step``,
``adamw_step``); the classes are ``torch.optim.Optimizer`` subclasses that keep the
state and call them, so parameter groups, ``state_dict`` and learning-rate
schedulers work as usual. Results equal ``torch.optim``'s (``foreach=False``).

torch's options ``maximize``, ``amsgrad`` (Adam, AdamW), ``decoupled_weight_decay``
(Adam) and ``capturable`` (RMSprop, Adam, AdamW: the step counter on the device, so a
step can be captured in a CUDA graph) are implemented, wherever they arrive
(constructor, group dict, ``add_param_group``, a loaded torch state dict); ``foreach``,
``fused`` and ``differentiable`` are accepted only at the value npfl_lib implements
(single-tensor, not fused, not differentiable), anything else raises a ValueError.
"""

from . import kernels
from .adam import Adam, AdamW
from .groups import param_groups_no_decay
from .kernels import adam_step, adamw_step, rmsprop_step, sgd_step
from .l1 import l1_step_
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "sgd_step",
    "rmsprop_step",
    "adam_step",
    "adamw_step",
    "param_groups_no_decay",
    "l1_step_",
]
