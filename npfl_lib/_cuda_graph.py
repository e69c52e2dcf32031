"""Fast training steps for the Trainer: fused optimizer kernels, whole-step CUDA graphs.

Fused kernels. torch's Adam and AdamW update each parameter with about ten elementwise
operations, each a pass over memory; on a CPU that is close to half of an epoch of a
small MLP. Their ``fused=True`` implementation does the same update in one pass. When a
user leaves the implementation to torch (``foreach=None, fused=None``, the default),
``use_fused_kernel`` picks the fused one: results agree to float rounding (~1e-16
relative in float64, ~1e-7 in float32), not bit for bit. An explicit choice is kept.

CUDA graphs, for the Trainer's resident-data path on a GPU. A training step on a small
model is latency-bound: launching its ~50 kernels costs more than running them. A CUDA
graph records the kernels of one step (gather of the batch, forward, loss, backward,
clipping, optimizer step) once and replays them with a single launch. This follows
PyTorch's "whole network capture" recipe (torch.cuda.graphs docs):

1. warm up on a side stream (here: the first real training steps, so no step is wasted),
2. set the gradients to None, so backward allocates them in the graph's memory pool,
3. capture one step on the same side stream; afterwards, copy the next batch's indices
   into the captured index tensor and replay.

Everything a graph reads must stay at a fixed address and every number that changes
between steps must live in a device tensor. Hence optimizers must keep their step count
on the device (``capturable=True``: torch's Adam, AdamW, RMSprop, ... and npfl_lib's own
RMSprop, Adam and AdamW have it, and the Trainer switches it on; SGD counts no steps)
and a scheduler may only be used when every learning rate is a tensor (which schedulers
update in place). A hyperparameter that is a
Python number is baked into the graph, so the Trainer captures anew when one changes
(e.g. a callback lowering the learning rate) or when a captured tensor is replaced; see
``capture_key``. Metrics are updated eagerly after each replay, from the graph's output
tensors: their Python-side state could not be captured.
"""

from __future__ import annotations

import torch

from . import optim
from .optim._base import KernelOptimizer, _step_as

WARMUP_STEPS = 3


def graph_blocker(optimizer, scheduler) -> str | None:
    """Says why the step cannot be captured, or returns None when it can.

    An optimizer of torch's or npfl_lib's that has a ``capturable`` option which is off
    gets it switched on (same update rule, with its step count kept on the GPU); see
    ``make_capturable``.
    """
    name = type(optimizer).__name__
    # SGD (torch's and npfl_lib's) keeps no step counter, and its momentum buffers exist
    # after warm-up.
    no_counter = type(optimizer) in (torch.optim.SGD, optim.SGD)
    groups = [] if no_counter else optimizer.param_groups
    for group in groups:
        if "capturable" not in group:
            return (
                f"{name} has no capturable=True option, so its step may read Python-side "
                "state (such as a step counter) that a graph would freeze"
            )
        if not group["capturable"] and not _can_switch(optimizer):
            return f"{name} has capturable=False, so its step cannot be captured"
    if isinstance(optimizer, KernelOptimizer) and not isinstance(optimizer, optim.Adam):
        if any(_on_gpu(g["lr"]) for g in optimizer.param_groups):
            return (
                f"npfl_lib's {name} passes its lr to torch as a number, and a GPU tensor lr "
                "would be read back to the host at every step"
            )
    if scheduler is not None and not all(_on_gpu(g["lr"]) for g in optimizer.param_groups):
        return (
            "a learning-rate scheduler changes a Python float (or CPU tensor) lr, whose value "
            "a captured graph would keep; create the optimizer with "
            "lr=torch.tensor(..., device='cuda')"
        )
    return None


