"""The test cells' side of grading: they run in the worker, out of the student's reach.

``npfl-course autograde`` runs a notebook in two processes. The student's cells run in
the sandboxed kernel (:mod:`npfl_course.worker.driver`); the test cells (cells with
points) run here, in the worker, a process the kernel cannot reach (it is not dumpable:
no ptrace, no ``/proc/<pid>/mem``; nothing it writes to files is read back). The
locked cells the test cells build on (the setup) run in both.

In a test cell the student's names are :class:`Proxy` objects (functions, classes) or
copies of their values (data). A call of a proxy sends the arguments to the kernel
(pickled here: the kernel unpickles what the grader made, the safe direction), runs the
student's function there (:mod:`npfl_course.worker.agent`) with this side's random
state, default dtype, grad mode and active :func:`npfl_lib.grading.forbid` targets, and
brings back as plain data, read with ``torch.load(weights_only=True)`` and a list of
classes (torch's and npfl_lib's modules and optimizers): the result, the arguments after
the call (changes made in place, gradients included, are copied into the objects the
test passed, the tensors of data sets too: :func:`agent.reachable`; a result that is an
argument is that argument) and the random state after
it. What the call printed or displayed appears in the test cell's output; an error it
raised is raised here (builtin and torch exception classes as themselves, others under
their name) with the kernel's traceback. Comparisons, time limits (the kernel is
interrupted from here) and so the points are decided here only; the hidden tests never
enter the kernel.

What an assignment's test cells may do is in the README ("Test cells run out of the
student's reach"): pass data to the student's functions (tensors, numbers, strings,
lists, tuples, dicts, generators, modules; not open files, lambdas or what a test cell
defines) and expect back the same, torch's modules and optimizers and numpy values. The
student's own callables stay in the kernel (:class:`Remote`), a module of the student's
own class arrives as a :class:`StudentModule` whose forward and backward run there, any
other object of the student's class as :class:`Unreadable`.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import copy
import io
import os
import pickle
import queue
import signal
import sys
import time
import traceback
import types
import uuid
from collections.abc import Callable
from typing import Any

import torch

from npfl_course.worker import agent

AGENT = "__import__('npfl_course.worker.agent', fromlist=['call'])"
MAX_REPLY_BYTES = 384 << 20  # one call's reply
DRAIN_SECONDS = 10  # after an interrupt, how long the kernel has to answer
OUTPUT_TYPES = (
    "stream",
    "display_data",
    "update_display_data",
    "clear_output",
    "error",
    "execute_result",  # turned into a display (see _as_display)
)
CELL_FILENAME = "<test cell {index}>"


class CellTimeoutError(Exception):
    """The test cell ran past the per-cell time limit (the kernel was interrupted)."""


class DeadKernelError(Exception):
    """The student's kernel died during a call."""


class StudentError(Exception):
    """An error of the student's code whose class the grader does not have."""


class Unreadable:
    """An object of the student's that the grader cannot rebuild (a class defined in the
    notebook, a lambda, ...): its type and repr, and an error on any use."""

    def __init__(self, type_name: str, text: str, why: str = "") -> None:
        self._type, self._text, self._why = type_name, text, why

    def __repr__(self) -> str:
        return f"<{self._type} object from the student's kernel: {self._text}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        why = f" ({self._why})" if self._why else ""
        raise TypeError(
            f"the grader cannot use an object of type {self._type}{why}: the tests can "
            "read tensors, numbers, strings, lists, tuples, dicts, torch.nn modules and "
            "torch.optim optimizers"
        )


class Proxy:
    """A student's function or class in a test cell: calls run in the student's kernel."""

    def __init__(self, calls: KernelCalls, name: str) -> None:
        self._calls, self.__name__ = calls, name
        self.__qualname__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._calls.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__} in the student's kernel>"

    def __reduce__(self):
        return (agent.lookup, (self.__name__,))


class Remote(Proxy):
    """A callable the student's code returned (a function, a lambda, an instance of the
    student's class such as its own ``nn.Module``): it stays in the kernel; calling it
    here calls it there."""

    def __init__(self, calls: KernelCalls, marker: dict) -> None:
        super().__init__(calls, str(marker.get("name") or "object"))
        self.number = int(marker.get("id", 0))
        self._type, self._repr = str(marker.get("type"))[:200], str(marker.get("repr"))[:300]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._calls.call(str(self.number), args, kwargs, op="handle")

    def __repr__(self) -> str:
        return f"<{self._type} in the student's kernel: {self._repr}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise TypeError(
            f"{self._repr} stays in the student's kernel (an object of its own class "
            f"{self._type}): the tests can call it, not read its attribute {name!r}"
        )

    def __reduce__(self):
        return (agent.handle_lookup, (self.number,))


# -- from the kernel: plain data only ------------------------------------------------


def _classes(root: Any, base: type) -> list[type]:
    found = []
    for value in vars(root).values():
        if isinstance(value, type) and issubclass(value, base):
            found.append(value)
    return found


_allowed: list[Any] = []
_optimizers: dict[str, type] = {}


