"""Feedback without the hidden tests, and student content that is safe to show.

``npfl-course feedback`` runs nbgrader's ``GenerateFeedback`` (autograded notebooks ->
``feedback/<student>/<assignment>/*.html``) with two more preprocessors, in nbgrader's
style:

- :class:`HideHiddenTests`: a test cell shows what the release showed (its source
  without the ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` region), its name
  (grade_id) and score from nbgrader's template, and, when it failed, only
  ``ExceptionType: message``: IPython's traceback quotes the failing lines, hidden ones
  included. Printed output stays (it is output, not code), except lines that repeat a
  hidden line verbatim (a warning quotes its source line). Instructors who want to show
  the tests set, in ``nbgrader_config.py``::

      c.NpflFeedback.show_hidden_tests = True

- :class:`SanitizeStudentContent` (:func:`sanitize_student_content`): whatever a student
  controls and a page renders as HTML (markdown cells, ``text/html``, ``text/markdown``
  and SVG outputs, JavaScript and widget outputs) is made inert, so that it cannot run
  in an instructor's formgrader or in a feedback page. ``npfl-course autograde`` applies
  it to the autograded notebooks too (the formgrader renders those), and the
  repository's ``nbgrader_config.py`` adds it to every ``HTMLExporter`` of nbgrader (the
  formgrader's included) as a second layer.

Sanitising follows one rule: HTML that a strict allowlist (:data:`TAGS`,
:data:`ATTRIBUTES`, bleach's CSS properties, http/https/mailto links, ``data:image/...``
images) leaves unchanged is kept byte for byte; anything else is replaced by what
bleach makes of it: disallowed tags removed (their text kept), ``<script>`` and
``<style>`` elements removed with their content, disallowed attributes and URLs
dropped. So honest markdown, tables, images and plots are untouched.
"""

from __future__ import annotations

import functools
import html
import re
from typing import TYPE_CHECKING

import bleach
from bleach import html5lib_shim
from bleach.css_sanitizer import CSSSanitizer
from bleach.sanitizer import BleachSanitizerFilter
from nbconvert.preprocessors import Preprocessor
from nbgrader import utils
from nbgrader.preprocessors import ClearHiddenTests
from traitlets import Bool
from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:
    from nbformat import NotebookNode

    from npfl_course.course import Course


class NpflFeedback(LoggingConfigurable):
    """What ``npfl-course feedback`` (and nbgrader's feedback with
    :class:`HideHiddenTests`) shows of the tests, configurable in ``nbgrader_config.py``."""

    show_hidden_tests = Bool(
        False,
        help="Show the test cells' full code (hidden tests included) and their tracebacks "
        "in the feedback. Off: a test cell shows its released code and, when it failed, "
        "'ExceptionType: message'.",
    ).tag(config=True)


# ----------------------------------------------------------------------------------
# Hidden tests
# ----------------------------------------------------------------------------------

