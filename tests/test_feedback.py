"""npfl_course.feedback: feedback without hidden tests, and student content made inert.

The end-to-end tests grade the tiny course (``tests/tiny_course.py``, its ``test_add``
given a hidden test with a message, plus a written answer) for two students: ``wrong``
fails the hidden test, ``hostile`` puts script into markdown, HTML, Markdown, SVG and
JavaScript outputs. The payloads would set ``window.__npfl_xss``; the student's code
spells that name in pieces, so the whole marker can only appear in a page if a payload
survived.
"""

from __future__ import annotations

import base64
import copy
import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbconvert.exporters import HTMLExporter
from tiny_course import TINY_CONFIG, tiny_source

from npfl_course.check import make_submission
from npfl_course.course import REPO, generate_assignment, load_course
from npfl_course.feedback import (
    HIDDEN_PLACEHOLDER,
    REDACTED_LINE,
    HideHiddenTests,
    SanitizeStudentContent,
    feedback_preprocessors,
    generate_feedback,
    sanitize_html,
    sanitize_markdown,
    sanitize_student_content,
    svg_is_inert,
)

pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's

MARKER = "npfl_xss"
PAYLOAD = "window.__npfl_xss=1"
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
GUARD = "with forbid('npfl_lib'), time_limit(5):\n    "
TEST_ADD = (
    f"{GUARD}assert add(1, 2) == 3, 'add(1, 2)'\n"
    "### BEGIN HIDDEN TESTS\n"
    f"{GUARD}print('checking negative numbers')\n"
    "    assert add(-1, 1) == 0, 'add(-1, 1) should be 0'\n"
    "### END HIDDEN TESTS"
)
HONEST_MARKDOWN = (
    "## My answer\n\nThe loss is $\\frac{1}{N}\\sum_i x_i^2$ and $a < b$, see **this**:\n\n"
    "| a | b |\n|:--|--:|\n| 1 | 2 |\n\n```python\nprint('<b>')\n```\n\n"
    f"![plot](data:image/png;base64,{PNG}) and [a link](https://ufal.mff.cuni.cz)"
)
HOSTILE_ANSWER = (
    "An answer with $x^2$ and **bold**.\n\n"
    f"<script>{PAYLOAD}</script>\n\n"
    f'<img src=x onerror="{PAYLOAD}">\n\n'
    f"[click](javascript:{PAYLOAD}) [data](data:text/html;base64,PHNjcmlwdD4=)"
)
HOSTILE_CELL = (
    f'<svg onload="{PAYLOAD}"></svg>'
    f'<iframe srcdoc="<script>{PAYLOAD}</script>"></iframe>'
    f'<a href="JaVa&#9;ScRiPt:{PAYLOAD}">tab</a>'
    f'<object data="javascript:{PAYLOAD}"></object>'
    f"<style>body {{ display: none }} /* {MARKER} */</style>"
    f'<form action="javascript:{PAYLOAD}"><button>go</button></form>'
)
# The student's code builds the payloads from pieces (see the module docstring).
HOSTILE_CODE = f"""\
def square(x):
    return x * x

import base64
from IPython.display import HTML, SVG, Image, Javascript, Markdown, display

act = 'window.__npfl' + '_xss=1'
on, js, script = 'on' + 'error', 'java' + 'script:', 'scr' + 'ipt'
display(HTML('<b>honest html</b><img src=x ' + on + '="' + act + '"><' + script + '>'
             + act + '</' + script + '>'))
display(Javascript(act))
display(Markdown('**honest markdown** <img src=x ' + on + '="' + act + '"> [x](' + js + act + ')'))
svg = '<svg xmlns="http://www.w3.org/2000/svg" on' + 'load="' + act + '">'
display(SVG(svg + '<circle r="5"/></svg>'))
display(HTML('<ifr' + 'ame src="' + js + act + '"></ifr' + 'ame>'))
display(Image(data=base64.b64decode('{PNG}')))
print('honest printing')
"""


def feedback_source() -> nbformat.NotebookNode:
    """The tiny assignment, ``test_add`` with a hidden test that prints and has a message,
    and a written answer ``explain`` (1 point, graded by hand)."""
    notebook = tiny_source()
    test_add = next(c for c in notebook.cells if c.metadata.nbgrader.grade_id == "test_add")
    test_add.source = TEST_ADD
    answer = nbformat.v4.new_markdown_cell("An honest answer.")
    answer.metadata["nbgrader"] = {"grade": True, "solution": True, "locked": False,
                                   "grade_id": "explain", "points": 1, "schema_version": 3,
                                   "task": False}  # fmt: skip
    notebook.cells.append(answer)
    return notebook


