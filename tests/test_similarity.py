"""``npfl-course similarity``: a generated class of the optimizers assignment.

Three students (``ring1..3``) share one solution of their own for ``sgd_step`` and
``adam_step``: the second renamed the variables, the third also reordered independent
statements and added comments and blank lines. Four write independent correct solutions
(the ALTERNATIVE variants of ``variants.py``), twelve hand in the instructor's solution,
two the untouched release, and a few submissions cannot be read (not a notebook, not
JSON, a link, an invalid id). The copied pairs must come first and be the only ones
listed; the rest are skipped with a note. Nothing needs nbgrader's generate or a kernel.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from npfl_course import check, cli
from npfl_course.course import REPO, load_course
from npfl_course.similarity import (
    NpflSimilarity,
    Settings,
    answer,
    cell_similarity,
    compare,
    find_similar,
    fingerprint,
    normalize,
    read_class,
    similarity,
    table,
    write_reports,
)

NAME = "optimizers"
CONFIG = """\
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "similar"
c.CourseDirectory.source_directory = "source"
"""
SIGNATURE = {
    "sgd_step": "def sgd_step(\n    param: torch.Tensor,\n    grad: torch.Tensor,\n"
    "    momentum_buffer: torch.Tensor | None,\n    *,\n    lr: float,\n"
    "    momentum: float = 0.0,\n    dampening: float = 0.0,\n    weight_decay: float = 0.0,\n"
    "    nesterov: bool = False,\n    first_step: bool = False,\n) -> None:\n",
    "adam_step": "def adam_step(\n    param: torch.Tensor,\n    grad: torch.Tensor,\n"
    "    exp_avg: torch.Tensor,\n    exp_avg_sq: torch.Tensor,\n    *,\n    step: int,\n"
    "    lr: float,\n    beta1: float = 0.9,\n    beta2: float = 0.999,\n    eps: float = 1e-8,\n"
    "    weight_decay: float = 0.0,\n) -> None:\n",
}
# The ring's own solution (no reference has it) and two disguised copies.
RING = {
    "ring1": {
        "sgd_step": """\
    d_p = grad
    if weight_decay != 0:
        d_p = d_p.add(param, alpha=weight_decay)
    if momentum == 0:
        param.add_(d_p, alpha=-lr)
        return
    buf = momentum_buffer
    if first_step:
        buf.copy_(d_p)
    else:
        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
    step_dir = d_p.add(buf, alpha=momentum) if nesterov else buf
    param.add_(step_dir, alpha=-lr)
""",
        "adam_step": """\
    g = grad if weight_decay == 0 else grad + weight_decay * param
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    correction1 = 1 - beta1 ** step
    correction2 = 1 - beta2 ** step
    denom = (exp_avg_sq / correction2).sqrt().add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / correction1)
""",
    },
    "ring2": {  # renamed
        "sgd_step": """\
    update = grad
    if weight_decay != 0:
        update = update.add(param, alpha=weight_decay)
    if momentum == 0:
        param.add_(update, alpha=-lr)
        return
    velocity = momentum_buffer
    if first_step:
        velocity.copy_(update)
    else:
        velocity.mul_(momentum).add_(update, alpha=1 - dampening)
    direction = update.add(velocity, alpha=momentum) if nesterov else velocity
    param.add_(direction, alpha=-lr)
