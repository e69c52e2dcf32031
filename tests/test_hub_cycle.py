"""A whole assignment cycle in real browsers on a real JupyterHub, as the course runs it.

A hub from deploy/jupyterhub_config.py (tests/hubtools.py: 127.0.0.1, DummyAuthenticator,
one Unix account for all) serves one instructor and two students, each in a browser
context of their own (Debian's Chromium through Playwright, tests/browsertools.py), and
they do what docs/jupyterhub.md tells them, in the pages:

1. the instructor logs in, opens the formgrader from the hub's Services menu, and
   generates and releases the tiny assignment (tests/tiny_course.py) with its buttons;
2. each student opens Nbgrader > Assignment List, fetches the assignment, opens it,
   types the answers into the solution cells, runs all cells, presses Validate and
   submits: one the full solution, the other a wrong ``square`` (one test of three fails);
3. the instructor collects the submissions in the formgrader, autogrades them with
   ``npfl-course autograde`` in the formgrader's terminal, and generates and releases the
   feedback with the formgrader's buttons;
4. each student fetches the feedback in the Assignment List and opens it: their score,
   and for the wrong answer the failing test's message;
5. a student cannot open another student's server, the formgrader or a collected
   submission (403), and their Nbgrader menu has nothing but the Assignment List.

Every step leaves a screenshot, all of them copied to ``$NPFL_ARTIFACTS/browser/<test>/``
(default: ``artifacts/`` in the repository) with ``timing.txt``, the time of each phase.
About a minute and a half on two idle cores, under three minutes on two busy ones.
"""

from __future__ import annotations

import re
import time
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
    open_menu,
    run_all,
    validate,
    write_cell,
)
from hubtools import COURSE, WAIT_S, Hub, running_hub
from tiny_course import tiny_source

from npfl_course.sandbox import isolation

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ASSIGNMENT = "tiny"  # three functions, no torch in its cells: the fastest to grade
INSTRUCTOR, GOOD, SLOPPY = "teacher", "alice", "bob"
DOCSTRING = '    """Computes the answer (see the task)."""'
SOLUTION = {"def add(a, b):": "a + b", "def mul(a, b):": "a * b", "def square(x):": "x * x"}
ANSWERS = {
    GOOD: SOLUTION,
    SLOPPY: {**SOLUTION, "def square(x):": "x + x"},  # square(3) == 6: test_square fails
}
SCORES = {GOOD: (4, 4), SLOPPY: (3, 4)}
FAILED_TEST = "AssertionError: square(3)"  # the message of test_square's visible assert
# What a student must not reach (path, what it is), each answered 403 by the hub.
FORBIDDEN = [
    (f"/user/{GOOD}/lab", "the other student's server"),
    (f"/user/{GOOD}/files/{COURSE}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb", "the other's notebook"),
    (f"/services/{COURSE}/formgrader", "the formgrader"),
    (f"/services/{COURSE}/files/submitted/{GOOD}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb", "a submission"),
]


class Cycle:
    """The people's pages, the screenshots and the time of each phase."""

    def __init__(self, folder: Path):
        self.start = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.pages: dict[str, Page] = {}
        self.steps = Steps(None, folder)
        self.hub: Hub | None = None

    def open_browsers(self, browser) -> None:
        for name in (INSTRUCTOR, GOOD, SLOPPY):
            self.pages[name] = new_page(browser, self.errors)[0]

    def shot(self, who: str, what: str, page: Page | None = None, **options) -> Path:
        return self.steps.shot(f"{who}-{what}", page or self.pages[who], **options)

    def phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self.last))
        self.last = now

    def timing(self) -> str:
        lines = [f"{seconds:6.1f} s  {name}" for name, seconds in self.phases]
        return "\n".join([*lines, f"{time.monotonic() - self.start:6.1f} s  in all"])