def hidden_lines(source: nbformat.NotebookNode, release: nbformat.NotebookNode) -> set[str]:
    """The lines of the source's hidden tests that the release does not show."""
    visible = {line.strip() for cell in release.cells for line in cell.source.splitlines()}
    hidden = set()
    for cell in source.cells:
        inside = False
        for line in cell.source.splitlines():
            if "BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "END HIDDEN TESTS" in line:
                inside = False
            elif inside and line.strip() not in visible:
                hidden.add(line.strip())
    return hidden


class _Page(HTMLParser):
    """A page's text, and what in it could run: scripts, handlers, URLs, frames."""

    URLS = ("href", "src", "action", "data", "formaction", "srcdoc", "xlink:href")

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.text, self.scripts, self.active, self._tags = [], [], [], []
        self.feed(text)
        self.text = "".join(self.text)

    def handle_starttag(self, tag, attrs):
        self._tags.append(tag)
        if tag in ("iframe", "object", "embed", "form", "base", "svg"):
            self.active.append(f"<{tag}>")
        for name, value in attrs:
            url = re.sub(r"[\x00-\x20]+", "", value or "").lower()
            if name.startswith("on"):
                self.active.append(f"<{tag} {name}={value!r}>")
            if name in self.URLS and (
                url.startswith(("javascript:", "data:text")) or MARKER in url
            ):
                self.active.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag):
        if tag in self._tags:
            del self._tags[len(self._tags) - 1 - self._tags[::-1].index(tag) :]

    def handle_data(self, data):
        if self._tags and self._tags[-1] in ("script", "style"):
            self.scripts.append(data)
        else:
            self.text.append(data)


def rendered(notebook: nbformat.NotebookNode) -> str:
    """The notebook as nbconvert's classic HTML (what the formgrader's template extends)."""
    return HTMLExporter(template_name="classic").from_notebook_node(notebook)[0]


def assert_inert(text: str, marker: bool = False) -> None:
    """No payload survived in ``text``, a page (the template's own scripts and styles,
    which name "javascript:" and "onerror", aside); ``marker``: the payloads' marker may
    remain as text or in a title."""
    page = _Page(text)
    assert page.active == []
    assert not [script for script in page.scripts if MARKER in script]
    if marker:
        return
    assert MARKER not in text
    own = re.compile(r"<(script|style)\b[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE)
    lowered = own.sub("", text).lower()
    assert "onerror" not in lowered and "javascript:" not in lowered


# ----------------------------------------------------------------------------------
# The sanitiser
# ----------------------------------------------------------------------------------

HONEST_SAMPLES = [
    HONEST_MARKDOWN,
    "# Title\n\n1. one\n2. two\n   * nested\n\n> quoted `code` and ~~struck~~",
    "$$\\mathrm{Var}(w) = \\frac{2}{n_\\text{in} + n_\\text{out}}$$\n\nwhere $n < m$.",
    "Inline <b>bold</b>, <sub>sub</sub>, <span style='color: red'>red</span><br>line",
    '<img src="data:image/png;base64,' + PNG + '" width="20" alt="dot">',
    "```\nfor i in range(3):\n\n    print(i < 2)\n```",
    "<details><summary>Hint</summary>Use the chain rule.</details>",
]
HOSTILE_SAMPLES = [
    HOSTILE_ANSWER,
    HOSTILE_CELL,
    f'<IMG SRC=x OnErRoR="{PAYLOAD}">',
    f"<!--><script>{PAYLOAD}</script>-->",
    f"<a href='&#106;avascript:{PAYLOAD}'>entity</a>",
    f'<math><mtext><table><mglyph><style><img src=x onerror="{PAYLOAD}">',
    f"<noscript><p title=\"</noscript><img src=x onerror='{PAYLOAD}'>\"></noscript>",
    f'<base href="javascript:{PAYLOAD}//">',
    f'<meta http-equiv="refresh" content="0;url=javascript:{PAYLOAD}">',
    f'<x-custom tabindex=1 autofocus onfocus="{PAYLOAD}">',
    f"[x](javascript&colon;{PAYLOAD})",
    f"![x](javascript:{PAYLOAD})",
    f"[x](files/javascript:{PAYLOAD})",  # nbconvert's strip_files_prefix drops files/
    f'<a href="/files/javascript:{PAYLOAD}">x</a>',
]


@pytest.mark.parametrize("source", HONEST_SAMPLES)
def test_honest_markdown_is_kept_as_it_is(source):
    assert sanitize_markdown(source) == source


def test_the_course_notebooks_markdown_is_kept_as_it_is():
    paths = sorted((REPO / "assignments").glob("*/*.ipynb")) + sorted(
        (REPO / "lectures").glob("*.ipynb")
    )
    assert paths
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                assert sanitize_markdown(cell.source, cell.get("attachments")) == cell.source


@pytest.mark.parametrize("source", HOSTILE_SAMPLES)
def test_hostile_markdown_is_made_inert(source):
    safe = sanitize_markdown(source)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(safe)])
    assert_inert(rendered(notebook), marker=True)