# CSI sequences (colours), OSC sequences (window titles, links), then any other control
# character but newline and tab.
_ANSI = re.compile(
    r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
# IPython quotes a source line as "----> 4 code" or "      3 code".
_LINE_NUMBER = re.compile(r"^(?:-*>\s*)?\d+\s")
HIDDEN_PLACEHOLDER = "# (the code of this test is not shown)"
REDACTED_LINE = "[a line of a hidden test]"


def strip_ansi(text: str) -> str:
    """``text`` without terminal codes (IPython colours its tracebacks; a student's message
    may set the window title) and other control characters but newline and tab."""
    return _ANSI.sub("", text)


def _is_test_cell(cell) -> bool:
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


class HideHiddenTests(Preprocessor):
    """Takes the hidden tests out of the feedback (unless ``NpflFeedback.show_hidden_tests``).

    A test cell's source becomes what ``generate_assignment`` released: the region between
    ``ClearHiddenTests``' delimiters (the configured ones, ``BEGIN HIDDEN TESTS`` and
    ``END HIDDEN TESTS`` by default) is removed, as ``ClearHiddenTests`` removed it; a cell
    whose delimiters do not pair shows no code at all. A test cell's error output becomes
    its one line ``ename: evalue``: the message is what the test chose to say (an
    ``assert ..., "message"``), while the traceback quotes the code of the failing lines.
    Any other cell's traceback that quotes a hidden line is shortened the same way, and a
    printed line that repeats a hidden line verbatim is replaced by
    :data:`REDACTED_LINE`; other printed output and displayed values stay.

    Only the feedback's copy changes: the autograded notebook (which the formgrader shows
    the instructor) keeps the full tests.
    """

    # On by default, as nbgrader's preprocessors (a converter registers them disabled).
    enabled = Bool(True, help="Whether to use this preprocessor").tag(config=True)

    def preprocess(self, nb, resources):
        if NpflFeedback(parent=self).show_hidden_tests:
            return nb, resources
        begin, end = self._delimiters()
        hidden: set[str] = set()
        for cell in nb.cells:
            if cell.cell_type == "code" and not utils.is_solution(cell):  # not student code
                cell.source, removed = _without_hidden_region(cell.source, begin, end)
                hidden |= removed
        hidden.discard("")
        for cell in nb.cells:
            if cell.cell_type == "code":
                _hide_in_outputs(cell, hidden, test=_is_test_cell(cell))
        return nb, resources

    def preprocess_cell(self, cell, resources, cell_index):
        return cell, resources

    def _delimiters(self) -> tuple[str, str]:
        """The ``c.ClearHiddenTests`` delimiters that ``generate_assignment`` used."""
        # Read, not instantiated: under an HTMLExporter an nbgrader preprocessor warns
        # about nbconvert's display_data_priority setting.
        section = self.config.get("ClearHiddenTests", {})
        return tuple(
            section.get(name, getattr(ClearHiddenTests, name).default_value)
            for name in ("begin_test_delimeter", "end_test_delimeter")
        )


def _without_hidden_region(source: str, begin: str, end: str) -> tuple[str, set[str]]:
    """``source`` as ``ClearHiddenTests`` releases it, and the (stripped) lines removed.

    Mirrors ``ClearHiddenTests._remove_hidden_test_region``: a line containing ``begin``
    opens the region, one containing ``end`` closes it, both delimiters go. Nested or
    unclosed regions, which nbgrader refuses to release, hide the whole source.
    """
    kept, removed, inside = [], set(), False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                return HIDDEN_PLACEHOLDER, {x.strip() for x in source.split("\n")}
            inside = True
            removed.add(line.strip())
        elif end in line:
            inside = False
            removed.add(line.strip())
        elif inside:
            removed.add(line.strip())
        else:
            kept.append(line)
    if inside:
        return HIDDEN_PLACEHOLDER, {x.strip() for x in source.split("\n")}
    # A hidden line that is also visible was no secret: not redacted from the output.
    return "\n".join(kept), removed - {line.strip() for line in kept}


def _code(line: str) -> str:
    """A printed or traceback line as the source line it may quote."""
    line = strip_ansi(line).strip()
    return _LINE_NUMBER.sub("", line, count=1).strip()


def _quotes_hidden(lines: list[str], hidden: set[str]) -> bool:
    return any(_code(part) in hidden for line in lines for part in line.split("\n"))


def _hide_in_outputs(cell, hidden: set[str], test: bool) -> None:
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            if test or _quotes_hidden(output.get("traceback", []), hidden):
                ename, evalue = strip_ansi(output.ename), strip_ansi(output.evalue)
                output.traceback = [f"{ename}: {evalue}" if evalue else ename]
        elif output.output_type == "stream" and hidden:
            lines = output.text.split("\n")
            redacted = [REDACTED_LINE if _code(line) in hidden else line for line in lines]
            output.text = "\n".join(redacted)


# ----------------------------------------------------------------------------------
# Student content
# ----------------------------------------------------------------------------------

#: Tags kept in student HTML (others are removed, their text kept): formatting,
#: lists, tables, images, headings, code. No scripts, frames, forms, media, <base>,
#: <link>, <meta>, <style>, SVG or MathML.
TAGS = frozenset(
    {"a", "abbr", "acronym", "b", "bdi", "bdo", "blockquote", "br", "caption", "cite",
     "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em",
     "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
     "kbd", "li", "mark", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "small",
     "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot",
     "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr"}
)  # fmt: skip
#: Attributes kept, per tag ("*": on every kept tag). No event handlers, no ``name``
#: and, except on headings (markdown's anchors), no ``id`` (they could clobber the
#: page's own); ``style`` goes through bleach's CSS sanitiser (colours, fonts,
#: alignment, sizes: no positioning, no url()).
ATTRIBUTES = {
    "*": frozenset({"class", "title", "style", "align", "dir", "lang"}),
    "a": frozenset({"href"}),
    "img": frozenset({"src", "alt", "width", "height"}),
    **{f"h{level}": frozenset({"id"}) for level in range(1, 7)},
    **{tag: frozenset({"colspan", "rowspan", "scope"}) for tag in ("td", "th")},
    **{tag: frozenset({"span"}) for tag in ("col", "colgroup")},
    **{tag: frozenset({"cite"}) for tag in ("blockquote", "q", "del", "ins")},
    "table": frozenset({"border"}),
    "ol": frozenset({"start", "type", "reversed"}),
    "li": frozenset({"value"}),
    "details": frozenset({"open"}),
    "time": frozenset({"datetime"}),
}
#: URL schemes of links and images; ``data:`` only as an image's ``src`` with an image
#: type (an ``<img>`` never runs script, even an SVG one).
PROTOCOLS = frozenset({"http", "https", "mailto", "data"})
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|jpg|gif|webp|svg\+xml)[;,]")
_URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
#: Output types kept as they are: text, escaped by nbconvert's templates, or images
#: that are shown as ``<img src="data:...">``. HTML, markdown and SVG are kept once
#: sanitised; every other type (JavaScript, widgets, PDF, ...) goes.
SAFE_OUTPUTS = frozenset(
    {"text/plain", "text/latex", "application/json", "image/png", "image/jpeg", "image/gif"}
)
REMOVED_OUTPUT = "[removed by npfl-course: {} output]"
# Elements whose content is code, not text: removed whole, not left as text.
_CODE_ELEMENTS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name not in ATTRIBUTES["*"] and name not in ATTRIBUTES.get(tag, ()):
        return False
    if name in _URL_ATTRIBUTES:
        # as bleach normalises before it checks the scheme (which it does next)
        url = re.sub(r"[`\x00-\x20\x7f-\xa0\s]+", "", html.unescape(value)).lower()
        if url.startswith("data:"):
            return tag == "img" and name == "src" and bool(_DATA_IMAGE.match(url))
    return True


