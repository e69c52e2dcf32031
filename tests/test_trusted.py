"""The test cells run in the worker, out of the student's kernel (issue 12).

The worker is run directly on small notebooks (as ``test_autograde`` does), once as
``npfl-course autograde`` runs it (test cells in the worker, the student's names as
proxies) and, where an attack is checked, once with ``--tests-in-kernel`` (test cells in
the student's kernel, as nbgrader runs them): there the attack must succeed, which shows
that the test would catch it. The attacks graded by ``npfl-course autograde`` in a batch
with honest submissions are in ``test_hostile``.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import nbformat
import pytest
from tiny_course import output_text, passed_tests, source_cell, tiny_source, tiny_variant

from npfl_course.autograde.merge import MAX_EXECUTED_BYTES
from npfl_course.worker import ResultChannel, worker_command

pytestmark = pytest.mark.slow

TRANSFORM_CELL = "type(get_ipython()).transform_cell = lambda self, cell: 'pass\\n'"
# Looks for a hidden test's text (built at run time, so that this cell's own source does
# not hold it) and for the setup cell's text (which the kernel ran: the search works) in
# the kernel's objects, the files it can read and other processes' command lines.
SEARCH = textwrap.dedent("""
    import gc, os
    wanted = {"hidden": "mul(0, 5) " + "== 0", "setup": "from npfl_lib.grading " + "import"}
    places = {key: set() for key in wanted}
    def look(text, where):
        for key, value in wanted.items():
            if value in text:
                places[key].add(where)
    for obj in gc.get_objects():
        if obj is wanted:
            continue
        try:
            items = obj.values() if isinstance(obj, dict) else obj
            items = items if isinstance(obj, (dict, list, tuple)) else ()
            for item in items:
                if isinstance(item, str):
                    look(item, "memory")
        except Exception:
            pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "environ"):
            try:
                look(open(f"/proc/{pid}/{name}", "rb").read(10**6).decode("latin-1"), name)
            except OSError:
                pass
    for root, _, files in os.walk(os.getcwd()):
        for name in files:
            try:
                look(open(os.path.join(root, name), "rb").read(10**7).decode("latin-1"), name)
            except OSError:
                pass
    print("FOUND", sorted(places["hidden"]), "CONTROL", sorted(places["setup"]))
""")


def _run(tmp_path, notebook, in_kernel: bool = False, cell_seconds: float = 10) -> dict:
    folder = tmp_path / ("in-kernel" if in_kernel else "split")
    folder.mkdir(exist_ok=True)
    nbformat.write(notebook, folder / "in.ipynb")
    with ResultChannel() as channel:
        command = worker_command("in.ipynb", channel, cell_seconds, 4096)
        command += ["--tests-in-kernel"] if in_kernel else []
        subprocess.run(command, cwd=folder, check=True, timeout=180, pass_fds=channel.fds,
                       env={**os.environ}, stderr=subprocess.DEVNULL)  # fmt: skip
        return json.loads(channel.read(MAX_EXECUTED_BYTES))


@pytest.mark.parametrize("kind", ["release", "wrong"])
def test_patching_the_shells_class_no_longer_passes_the_tests(tmp_path, kind):
    notebook = tiny_variant(kind, TRANSFORM_CELL, after="setup")
    assert all(passed_tests(_run(tmp_path, notebook, in_kernel=True)).values())  # the attack works
    assert not any(passed_tests(_run(tmp_path, notebook)).values())


def test_the_hidden_tests_cannot_be_read_from_a_student_cell(tmp_path):
    notebook = tiny_variant("full", SEARCH, after="test_square")
    marker = SEARCH.splitlines()[2]
    results = {}
    for in_kernel in (True, False):
        executed = _run(tmp_path, notebook, in_kernel)
        cell = next(c for c in executed["cells"] if c["source"].startswith("\nimport gc") or
                    marker in c["source"])  # fmt: skip
        results[in_kernel] = output_text(cell)
    assert "FOUND ['memory']" in results[True], results[True]  # in one process: readable
    assert "FOUND [] CONTROL ['memory']" in results[False], results[False]


# Drops the first 100 interrupts, as a loop around os.fork at its process limit drops
# almost all of them (they arrive in fork's Python hooks, which ignore the error).
MOSTLY_DEAF = textwrap.dedent("""
    def mostly_deaf():
        dropped = 0
        while True:
            try:
                while True:
                    pass
            except KeyboardInterrupt:
                dropped += 1
                if dropped >= 100:
                    raise