def test_what_markdown_does_not_take_for_html_stays_text():
    source = f"<IMG SRC=x OnErRoR={PAYLOAD}>"  # an unquoted value with "=": not a tag
    assert sanitize_markdown(source) == source
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(source)])
    assert f"&lt;IMG SRC=x OnErRoR={PAYLOAD}&gt;" in rendered(notebook)
    assert _Page(rendered(notebook)).active == []


def test_hostile_markdown_keeps_its_honest_text():
    safe = sanitize_markdown(HOSTILE_ANSWER)
    assert "An answer with $x^2$ and <strong>bold</strong>." in safe
    assert ">click</a>" in safe


def test_markdown_that_cannot_be_rendered_is_shown_as_text():
    source = "![gone](attachment:missing.png) <b onclick=x>"  # nbconvert raises on it
    safe = sanitize_markdown(source)
    assert safe == "<pre>![gone](attachment:missing.png) &lt;b onclick=x&gt;</pre>"


def test_attachments_stay_images():
    cell = nbformat.v4.new_markdown_cell("![dot](attachment:dot.png)")
    cell.attachments = {"dot.png": {"image/png": PNG}}
    notebook = nbformat.v4.new_notebook(cells=[cell])
    sanitize_student_content(notebook)
    assert notebook.cells[0].source == "![dot](attachment:dot.png)"
    assert f'src="data:image/png;base64,{PNG}"' in rendered(notebook)
    # an attachment that is a page, not an image, is not linked to
    cell.attachments = {"dot.png": {"text/html": base64.b64encode(b"<script>").decode()}}
    assert "data:text/html" not in sanitize_markdown(cell.source, cell.attachments)


def test_html_outputs():
    honest = '<table border="1" class="dataframe"><thead><tr><th>a</th></tr></thead></table>'
    assert sanitize_html(honest) == (honest, False)
    with_style = "<div><style scoped>.dataframe td { color: red }</style>" + honest + "</div>"
    safe, changed = sanitize_html(with_style)
    assert changed and "<style" not in safe and "color: red" not in safe and "<thead>" in safe
    safe, changed = sanitize_html(f'<p onclick="{PAYLOAD}">text</p><script>{PAYLOAD}</script>')
    assert changed and safe == "<p>text</p>"


def test_svg():
    matplotlib_like = (
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        '<svg xmlns:xlink="http://www.w3.org/1999/xlink" xmlns="http://www.w3.org/2000/svg">'
        "<defs><style>*{stroke-linejoin: round}</style><path id='p1' d='M 0 0 L 1 1'/></defs>"
        '<use xlink:href="#p1" x="2"/></svg>'
    )
    assert svg_is_inert(matplotlib_like)
    for hostile in (
        '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:x="http://www.w3.org/1999/xlink">'
        '<a x:href="javascript:alert(1)"><text>x</text></a></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><p>x</p></foreignObject></svg>',
        '<svg xmlns="http://www.w3.org/2000/svg"><set attributeName="href" to="x"/></svg>',
        '<!DOCTYPE svg [<!ENTITY a "b">]><svg xmlns="http://www.w3.org/2000/svg">&a;</svg>',
        "not xml <",
    ):
        assert not svg_is_inert(hostile), hostile


def _output(data: dict, **metadata) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data=data, metadata=metadata)


