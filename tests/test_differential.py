"""``npfl-course autograde`` grades as stock ``nbgrader autograde`` does: a differential test.

A corpus of legitimate submissions that use Jupyter as students do (progress bars inside
graded functions, the Trainer with its default verbosity, plots, IPython magics, shell
commands, display updates, warnings and logging, subprocesses, top-level ``await``,
widgets) is graded twice, in two identical copies of one course: by ``nbgrader autograde``
(a kernel with the instructor's rights, no sandbox) and by ``npfl-course autograde``.
Every test cell must get the same score, and every cell the same kinds of outputs
(stream names, display data types, errors). When a difference turns up, add its case here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from tiny_course import TINY_CONFIG, solution, source_cell

from npfl_course import autograde as ag
from npfl_course.course import generate_assignment, load_course, scratch_copy
from npfl_course.sandbox import isolation
from npfl_course.worker import build_matplotlib_cache

pytestmark = pytest.mark.slow

ASSIGNMENT = "habits"
TRAIN = """\
import torch
    from npfl_lib import Trainer
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      torch.nn.functional.cross_entropy)
    trainer.fit((torch.randn(20, 2), torch.randint(0, 2, (20,))), epochs=2, batch_size=10)
    return 2 * x"""


def habits_source() -> nbformat.NotebookNode:
    """Two graded functions: ``double`` (2 points in two test cells) and ``half`` (1)."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}  # fmt: skip
    notebook.cells = [
        # No torch here (the stock side would import it 24 times): the differences this test
        # looks for are Jupyter's, and regularized_training below is a real assignment.
        source_cell("readonly", "setup", "import math"),
        source_cell("solution", "double", solution("def double(x):", "return 2 * x")),
        source_cell("test", "test_double", "assert double(3) == 6", 1),
        source_cell(
            "test",
            "test_double_hidden",
            "### BEGIN HIDDEN TESTS\nassert math.isclose(double(-1.5), -3.0)\n### END HIDDEN TESTS",
            1,
        ),
        source_cell("solution", "half", solution("def half(x):", "return x / 2")),
        source_cell("test", "test_half", "assert half(3) == 1.5", 1),
    ]
    return notebook


# name -> (the body of double, [(grade id of the cell after which, source of a new cell)])
CORPUS: dict[str, tuple[str | None, list[tuple[str, str]]]] = {
    "plain": (None, []),
    "wrong": ("return 3 * x", []),
    "tqdm_auto": (
        "from tqdm.auto import tqdm\n    for _ in tqdm(range(3)):\n        pass\n    return 2 * x",
        [],
    ),
    "tqdm_notebook": (
        "from tqdm.notebook import tqdm\n    for _ in tqdm(range(3)):\n        pass\n"
        "    return 2 * x",
        [],
    ),
    "tqdm_std": (
        "from tqdm import tqdm\n    for _ in tqdm(range(3)):\n        pass\n    return 2 * x",
        [],
    ),
    "trainer_default_verbosity": (TRAIN, []),
    "matplotlib": (
        None,
        [("double", "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")],
    ),
    "matplotlib_inline_svg": (
        None,
        [
            (
                "double",
                "%matplotlib inline\n%config InlineBackend.figure_format = 'svg'\n"
                "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
            )
        ],
    ),  # fmt: skip
    "plot_in_graded_function": (
        "import matplotlib.pyplot as plt\n    plt.figure()\n    plt.plot([x])\n    plt.show()\n"
        "    return 2 * x",
        [],
    ),
    "timeit_and_time": (
        None,
        [("double", "%timeit -n 1 -r 1 double(2)"), ("double", "%%time\ny = double(2)")],
    ),  # fmt: skip
    "env_magic": (
        "import os\n    return 2 * x if os.environ.get('GREETING') == 'hello' else 0",
        [("setup", "%env GREETING=hello")],
    ),
    "writefile_then_import": (
        "import helper_module\n    return helper_module.twice(x)",
        [
            ("setup", "%%writefile helper_module.py\ndef twice(x):\n    return 2 * x"),
            ("setup", "import helper_module"),
        ],
    ),  # fmt: skip
    "shell_commands": (
        None,
        [("double", "!echo hello from the shell"), ("double", "%%bash\necho hi from bash")],
    ),  # fmt: skip
    "display_id_update": (
        "from IPython.display import display\n    handle = display('first', display_id=True)\n"
        "    handle.update('second')\n    return 2 * x",
        [
            (
                "double",
                "from IPython.display import display\nh = display('a', display_id=True)\n"
                "h.update('b')",
            )
        ],
    ),  # fmt: skip
    "clear_output": (
        "from IPython.display import clear_output\n    for i in range(3):\n"
        "        clear_output(wait=True)\n        print(i)\n    return 2 * x",
        [],
    ),
    "warning_in_graded_function": (
        "import warnings\n    warnings.warn('careful')\n    return 2 * x",
        [],
    ),  # fmt: skip
    "logging_in_graded_function": (
        "import logging\n    logging.info('doubling')\n    return 2 * x",
        [
            (
                "setup",
                "import logging\nlogging.basicConfig(level=logging.INFO)\nimport matplotlib.pyplot",
            )
        ],
    ),  # fmt: skip
    "stderr_in_graded_function": (
        "import sys\n    print('debug', file=sys.stderr)\n    return 2 * x",
        [],
    ),  # fmt: skip
    "subprocess_output": (
        "import subprocess, sys\n    subprocess.run(['echo', 'child'], stdout=sys.stdout, "
        "check=True)\n    return 2 * x",
        [("double", "import os\nos.system('echo from os.system')")],
    ),
    "top_level_await": (
        None,
        [("double", "import asyncio\nawait asyncio.sleep(0.01)\nprint('awaited')")],
    ),  # fmt: skip
    "widgets": (None, [("double", "import ipywidgets\nipywidgets.IntSlider(value=3)")]),
    "kernel_and_faulthandler": (
        None,
        [
            (
                "double",
                "print(type(get_ipython().kernel).__name__)\nimport faulthandler\n"
                "faulthandler.enable()\nprint('ok')",
            )
        ],
    ),  # fmt: skip
}