@functools.cache
def _cleaner() -> bleach.Cleaner:
    return bleach.Cleaner(
        tags=TAGS,
        attributes=_allowed_attribute,
        protocols=PROTOCOLS,
        strip=True,  # as browsers' and JupyterLab's sanitisers: the tag goes, its text stays
        strip_comments=True,
        css_sanitizer=CSSSanitizer(),
    )


class _Everything(frozenset):
    def __contains__(self, item) -> bool:
        return True


class _Unfiltered(BleachSanitizerFilter):
    """bleach's filter with nothing disallowed: entities, comments and inline CSS are
    written as the sanitiser writes them, every tag and attribute is kept."""

    css = CSSSanitizer(allowed_css_properties=_Everything(), allowed_svg_properties=())

    def sanitize_token(self, token):
        if token["type"] == "Characters":
            return self.sanitize_characters(token)
        if token["type"] == "Comment":
            return None  # as strip_comments=True
        if token["type"] in ("StartTag", "EmptyTag") and (None, "style") in token["data"]:
            token["data"][(None, "style")] = self.css.sanitize_css(token["data"][(None, "style")])
        return token


def _reserialize(text: str) -> str:
    """``text`` parsed and written back as :func:`_cleaner` does, but unfiltered."""
    cleaner = _cleaner()
    parser = html5lib_shim.BleachHTMLParser(
        tags=None, strip=False, consume_entities=False, namespaceHTMLElements=False
    )
    unfiltered = _Unfiltered(
        source=cleaner.walker(parser.parseFragment(text)),
        allowed_tags=(),
        attributes={},
        allowed_protocols=(),
        strip_disallowed_tags=False,
        strip_html_comments=True,
    )
    return cleaner.serializer.render(unfiltered)


