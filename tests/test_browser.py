"""End to end in a real browser: JupyterLab with nbgrader's extensions, as people use it.

A module-scoped ``jupyter lab`` serves a temporary course (the ``regularization``
assignment generated, one submission autograded by ``npfl-course``, a student's copy
of the release, one lecture notebook), and Debian's Chromium, driven by Playwright,
plays the student, the instructor and a reader of the lectures.

Needs ``playwright`` (the ``test`` extra) and a Chromium: ``/usr/bin/chromium``
(``apt-get install chromium``) or the executable named by ``NPFL_CHROMIUM``; no browser
is ever downloaded. Without them these tests skip, unless ``NPFL_REQUIRE_BROWSER=1``
(set by ``.ci/run``) turns the skip into a failure (tests/browsertools.py).

Every step leaves a screenshot in the test's temporary directory; when a test fails,
they are copied, with one of the page as it was at the failure, to
``$NPFL_ARTIFACTS/browser/<test>/`` (default: ``artifacts/`` in the repository).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from browsertools import (
    TIMEOUT_MS,
    Page,
    Steps,
    close_dialog,
    error_outputs,
    expect,
    expect_lab_loaded,
    expect_nbgrader_loaded,
    keep_screenshots,
    kernel_idle,
    launch_browser,
    menu,
    new_page,
    run_all,
    validate,
    write_cell,
    write_lab_settings,
)
from hubtools import free_port

from npfl_course import check as harness

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "regularization"  # the fastest of the course's assignments to validate
STUDENT_CELL = "mixup"  # the solution cell the student writes in the browser
LECTURE = "01_output_activations_and_mlp.ipynb"
STUB = "    # YOUR CODE HERE\n    raise NotImplementedError()"
CORRECT_BODY = (
    "    mixed_inputs = lam * inputs + (1 - lam) * inputs[perm.to(inputs.device)]\n"
    "    partner_probs = target_probs[perm.to(target_probs.device)]\n"
    "    return mixed_inputs, lam * target_probs + (1 - lam) * partner_probs"
)
# The student's slip: the targets get lam twice, so they no longer sum to one.
BROKEN_BODY = CORRECT_BODY.replace("(1 - lam) * partner_probs", "lam * partner_probs")
# The instructor's graded submission: variants.py's WRONG answer of that name.
GRADED_STUDENT = "alice"
GRADED_VARIANT = "mixup leaving the targets unmixed"

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# ----------------------------------------------------------------------------------
# The course, the server and the browser
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A course with ``ASSIGNMENT`` generated and one submission autograded (by
    :func:`npfl_course.check.grade`), plus the student's and the lecture's notebooks
    where JupyterLab serves them."""
    wrong = next(v for v in harness.load_variants(ASSIGNMENT).WRONG if v["name"] == GRADED_VARIANT)

    def submissions(release, source):
        replace = {wrong["cell"]: wrong["code"]}
        return {GRADED_STUDENT: harness.make_submission(release, source, replace)}

    workdir = tmp_path_factory.mktemp("lab")
    graded = harness.grade(ASSIGNMENT, workdir, submissions)
    assert graded.release is not None, f"generate failed:\n{graded.log}"
    assert GRADED_STUDENT in graded.scores, graded.failure_log(GRADED_STUDENT)
    root = workdir / "course"
    # The formgrader warns unless the exchange exists; the default is system-wide.
    with open(root / "nbgrader_config.py", "a") as config:
        config.write('\nc.Exchange.root = str(OUTPUT / "exchange")\n')
    (root / "exchange").mkdir()

    source = harness.read_notebook(harness.source_path(ASSIGNMENT))
    stub = harness.cells_by_kind(graded.release, "solution")[STUDENT_CELL].source
    mine = harness.make_submission(graded.release, source, {STUDENT_CELL: stub})
    (root / "student" / ASSIGNMENT).mkdir(parents=True)
    nbformat.write(mine, root / "student" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    (root / "lectures").mkdir()
    shutil.copy(REPO / "lectures" / LECTURE, root / "lectures" / LECTURE)
    return root


@pytest.fixture(scope="module")
def lab(course, tmp_path_factory):
    """``(base_url, token)`` of a ``jupyter lab`` serving ``course`` (its working directory,
    where nbgrader's server extensions find ``nbgrader_config.py``)."""
    state = tmp_path_factory.mktemp("lab-state")
    write_lab_settings(state / "settings")
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
    }
    env.pop("MPLBACKEND", None)  # Agg (set for CI) would keep plots out of the notebook
    env.pop("NPFL_COURSE_OUTPUT", None)  # nbgrader_config.py: the course is the output folder
    port, token = free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={course}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log_path = state / "jupyter-lab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=course, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    with launch_browser() as browser:
        yield browser


