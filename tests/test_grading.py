"""Tests of npfl_lib.grading: check_close, forbid, time_limit and pick_device."""

from __future__ import annotations

import math
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import npfl_lib
from npfl_lib.functional import softmax as aliased_softmax
from npfl_lib.grading import ForbiddenCallError, check_close, forbid, pick_device, time_limit

# ----------------------------------------------------------------------------------
# check_close
# ----------------------------------------------------------------------------------


def test_check_close_accepts_equal_and_nearly_equal(device):
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, device=device)
    check_close(x, x.clone())
    check_close(x * (1 + 1e-9), x, rtol=1e-8)
    check_close(torch.tensor(1e-10, device=device), torch.tensor(0.0, device=device), atol=1e-9)


def test_check_close_reports_the_first_mismatch(device):
    actual = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 7.0]], device=device)
    expected = torch.tensor([[1.0, 2.0], [3.5, 4.0], [5.0, 6.0]], device=device)
    with pytest.raises(AssertionError) as info:
        check_close(actual, expected, name="softmax(x)")
    message = str(info.value)
    assert message.startswith("softmax(x) differs")
    assert "2 of 6" in message
    assert "index (1, 0)" in message
    assert "got 3.0, expected 3.5" in message
    assert "relative error 0.143" in message


def test_check_close_reports_scalars_and_zero_expected():
    with pytest.raises(
        AssertionError, match=r"loss differs .* \(a scalar\): got 2.0, expected 1.0"
    ):
        check_close(torch.tensor(2.0), torch.tensor(1.0), name="loss")
    with pytest.raises(AssertionError, match="relative error inf"):
        check_close(torch.tensor([1.0]), torch.tensor([0.0]))


def test_check_close_rejects_shape_dtype_device_and_type():
    x = torch.zeros(2, 3)
    with pytest.raises(AssertionError, match=r"grad has shape \(3, 2\), expected \(2, 3\)"):
        check_close(torch.zeros(3, 2), x, name="grad")
    with pytest.raises(
        AssertionError, match=r"out has dtype torch.float64, expected torch.float32"
    ):
        check_close(x.double(), x, name="out")
    with pytest.raises(AssertionError, match="out is on device meta, expected cpu"):
        check_close(torch.zeros(2, 3, device="meta"), x, name="out")
    with pytest.raises(AssertionError, match="out must be a torch.Tensor, got list"):
        check_close([[0.0] * 3] * 2, x, name="out")
    with pytest.raises(AssertionError, match="out must be a torch.Tensor, got numpy.ndarray"):
        check_close(np.zeros((2, 3)), x, name="out")
    with pytest.raises(AssertionError, match="must be a tensor, a number or a numpy array"):
        check_close("0.5", 0.5, name="out")
    with pytest.raises(AssertionError, match="has dtype float32, expected float64"):
        check_close(np.zeros(2, dtype=np.float32), np.zeros(2), name="out")


def test_check_close_accepts_numbers_and_numpy():
    check_close(0.5, 0.5)
    check_close(torch.tensor(0.5), 0.5)
    check_close(np.float64(2.0), 2)
    check_close(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]))
    check_close(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]))
    with pytest.raises(AssertionError, match="got 3.0, expected 2.0"):
        check_close(3, 2.0)


def test_check_close_nan_matches_only_nan(device):
    nan, inf = math.nan, math.inf

    def t(*values):
        return torch.tensor(values, dtype=torch.float64, device=device)

    check_close(t(nan, 1.0), t(nan, 1.0))
    check_close(t(inf, -inf), t(inf, -inf))
    for actual, expected in [(nan, 1.0), (1.0, nan), (inf, -inf), (inf, 1e308), (nan, inf)]:
        with pytest.raises(AssertionError, match="differs"):
            check_close(t(actual), t(expected))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=7),
)
def test_check_close_property(values, position):
    x = torch.tensor(values, dtype=torch.float64)
    check_close(x, x.clone())
    index = position % len(values)
    if math.isfinite(values[index]):
        changed = x.clone()
        changed[index] = values[index] + 1 + abs(values[index]) * 1e-3
        with pytest.raises(AssertionError, match=f"index \\({index},\\)"):
            check_close(changed, x)