""",
        "adam_step": """\
    gradient = grad if weight_decay == 0 else grad + weight_decay * param
    exp_avg.mul_(beta1).add_(gradient, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
    bias1 = 1 - beta1 ** step
    bias2 = 1 - beta2 ** step
    denominator = (exp_avg_sq / bias2).sqrt().add_(eps)
    param.addcdiv_(exp_avg, denominator, value=-lr / bias1)
""",
    },
    "ring3": {  # renamed, reordered, commented
        "sgd_step": """\
    # the update direction starts as the gradient
    upd = grad

    if weight_decay != 0:  # L2 penalty
        upd = upd.add(param, alpha=weight_decay)
    if momentum == 0:
        # plain SGD
        param.add_(upd, alpha=-lr)
        return

    v = momentum_buffer
    if first_step:
        v.copy_(upd)  # first step: the buffer is the gradient
    else:
        v.mul_(momentum).add_(upd, alpha=1 - dampening)
    d = upd.add(v, alpha=momentum) if nesterov else v
    param.add_(d, alpha=-lr)
""",
        "adam_step": """\
    # bias corrections first
    c2 = 1 - beta2 ** step
    c1 = 1 - beta1 ** step
    gg = grad if weight_decay == 0 else grad + weight_decay * param

    # moments
    exp_avg_sq.mul_(beta2).addcmul_(gg, gg, value=1 - beta2)
    exp_avg.mul_(beta1).add_(gg, alpha=1 - beta1)
    den = (exp_avg_sq / c2).sqrt().add_(eps)  # denominator
    param.addcdiv_(exp_avg, den, value=-lr / c1)
""",
    },
}
HOSTILE_COMMENT = "    # </pre><script>window.__npfl_xss = 1</script><img src=x onerror=alert(1)>\n"


class _Scripts(HTMLParser):
    """Elements and attributes through which a page would run something."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "img", "iframe", "object", "embed"):
            self.found.append(tag)
        self.found += [f"{tag} {name}" for name, _ in attrs if name.startswith("on")]


@pytest.fixture(scope="module")
def notebooks():
    """(source, release, variants) of the optimizers assignment; the release as nbgrader's
    ClearSolutions makes it."""
    from nbgrader.preprocessors import ClearSolutions

    source = check.read_notebook(check.source_path(NAME))
    release, _ = ClearSolutions().preprocess(copy.deepcopy(source), {})
    return source, release, check.load_variants(NAME)


def _ring_code(student: str, cell: str) -> str:
    doc = '    """My own solution."""\n'
    return SIGNATURE[cell] + doc + RING[student][cell]


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory, notebooks):
    """A course with the optimizers assignment (source, variants, release) and the class."""
    source, release, variants = notebooks
    root = tmp_path_factory.mktemp("similar")
    (root / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    shutil.copytree(REPO / "assignments" / NAME, root / "source" / NAME)
    (root / "release" / NAME).mkdir(parents=True)
    nbformat.write(release, root / "release" / NAME / f"{NAME}.ipynb")

    def submit(student: str, notebook=None, text: str | None = None, name: str = NAME) -> Path:
        folder = root / "submitted" / student / NAME
        folder.mkdir(parents=True)
        path = folder / (name if "." in name else f"{name}.ipynb")
        if notebook is not None:
            nbformat.write(notebook, path)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    for student in RING:
        replace = {cell: _ring_code(student, cell) for cell in ("sgd_step", "adam_step")}
        if student == "ring1":  # hostile content in the one answer that is shown
            replace["sgd_step"] = replace["sgd_step"].replace(
                "    d_p = grad\n", HOSTILE_COMMENT + "    d_p = grad\n"
            )
        submit(student, check.make_submission(release, source, replace))
    for number, variant in enumerate(variants.ALTERNATIVE):
        replace = {variant["cell"]: variant["code"]}
        submit(f"indep{number}", check.make_submission(release, source, replace))
    for student in ("sol1", "sol2", *(f"extra{i:02d}" for i in range(10))):
        submit(student, check.make_submission(release, source))
    for student in ("untouched1", "untouched2"):
        submit(student, release)
    submit("broken", text='{"cells": [')
    submit("pdf", text="%PDF-1.4 not a notebook", name="homework.pdf")
    (root / "submitted" / "linker" / NAME).mkdir(parents=True)
    os.symlink(root / "submitted" / "sol1" / NAME / f"{NAME}.ipynb",
               root / "submitted" / "linker" / NAME / f"{NAME}.ipynb")  # fmt: skip
    submit("[s]ol1", check.make_submission(release, source))
    return root


@pytest.fixture(scope="module")
def course(course_dir):
    return load_course(course_dir)


@pytest.fixture(scope="module")
def result(course):
    return find_similar(course, NAME, Settings(jobs=1))


def test_copied_pairs_come_first_and_alone(result):
    pairs = [frozenset(pair.students) for pair in result.pairs]
    ring = {frozenset(p) for p in [("ring1", "ring2"), ("ring1", "ring3"), ("ring2", "ring3")]}
    assert set(pairs) == ring, table(result)
    for pair in result.pairs:
        assert pair.score >= 0.9, table(result)
        for cell in ("sgd_step", "adam_step"):
            found = pair.cells[(NAME, cell)]
            assert found.score >= 0.9 and not found.expected, (pair.students, cell, found)
        for cell in ("adamw_step", "param_groups_no_decay"):  # the instructor's solution
            assert pair.cells[(NAME, cell)].expected == "solution"


def test_independent_and_untouched_are_not_flagged(result, notebooks):
    listed = {student for pair in result.pairs for student in pair.students}
    assert listed == set(RING)
    assert result.states["untouched1"] == {
        (NAME, cell): "left as released"
        for cell in ("sgd_step", "adam_step", "adamw_step", "param_groups_no_decay")
    }
    # Each ALTERNATIVE matches itself, not the instructor's solution; and even compared
    # like any other answer it is not similar enough to the solution to be listed.
    source, release, variants = notebooks
    solutions = check.cells_by_kind(source, "solution")
    released = check.cells_by_kind(release, "solution")
    for number, variant in enumerate(variants.ALTERNATIVE):
        cell = variant["cell"]
        matched, _ = result.matches[f"indep{number}"][(NAME, cell)]
        assert matched.startswith(f"ALTERNATIVE {number + 1}:"), matched
        ours = answer(variant["code"], released[cell].source)[0]
        theirs = answer(solutions[cell].source, released[cell].source)[0]
        assert similarity(ours, theirs) < result.settings.threshold, cell
    unmarked = compare(result.answers, Settings(expected=False))
    for pair in unmarked.pairs:
        a, b = pair.students
        if a.startswith("indep") or b.startswith("indep"):
            for key, cell in pair.cells.items():
                assert cell.score is None or cell.score >= 0.9 or cell.score < 0.7, (a, b, key)
    listed = {pair.students: pair.score for pair in unmarked.pairs}
    assert all(listed[pair] >= 0.9 for pair in [("ring1", "ring2"), ("ring2", "ring3")])


def test_scores_are_copydetects(result):
    """The fast path (distinct answers once, numpy's isin, the bound that skips pairs)
    lists exactly the pairs, with exactly the numbers, of copydetect's compare_files on
    every pair."""
    from copydetect import compare_files

    threshold = 0.3
    low = compare(result.answers, Settings(threshold=threshold, expected=False))
    found = {pair.students: pair for pair in low.pairs}
    students = sorted(result.answers.students)
    expected = {}
    for i, a in enumerate(students):
        for b in students[i + 1 :]:
            shared = length = 0.0
            for key in result.answers.cells:
                one, two = (result.answers.students[s].get(key) for s in (a, b))
                printed = [fingerprint(x.text) if x is not None else None for x in (one, two)]
                if None in printed:
                    continue
                _, (sim_a, sim_b), _ = compare_files(*printed)
                cov_a, cov_b = (p.token_coverage for p in printed)
                shared += sim_a * cov_a + sim_b * cov_b
                length += cov_a + cov_b
                if (a, b) in found:
                    score = found[(a, b)].cells[key].score
                    assert score == pytest.approx(cell_similarity(*printed), abs=1e-12)
            if length and shared / length >= threshold:
                expected[(a, b)] = shared / length
    pairs = len(students) * (len(students) - 1) // 2
    assert 20 < len(expected) <= low.bounded < pairs  # the bound skipped some, wrongly none
    assert {k: pytest.approx(v, abs=1e-12) for k, v in expected.items()} == {
        k: p.score for k, p in found.items()
    }


def test_unreadable_submissions_are_skipped_with_a_note(result):
    skipped = result.answers.skipped
    assert set(skipped) == {"broken", "pdf", "linker", "[s]ol1"}, skipped
    assert "not valid JSON" in skipped["broken"]
    assert "no optimizers.ipynb" in skipped["pdf"] and "homework.pdf" in skipped["pdf"]
    assert "symbolic link" in skipped["linker"]
    assert "not a valid student id" in skipped["[s]ol1"]
    extra = {f"extra{i:02d}" for i in range(10)}
    assert set(result.students) == {*RING, "indep0", "indep1", "indep2", "indep3", "sol1",
                                    "sol2", "untouched1", "untouched2", *extra}  # fmt: skip


def test_normalising_undoes_renames_reordering_and_comments(notebooks):
    _, release, _ = notebooks
    released = check.cells_by_kind(release, "solution")["adam_step"].source
    texts = [answer(_ring_code(s, "adam_step"), released)[0] for s in RING]
    assert texts[0] == texts[1] == texts[2] and texts[0]
    assert "exp_avg" not in texts[0] and ".addcmul_(" in texts[0]  # locals go, APIs stay
    # Dependent statements keep their order; the release's own lines are not an answer.
    assert normalize("x = 1\nx = x + 1\ny = 2")[0] != normalize("x = x + 1\nx = 1\ny = 2")[0]
    assert normalize("a = f()\nb = g()")[0] == normalize("b = g()\n# c\n\na = f()")[0]
    assert answer(released, released) == ("", True)
    text, parsed = normalize("def f(:\n    # comment\n    return 1")
    assert not parsed and text == "def f(:\nreturn 1"


def test_html_report_shows_both_cells_and_runs_nothing(result, tmp_path):
    html_path, csv_path = write_reports(result, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    parser = _Scripts()
    parser.feed(page)
    assert parser.found == [], parser.found
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "&lt;script&gt;window.__npfl_xss" in page  # the student's text, escaped
    assert page.count('<div class="pair"') == 3 and page.count("<mark>") >= 6
    assert "expected: both match solution" in page
    with open(csv_path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["student_a"], r["student_b"]) for r in rows] == [p.students for p in result.pairs]
    assert rows[0]["adamw_step note"] == "expected: solution"


def test_command_line_and_settings(course_dir, capsys):
    args = ["similarity", NAME, "--course-dir", str(course_dir), "--jobs", "2"]  # 2 processes
    assert cli.main([*args, "--top", "2", "--output", str(course_dir / "out")]) == 0
    out = capsys.readouterr().out
    assert out.index("ring") < out.index("... and 1 more")
    assert "skipped: broken:" in out and "skipped: linker:" in out
    assert (course_dir / "out" / f"{NAME}_similarity.html").is_file()
    with pytest.raises(SystemExit):
        cli.main([*args, "--threshold", "2"])
    assert "--threshold: must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["similarity", "nothing", "--course-dir", str(course_dir)]) == 1
    assert "ASSIGNMENT 'nothing'" in capsys.readouterr().err
    assert cli.main([*args, "--student", "ring1", "nobody"]) == 1
    assert "--student: no submission of 'nobody'" in capsys.readouterr().err
    assert cli.main([*args, "--output", str(course_dir / "nbgrader_config.py")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_configured_settings_and_bad_values(course):
    course.config.NpflSimilarity.threshold = 0.95
    try:
        settings = NpflSimilarity(parent=course.app).settings(noise_threshold=30)
        assert (settings.threshold, settings.noise_threshold, settings.window) == (0.95, 30, 1)
        course.config.NpflSimilarity.threshold = 5.0
        with pytest.raises(ValueError, match=r"c\.NpflSimilarity\.threshold must be in"):
            NpflSimilarity(parent=course.app).settings()
    finally:
        del course.config.NpflSimilarity["threshold"]
    with pytest.raises(ValueError, match="guarantee_threshold must be 0 or >= noise"):
        Settings(noise_threshold=30, guarantee_threshold=20)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        read_class(course, NAME, jobs=0)


def test_demo_ring_is_listed_first(tmp_path):
    """The demo's copy ring (regularization): listed, with the demo's other students not."""
    from nbgrader.preprocessors import ClearSolutions

    from npfl_course.similarity import demo_report, demo_submissions

    name = "regularization"
    (tmp_path / "nbgrader_config.py").write_text(CONFIG, encoding="utf-8")
    shutil.copytree(REPO / "assignments" / name, tmp_path / "source" / name)
    source = check.read_notebook(check.source_path(name))
    release, _ = ClearSolutions().preprocess(copy.deepcopy(source), {})
    variants = check.load_variants(name)
    class_ = {
        "alice": check.make_submission(release, source),
        "bob": release,
        **{f"wrong{i}": check.make_submission(release, source, {v["cell"]: v["code"]})
           for i, v in enumerate(variants.WRONG[:3])},
        **demo_submissions(release, source, name),
    }  # fmt: skip
    assert {"frank", "grace"} <= set(class_)
    for student, notebook in class_.items():
        (tmp_path / "submitted" / student / name).mkdir(parents=True)
        nbformat.write(notebook, tmp_path / "submitted" / student / name / f"{name}.ipynb")
    text = demo_report(load_course(tmp_path), name, tmp_path / "reports")
    assert text.splitlines()[2].split()[:4] == ["1", "frank", "grace", "1.00"], text
    assert "; 1 pair(s) at or above 0.70" in text, text
    assert "no release in" in text and (tmp_path / "reports" / f"{name}_similarity.html").is_file()