def allowed_globals() -> list[Any]:
    """What a reply may name: torch's and npfl_lib's module classes, and dict (the
    optimizers come as markers, see :class:`npfl_course.worker.agent._Packer`)."""
    if not _allowed:
        roots: list[Any] = [torch.nn, torch.nn.modules]
        roots += [m for n, m in sys.modules.items() if n.startswith("torch.nn.modules.") and m]
        roots += [
            m
            for n, m in sys.modules.items()
            if (n == "npfl_lib" or n.startswith("npfl_lib.")) and m
        ]
        classes = {c for root in roots for c in _classes(root, torch.nn.Module)}
        _allowed.extend(sorted(classes, key=lambda c: (c.__module__, c.__qualname__)))
        _allowed.append(dict)
        optimizers = [
            m
            for n, m in sys.modules.items()
            if (n.startswith("torch.optim") or n.startswith("npfl_lib")) and m
        ]
        for root in optimizers:
            for cls in _classes(root, torch.optim.Optimizer):
                _optimizers[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return _allowed


def decode(data: bytes) -> dict:
    """A reply (``torch.save``) as data; raises ValueError when it is not one."""
    if len(data) > MAX_REPLY_BYTES:
        raise ValueError(f"the reply is larger than {MAX_REPLY_BYTES >> 20} MiB")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            reply = torch.load(io.BytesIO(data), weights_only=True, map_location=None)
    except Exception as exc:  # noqa: BLE001 - anything the kernel sent that is not a reply
        raise ValueError(f"the grader cannot read what came back ({_first_line(exc)})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("outcome"), dict):
        raise ValueError("the grader cannot read what came back (not a reply)")
    return reply


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "Unsupported global" in line:
            return line.strip()[:300]
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _marker(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("__npfl__"), str):
        return value["__npfl__"]
    return None


class Receiver:
    """Rebuilds what came back, maps the arguments' counterparts to the test's objects and
    copies changes made in place (see the module docstring)."""

    def __init__(self, calls: KernelCalls | None = None) -> None:
        self.calls = calls
        self.mapping: dict[int, Any] = {}  # id(decoded) -> the test's object
        self.keep: list[Any] = []  # the decoded objects, alive while ids are compared

    # the arguments
    def take_back(self, originals: list, states: list) -> None:
        """Applies what a call did to its arguments: ``states[i]`` is the kernel's
        counterpart of ``originals[i]`` (both listed by :func:`agent.reachable`) after
        the call. Counterparts map to the test's objects; tensors, gradients, modules'
        modes, generators and the contents of lists and dicts are brought up to date (a
        list entry the call replaced becomes the new object, as in one process)."""
        if len(states) != len(originals):
            raise ValueError("what came back does not match the arguments")
        pairs = list(zip(originals, states, strict=True))
        for original, state in pairs:  # identities first: contents may refer to any
            value = state.get("value") if _marker(state) == "tensor" else state
            if _marker(state) == "module":
                value = state.get("module")
            if isinstance(original, torch.Tensor) and isinstance(value, torch.Tensor):
                self.mapping[id(value)] = original
            elif isinstance(original, torch.nn.Module) and isinstance(value, torch.nn.Module):
                self.mapping[id(value)] = original
                mine = dict(original.named_modules(remove_duplicate=False))
                for name, module in value.named_modules(remove_duplicate=False):
                    if name in mine:
                        self.mapping[id(module)] = mine[name]
            self.keep.append(state)
        for original, state in pairs:
            kind = _marker(state)
            if isinstance(original, torch.Tensor):
                tensor, grad = state, None
                if kind == "tensor":
                    tensor, grad = state.get("value"), state.get("grad")
                if isinstance(tensor, torch.Tensor):
                    self._tensor(original, tensor, grad)
            elif isinstance(original, torch.nn.Module) and kind in ("module", "module_state"):
                modes = state.get("training")
                if kind == "module" and isinstance(state.get("module"), torch.nn.Module):
                    modes = {n: m.training for n, m in state["module"].named_modules()}
                modes = modes if isinstance(modes, dict) else {}
                for name, module in original.named_modules():
                    if name in modes:
                        module.training = bool(modes[name])
            elif isinstance(original, torch.Generator) and kind == "generator":
                with contextlib.suppress(Exception):
                    original.set_state(state["state"])
            elif type(original) is list and kind == "list":
                raw = state.get("items") or []
                olds = list(original) + [_MISSING] * max(len(raw) - len(original), 0)
                original[:] = [self._item(old, new) for old, new in zip(olds, raw, strict=False)]
            elif type(original) is dict and kind == "dict":
                items = [(self.receive(k), v) for k, v in state.get("items") or []]
                new_items = {}
                with contextlib.suppress(TypeError):
                    new_items = {k: self._item(original.get(k, _MISSING), v) for k, v in items}
                original.clear()
                original.update(new_items)

    def _item(self, old: Any, new: Any) -> Any:
        """An entry of a list or dict argument after the call: the test's own object where
        the kernel's is its counterpart, or could not come back (an object the grader
        cannot rebuild, which the call is taken not to have replaced), or is equal to it
        (a number, a string); else what came back."""
        received = self.receive(new)
        if old is _MISSING or received is old:
            return received
        if _marker(new) in ("opaque", "handle") or isinstance(received, Unreadable):
            return old
        if type(received) is type(old) and isinstance(old, (int, float, str, bytes, tuple)):
            with contextlib.suppress(Exception):
                if received == old:
                    return old
        return received

    def _tensor(self, original, decoded, grad) -> None:
        with torch.no_grad():
            same = (
                decoded.shape == original.shape
                and decoded.dtype == original.dtype
                and decoded.device == original.device
            )
            if same:
                if not torch.equal(decoded, original):
                    original.copy_(decoded)
            else:
                original.data = decoded.detach()
        if grad is None or not isinstance(grad, torch.Tensor):
            if original.grad is not None and original.is_leaf:
                original.grad = None
        elif original.is_leaf:
            if (
                original.grad is not None
                and original.grad.shape == grad.shape
                and original.grad.dtype == grad.dtype
            ):
                with torch.no_grad():
                    original.grad.copy_(grad)
            else:
                with contextlib.suppress(RuntimeError):
                    original.grad = grad.detach()

    # the result
    def receive(self, value: Any, depth: int = 0) -> Any:
        """``value`` with markers rebuilt and the arguments' counterparts replaced."""
        if id(value) in self.mapping:
            return self.mapping[id(value)]
        if depth > agent.MAX_DEPTH:
            return Unreadable("object", "...", "nested too deeply")
        kind = _marker(value)
        if kind == "tensor":
            tensor = self.receive(value.get("value"), depth + 1)
            grad = value.get("grad")
            if (
                isinstance(tensor, torch.Tensor)
                and isinstance(grad, torch.Tensor)
                and (tensor.is_leaf and tensor.grad is None)
            ):
                with contextlib.suppress(RuntimeError):
                    tensor.grad = grad
            return tensor
        if kind == "module":
            module = self.receive(value.get("module"), depth + 1)
            if isinstance(module, torch.nn.Module) and id(value.get("module")) not in self.mapping:
                parameters = dict(module.named_parameters(remove_duplicate=False))
                for name, grad in (value.get("grads") or {}).items():
                    if name in parameters and isinstance(grad, torch.Tensor):
                        with contextlib.suppress(RuntimeError):
                            parameters[name].grad = grad
            return module
        if kind == "differentiable":
            return self._differentiable(value, depth)
        if kind == "student_module":
            return self._student_module(value, depth)
        if kind == "handle":
            return (
                Remote(self.calls, value)
                if self.calls is not None
                else Unreadable(str(value.get("type")), str(value.get("repr")), "no kernel")
            )
        if kind == "generator":
            generator = torch.Generator(device=str(value.get("device", "cpu")))
            with contextlib.suppress(Exception):
                generator.set_state(value["state"])
            return generator
        if kind == "numpy":
            import numpy

            array = value["array"].numpy() if isinstance(value.get("array"), torch.Tensor) else 0
            return array[()] if value.get("scalar") else numpy.asarray(array)
        if kind == "set":
            items = [self.receive(v, depth + 1) for v in value.get("items", [])]
            with contextlib.suppress(TypeError):
                return frozenset(items) if value.get("frozen") else set(items)
            return Unreadable("set", repr(items)[:300], "unhashable items")
        if kind == "optimizer":
            return self._optimizer(value, depth)
        if kind == "opaque":
            return Unreadable(
                str(value.get("type"))[:200],
                str(value.get("repr"))[:300],
                str(value.get("why", ""))[:200],
            )
        if type(value) is list:
            return [self.receive(v, depth + 1) for v in value]
        if type(value) is tuple:
            return tuple(self.receive(v, depth + 1) for v in value)
        if type(value) is dict:
            return {
                self.receive(k, depth + 1): self.receive(v, depth + 1) for k, v in value.items()
            }
        return value

    def _differentiable(self, value: dict, depth: int) -> Any:
        """The student's scalar, whose backward() gives the test's tensors the gradients
        the kernel computed (first order; see agent._Packer.differentiable)."""
        result = value.get("value")
        pairs = [
            (self.mapping.get(id(leaf)), grad)
            for leaf, grad in zip(value.get("leaves") or [], value.get("grads") or [], strict=False)
        ]
        pairs = [
            (leaf, grad)
            for leaf, grad in pairs
            if isinstance(leaf, torch.Tensor)
            and leaf.requires_grad
            and isinstance(grad, torch.Tensor)
        ]
        if not isinstance(result, torch.Tensor) or not pairs:
            return result
        return _Gradients.apply(result, [g for _, g in pairs], *[leaf for leaf, _ in pairs])

    def _student_module(self, value: dict, depth: int) -> Any:
        """A module of the student's own class, as a :class:`StudentModule` of the same
        structure and class name holding its tensors."""
        if self.calls is None:
            return Unreadable(str(value.get("type")), str(value.get("repr")), "no kernel")
        name = str(value.get("name") or "Module")[:100]
        cls = type(name, (StudentModule,), {"__module__": "student"})
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
        self.mapping[id(value)] = module
        for key, child in (value.get("children") or {}).items():
            child = self.receive(child, depth + 1)
            if isinstance(child, torch.nn.Module):
                module.add_module(str(key), child)
        for key, tensor in (value.get("parameters") or {}).items():
            tensor = self.receive(tensor, depth + 1)
            if isinstance(tensor, torch.Tensor):
                if not isinstance(tensor, torch.nn.Parameter):
                    tensor = torch.nn.Parameter(tensor, tensor.requires_grad)
                module.register_parameter(str(key), tensor)
        for key, tensor in (value.get("buffers") or {}).items():
            if isinstance(tensor, torch.Tensor):
                module.register_buffer(str(key), self.receive(tensor, depth + 1))
        module.training = bool(value.get("training", True))
        for key, item in (value.get("attributes") or {}).items():
            if isinstance(key, str) and not hasattr(module, key):
                with contextlib.suppress(Exception):
                    setattr(module, key, item)
        object.__setattr__(module, "_npfl_remote", (self.calls, int(value.get("id", 0))))
        object.__setattr__(module, "_npfl_type", str(value.get("type"))[:200])
        return module

    def _optimizer(self, value: dict, depth: int) -> Any:
        allowed_globals()
        cls = _optimizers.get(str(value.get("class")))
        if cls is None:
            return Unreadable(str(value.get("class"))[:200], "an optimizer", "an unknown class")
        groups = []
        for group in value.get("param_groups") or []:
            groups.append({k: self.receive(v, depth + 1) for k, v in group.items()})
        state = collections.defaultdict(dict)
        for param, entry in value.get("state") or []:
            state[self.receive(param, depth + 1)] = self.receive(entry, depth + 1)
        optimizer = cls.__new__(cls)
        try:
            optimizer.__setstate__(
                {
                    "defaults": self.receive(value.get("defaults"), depth + 1),
                    "state": state,
                    "param_groups": groups,
                }
            )
        except Exception as exc:  # noqa: BLE001 - a broken optimizer from the kernel
            return Unreadable(cls.__qualname__, "an optimizer", _first_line(exc))
        return optimizer


_MISSING = object()


class _Gradients(torch.autograd.Function):
    """value, with backward() giving each leaf ``upstream * its gradient``."""

    @staticmethod
    def forward(ctx, value, grads, *leaves):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        return (None, None, *[(upstream * g).to(g.dtype) for g in ctx.grads])


class RemoteGraph(torch.autograd.Function):
    """A forward pass that ran in the kernel; backward asks the kernel too."""

    @staticmethod
    def forward(ctx, calls, graph, output, *leaves):
        ctx.calls, ctx.graph = calls, graph
        return output.clone()

    @staticmethod
    def backward(ctx, grad_output):
        grads = ctx.calls.call(str(ctx.graph), (grad_output,), {}, op="backward")
        return (None, None, None, *grads)


class StudentModule(torch.nn.Module):
    """A module of the student's own class: the structure, parameters, buffers
    and plain attributes are here (``.to``, ``.eval``, ``.parameters()``, an
    optimizer work as on any module), the forward runs in the student's kernel
    with these tensors, and its backward too."""

    def forward(self, *args, **kwargs):
        calls, number = self._npfl_remote
        state = {k: v.detach() for k, v in self.state_dict().items()}
        modes = {name: m.training for name, m in self.named_modules()}
        extra = {"state": state, "modes": modes}
        result = calls.call(str(number), args, kwargs, op="forward", extra=extra)
        buffers = dict(self.named_buffers())
        with torch.no_grad():
            for name, tensor in (result.get("buffers") or {}).items():
                if name in buffers and isinstance(tensor, torch.Tensor):
                    buffers[name].copy_(tensor)
        output = result.get("output")
        if result.get("graph") is None or not isinstance(output, torch.Tensor):
            return output
        parameters = dict(self.named_parameters())
        leaves = [parameters[n] for n in result.get("leaves") or []]
        leaves += [args[i] for i in result.get("inputs") or []]
        return RemoteGraph.apply(calls, result["graph"], output, *leaves)

    def npfl_reduce(self):
        """How it travels to the kernel: the student's object with this state."""
        calls, number = self._npfl_remote
        state = {k: v.detach() for k, v in self.state_dict().items()}
        modes = {name: m.training for name, m in self.named_modules()}
        return (agent.load_module_state, (number, state, modes))

    def __deepcopy__(self, memo):
        # A copy with its own tensors; both run their forward on the kernel's
        # object, which gets the caller's tensors each time.
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for key, item in self.__dict__.items():
            if key == "_npfl_remote":
                object.__setattr__(new, key, item)
            else:
                new.__dict__[key] = copy.deepcopy(item, memo)
        return new


# -- to the kernel: pickles made here --------------------------------------------------


class _RequestPickler(pickle.Pickler):
    """Pickles a call's arguments; the student's and the test's own functions and
    classes travel by name (the kernel has the same setup), tensors with their gradients."""

    def __init__(self, file, namespace: dict, shared: set[str]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.namespace, self.shared = namespace, shared

    def reducer_override(self, obj):  # noqa: C901 - one branch per kind
        if isinstance(obj, Remote):
            return (agent.handle_lookup, (obj.number,))
        if isinstance(obj, StudentModule):
            return obj.npfl_reduce()
        if isinstance(obj, Proxy):
            return (agent.lookup, (obj.__name__,))
        if isinstance(obj, (types.FunctionType, type)) and (
            getattr(obj, "__globals__", None) is self.namespace
            or getattr(obj, "__module__", None) == "__main__"
        ):
            if obj.__name__ not in self.shared:
                raise pickle.PicklingError(
                    f"{obj.__name__} is defined in a test cell, which the student's kernel "
                    "does not run: define it in a locked setup cell"
                )
            return (agent.lookup, (obj.__name__,))
        if isinstance(obj, torch.Tensor) and (
            obj.grad is not None if obj.is_leaf else obj.requires_grad
        ):
            parameter = isinstance(obj, torch.nn.Parameter)
            grad = obj.grad if obj.is_leaf else None
            return (agent.with_grad, (obj.detach(), obj.requires_grad, parameter, grad))
        return NotImplemented


def encode_request(message: dict, namespace: dict, shared: set[str]) -> bytes:
    """A call as the kernel unpickles it; ``shared``: the names the kernel has too."""
    buffer = io.BytesIO()
    _RequestPickler(buffer, namespace, shared).dump(message)
    return buffer.getvalue()


def _materialized(value: Any) -> Any:
    """Generators and iterators of the test (``model.parameters()``) as one-shot
    iterators over their items (see :class:`agent.OneShot`)."""
    if isinstance(value, (types.GeneratorType, map, filter, zip)):
        return agent.OneShot(list(value))
    return value


# -- errors ----------------------------------------------------------------------------

_NOT_RAISED_AS_IS = (SystemExit, KeyboardInterrupt, GeneratorExit)


def remote_exception(error: dict) -> BaseException:
    """The kernel's error as an exception here: builtin, torch and npfl_lib classes as
    themselves, others as a :class:`StudentError` subclass of the same name."""
    module, name = str(error.get("module", ""))[:200], str(error.get("name", "Error"))[:200]
    message = str(error.get("message", ""))
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module.split(".")[0] in ("torch", "npfl_lib") and module in sys.modules:
        cls = sys.modules[module]
        for part in name.split("."):
            cls = getattr(cls, part, None)
    exc: BaseException | None = None
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, _NOT_RAISED_AS_IS)
    ):
        with contextlib.suppress(Exception):
            exc = cls(message)
    if exc is None:
        shown = name.rsplit(".", 1)[-1] or "Error"
        exc = type(shown, (StudentError,), {"__module__": module or "builtins"})(message)
    traceback_lines = error.get("traceback")
    exc.student_traceback = (
        [str(line) for line in traceback_lines][:60] if isinstance(traceback_lines, list) else []
    )
    return exc


# -- the calls -------------------------------------------------------------------------


def _interrupt_pause(since: float) -> float:
    """Seconds between the interrupts of a call that does not stop: a loop around
    ``os.fork`` (a fork bomb, stopped by the process limit) handles almost every
    interrupt in fork's Python hooks, which drop it, so after a second they come fast
    enough that one lands in the loop itself (the agent ignores those after it)."""
    return 0.2 if time.monotonic() - since < 1 else 0.002


class KernelCalls:
    """Calls into the student's kernel, with a blocking client of the worker's.

    Args:
        connection (dict): The kernel's connection info.
        emit (callable): Gets each output message of a call (stream, display, error), to
            show in the running test cell.
        kernel_pid (callable): The kernel's PID now (None once dead).
        before_interrupt, after_interrupt (callable): The driver's care for a kernel
            stopped mid-call (processes the call left behind).
        also_drain (list): Other subscribers of the kernel's iopub channel (nbclient's,
            as synchronous ZeroMQ sockets), emptied before each request: what the calls
            publish reaches them too, and one left to fill up would have ZeroMQ drop the
            next cell's messages (nbclient then never sees that cell finish).
    """

    def __init__(
        self,
        connection: dict,
        emit: Callable[[dict], None],
        kernel_pid: Callable[[], int | None],
        before_interrupt: Callable[[], None] = lambda: None,
        after_interrupt: Callable[[], None] = lambda: None,
        also_drain: list | None = None,
    ) -> None:
        from jupyter_client.blocking.client import BlockingKernelClient

        self.client = BlockingKernelClient()
        self.client.load_connection_info(connection)
        self.client.start_channels()
        import zmq

        self.poller = zmq.Poller()
        self.poller.register(self.client.iopub_channel.socket, zmq.POLLIN)
        self.poller.register(self.client.shell_channel.socket, zmq.POLLIN)
        self._connect()
        self.emit, self.kernel_pid = emit, kernel_pid
        self.before_interrupt, self.after_interrupt = before_interrupt, after_interrupt
        self.also_drain = list(also_drain or [])
        self.namespace: dict = {}
        self.shared: set[str] = set()  # names bound in the kernel too (setup, the student's)
        self.deadline = float("inf")
        self.dead: str | None = None
        self.calls = 0
        self.seconds = 0.0
        self.overhead = 0.0  # of self.seconds, spent outside the student's code
        self.last_rng: Any = None  # the random state both sides had after the last call
        self.comm_id = ""
        self.deadline = time.monotonic() + 60
        try:
            self._listen()
        finally:
            self.deadline = float("inf")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()

    # one request
    def _connect(self, seconds: float = 60) -> None:
        """Returns once the iopub channel hears the kernel (a ZeroMQ subscriber misses
        what was published before it connected). The kernel is running already (nbclient
        waited for it); jupyter_client's ``wait_for_ready`` would cost 0.2 s more."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg_id = self.client.kernel_info()
            ask_again = time.monotonic() + 0.5
            while time.monotonic() < ask_again:
                self.poller.poll(50)
                _ready_messages(self.client.shell_channel)  # the replies: not needed
                if any(
                    msg["parent_header"].get("msg_id") == msg_id
                    for msg in _ready_messages(self.client.iopub_channel)
                ):
                    return
        raise RuntimeError(f"the kernel did not answer the grader within {seconds:g} s")

    def _listen(self) -> None:
        """Opens the comm the calls travel on (:func:`agent.listen`)."""
        self._drain()
        msg_id = self.client.execute("", silent=True, store_history=False, allow_stdin=False,
                                     user_expressions={"ok": f"{AGENT}.listen()"})  # fmt: skip
        content = self._finish(msg_id, comm=False)
        answer = ((content or {}).get("user_expressions") or {}).get("ok", {})
        if answer.get("status") != "ok":
            raise RuntimeError(f"the grader's agent did not start in the kernel: {answer}")
        self.comm_id = uuid.uuid4().hex
        content = {"comm_id": self.comm_id, "target_name": agent.TARGET, "data": {}}
        opening = self.client.session.msg("comm_open", content)
        self.client.shell_channel.send(opening)
        self._finish(opening["header"]["msg_id"], comm=False, reply=False)

    def _request(self, data: dict, payload: bytes | None = None) -> tuple[dict, bytes | None]:
        """Sends one request on the comm; its outputs go to ``emit``; returns the answer's
        data and buffer (after the kernel is idle again)."""
        if self.dead:
            raise DeadKernelError(f"the kernel died earlier: {self.dead}")
        self._drain()
        message = self.client.session.msg("comm_msg", {"comm_id": self.comm_id, "data": data})
        buffers = [payload] if payload is not None else None
        self.client.session.send(self.client.shell_channel.socket, message, buffers=buffers)
        answer = self._finish(message["header"]["msg_id"], comm=True)
        if not isinstance(answer, dict):
            raise StudentError(
                "the student's kernel did not answer the grader's call (its code closed or "
                "replaced the grader's channel to the kernel?)"
            )
        content = answer.get("content", {})
        found = content.get("data") if isinstance(content.get("data"), dict) else {}
        buffers = answer.get("buffers") or []
        return found, (bytes(buffers[0]) if buffers else None)

    def _finish(self, msg_id: str, comm: bool, reply: bool = True) -> dict | None:
        """Waits for the kernel to finish the request ``msg_id`` (see :meth:`_wait`),
        interrupting it when the time is up."""
        try:
            return self._wait(msg_id, comm, reply)
        except BaseException:
            # The cell's timer waits until the kernel has stopped (it fires after).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                self._stop(msg_id)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
            raise

    def _drain(self) -> None:
        """Drops what the kernel published since the last call (the student's cells'
        outputs, which the driver keeps): a full queue would drop this call's messages."""
        import zmq

        sockets = [getattr(c, "socket", None)
                   for c in (self.client.iopub_channel, self.client.shell_channel)]  # fmt: skip
        for socket in sockets + self.also_drain:
            while socket is not None:
                try:
                    socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break

    def _wait(self, msg_id: str, comm: bool, reply: bool = True) -> dict | None:
        """Once the kernel is idle after ``msg_id``: its answer on the comm (``comm``; the
        message, None if none came) or its reply's content (None if ``reply`` is false);
        its outputs are emitted meanwhile.

        The channels' sockets are polled together and read directly (the client's own
        getters hop to a thread for every message, which cost milliseconds per call)."""
        import zmq

        iopub, shell = self.client.iopub_channel, self.client.shell_channel
        answer, idle, replied, checked = None, False, None, time.monotonic()
        shell_reply = reply and not comm
        while not idle or (shell_reply and replied is None):
            now = time.monotonic()
            if now > self.deadline:
                raise CellTimeoutError(self.timeout_message)
            if now - checked > 0.5:
                checked = now
                self._check_alive()
            if replied is not None and now - replied > DRAIN_SECONDS:
                break  # the reply came; the kernel did not go idle: do not wait forever
            ready = dict(self.poller.poll(100))
            if ready.get(iopub.socket) == zmq.POLLIN:
                for msg in _ready_messages(iopub):
                    if msg["parent_header"].get("msg_id") != msg_id:
                        continue
                    kind = msg["msg_type"]
                    if kind == "status" and msg["content"].get("execution_state") == "idle":
                        idle = True
                    elif kind == "comm_msg" and comm and answer is None:
                        if msg["content"].get("comm_id") == self.comm_id:
                            answer = msg
                    elif kind in OUTPUT_TYPES:
                        self.emit(_as_display(msg))
            if ready.get(shell.socket) == zmq.POLLIN:
                for msg in _ready_messages(shell):
                    if replied is None and msg["parent_header"].get("msg_id") == msg_id:
                        answer, replied = msg["content"], time.monotonic()
        return answer

    def _ambient(self) -> dict:
        """:func:`agent.ambient`, without the random state when the last call left it as
        it is (the kernel kept it): 5 KB less each way for most calls."""
        state = agent.ambient()
        if self.last_rng is not None and torch.equal(state["rng"], self.last_rng):
            state["rng"] = None
        return state

    def _exclude_overhead(self, elapsed: float, student: Any) -> None:
        """Gives the running time limits (the test's ``time_limit``, the cell's) back the
        time the call spent in our machinery rather than in the student's code, so that
        an honest answer called in a loop is not stopped by the grader's own cost."""
        if not isinstance(student, float) or not 0 <= student <= elapsed:
            return
        overhead = elapsed - student
        self.overhead += overhead
        left, interval = signal.getitimer(signal.ITIMER_REAL)
        if left > 0:
            signal.setitimer(signal.ITIMER_REAL, left + overhead, interval)
        self.deadline += overhead

    timeout_message = "the cell did not finish within its time limit"

    def _check_alive(self) -> None:
        pid = self.kernel_pid()
        if pid is None:
            self.dead = "it stopped answering"
            raise DeadKernelError(f"the kernel died: {self.dead}")

    def _stop(self, msg_id: str) -> None:
        """After an error while waiting (a time limit): interrupts the kernel until it
        is idle after the request; a kernel that does not stop within DRAIN_SECONDS is
        killed."""
        import zmq

        pid = self.kernel_pid()
        if pid is None or self.dead:
            return
        self.before_interrupt()
        start = time.monotonic()
        iopub = self.client.iopub_channel
        while time.monotonic() < start + DRAIN_SECONDS:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
            if (
                dict(self.poller.poll(int(_interrupt_pause(start) * 1000))).get(iopub.socket)
                != zmq.POLLIN
            ):
                if self.kernel_pid() is None:
                    self.dead = "it died while the call was interrupted"
                    return
                continue
            for msg in _ready_messages(iopub):
                if (
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["msg_type"] == "status"
                    and msg["content"].get("execution_state") == "idle"
                ):
                    self.after_interrupt()
                    return
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        self.dead = "it ignored the interrupt after the time limit and was killed"

    # the operations
    def describe(self, names: list[str]) -> dict[str, str]:
        """``{name: "callable" | "value"}`` for those of ``names`` the student bound."""
        found = self._request({"op": "describe", "names": sorted(names)})[0].get("found")
        if not isinstance(found, dict):
            return {}
        return {k: v for k, v in found.items() if k in names and v in ("callable", "value")}

    def call(
        self, name: str, args: tuple, kwargs: dict, op: str = "call", extra: Any = None
    ) -> Any:
        """``name(*args, **kwargs)`` in the kernel (``op="get"``: the value of ``name``)."""
        start = time.monotonic()
        try:
            return self._call(start, name, args, kwargs, op, extra)
        finally:
            self.calls += 1
            self.seconds += time.monotonic() - start

    def _call(self, start: float, name: str, args: tuple, kwargs: dict, op: str,
              extra: Any) -> Any:  # fmt: skip
        from npfl_lib.grading import active_forbidden

        args = tuple(_materialized(a) for a in args)
        kwargs = {k: _materialized(v) for k, v in kwargs.items()}
        originals = agent.reachable([args, kwargs])
        message = {
            "op": op,
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "ambient": self._ambient(),
            "forbidden": active_forbidden(),
            "extra": extra,
        }
        try:
            request = encode_request(message, self.namespace, self.shared)
        except Exception as exc:  # noqa: BLE001 - the test passed what cannot travel
            raise TypeError(
                f"the grader cannot pass the arguments of {name}() to the student's kernel: {exc}"
            ) from None
        answer, payload = self._request({"op": "call"}, request)
        if payload is None:
            failed = answer.get("failed")
            raise StudentError(f"{name}(): the call failed in the student's kernel: {failed}")
        try:
            reply = decode(payload)
        except ValueError as exc:
            raise TypeError(f"{name}(): {exc}") from None
        with contextlib.suppress(Exception):
            agent.set_ambient(reply["ambient"])
        self._exclude_overhead(time.monotonic() - start, reply.get("seconds"))
        self.last_rng = torch.get_rng_state()  # what the kernel keeps as "after" too
        receiver = Receiver(self)
        if isinstance(reply.get("received"), list):
            try:
                receiver.take_back(originals, reply["received"])
            except (ValueError, TypeError, AttributeError) as exc:
                raise TypeError(f"{name}(): {exc}") from None
        outcome = reply["outcome"]
        if not outcome.get("ok"):
            error = outcome.get("error") if isinstance(outcome.get("error"), dict) else {}
            raise remote_exception(error)
        return receiver.receive(outcome.get("value"))


# -- the test cells ----------------------------------------------------------------------


def bound_and_read(source: str) -> tuple[set[str], set[str]] | None:
    """Names a cell binds at its top level and names it reads anywhere, None if it does
    not parse (a name assigned inside a function, even ``global``, is not bound here)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    bound: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            pending.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    read = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    return bound, read


def _ready_messages(channel) -> list[dict]:
    """The messages a channel holds now, without waiting."""
    found = []
    with contextlib.suppress(queue.Empty):
        while True:
            found.append(channel.get_msg(timeout=0))
    return found


def _as_display(msg: dict) -> dict:
    """A call's ``execute_result`` (the student's code called ``sys.displayhook``) as a
    display: nbgrader reads a test cell's result as its partial credit, which only the
    test's own last expression may give."""
    if msg["msg_type"] != "execute_result":
        return msg
    content = {k: v for k, v in msg["content"].items() if k != "execution_count"}
    return {
        **msg,
        "msg_type": "display_data",
        "header": {**msg.get("header", {}), "msg_type": "display_data"},
        "content": content,
    }