# ----------------------------------------------------------------------------------
# forbid
# ----------------------------------------------------------------------------------

SOFTMAXES = ("torch.softmax", "torch.Tensor.softmax", "torch.nn.functional.softmax")


def _originals():
    """Everything forbid may touch, to compare before and after."""
    return {
        "torch.softmax": torch.softmax,
        "special": torch.special.softmax,
        "F.softmax": F.softmax,
        "F.softmax code": F.softmax.__code__,
        "Tensor dict": dict(vars(torch.Tensor)),
        "ref code": npfl_lib.functional.softmax.__code__,
        "backward code": torch.Tensor.backward.__code__,
        "grad code": torch.autograd.grad.__code__,
        "Adam init": torch.optim.Adam.__init__,
        "npfl Adam init": vars(npfl_lib.optim.Adam).get("__init__"),
    }


def assert_forbidden(targets, call, match="is not allowed in this exercise: write it yourself"):
    """``call()`` inside ``forbid(*targets)`` raises ForbiddenCallError matching ``match``.

    One call per block: forbid re-raises on exit when the error was caught inside.
    """
    with pytest.raises(ForbiddenCallError, match=match):
        with forbid(*targets):
            call()


def test_forbid_catches_direct_calls_and_tensor_methods(device):
    x = torch.randn(2, 3, device=device)
    assert_forbidden(SOFTMAXES, lambda: torch.softmax(x, 1), "^torch.softmax is not allowed")
    assert_forbidden(SOFTMAXES, lambda: x.softmax(1), "^torch.Tensor.softmax is not allowed")
    assert_forbidden(SOFTMAXES, lambda: F.softmax(x, 1), "write it yourself$")
    assert_forbidden(["torch.Tensor.softmax"], lambda: F.softmax(x, 1), "torch.Tensor.softmax")
    with forbid(*SOFTMAXES):  # other functions keep working
        check_close(x.exp().log(), x, rtol=1e-5, atol=1e-6)
    check_close(torch.softmax(x, 1), F.softmax(x, 1))
    assert issubclass(ForbiddenCallError, AssertionError)


def test_forbid_catches_aliases_imported_earlier(device, monkeypatch):
    x = torch.randn(4, device=device)
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "my_softmax", torch.softmax, raising=False)
    targets = ["npfl_lib.functional.softmax", "torch.softmax"]
    assert_forbidden(targets, lambda: aliased_softmax(x), "npfl_lib.functional.softmax")
    assert_forbidden(targets, lambda: npfl_lib.functional.activations.softmax(x))
    assert_forbidden(targets, lambda: main.my_softmax(x, 0), "torch.softmax")
    check_close(aliased_softmax(x), torch.softmax(x, 0))
    assert main.my_softmax is torch.softmax


def test_forbid_whole_modules(device):
    x = torch.randn(3, 4, device=device)
    target = torch.tensor([0, 1, 2], device=device)
    params = [torch.zeros(2, device=device, requires_grad=True)]
    targets = ["npfl_lib", "torch.optim"]
    assert_forbidden(
        targets,
        lambda: npfl_lib.functional.cross_entropy(x, target),
        "npfl_lib.functional.cross_entropy",
    )
    assert_forbidden(targets, lambda: npfl_lib.optim.Adam(params), "npfl_lib.optim.Adam")
    assert_forbidden(targets, lambda: torch.optim.SGD(params, lr=0.1), "torch.optim.SGD")
    assert_forbidden(targets, lambda: torch.optim.Adam(params), "torch.optim.Adam")
    with forbid(*targets):  # the grading helpers themselves stay usable
        check_close(x, x)
    npfl_lib.optim.Adam(params)
    torch.optim.SGD(params, lr=0.1)
    check_close(npfl_lib.functional.cross_entropy(x, target), F.cross_entropy(x, target))