def sanitize_html(text: str) -> tuple[str, bool]:
    """Sanitised ``text`` and whether sanitising changed anything.

    Both sides go through the same HTML5 parser and serialiser (bleach's), one with the
    allowlist's filter and one without, so they are equal exactly when the filter found
    nothing to remove; then ``text`` itself is safe to keep.
    """
    if not text:
        return text, False
    safe = _cleaner().clean(_CODE_ELEMENTS.sub("", text))
    return safe, safe != _reserialize(text)


@functools.cache
def _markdown_exporter():
    from nbconvert.exporters import HTMLExporter

    return HTMLExporter()


def _render_markdown(source: str, attachments=None) -> list[str] | None:
    """The HTML nbconvert's templates make of markdown (None: it cannot be rendered).

    Two versions: ``markdown2html``'s, and that with ``strip_files_prefix`` applied, as
    the classic, formgrade and feedback templates show markdown cells (it turns
    ``href="files/x"`` into ``href="x"``).
    """
    from nbconvert.filters import strip_files_prefix

    context = {"cell": {"attachments": attachments or {}}}
    try:
        rendered = _markdown_exporter().markdown2html(context, source)
    except Exception:  # e.g. a missing attachment: nbconvert raises
        return None
    return [rendered, strip_files_prefix(rendered)]


def _renders_inert(source: str, attachments=None) -> bool:
    versions = _render_markdown(source, attachments)
    return versions is not None and not any(sanitize_html(v)[1] for v in versions)


def sanitize_markdown(source: str, attachments=None) -> str:
    """Markdown that renders without active content: ``source`` if it renders so.

    Otherwise the sanitised HTML of its rendering (markdown keeps HTML as it is), or, if
    even that does not render safely, the source as preformatted text.
    """
    if _renders_inert(source, attachments):
        return source
    candidates = [f"<pre>{html.escape(source, quote=False)}</pre>"]
    versions = _render_markdown(source, attachments)
    if versions is not None:
        candidates.insert(0, sanitize_html(versions[1])[0])
    return next((c for c in candidates if _renders_inert(c)), "")


def svg_is_inert(svg: str) -> bool:
    """Whether an SVG image has no script, event handler, foreign content or outside link.

    Pages show SVG outputs as ``<img>``, where nothing runs; this keeps it so wherever
    an SVG might be inlined. Matplotlib's SVGs pass.
    """
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(svg.encode("utf-8") if isinstance(svg, str) else svg)
    except Exception:  # unparsable, or entities (defusedxml refuses them)
        return False
    for element in root.iter():
        tag = str(element.tag).rsplit("}", 1)[-1].lower()
        if tag in {"script", "foreignobject", "iframe", "object", "embed", "handler"}:
            return False
        for name, value in element.attrib.items():
            name = name.rsplit("}", 1)[-1].lower()
            url = re.sub(r"[\x00-\x20\s]+", "", value).lower()
            if name.startswith("on") or "javascript:" in url or "vbscript:" in url:
                return False
            if name == "href" and not (url.startswith("#") or _DATA_IMAGE.match(url)):
                return False
            if name == "attributename" and "href" in url:  # <set>/<animate> of a link
                return False
    return True


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_MODEL_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def _widget_view(value) -> dict | None:
    """A widget-view output's model reference, rebuilt from its plain fields, or None."""
    if not isinstance(value, dict) or not _MODEL_ID.fullmatch(str(value.get("model_id"))):
        return None
    kept = {"model_id": value["model_id"]}
    for key in ("version_major", "version_minor"):
        if isinstance(value.get(key), int) and not isinstance(value.get(key), bool):
            kept[key] = value[key]
    return kept