def test_outputs_keep_text_and_images_and_lose_active_content():
    cell = nbformat.v4.new_code_cell("plot()")
    cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                 "grade_id": "plot", "schema_version": 3,
                                 "checksum": "abc"}  # fmt: skip
    cell.outputs = [
        _output({"image/png": PNG, "text/plain": "<Figure size 640x480 with 1 Axes>"}),
        _output({"application/javascript": PAYLOAD, "text/plain": "<Javascript object>"}),
        _output({"application/javascript": PAYLOAD}),
        _output({"application/vnd.jupyter.widget-view+json": {"model_id": "1", "x": "<"}}),
        _output({"application/vnd.jupyter.widget-view+json": {"model_id": "</script>"}}),
        _output({"text/html": "<b>ok</b>"}, filenames={"image/png": "x.png"}),
        _output({"text/html": f"<b>x</b><script>{PAYLOAD}</script>"},
                **{"text/html": {"isolated": True}}),
        nbformat.v4.new_output("stream", text="printed <b> text\n"),
        nbformat.v4.new_output("error", ename="ValueError", evalue="bad <x>", traceback=["tb"]),
    ]  # fmt: skip
    notebook = nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": {"state": {}}})
    original = copy.deepcopy(notebook)
    sanitize_student_content(notebook)
    outputs = notebook.cells[0].outputs
    assert outputs[0] == original.cells[0].outputs[0]
    assert outputs[1].data == {"text/plain": "<Javascript object>"}
    assert outputs[2].data == {
        "text/plain": "[removed by npfl-course: application/javascript output]"
    }
    # a widget reference stays (as in stock nbgrader), rebuilt from its plain fields
    assert outputs[3].data == {"application/vnd.jupyter.widget-view+json": {"model_id": "1"}}
    assert "application/vnd.jupyter.widget-view+json" not in outputs[4].data
    assert outputs[5].data == {"text/html": "<b>ok</b>"} and outputs[5].metadata == {}
    assert outputs[6].data == {"text/html": "<b>x</b>"} and outputs[6].metadata == {"text/html": {}}
    assert outputs[7:] == original.cells[0].outputs[7:]
    assert notebook.cells[0].metadata == original.cells[0].metadata
    assert notebook.cells[0].source == original.cells[0].source
    assert "widgets" not in notebook.metadata
    nbformat.validate(notebook)


# ----------------------------------------------------------------------------------
# Hidden tests
# ----------------------------------------------------------------------------------


def _test_cell(source: str, outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                 "grade_id": "test_x", "points": 2,
                                 "schema_version": 3}  # fmt: skip
    cell.outputs = outputs
    return cell


def test_hide_hidden_tests_keeps_the_release_and_the_message():
    traceback = [
        "\x1b[0;31m---------------------------------------------------------------\x1b[0m",
        "\x1b[0;31mAssertionError\x1b[0m  Traceback (most recent call last)",
        "Cell \x1b[0;32mIn[3], line 4\x1b[0m\n"
        "\x1b[1;32m----> 4\x1b[0m assert secret(2) == 5, 'the answer'",
        "\x1b[0;31mAssertionError\x1b[0m: the answer",
    ]  # fmt: skip
    test = _test_cell(
        "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nprint('hidden case')\n"
        "warn_me()\nassert secret(2) == 5, 'the answer'\n### END HIDDEN TESTS",
        [
            nbformat.v4.new_output("stream", name="stdout", text="hidden case\n"),
            nbformat.v4.new_output("stream", name="stderr",
                                   text="x.py:4: UserWarning: w\n  warn_me()\n"),
            nbformat.v4.new_output("error", ename="AssertionError", evalue="the answer",
                                   traceback=traceback),
        ],
    )  # fmt: skip
    student = nbformat.v4.new_code_cell("secret(1)")
    student.outputs = [
        nbformat.v4.new_output(
            "error",
            ename="E",
            evalue="v",
            traceback=[
                "Cell In[4], line 1\n\x1b[1;32m----> 1\x1b[0m secret(1)",
                "Cell In[3], line 3\n      3 warn_me()",
                "E: v",
            ],
        ),
        nbformat.v4.new_output("error", ename="E", evalue="", traceback=["----> 1 mine()", "E"]),
    ]
    notebook = nbformat.v4.new_notebook(cells=[test, student])
    shown, _ = HideHiddenTests().preprocess(notebook, {})
    test, student = shown.cells
    assert test.source == "assert f(1) == 2"
    assert test.outputs[0].text == "hidden case\n"  # printed output is not code
    assert test.outputs[1].text == f"x.py:4: UserWarning: w\n{REDACTED_LINE}\n"
    assert test.outputs[2].traceback == ["AssertionError: the answer"]
    assert student.outputs[0].traceback == ["E: v"]  # it quoted a hidden line
    assert student.outputs[1].traceback == ["----> 1 mine()", "E"]  # the student's own