def _submission(source: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    body, extra = CORPUS[name]
    notebook = nbformat.from_dict(source)
    if body is not None:
        cell = next(c for c in notebook.cells if c.metadata["nbgrader"]["grade_id"] == "double")
        cell.source = f"def double(x):\n    {body}"
    for after, code in reversed(extra):
        index = next(
            i for i, c in enumerate(notebook.cells) if c.metadata["nbgrader"]["grade_id"] == after
        )
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    return notebook


def _course(root: Path) -> Path:
    (root / "source" / ASSIGNMENT).mkdir(parents=True)
    (root / "nbgrader_config.py").write_text(TINY_CONFIG, encoding="utf-8")
    source = habits_source()
    nbformat.write(source, root / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    ok, log = generate_assignment(load_course(root), ASSIGNMENT)
    assert ok, log
    release = nbformat.read(root / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", 4)
    for student in [*CORPUS, "untouched"]:
        folder = root / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        notebook = release if student == "untouched" else _submission(source, student)
        nbformat.write(notebook, folder / f"{ASSIGNMENT}.ipynb")
    return root


def _results(root: Path) -> dict[str, tuple[dict, list]]:
    """student -> ({test cell: score}, [the kinds of outputs of each cell])."""
    results = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        for student in [*CORPUS, "untouched"]:
            submission = gradebook.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, student)
            scores = {grade.name: grade.score for grade in submission.grades}
            path = root / "autograded" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
            notebook = nbformat.read(path, 4)
            kinds = [sorted({_kind(o) for o in c.get("outputs", [])}) for c in notebook.cells]
            results[student] = (scores, kinds)
    return results


def _kind(output) -> str:
    if output.output_type == "stream":
        return f"stream:{output.name}"
    if output.output_type == "error":
        return "error"
    return f"{output.output_type}:{','.join(sorted(output.get('data', {})))}"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The corpus graded by stock nbgrader and by npfl-course, in two copies of the course."""
    root = tmp_path_factory.mktemp("differential")
    stock = _course(root / "stock")
    ours = root / "ours"
    shutil.copytree(stock, ours)
    cache = build_matplotlib_cache(root / "matplotlib")  # as an instructor's machine has it
    # pytest's variable would make ipykernel skip capturing the kernel's own stdout (fd 1);
    # NPFL_PROGRESS=0 is what npfl-course autograde sets on purpose (the Trainer's bar off).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPFL_", "MPL", "PYTEST_"))}
    env.update(MPLCONFIGDIR=str(cache or root / "matplotlib"), NPFL_PROGRESS="0")
    command = [sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT]
    done = subprocess.run(command, cwd=stock, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = ag.autograde(load_course(ours), ASSIGNMENT, jobs=2, progress=False,
                          unsandboxed=isolation()[0] != "bwrap", preflight=False)  # fmt: skip
    assert all(o.status == "graded" for o in report.outcomes), report.summary()
    return _results(stock), _results(ours)


@pytest.mark.parametrize("student", [*CORPUS, "untouched"])
def test_scores_and_output_kinds_equal_stock_nbgrader(graded, student):
    stock, ours = graded[0][student], graded[1][student]
    assert ours[0] == stock[0], f"scores: npfl-course {ours[0]}, nbgrader {stock[0]}"
    assert ours[1] == stock[1], f"output kinds: npfl-course {ours[1]}, nbgrader {stock[1]}"


def test_the_corpus_covers_what_students_do(graded):
    """Not a trivial corpus: it has full marks, zeros and every kind of output."""
    stock = graded[0]
    assert len(CORPUS) >= 15
    assert stock["plain"][0] == {"test_double": 1, "test_double_hidden": 1, "test_half": 1}
    assert stock["untouched"][0] == {"test_double": 0, "test_double_hidden": 0, "test_half": 0}
    assert stock["tqdm_auto"][0]["test_double"] == 1  # a widget, not stderr
    assert stock["trainer_default_verbosity"][0]["test_double"] == 1
    assert stock["tqdm_std"][0]["test_double"] == 0  # stderr: nbgrader's rule, in both
    kinds = {kind for _, cells in stock.values() for cell in cells for kind in cell}
    expected = ["stream:stdout", "stream:stderr", "error", "execute_result:text/plain",
                "display_data:image/png,text/plain",
                "display_data:image/svg+xml,text/plain"]  # fmt: skip
    assert set(expected) <= kinds, sorted(kinds)
    assert any("application/vnd.jupyter.widget-view+json" in kind for kind in kinds)


def test_the_trainer_with_default_verbosity_keeps_its_points_in_both_graders(tmp_path):
    """regularized_training, solved with ``trainer.fit(...)`` at its default verbosity (the
    notebook never asks for ``verbose=0``): 10 of 12 points (2 are graded by hand) from
    stock nbgrader, run as an instructor would (no NPFL_PROGRESS), and from npfl-course."""
    name = "regularized_training"
    repo = Path(__file__).resolve().parent.parent
    scores = {}
    for side in ("stock", "ours"):
        course = scratch_copy(load_course(repo), tmp_path / side, [name])
        ok, log = generate_assignment(course, name)
        assert ok, log
        source = nbformat.read(course.path("source", name) / f"{name}.ipynb", 4)
        cell = next(c for c in source.cells if "trainer.fit(" in c.source)
        assert ", verbose=0)" in cell.source
        cell.source = cell.source.replace(", verbose=0)", ")")
        folder = course.path("submitted", name, "student")
        folder.mkdir(parents=True)
        nbformat.write(source, folder / f"{name}.ipynb")
        if side == "stock":
            cache = build_matplotlib_cache(tmp_path / "matplotlib")
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("NPFL_", "MPL", "PYTEST_"))}  # fmt: skip
            env["MPLCONFIGDIR"] = str(cache or tmp_path / "matplotlib")
            command = [sys.executable, "-m", "nbgrader", "autograde", name]
            done = subprocess.run(command, cwd=course.directory, env=env, capture_output=True,
                                  text=True)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
        else:
            report = ag.autograde(course, name, jobs=1, progress=False, preflight=False,
                                  unsandboxed=isolation()[0] != "bwrap")  # fmt: skip
            assert report.outcomes[0].status == "graded", report.summary()
        with course.gradebook() as gradebook:
            submission = gradebook.find_submission(name, "student")
            scores[side] = (submission.score, submission.max_score)
    assert scores == {"stock": (10.0, 12.0), "ours": (10.0, 12.0)}