""")


def test_a_call_that_drops_most_interrupts_is_stopped_and_the_kernel_kept(tmp_path):
    notebook = tiny_variant("full", MOSTLY_DEAF, after="setup")
    index = next(i for i, c in enumerate(notebook.cells) if c.source == MOSTLY_DEAF)
    notebook.cells.insert(index + 1, source_cell("test", "test_deaf", "mostly_deaf()", 1))
    executed = _run(tmp_path, notebook, cell_seconds=5)
    assert passed_tests(executed) == {"test_add": True, "test_deaf": False, "test_mul": True,
                                 "test_square": True}  # fmt: skip
    errors = [o for c in executed["cells"] for o in c["outputs"] if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["CellTimeoutError"], errors


def test_honest_and_partial_answers_keep_their_scores(tmp_path):
    assert passed_tests(_run(tmp_path, tiny_variant("full"))) == dict.fromkeys(
        ("test_add", "test_mul", "test_square"), True)  # fmt: skip
    assert passed_tests(_run(tmp_path, tiny_variant("wrong"))) == {
        "test_add": True, "test_mul": False, "test_square": True}  # fmt: skip
    assert not any(passed_tests(_run(tmp_path, tiny_variant("release"))).values())


# -- what the proxies carry --------------------------------------------------------

STUDENT = textwrap.dedent("""
    import torch

    def fill_(tensor, value, generator=None):
        print("filling", tuple(tensor.shape))
        with torch.no_grad():
            tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0 + value)
        return tensor

    def clip_(parameters, limit):
        for p in parameters:
            if p.grad is not None:
                p.grad.clamp_(-limit, limit)

    def penalty(module):
        return sum((p ** 2).sum() for p in module.parameters() if p.dim() >= 2) / 2

    def groups(module):
        return [{"params": [p for p in module.parameters() if p.dim() >= 2]},
                {"params": [p for p in module.parameters() if p.dim() < 2]}]

    def build():
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        return model, torch.optim.AdamW(model.parameters(), lr=0.5), {"epochs": [1, 2]}

    def noise(n):
        return torch.randn(n)

    def fails(x):
        import warnings
        warnings.warn("careful")
        raise ValueError(f"bad {x}")

    def spins():
        import signal
        signal.setitimer(signal.ITIMER_REAL, 0)
        while True:
            pass

    class Secret:
        pass

    def secret():
        return Secret()

    RATE = 0.25

    def twice(parameters):
        return len(list(parameters)), len(list(parameters))

    def replace_entries(params):
        params["w"] = params["w"] + 1

    def make_loss(scale):
        return lambda x: (scale * x).sum()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(2, 1)
            self.p = 0.5

        def forward(self, x):
            return self.inner(x) * 2

    def make_net():
        return Net()

    def touch(items):
        items[0].add_(1)

    def normalize(data):
        data.inputs /= 2  # in place: the grader's data set changes too, as in one process

    def bump(dataset):
        dataset.tensors[0].add_(1)