@pytest.fixture
def cycle(request, tmp_path):
    """The hub (see tests/hubtools.py) with the tiny assignment's source, and a browser
    context for each person; the screenshots and timing.txt kept in the artifacts."""

    def assignments(folder: Path) -> None:
        (folder / ASSIGNMENT).mkdir()
        nbformat.write(tiny_source(), folder / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")

    cycle = Cycle(tmp_path / "screenshots")
    with running_hub(
        tmp_path / "hub",
        instructor=INSTRUCTOR,
        students=[GOOD, SLOPPY],
        assignments=assignments,
    ) as hub:
        cycle.hub = hub
        with launch_browser() as browser:
            cycle.open_browsers(browser)
            cycle.phase("hub and browser started")
            yield cycle
            (cycle.steps.folder / "timing.txt").write_text(cycle.timing() + "\n")
            print(f"\n{cycle.timing()}")
            keep_screenshots(request, cycle.steps, cycle.errors, always=True)


# ----------------------------------------------------------------------------------
# What the people do
# ----------------------------------------------------------------------------------


def log_in(page: Page, hub: Hub, name: str) -> None:
    """The hub's login form; the hub then starts the person's server (not waited for)."""
    page.goto(f"{hub.url}/hub/login")
    page.locator("#username_input").fill(name)
    page.locator("#password_input").fill("any password")  # DummyAuthenticator
    page.locator("#login_submit").click()


def wait_for_lab(page: Page, name: str) -> None:
    """Waits for the person's JupyterLab, restored (a new workspace opens a Launcher)."""
    page.wait_for_url(re.compile(f"/user/{name}/lab"), timeout=WAIT_S * 1000)
    expect_lab_loaded(page)
    expect_nbgrader_loaded(page)
    launcher = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Launcher")
    expect(launcher).to_be_visible(timeout=TIMEOUT_MS)


def nbgrader_menu(page: Page) -> list[str]:
    """The entries of the Nbgrader menu that the person sees (it stays open)."""
    entries = open_menu(page, "Nbgrader").locator(".lm-Menu-item:not(.lm-mod-hidden)")
    expect(entries.first).to_be_visible()
    return [text.strip() for text in entries.all_inner_texts()]


def open_formgrader(teacher: Page) -> Page:
    """File > Hub Control Panel (a new tab), then the hub's Services > <course>."""
    with teacher.context.expect_page() as opened:
        menu(teacher, "File", "Hub Control Panel")
    home = opened.value
    home.get_by_role("button", name="Services").click()
    home.get_by_role("link", name=COURSE).click()
    home.wait_for_url(re.compile(f"/services/{COURSE}/formgrader"), timeout=WAIT_S * 1000)
    expect(home.locator("h1", has_text="Manage Assignments")).to_be_visible()
    return home


def formgrader_button(formgrader: Page, icon: str, message: str) -> str:
    """Presses the assignment's button (a glyphicon) and closes its success dialog; the
    dialog's text."""
    row = formgrader.locator("tr", has_text=ASSIGNMENT)
    row.locator(f".glyphicon-{icon}").click()
    dialog = formgrader.locator(".modal.in")
    expect(dialog.locator(".modal-title")).to_have_text(
        re.compile("Success|Error"), timeout=TIMEOUT_MS
    )
    formgrader.wait_for_function(  # the end of Bootstrap's fade-in (for the screenshots)
        "() => getComputedStyle(document.querySelector('.modal.in')).opacity === '1'"
    )
    text = dialog.inner_text()
    assert message in text, text
    return text


def close_formgrader_dialog(formgrader: Page) -> None:
    formgrader.locator(".modal.in .modal-footer button", has_text="OK").click()
    expect(formgrader.locator(".modal")).to_have_count(0)


def assignment_list(page: Page) -> None:
    menu(page, "Nbgrader", "Assignment List")
    expect(
        page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Assignments")
    ).to_be_visible()


def listed(page: Page, status: str):
    return page.locator(f"#{status}_assignments_list > .list_item", has_text=ASSIGNMENT)


def fetch_and_open(page: Page) -> None:
    listed(page, "released").locator(".item_status button", has_text="Fetch").click()
    fetched = listed(page, "fetched")
    expect(fetched).to_have_count(1)
    fetched.locator("a.assignment-notebooks-link").click()
    page.locator(f"#nbgrader-{COURSE}-{ASSIGNMENT} .item_name a", has_text=ASSIGNMENT).click()
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=f"{ASSIGNMENT}.ipynb")
    expect(tab).to_have_count(1)


def answer(page: Page, answers: dict[str, str]) -> None:
    """Types each answer into its solution cell, over the released stub."""
    for signature, body in answers.items():
        write_cell(page, signature, f"{signature}\n{DOCSTRING}\n    return {body}")


def submit(page: Page) -> None:
    page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Assignments").click()
    listed(page, "fetched").locator(".item_status button", has_text="Submit").click()
    expect(listed(page, "submitted")).to_have_count(1)