@pytest.fixture
def steps(request, browser, tmp_path):
    """A fresh page (1400x900) and its :class:`Steps`; artifacts kept on failure."""
    page, errors = new_page(browser)
    recorder = Steps(page, tmp_path / "screenshots")
    yield recorder
    keep_screenshots(request, recorder, errors)
    page.context.close()


# ----------------------------------------------------------------------------------
# What people do in JupyterLab
# ----------------------------------------------------------------------------------


def _open(page: Page, lab, path: str = "") -> None:
    """Opens JupyterLab (and ``path``) with a fresh workspace: no tabs of earlier tests."""
    base, token = lab
    where = f"lab/tree/{path}" if path else "lab"
    page.goto(f"{base}/{where}?reset&token={token}")
    expect_lab_loaded(page)
    tabs = page.locator("#jp-main-dock-panel .lm-TabBar-tab")
    if path:
        expect(tabs).to_have_count(1, timeout=TIMEOUT_MS)
        expect(tabs).to_contain_text(Path(path).name)


# ----------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------


def test_student_fills_a_cell_and_validates(course, lab, steps):
    page = steps.page
    path = f"student/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
    release = harness.read_notebook(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    stub = harness.cells_by_kind(release, "solution")[STUDENT_CELL].source
    assert STUB in stub, f"the released {STUDENT_CELL} cell changed: update this test"
    signature = stub.splitlines()[0]

    _open(page, lab, path)
    expect_nbgrader_loaded(page)
    expect(page.get_by_title("Validate Assignment")).to_be_visible()
    kernel_idle(page)
    steps.shot("student-opens-the-release")

    write_cell(page, signature, stub.replace(STUB, CORRECT_BODY))
    steps.shot("student-writes-mixup")
    run_all(page)
    assert error_outputs(page).count() == 0, error_outputs(page).all_inner_texts()
    steps.shot("all-cells-ran")
    dialog = validate(page)
    expect(dialog).to_contain_text("Success! Your notebook passes all the tests.")
    steps.shot("validate-succeeds")
    close_dialog(dialog)
    # Validate saved the notebook and judged what is on disk.
    saved = harness.read_notebook(course / path)
    assert CORRECT_BODY in harness.cells_by_kind(saved, "solution")[STUDENT_CELL].source

    write_cell(page, signature, stub.replace(STUB, BROKEN_BODY))
    run_all(page)
    expect(error_outputs(page)).to_have_count(1)
    expect(error_outputs(page)).to_contain_text("the mixed targets")
    steps.shot("broken-answer-fails-its-test")
    dialog = validate(page)
    expect(dialog).to_contain_text("The following cell failed")
    expect(dialog).to_contain_text("mixup(inputs, targets, 0.75, perm)")  # test_mixup's code
    expect(dialog).to_contain_text("AssertionError: the mixed targets")
    steps.shot("validate-reports-the-failing-test")
    close_dialog(dialog)
    saved = harness.read_notebook(course / path)
    assert BROKEN_BODY in harness.cells_by_kind(saved, "solution")[STUDENT_CELL].source


def test_instructor_sees_the_autograded_score(course, lab, steps):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(ASSIGNMENT, GRADED_STUDENT)
        score, max_score = submission.score, submission.max_score
    assert 0 < score < max_score, "the graded submission should be partly wrong"

    page = steps.page
    _open(page, lab)
    expect_nbgrader_loaded(page)
    menu(page, "Nbgrader", "Formgrader")
    formgrader = page.frame_locator("iframe[src*='formgrader']")
    row = formgrader.locator("tr", has_text=ASSIGNMENT)
    expect(row).to_be_visible(timeout=TIMEOUT_MS)
    expect(formgrader.locator("h1", has_text="Manage Assignments")).to_be_visible()
    steps.shot("formgrader-lists-the-assignment")

    row.get_by_role("link", name="1", exact=True).click()  # the number of submissions
    student = formgrader.locator("tr", has_text=GRADED_STUDENT)
    expect(student).to_be_visible(timeout=TIMEOUT_MS)
    expect(student).to_contain_text("graded")
    expect(student).to_contain_text(f"{score:g} / {max_score:g}")
    steps.shot("formgrader-shows-the-score")


def test_lecture_notebook_runs_and_plots(course, lab, steps):
    page = steps.page
    _open(page, lab, f"lectures/{LECTURE}")
    kernel_idle(page)
    steps.shot("lecture-opened")
    run_all(page)
    assert error_outputs(page).count() == 0, error_outputs(page).all_inner_texts()
    images = page.locator(".jp-OutputArea-output[data-mime-type='image/png'] img")
    expect(images.first).to_be_visible()
    images.first.scroll_into_view_if_needed()
    sizes = images.evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes and all(w > 100 and h > 100 for w, h in sizes), sizes
    steps.shot("lecture-plot-rendered")


# ----------------------------------------------------------------------------------
# Student content is inert in the formgrader and in the feedback
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hits():
    """``(port, paths)``: a local HTTP server that records every request it gets."""
    import http.server
    import threading

    paths: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            paths.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], paths
    server.shutdown()