def test_unpaired_delimiters_hide_the_whole_test():
    test = _test_cell("assert f()\n### BEGIN HIDDEN TESTS\nassert g()", [])
    shown, _ = HideHiddenTests().preprocess(nbformat.v4.new_notebook(cells=[test]), {})
    assert shown.cells[0].source == HIDDEN_PLACEHOLDER


def test_show_hidden_tests_keeps_everything():
    from traitlets.config import Config

    config = Config()
    config.NpflFeedback.show_hidden_tests = True
    test = _test_cell(
        "a()\n### BEGIN HIDDEN TESTS\nb()\n### END HIDDEN TESTS",
        [nbformat.v4.new_output("error", ename="E", evalue="v", traceback=["  b()", "E: v"])],
    )
    notebook = nbformat.v4.new_notebook(cells=[test])
    original = copy.deepcopy(notebook)
    assert HideHiddenTests(config=config).preprocess(notebook, {})[0] == original


def test_the_preprocessors_are_on_where_a_converter_registers_them():
    exporter = HTMLExporter()  # nbgrader's converters register without enabled=True
    for preprocessor in (HideHiddenTests, SanitizeStudentContent):
        exporter.register_preprocessor(preprocessor)
        assert exporter._preprocessors[-1].enabled


def test_feedback_preprocessors_are_added_once():
    assert feedback_preprocessors(["nbgrader.preprocessors.GetGrades"]) == [
        "nbgrader.preprocessors.GetGrades",
        HideHiddenTests,
        SanitizeStudentContent,
    ]
    configured = ["npfl_course.feedback.HideHiddenTests", SanitizeStudentContent()]
    assert feedback_preprocessors(configured) == configured


def test_the_repository_config_sanitises_every_html_exporter(monkeypatch):
    """The second layer: nbgrader's formgrader renders with HTMLExporter(config=...)."""
    monkeypatch.delenv("NPFL_COURSE_OUTPUT", raising=False)
    config = load_course(REPO).config
    assert config.NpflFeedback.show_hidden_tests is False
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(HOSTILE_ANSWER)])
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [_output({"text/html": HOSTILE_CELL, "application/javascript": PAYLOAD})]
    notebook.cells.append(cell)
    page = HTMLExporter(config=config, template_name="classic").from_notebook_node(notebook)[0]
    assert_inert(page)
    assert "<strong>bold</strong>" in page


# ----------------------------------------------------------------------------------
# End to end: autograde, then the feedback
# ----------------------------------------------------------------------------------

STUDENTS = {
    "wrong": {"add": "def add(a, b):\n    return a + b if a > 0 else 7"},
    "hostile": {"square": HOSTILE_CODE},
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    """The course with ``wrong`` and ``hostile`` autograded and their feedback written."""
    from npfl_course.autograde import Autograder
    from npfl_course.sandbox import Limits, isolation

    directory = tmp_path_factory.mktemp("feedback") / "course"
    (directory / "source" / "tiny").mkdir(parents=True)
    (directory / "nbgrader_config.py").write_text(TINY_CONFIG, encoding="utf-8")
    nbformat.write(feedback_source(), directory / "source" / "tiny" / "tiny.ipynb")
    course = load_course(directory)
    ok, log = generate_assignment(course, "tiny")
    assert ok, log
    release = nbformat.read(directory / "release" / "tiny" / "tiny.ipynb", 4)
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)
    for student, replace in STUDENTS.items():
        notebook = make_submission(release, source, replace)
        if student == "hostile":
            answer = next(c for c in notebook.cells if c.cell_type == "markdown")
            answer.source = HOSTILE_ANSWER
            notebook.cells += [
                nbformat.v4.new_markdown_cell(HOSTILE_CELL),
                nbformat.v4.new_markdown_cell(HONEST_MARKDOWN),
            ]
        folder = directory / "submitted" / student / "tiny"
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / "tiny.ipynb")
    grader = Autograder(course, "tiny", jobs=2, preflight=False,
                        limits=Limits(notebook_seconds=120, cell_seconds=30),
                        unsandboxed=isolation()[0] != "bwrap")  # fmt: skip
    report = grader.run(progress=False)
    assert [o.status for o in report.outcomes] == ["graded", "graded"], report.summary()
    ok, log = generate_feedback(course, "tiny")
    assert ok, log
    return directory