def autograde_in_terminal(teacher: Page) -> Page:
    """The formgrader's JupyterLab (Nbgrader > Course List in the instructor's own, a new
    tab), File > New > Terminal, and the command of docs/jupyterhub.md; returns the page
    once the command has finished."""
    menu(teacher, "Nbgrader", "Course List")
    with teacher.context.expect_page() as opened:
        teacher.get_by_role("link", name=COURSE).click()
    lab = opened.value
    lab.wait_for_url(re.compile(f"/services/{COURSE}/lab"))
    expect_lab_loaded(lab)
    # The link asks for the Formgrader panel; it is off there, as it would stay blank.
    expect(lab.locator(".lm-TabBar-tab", has_text="Formgrader")).to_have_count(0)
    open_menu(lab, "File").locator(".lm-Menu-itemLabel", has_text=re.compile("^New$")).hover()
    lab.locator(".lm-Menu-itemLabel", has_text=re.compile("^Terminal$")).click()
    terminal = lab.locator(".jp-Terminal .xterm")
    expect(terminal).to_be_visible()
    text = lab.locator(".jp-Terminal .xterm-accessibility-tree")  # screenReaderMode
    expect(text).to_contain_text(re.compile(r"\S"))  # the prompt: the shell listens
    terminal.click()
    # --no-preflight: grading the instructor's solution and the release first (which
    # tests/test_autograde.py checks) would double the time. Without bubblewrap autograde
    # refuses to grade, unless told to grade unsandboxed.
    unsafe = "" if isolation()[0] == "bwrap" else " --no-sandbox"
    command = f"npfl-course autograde {ASSIGNMENT} --jobs 2 --no-preflight{unsafe}"
    lab.keyboard.type(f'{command}; echo "exit status $?"\n')
    expect(text).to_contain_text(re.compile(r"exit status \d+"), timeout=180_000)
    return lab


def open_feedback(page: Page):
    """Fetch Feedback, (view feedback), then the feedback's HTML: its frame."""
    page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Assignments").click()
    page.locator("#refresh_assignments_list").click()
    submitted = listed(page, "submitted")
    submitted.locator(".item_status button", has_text="Fetch Feedback").click()
    view = submitted.get_by_text("(view feedback)")
    expect(view).to_be_visible()
    view.click()  # the file browser goes to the feedback's folder
    page.locator(".jp-DirListing-item", has_text=f"{ASSIGNMENT}.html").dblclick()
    tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text=f"{ASSIGNMENT}.html")
    expect(tab).to_have_count(1)
    return page.frame_locator(".jp-HTMLViewer iframe")


# ----------------------------------------------------------------------------------
# The cycle
# ----------------------------------------------------------------------------------