def _act(port: int, where: str) -> str:
    """JavaScript that, if it ever runs, marks the window and calls the recorder."""
    return f"window.__npfl_xss=1;new Image().src='http://127.0.0.1:{port}/{where}'"


@pytest.fixture(scope="module")
def hostile(course, hits):
    """The tiny assignment added to ``course`` with two autograded submissions whose
    markdown and outputs carry payloads (see :func:`_act`), and their feedback:
    ``hostile``, as ``npfl-course autograde`` leaves it, and ``legacy``, whose autograded
    notebook gets the raw payloads back (as if graded before the sanitiser): only the
    configured second layer (``c.HTMLExporter.preprocessors``) protects it.

    Returns ``{student: (submission notebook id, feedback HTML path)}``."""
    from tiny_course import tiny_source

    from npfl_course.autograde import Autograder
    from npfl_course.course import generate_assignment, load_course
    from npfl_course.feedback import generate_feedback
    from npfl_course.sandbox import Limits, isolation

    port, _ = hits
    markdown = (
        "An honest answer with **bold** and $x^2$.\n\n"
        f'<img src=x onerror="{_act(port, "md-img")}">\n\n'
        f"<script>{_act(port, 'md-script')}</script>\n\n"
        f"[click](javascript:{_act(port, 'md-link')})"
    )
    html = f'<b>honest html</b><img src=x onerror="{_act(port, "html")}">'
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" onload="{_act(port, "svg")}"></svg>'
    code = (
        "def square(x):\n    return x * x\n\n"
        "from IPython.display import HTML, SVG, Javascript, Markdown, display\n"
        f"display(HTML({html!r}))\n"
        f"display(Javascript({_act(port, 'js')!r}))\n"
        f"display(Markdown({markdown!r}))\n"
        f"display(SVG({svg!r}))\n"
    )
    previous = os.environ.pop("NPFL_COURSE_OUTPUT", None)
    try:
        (course / "assignments" / "tiny").mkdir(parents=True)
        nbformat.write(tiny_source(), course / "assignments" / "tiny" / "tiny.ipynb")
        loaded = load_course(course)
    finally:
        if previous is not None:
            os.environ["NPFL_COURSE_OUTPUT"] = previous
    ok, log = generate_assignment(loaded, "tiny")
    assert ok, log
    release = harness.read_notebook(course / "release" / "tiny" / "tiny.ipynb")
    source = harness.read_notebook(course / "assignments" / "tiny" / "tiny.ipynb")
    submission = harness.make_submission(release, source, {"square": code})
    submission.cells.append(nbformat.v4.new_markdown_cell(markdown))
    for student in ("hostile", "legacy"):
        (course / "submitted" / student / "tiny").mkdir(parents=True)
        nbformat.write(submission, course / "submitted" / student / "tiny" / "tiny.ipynb")
    grader = Autograder(loaded, "tiny", jobs=2, preflight=False,
                        limits=Limits(notebook_seconds=120, cell_seconds=60),
                        unsandboxed=isolation()[0] != "bwrap")  # fmt: skip
    report = grader.run(progress=False)
    assert [o.status for o in report.outcomes] == ["graded", "graded"], report.summary()

    legacy = course / "autograded" / "legacy" / "tiny" / "tiny.ipynb"
    notebook = harness.read_notebook(legacy)
    notebook.cells[-1].source = markdown
    square = next(c for c in notebook.cells if c.source.startswith("def square"))
    square.outputs.append(nbformat.v4.new_output("display_data", data={"text/html": html}))
    nbformat.write(notebook, legacy)

    ok, log = generate_feedback(loaded, "tiny")
    assert ok, log
    from nbgrader.api import Gradebook

    with Gradebook(loaded.db_url) as gradebook:
        return {
            student: (
                gradebook.find_submission_notebook("tiny", "tiny", student).id,
                course / "feedback" / student / "tiny" / "tiny.html",
            )
            for student in ("hostile", "legacy")
        }