def _message(kind: str, content: dict) -> dict:
    """An output of the test cell's own, as a kernel message (the driver bounds both)."""
    return {
        "msg_type": kind,
        "header": {"msg_type": kind},
        "parent_header": {},
        "metadata": {},
        "content": content,
    }


class _CellStream(io.TextIOBase):
    """sys.stdout or sys.stderr of a test cell: text becomes stream outputs."""

    def __init__(self, name: str, emit: Callable[[dict], None]) -> None:
        self.name, self.emit = name, emit

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            self.emit(_message("stream", {"name": self.name, "text": str(text)}))
        return len(text)


class TrustedCells:
    """Runs test cells (and the setup they need) here, the student's names as proxies."""

    def __init__(self, calls: KernelCalls) -> None:
        self.calls = calls
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        calls.namespace = self.namespace
        self.own: set[str] = set()  # names bound by the cells run here
        self.reads: set[str] = set()  # names the cells run here read (their functions too)
        self.student: dict[str, Any] = {}  # what the student's names are bound to here

    def _refresh(self, names: set[str]) -> None:
        """Binds the student's names that the cells run here read (and did not bind)."""
        wanted = (names & self.reads) - self.own
        kinds = self.calls.describe(sorted(wanted)) if wanted else {}
        for name in wanted:
            kind = kinds.get(name)
            current = self.student.get(name)
            if kind is None:
                if name in self.student:
                    del self.student[name]
                    if self.namespace.get(name) is current:
                        del self.namespace[name]
                continue
            if kind == "callable":
                value = current if isinstance(current, Proxy) else Proxy(self.calls, name)
            else:
                try:
                    value = self.calls.call(name, (), {}, op="get")
                except Exception as exc:  # noqa: BLE001 - shown when the test uses it
                    value = Unreadable("value", name, _first_line(exc))
            self.student[name] = value
            self.namespace[name] = value

    def _student_side(self) -> None:
        """Helpers marked :func:`npfl_lib.grading.student_side` run in the kernel."""
        for name, value in list(self.namespace.items()):
            if isinstance(value, types.FunctionType) and getattr(
                value, "__npfl_student_side__", False
            ):
                self.namespace[name] = Proxy(self.calls, name)

    def run(
        self,
        index: int,
        source: str,
        student_names: set[str],
        emit: Callable[[dict], None],
        seconds: float,
        shared: bool = False,
    ) -> dict | None:
        """Runs one cell's ``source`` here, for at most ``seconds``; returns its error
        output, or None. ``shared``: the kernel runs it too (a setup cell), so what it
        defines may be passed to the student's functions.

        The limit is a ``SIGALRM`` timer, as ``npfl_lib.grading.time_limit``'s: a
        ``time_limit`` in the cell that would end later defers to it, and a call that is
        waiting for the kernel is interrupted (the kernel too) when it fires.
        """

        def on_alarm(signum, frame):
            raise CellTimeoutError(self.calls.timeout_message)

        parsed = bound_and_read(source)
        if parsed is not None:
            self.reads |= parsed[1]
            if shared:
                self.calls.shared |= parsed[0]
        self.calls.shared |= student_names
        self.calls.deadline = time.monotonic() + seconds + 1  # should the timer be lost
        self.calls.emit = emit
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _CellStream("stdout", emit), _CellStream("stderr", emit)
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            if parsed is not None:
                self._refresh(student_names)
            code, last = _compiled(source, CELL_FILENAME.format(index=index))
            exec(code, self.namespace)  # noqa: S102 - the instructor's test cell
            self._student_side()
            if last is not None:
                value = eval(last, self.namespace)  # noqa: S307 - the instructor's code
                if value is not None:
                    emit(
                        _message(
                            "execute_result",
                            {
                                "data": {"text/plain": repr(value)},
                                "metadata": {},
                                "execution_count": None,
                            },
                        )
                    )
        except BaseException as exc:  # noqa: BLE001 - the cell's error is its output
            if isinstance(exc, KeyboardInterrupt):
                raise
            return _error_output(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            sys.stdout, sys.stderr = old_out, old_err
            self.calls.deadline = float("inf")
            if parsed is not None:
                self.own |= parsed[0]
        return None


def _compiled(source: str, filename: str) -> tuple[types.CodeType, types.CodeType | None]:
    """The cell's code, and its last statement apart when it is an expression (shown as
    the cell's result, as IPython does)."""
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body.pop().value), filename, "eval")
    return compile(tree, filename, "exec"), last


_OUR_FILES = (__file__, agent.__file__)
_MACHINERY = ("jupyter_client", "jupyter_core", "zmq", "concurrent", "asyncio", "threading.py")


def _machinery(filename: str) -> bool:
    """Frames of the calls' plumbing, left out of a test cell's traceback."""
    if filename in _OUR_FILES:
        return True
    parts = filename.replace("\\", "/").split("/")
    return any(part in _MACHINERY for part in parts)


def _error_output(exc: BaseException) -> dict:
    """An exception as Jupyter shows it: name, message, the test cell's traceback, and the
    student's kernel's traceback when the error came from there."""
    name = "CellTimeoutError" if isinstance(exc, CellTimeoutError) else type(exc).__name__
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__) if not _machinery(frame.filename)
    ]
    lines = ["Traceback (most recent call last):"] if frames else []
    lines += [line.rstrip("\n") for line in traceback.format_list(frames)]
    lines += [line.rstrip("\n") for line in traceback.format_exception_only(type(exc), exc)]
    student = getattr(exc, "student_traceback", None)
    if student:
        lines.append("In the student's code (the call ran in the notebook's kernel):")
        lines.extend(student)
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = ""
    return {"output_type": "error", "ename": name, "evalue": message, "traceback": lines}