""")
TESTS = textwrap.dedent("""
    weight = torch.nn.Parameter(torch.zeros(2, 3))
    g = torch.Generator().manual_seed(0)
    returned = fill_(weight, 1.5, generator=g)
    assert returned is weight and weight.requires_grad and bool((weight == 1.5).all())
    assert g.get_state().equal(torch.Generator().manual_seed(0).get_state()) is False

    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, -3.0]), None
    clip_([a, b], 1.0)
    assert a.grad.tolist() == [1.0, -1.0] and b.grad is None

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    value = penalty(model)
    assert value.requires_grad
    value.backward()
    assert torch.allclose(model[0].weight.grad, model[0].weight) and model[0].bias.grad is None

    decayed, other = groups(model)
    assert decayed["params"][0] is model[0].weight and other["params"][1] is model[2].bias

    net, optimizer, logs = build()
    assert isinstance(net, torch.nn.Sequential) and isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["params"][0] is net[0].weight and logs == {"epochs": [1, 2]}
    before = net[0].weight.detach().clone()
    net(torch.ones(4, 2)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, net[0].weight)

    torch.manual_seed(3)
    first = noise(4)
    torch.manual_seed(3)
    assert torch.equal(first, noise(4))
    torch.manual_seed(3)
    assert torch.equal(first, torch.randn(4))
    torch.set_default_dtype(torch.float64)
    assert noise(2).dtype == torch.float64
    torch.set_default_dtype(torch.float32)

    try:
        fails(7)
    except ValueError as error:
        assert str(error) == "bad 7"
    else:
        raise AssertionError("no error")
    assert RATE == 0.25
    print("secret:", repr(secret()))

    # An iterator is one pass; a dict entry the call replaced is replaced.
    assert twice(torch.nn.Linear(2, 2).parameters()) == (2, 0)
    params = {"w": torch.zeros(2)}
    w = params["w"]
    replace_entries(params)
    assert params["w"] is not w and params["w"].tolist() == [1.0, 1.0] and w.tolist() == [0, 0]

    # A list's entries that cannot come back (an object of the setup's class) stay.
    holder = Holder()
    box = [torch.zeros(2), holder, (1, 2)]
    touch(box)
    assert box[0].tolist() == [1.0, 1.0] and box[1] is holder and box[2] == (1, 2)

    # Data sets' tensors changed in place change the test's (a Split, torch's datasets).
    from npfl_lib.datasets import Split

    inputs = torch.ones(3, 2)
    split = Split(inputs, torch.tensor([0, 1, 2]))
    normalize(split)
    assert split.inputs is inputs and inputs.tolist() == [[0.5, 0.5]] * 3
    assert split.targets.tolist() == [0, 1, 2]
    dataset = torch.utils.data.TensorDataset(torch.zeros(2), torch.zeros(2))
    bump(dataset)
    assert dataset.tensors[0].tolist() == [1.0, 1.0] and dataset.tensors[1].tolist() == [0, 0]

    # The student's own callables and modules: called, trained and copied from here.
    loss_fn = make_loss(3.0)
    x = torch.ones(2, requires_grad=True)
    out = loss_fn(x)
    out.backward()
    assert out.item() == 6.0 and x.grad.tolist() == [3.0, 3.0]
    import copy

    net = make_net()
    assert type(net).__name__ == "Net" and net.p == 0.5 and isinstance(net, torch.nn.Module)
    saved = copy.deepcopy(net)
    before = net.inner.weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.ones(3, 2)).sum().backward()
    assert torch.allclose(net.inner.weight.grad, torch.full((1, 2), 6.0))
    optimizer.step()
    assert not torch.equal(net.inner.weight, before) and torch.equal(saved.inner.weight, before)
    with torch.no_grad():
        expected = (before.sum() + saved.inner.bias) * 2
        assert torch.allclose(saved(torch.ones(1, 2)), expected)
    print("ALL GOOD")
""")


def test_calls_carry_arguments_results_state_and_errors(tmp_path):
    notebook = tiny_source()
    notebook.cells = [
        source_cell(
            "readonly",
            "setup",
            "import torch\nfrom npfl_lib.grading import time_limit\n\n\nclass Holder:\n    pass",
        ),
        source_cell("solution", "answers", STUDENT),
        source_cell("test", "test_calls", TESTS, 1),
        source_cell("test", "test_time", "with time_limit(1):\n    spins()", 1),
        source_cell("test", "test_after", "fill_(torch.zeros(1), 2.0)\nprint('alive')", 1),
        source_cell("test", "test_own", "def local(x):\n    return x\n\nfill_(local, 1.0)", 1),
    ]
    executed = _run(tmp_path, notebook, cell_seconds=20)
    calls, timed, after, own = executed["cells"][2:]
    text = output_text(calls)
    assert not [o for o in calls["outputs"] if o["output_type"] == "error"], calls["outputs"]
    assert "filling (2, 3)" in text and "ALL GOOD" in text  # the student's prints, in order
    assert text.index("filling (2, 3)") < text.index("ALL GOOD")
    assert "careful" in text  # the student's warning
    assert "Secret object from the student's kernel" in text
    # The student's loop cancelled its own timer: the grader's limit stops it from outside.
    assert [o["ename"] for o in timed["outputs"] if o["output_type"] == "error"] == ["TimeoutError"]
    assert "alive" in output_text(after) and "filling (1,)" in output_text(after)
    # A function of the test's own cannot travel: the kernel does not run test cells.
    errors = [o for o in own["outputs"] if o["output_type"] == "error"]
    assert errors and "local is defined in a test cell" in errors[0]["evalue"], own["outputs"]