# The pages load MathJax from a CDN; offline, the formgrader's own script then stops
# before it shows the scores. This stands in for it.
MATHJAX_STUB = """window.MathJax = {Hub: {Config() {}, Queue() {},
    Register: {StartupHook() {}}, Startup: {signal: {Interest() {}}}}};"""


def _offline(page: Page) -> None:
    """Requests beyond this machine fail at once, except MathJax's (the stub)."""

    def handle(route):
        if "mathjax" in route.request.url.lower():
            route.fulfill(status=200, content_type="text/javascript", body=MATHJAX_STUB)
        else:
            route.abort()

    page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), handle)


def _payload_ran(page: Page, hits) -> list[str]:
    """What ran: the recorder's hits and the page's mark, after the page had time to."""
    page.wait_for_timeout(1500)  # image errors and SVG loads fire within milliseconds
    ran = list(hits[1])
    if page.evaluate("window.__npfl_xss") is not None:
        ran.append("window.__npfl_xss")
    return ran


def _expect_honest_parts(page: Page) -> None:
    """The student's text and formatting, in the markdown cell and the outputs."""
    cell = page.locator(".text_cell_render", has_text="An honest answer with bold")
    expect(cell.locator("strong", has_text="bold")).to_be_visible()
    output = page.locator(".output_markdown", has_text="An honest answer with bold")
    expect(output.locator("strong", has_text="bold")).to_be_visible()
    expect(page.locator(".output_html b", has_text="honest html").first).to_be_visible()


def test_student_content_does_not_run_for_the_instructor(course, lab, hostile, hits, steps):
    page = steps.page
    base, token = lab
    _offline(page)
    # The control: in this browser the payload runs and the recorder hears it.
    page.set_content(f'<img src=x onerror="{_act(hits[0], "control")}">')
    assert _payload_ran(page, hits) == ["/control", "window.__npfl_xss"]
    hits[1].clear()

    # A normal login: the session cookie is what a payload would ride on.
    page.goto(f"{base}/login")
    page.locator("#password_input").fill(token)
    page.locator("#login_submit").click()
    page.wait_for_url(re.compile(r"^(?!.*/login)"))
    for student, (submission, feedback) in hostile.items():
        page.goto(f"{base}/formgrader/submissions/{submission}/")
        # the formgrader's script shows the autograded score as the input's placeholder
        score = page.locator("input#test_square")
        expect(score).to_have_attribute("placeholder", "1", timeout=TIMEOUT_MS)
        _expect_honest_parts(page)
        expect(page.get_by_text("BEGIN HIDDEN TESTS").first).to_be_visible()  # the instructor's
        steps.shot(f"formgrader-{student}")
        assert _payload_ran(page, hits) == [], f"in the formgrader page of {student}"

        page.goto(feedback.as_uri())
        expect(page.get_by_text("Score: 4.0 / 4.0")).to_be_visible()
        _expect_honest_parts(page)
        expect(page.get_by_text("BEGIN HIDDEN TESTS")).to_have_count(0)
        steps.shot(f"feedback-{student}")
        assert _payload_ran(page, hits) == [], f"in the feedback of {student}"