def _sanitize_outputs(outputs) -> None:
    for output in outputs:
        if output.output_type not in ("execute_result", "display_data"):
            continue  # stream and error text: escaped by every template
        data, removed = output.get("data", {}), []
        for mime in list(data):
            value = data[mime]
            if mime in SAFE_OUTPUTS:
                continue
            if mime == WIDGET_VIEW and _widget_view(value) is not None:
                # A reference to a widget model, as stock nbgrader keeps it; without the
                # notebook's widget state (removed below) nothing renders it.
                data[mime] = _widget_view(value)
            elif mime == "text/html" and isinstance(value, str):
                safe, changed = sanitize_html(value)
                if changed:
                    data[mime] = safe
            elif mime == "text/markdown" and isinstance(value, str):
                data[mime] = sanitize_markdown(value)
            elif mime == "image/svg+xml" and isinstance(value, str) and svg_is_inert(value):
                continue
            else:
                del data[mime]
                removed.append(mime)
        if removed and not data:
            data["text/plain"] = REMOVED_OUTPUT.format(", ".join(removed))
        # Rendering hints a student could set: a file name becomes an <img src>, and
        # "isolated" HTML goes into an iframe.
        metadata = output.get("metadata", {})
        metadata.pop("filenames", None)
        for value in metadata.values():
            if isinstance(value, dict):
                value.pop("isolated", None)


def sanitize_student_content(notebook: NotebookNode) -> NotebookNode:
    """Makes ``notebook`` safe to render as HTML; changes it in place and returns it.

    Markdown cells and ``text/markdown`` outputs keep their source when it renders to
    harmless HTML, else get :func:`sanitize_markdown`'s replacement; ``text/html`` outputs
    are sanitised (:func:`sanitize_html`); SVG outputs with active content, JavaScript,
    widget and every other output type outside :data:`SAFE_OUTPUTS` are removed; so is
    the notebook's widget state. Code, text outputs, errors, raw cells (which nbconvert
    renders through its own sanitiser), attachments (only ever shown as ``<img>``) and all
    metadata nbgrader uses (grade ids, checksums, points) stay as they are.
    """
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = sanitize_markdown(cell.source, cell.get("attachments"))
        elif cell.cell_type == "code":
            _sanitize_outputs(cell.get("outputs", []))
    # Widget state is rendered by a script nbconvert loads from a CDN.
    notebook.metadata.pop("widgets", None)
    return notebook


class SanitizeStudentContent(Preprocessor):
    """:func:`sanitize_student_content` as a preprocessor (feedback, formgrader)."""

    enabled = Bool(True, help="Whether to use this preprocessor").tag(config=True)

    def preprocess(self, nb, resources):
        return sanitize_student_content(nb), resources

    def preprocess_cell(self, cell, resources, cell_index):
        return cell, resources


# ----------------------------------------------------------------------------------
# npfl-course feedback
# ----------------------------------------------------------------------------------

#: What the feedback runs after nbgrader's own preprocessors, in this order.
FEEDBACK_PREPROCESSORS = (HideHiddenTests, SanitizeStudentContent)


def feedback_preprocessors(configured) -> list:
    """``configured`` (``GenerateFeedback.preprocessors``: classes, instances or import
    names) with those of :data:`FEEDBACK_PREPROCESSORS` appended that it lacks
    (``nbgrader_config.py`` may name them already)."""
    from traitlets.utils.importstring import import_item

    def kind(preprocessor):
        if isinstance(preprocessor, str):
            return import_item(preprocessor)
        return preprocessor if isinstance(preprocessor, type) else type(preprocessor)

    present = {kind(p) for p in configured}
    return list(configured) + [p for p in FEEDBACK_PREPROCESSORS if p not in present]


def generate_feedback(course: Course, assignment: str, force: bool = True) -> tuple[bool, str]:
    """``nbgrader generate_feedback`` without hidden tests and with student content made safe.

    autograded/<student>/<assignment>/*.ipynb -> feedback/<student>/<assignment>/*.html,
    through nbgrader's preprocessors and :data:`FEEDBACK_PREPROCESSORS`. The autograded
    notebooks are not changed.

    Returns:
        tuple[bool, str]: Whether it succeeded, and nbgrader's log.
    """
    from nbgrader.converters import GenerateFeedback
    from traitlets.config import Config

    from npfl_course.course import assignment_coursedir, run_converter

    coursedir = assignment_coursedir(course, assignment)
    converter = GenerateFeedback(coursedir=coursedir, parent=course.app)
    config = Config()
    config.HTMLExporter.template_name = "feedback"  # as NbGraderAPI.generate_feedback does
    converter.update_config(config)
    converter.preprocessors = feedback_preprocessors(converter.preprocessors)
    converter.force = force
    return run_converter(converter)