def test_release_work_submit_grade_feedback(cycle):
    hub = cycle.hub
    teacher, good, sloppy = (cycle.pages[name] for name in (INSTRUCTOR, GOOD, SLOPPY))
    students = {GOOD: good, SLOPPY: sloppy}

    # Everybody logs in; the hub starts the three servers side by side.
    for name, page in cycle.pages.items():
        log_in(page, hub, name)
    wait_for_lab(teacher, INSTRUCTOR)
    # The instructor's own server: no Formgrader panel (it runs in the service only).
    assert nbgrader_menu(teacher) == ["Assignment List", "Course List", "Create assignment"]
    cycle.shot(INSTRUCTOR, "nbgrader-menu")
    teacher.keyboard.press("Escape")
    cycle.phase("log in, servers started")

    # 1. The instructor: the formgrader, Generate, Release.
    formgrader = open_formgrader(teacher)
    row = formgrader.locator("tr", has_text=ASSIGNMENT)
    expect(row).to_contain_text("draft", timeout=TIMEOUT_MS)
    cycle.shot(INSTRUCTOR, "formgrader-lists-the-draft", formgrader)
    formgrader_button(
        formgrader, "education", f"Successfully created the student version of '{ASSIGNMENT}'"
    )
    close_formgrader_dialog(formgrader)
    text = formgrader_button(formgrader, "cloud-upload", f"Successfully released '{ASSIGNMENT}'")
    assert f"Released as: {COURSE} {ASSIGNMENT}" in text, text
    cycle.shot(INSTRUCTOR, "formgrader-released", formgrader)
    close_formgrader_dialog(formgrader)
    expect(row).to_contain_text("released")
    cycle.phase("instructor: generate and release in the formgrader")

    # 2. The students: fetch and open (both, so that their kernels start side by side),
    # then each answers, runs all cells, validates and submits.
    for name, page in students.items():
        wait_for_lab(page, name)
        assert nbgrader_menu(page) == ["Assignment List"]  # no Formgrader, no Course List
        cycle.shot(name, "nbgrader-menu")
        page.keyboard.press("Escape")
        assignment_list(page)
        expect(listed(page, "released")).to_have_count(1)
        cycle.shot(name, "assignment-list")
        fetch_and_open(page)
        assert (hub.home / name / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()
    cycle.phase("students: fetch and open")
    for name, page in students.items():
        kernel_idle(page)
        cycle.shot(name, "opens-the-release")
        answer(page, ANSWERS[name])
        run_all(page)
        if name == GOOD:
            assert error_outputs(page).count() == 0, error_outputs(page).all_inner_texts()
        else:
            expect(error_outputs(page)).to_have_count(1)
            expect(error_outputs(page)).to_contain_text(FAILED_TEST)
        cycle.shot(name, "answered-and-ran-all")
        dialog = validate(page)
        if name == GOOD:
            expect(dialog).to_contain_text("Success! Your notebook passes all the tests.")
        else:
            expect(dialog).to_contain_text("The following cell failed")
            expect(dialog).to_contain_text(FAILED_TEST)
        cycle.shot(name, "validated")
        close_dialog(dialog)
        submit(page)
        cycle.shot(name, "submitted")
        cycle.phase(f"{name}: answer, run all, validate, submit")

    # 3. The instructor: Collect, autograde in the terminal, feedback.
    text = formgrader_button(
        formgrader, "cloud-download", f"Successfully collected submissions of '{ASSIGNMENT}'"
    )
    for name in students:
        assert f"Collecting submission: {name} {ASSIGNMENT}" in text, text
    close_formgrader_dialog(formgrader)
    expect(row.get_by_role("link", name="2", exact=True)).to_be_visible()  # submissions
    submitted = hub.course / "submitted" / SLOPPY / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert "return x + x" in submitted.read_text(), "the typed answer was not submitted"
    cycle.phase("instructor: collect")

    terminal = autograde_in_terminal(teacher)
    output = terminal.locator(".jp-Terminal .xterm-accessibility-tree")
    cycle.shot(INSTRUCTOR, "autograde-in-the-terminal", terminal)
    expect(output).to_contain_text("exit status 0")
    for name, (score, points) in SCORES.items():
        expect(output).to_contain_text(re.compile(rf"{name}\s+graded\s+{score}/{points}"))
    expect(output).to_contain_text(f"test_square: {FAILED_TEST}")
    cycle.phase("instructor: npfl-course autograde in the formgrader's terminal")

    formgrader.reload()
    row.get_by_role("link", name="2", exact=True).click()
    for name, (score, points) in SCORES.items():
        student = formgrader.locator("tr", has_text=name)
        expect(student).to_contain_text("graded", timeout=TIMEOUT_MS)
        expect(student).to_contain_text(f"{score} / {points}")
    cycle.shot(INSTRUCTOR, "formgrader-after-grading", formgrader)
    formgrader.get_by_role("link", name="Assignments", exact=True).click()
    formgrader_button(formgrader, "comment", f"Successfully generated feedback of '{ASSIGNMENT}'")
    close_formgrader_dialog(formgrader)
    text = formgrader_button(
        formgrader, "envelope", f"Successfully released feedback of '{ASSIGNMENT}'"
    )
    for name in students:
        assert f"Releasing feedback for student '{name}'" in text, text
    cycle.shot(INSTRUCTOR, "feedback-released", formgrader)
    close_formgrader_dialog(formgrader)
    cycle.phase("instructor: generate and release feedback")

    # 4. The students read their feedback.
    for name, page in students.items():
        feedback = open_feedback(page)
        score, points = SCORES[name]
        expect(feedback.locator("body")).to_contain_text(
            f"{ASSIGNMENT} (Score: {score:.1f} / {points:.1f})"
        )
        expect(feedback.get_by_text("BEGIN HIDDEN TESTS")).to_have_count(0)
        expect(feedback.get_by_text("assert square(-2)")).to_have_count(0)  # a hidden test
        cycle.shot(name, "feedback")
        if name == SLOPPY:
            failed = feedback.locator("div.cell", has_text="Grade cell: test_square")
            expect(failed).to_contain_text("Score: 0.0 / 1.0")
            expect(failed).to_contain_text(FAILED_TEST)
            failed.scroll_into_view_if_needed()
            cycle.shot(name, "feedback-failed-test")
        else:
            expect(feedback.locator("body")).not_to_contain_text("Error:")
    cycle.phase("students: fetch and read the feedback")

    # 5. What a student cannot reach.
    probe = sloppy.context.new_page()
    for path, what in FORBIDDEN:
        response = probe.goto(f"{hub.url}{path}")
        assert response.status == 403, f"{SLOPPY} opened {what}: {path} ({response.status})"
        expect(probe.locator("h1")).to_contain_text("403 : You do not have permission")
    cycle.shot(SLOPPY, "forbidden-submission", probe)
    response = probe.goto(f"{hub.url}/user/{SLOPPY}/formgrader")
    assert response.status == 404, "a student's server runs a formgrader"
    cycle.phase("a student's forbidden pages")

    assert "Traceback" not in hub.tail(10**8), hub.tail()