def _on_gpu(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cuda"


def _is_torch_optimizer(optimizer) -> bool:
    return type(optimizer).__module__.startswith("torch.optim")


def _can_switch(optimizer) -> bool:
    """Whether ``make_capturable`` can turn the optimizer's ``capturable`` option on."""
    return _is_torch_optimizer(optimizer) or isinstance(optimizer, KernelOptimizer)


def _move_steps_to_params(optimizer) -> None:
    """Fused and capturable optimizers keep a float32 step count on each parameter's device."""
    for param, state in optimizer.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device != param.device:
            state["step"] = step.to(param.device, torch.float32)


def use_fused_kernel(optimizer) -> None:
    """Switches torch's Adam/AdamW to their fused kernel when the user left the choice open."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return
    groups = optimizer.param_groups
    for group in groups:
        chosen = group.get("fused") is not None or group.get("foreach") is not None
        if chosen or group.get("differentiable") or isinstance(group["lr"], torch.Tensor):
            return
    params = [param for group in groups for param in group["params"]]
    devices = {param.device.type for param in params}
    if not devices <= {"cpu", "cuda"} or not all(p.is_floating_point() for p in params):
        return
    for group in groups:
        group["fused"] = True
    _move_steps_to_params(optimizer)


def make_capturable(optimizer) -> None:
    """Turns on ``capturable`` of a torch or npfl_lib optimizer, moving step counts along.

    npfl_lib's ``int`` step counters become 0-dim tensors on their parameter's device,
    with the same count (see ``npfl_lib.optim._base.KernelOptimizer``).
    """
    if not _can_switch(optimizer):
        return
    # The warm-up and the last, shorter batch run capturable steps eagerly on purpose;
    # torch would warn once that capturable=True without a capture is slower.
    optimizer._warned_capturable_if_run_uncaptured = True
    for group in optimizer.param_groups:
        if group.get("capturable") is False:
            group["capturable"] = True
        if isinstance(optimizer, KernelOptimizer):
            for param in group["params"]:
                state = optimizer.state.get(param)
                if state and "step" in state:
                    state["step"] = _step_as(state["step"], param, group)
    if _is_torch_optimizer(optimizer):
        _move_steps_to_params(optimizer)


def capture_key(model, optimizer, *extra) -> tuple:
    """What a captured step depends on, to tell when a graph must be captured anew.

    A graph reads and writes fixed addresses and has Python numbers (a float learning
    rate, weight decay, ...) baked in, so it is stale once any of these changes: the
    storage of a parameter, buffer or optimizer-state tensor, a hyperparameter, or one
    of ``extra`` (tensors count by storage, anything else by identity or value).
    """
    tensors = [*model.parameters(), *model.buffers()]
    for state in optimizer.state.values():
        tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
    settings = [
        (name, value.data_ptr() if isinstance(value, torch.Tensor) else value)
        for group in optimizer.param_groups
        for name, value in group.items()
        if name != "params"
    ]
    others = [x.data_ptr() if isinstance(x, torch.Tensor) else id(x) for x in extra]
    return tuple(t.data_ptr() for t in tensors), repr(settings), tuple(others)


class GraphedStep:
    """Runs full-size training steps: eagerly while warming up, then by graph replay.

    Args:
        eager_step: ``eager_step(index) -> (outputs, targets)`` runs one eager training
            step on the batch ``index``, adding its loss to a preallocated epoch sum.
        params: Every parameter whose gradient the step computes.
        device: The CUDA device everything lives on.
        key_fn: Returns the ``capture_key`` of the current state; stored as ``key``
            right after the capture, so the owner can tell when the graph is stale.
    """

    def __init__(self, eager_step, params, device: torch.device, key_fn):
        self.eager_step = eager_step
        self.key_fn = key_fn
        self.key = None
        self.params = list(params)
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.warmups_left = WARMUP_STEPS
        self.graph = None
        self.failure: Exception | None = None
        self.static_index = self.static_outputs = self.static_targets = None

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trains on the batch ``index`` (always of the captured size)."""
        if self.graph is not None:
            self.static_index.copy_(index)
            self.graph.replay()
            return self.static_outputs, self.static_targets
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            result = self.eager_step(index)
        current.wait_stream(self.stream)
        self.warmups_left -= 1
        if self.warmups_left == 0:
            try:
                self._capture(index)
            except Exception as error:  # e.g. a loss that syncs with the host (.item())
                self.failure = error
        return result

    def _capture(self, index: torch.Tensor) -> None:
        self.static_index = index.clone()
        # Backward must allocate the gradients inside the graph's pool (PyTorch docs).
        for param in self.params:
            param.grad = None
        stream = torch.cuda.current_stream(self.device)
        generator = torch.cuda.default_generators[self.device.index]
        rng = generator.clone_state() if hasattr(generator, "clone_state") else None
        graph = torch.cuda.CUDAGraph()
        try:
            # Capture on the warm-up stream: libraries cache their handles per stream.
            with torch.cuda.graph(graph, stream=self.stream):
                outputs, targets = self.eager_step(self.static_index)
        except Exception:
            # A failed capture skips restoring the current stream and leaves the RNG in
            # "capturing" mode, where the next eager dropout would fail.
            torch.cuda.set_stream(stream)
            if rng is not None:
                generator.graphsafe_set_state(rng)
            for param in self.params:
                param.grad = None  # they point at memory of the abandoned capture
            raise
        stream.wait_stream(self.stream)
        self.graph, self.key = graph, self.key_fn()
        self.static_outputs, self.static_targets = outputs, targets