def _feedback(directory: Path, student: str) -> str:
    return (directory / "feedback" / student / "tiny" / "tiny.html").read_text()


def _hidden(directory: Path) -> set[str]:
    source = nbformat.read(directory / "source" / "tiny" / "tiny.ipynb", 4)
    release = nbformat.read(directory / "release" / "tiny" / "tiny.ipynb", 4)
    hidden = hidden_lines(source, release)
    assert "assert add(-1, 1) == 0, 'add(-1, 1) should be 0'" in hidden
    return hidden


@pytest.mark.slow
def test_feedback_shows_no_hidden_test(graded):
    hidden = _hidden(graded)
    autograded = (graded / "autograded" / "wrong" / "tiny" / "tiny.ipynb").read_text()
    assert "add(-1, 1) == 0" in autograded  # the formgrader still shows the full tests
    for student in STUDENTS:
        text = _Page(_feedback(graded, student)).text
        shown = sorted(line for line in hidden if line in text)
        assert shown == [], f"{student}'s feedback shows hidden lines"


@pytest.mark.slow
def test_feedback_names_the_failed_test_its_points_and_message(graded):
    text = re.sub(r"\s+", " ", _Page(_feedback(graded, "wrong")).text)
    assert "Grade cell: test_add" in text
    assert "Score: 0.0 / 1.0" in text  # test_add
    assert "Score: 2.0 / 2.0" in text  # test_mul
    assert "AssertionError: add(-1, 1) should be 0" in text
    assert "checking negative numbers" in text  # what the test printed
    assert "assert add(1, 2) == 3, 'add(1, 2)'" in text  # the released, visible test
    assert "Traceback" not in text and "----> " not in text


@pytest.mark.slow
def test_hostile_content_is_inert_in_the_autograded_notebook_and_the_feedback(graded):
    autograded = graded / "autograded" / "hostile" / "tiny" / "tiny.ipynb"
    notebook = nbformat.read(autograded, 4)
    text = autograded.read_text()
    assert MARKER not in text and "onerror" not in text.lower()
    assert "javascript:" not in text.lower() and "application/javascript" not in text
    assert_inert(rendered(notebook))  # what the formgrader's template builds on
    page = _feedback(graded, "hostile")
    assert_inert(page)
    assert "<script" in page and "MathJax" in page  # nbgrader's template keeps its own


@pytest.mark.slow
def test_honest_content_survives(graded):
    notebook = nbformat.read(graded / "autograded" / "hostile" / "tiny" / "tiny.ipynb", 4)
    assert notebook.cells[-1].source == HONEST_MARKDOWN
    answer = next(
        c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "explain"
    )
    assert "An answer with $x^2$ and <strong>bold</strong>." in answer.source
    assert answer.metadata.nbgrader["checksum"]  # nbgrader's metadata is untouched
    with load_course(graded).gradebook() as gradebook:
        submission = gradebook.find_submission("tiny", "hostile")
        assert submission.score == 4.0 and submission.needs_manual_grade
    page = _feedback(graded, "hostile")
    text = re.sub(r"\s+", " ", _Page(page).text)
    assert "honest html" in text and "honest markdown" in text and "honest printing" in text
    assert f"data:image/png;base64,{PNG}" in page  # the displayed PNG and the markdown one
    assert "<strong>bold</strong>" in page and "$x^2$" in page
    assert '<th style="text-align:left">a</th>' in page  # the honest table
    assert "Score: 4.0 / 5.0" in text


@pytest.mark.slow
def test_show_hidden_tests_shows_them(graded, tmp_path):
    directory = shutil.copytree(graded, tmp_path / "course")
    with open(directory / "nbgrader_config.py", "a") as config:
        config.write("c.NpflFeedback.show_hidden_tests = True\n")
    ok, log = generate_feedback(load_course(directory), "tiny")
    assert ok, log
    text = _Page(_feedback(directory, "wrong")).text
    assert _hidden(directory) <= {line for line in _hidden(directory) if line in text}
    assert "Traceback" in html.unescape(text)
    assert_inert(_feedback(directory, "hostile"))  # sanitising is not optional