def test_forbid_autograd(device):
    w = torch.ones(3, device=device, requires_grad=True)
    assert_forbidden(["autograd"], lambda: (w * 2).sum().backward(), "torch.Tensor.backward")
    assert_forbidden(
        ["autograd"], lambda: torch.autograd.grad((w * 2).sum(), w), "torch.autograd.grad"
    )
    assert_forbidden(
        ["autograd"], lambda: torch.autograd.backward((w * 2).sum()), "torch.autograd.backward"
    )
    (w * 2).sum().backward()
    check_close(w.grad, torch.full((3,), 2.0, device=device))


def test_forbid_restores_everything_after_an_error():
    before = _originals()
    targets = ("npfl_lib", "torch.optim", "autograd", *SOFTMAXES)
    with pytest.raises(ZeroDivisionError), forbid(*targets):
        assert torch.softmax is not before["torch.softmax"]
        assert "softmax" in vars(torch.Tensor)
        1 / 0  # noqa: B018
    assert _originals() == before
    with pytest.raises(ForbiddenCallError), forbid(*targets):
        torch.softmax(torch.zeros(2), 0)
    assert _originals() == before


def test_forbid_nests():
    before = _originals()
    x = torch.randn(3)
    with forbid("torch.softmax", "npfl_lib"):
        with pytest.raises(ForbiddenCallError):
            with forbid("torch.softmax", "torch.Tensor.softmax"):
                x.softmax(0)
        x.softmax(0)  # the inner block's target is allowed again
        assert_forbidden([], lambda: torch.softmax(x, 0), "torch.softmax")
    assert _originals() == before
    with pytest.raises(ForbiddenCallError, match="npfl_lib.functional.softmax"):
        with forbid("npfl_lib"):
            with forbid("npfl_lib.functional.softmax"):
                pass
            aliased_softmax(x)  # still forbidden by the outer block
    assert _originals() == before


def test_forbid_raises_on_exit_when_the_error_was_swallowed():
    def sneaky(x):
        try:
            return torch.softmax(x, 0)
        except Exception:
            return x.exp() / x.exp().sum()

    with pytest.raises(ForbiddenCallError, match="torch.softmax is not allowed"):
        with forbid("torch.softmax"):
            sneaky(torch.randn(3))


FAKE_REFERENCE = """
def make_counter():
    count = 0

    def counter():
        nonlocal count
        count += 1
        return count

    return counter


counter = make_counter()


class WithInit:
    def __init__(self):
        self.ok = True

    def method(self):
        return 1


class WithoutInit:
    pass
"""


def test_forbid_handles_closures_classes_and_methods(monkeypatch):
    module = types.ModuleType("fake_reference")
    exec(FAKE_REFERENCE, module.__dict__)
    monkeypatch.setitem(sys.modules, "fake_reference", module)
    state = lambda: (  # noqa: E731
        module.counter.__code__,
        dict(vars(module.WithInit)),
        dict(vars(module.WithoutInit)),
    )
    before = state()
    assert module.counter.__code__.co_freevars == ("count",)
    assert_forbidden(["fake_reference"], module.counter, "fake_reference.counter")
    assert_forbidden(["fake_reference"], module.WithInit, "fake_reference.WithInit")
    assert_forbidden(["fake_reference"], module.WithoutInit, "fake_reference.WithoutInit")
    method = module.WithInit().method
    assert_forbidden(["fake_reference.WithInit.method"], method, "fake_reference.WithInit.method")
    assert state() == before
    assert module.counter() == 1 and module.WithInit().ok and method() == 1


def test_forbid_rejects_bad_targets():
    with pytest.raises(ValueError, match="'torch.no_such_function' does not name"):
        with forbid("torch.no_such_function"):
            pass
    with pytest.raises(ValueError, match="'no_such_module' does not name"):
        with forbid("no_such_module"):
            pass
    with pytest.raises(ValueError, match="'torch.pi' is not callable"):
        with forbid("torch.pi"):
            pass
    with pytest.raises(TypeError, match="forbid targets must be dotted names"):
        with forbid(torch.softmax):
            pass
    before = _originals()
    with pytest.raises(ValueError), forbid("torch.softmax", "torch.no_such_function"):
        pass
    assert _originals() == before


# ----------------------------------------------------------------------------------
# time_limit and pick_device
# ----------------------------------------------------------------------------------


def test_time_limit_stops_an_infinite_loop():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="time limit of 0.2 s"):
        with time_limit(0.2):
            while True:
                pass
    assert time.monotonic() - start < 2
    assert signal_is_idle()


def test_time_limit_lets_fast_code_finish():
    with time_limit(5):
        total = sum(range(1000))
    assert total == 499500
    assert signal_is_idle()
    time.sleep(0.05)  # no stray alarm afterwards


def test_time_limit_nests():
    with pytest.raises(TimeoutError, match="time limit of 0.3 s"):
        with time_limit(0.3):
            with time_limit(5):  # longer than the outer one: the outer one still fires
                while True:
                    pass
    with pytest.raises(TimeoutError, match="time limit of 0.5 s"):
        with time_limit(0.5):
            with pytest.raises(TimeoutError, match="time limit of 0.1 s"):
                with time_limit(0.1):
                    while True:
                        pass
            while True:  # the outer limit resumes after the inner block
                pass
    assert signal_is_idle()


def test_time_limit_rejects_bad_seconds():
    for bad in (0, -1, math.nan, "1", True):
        with pytest.raises(ValueError, match="seconds must be a positive number"):
            with time_limit(bad):
                pass


def test_time_limit_off_the_main_thread_does_not_limit():
    results = []

    def work():
        with time_limit(0.01):
            time.sleep(0.05)
        results.append("done")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert results == ["done"]


def signal_is_idle() -> bool:
    import signal

    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_pick_device_honours_npfl_device(monkeypatch):
    monkeypatch.setenv("NPFL_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("NPFL_DEVICE", "")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.delenv("NPFL_DEVICE")
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("NPFL_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="NPFL_DEVICE must name a torch device"):
        pick_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("NPFL_DEVICE", "cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device()


def test_warnings_go_to_stdout_so_nbgrader_does_not_zero_the_cell(capsys):
    import warnings

    from npfl_lib import grading

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest records warnings itself; put the module's handler back for this block.
        warnings.showwarning = grading._show_warning_on_stdout
        warnings.warn("harmless deprecation", DeprecationWarning, stacklevel=1)
    captured = capsys.readouterr()
    assert "harmless deprecation" in captured.out
    assert captured.err == ""


def test_check_close_rejects_tensor_subclasses_that_could_fake_equality():
    class AlwaysClose(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return torch.tensor(True)

    fake = torch.zeros(3).as_subclass(AlwaysClose)
    with pytest.raises(AssertionError, match="plain torch.Tensor"):
        check_close(fake, torch.ones(3))
    check_close(torch.nn.Parameter(torch.ones(3)), torch.ones(3))


def test_forbid_only_records_when_told_and_says_what_is_active():
    from npfl_lib.grading import active_forbidden, intercept_forbidden

    assert active_forbidden() == ()
    with forbid("torch.softmax"), forbid("npfl_lib", "torch.softmax"):
        assert active_forbidden() == ("torch.softmax", "npfl_lib")
        assert torch.softmax.__name__ == "forbidden"  # patched here
    intercept_forbidden(False)
    try:
        with forbid("torch.softmax"):
            assert active_forbidden() == ("torch.softmax",)
            torch.softmax(torch.zeros(2), dim=0)  # recorded for another process, not patched
        with pytest.raises(TypeError, match="dotted names"):
            with forbid(3):
                pass
    finally:
        intercept_forbidden(True)
    assert active_forbidden() == ()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        intercept_forbidden("no")
