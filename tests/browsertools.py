"""A real browser for the tests: Debian's Chromium driven by Playwright, and what people
do in JupyterLab (run all cells, type into a cell, press Validate).

Needs ``playwright`` (the ``test`` extra) and a Chromium: ``/usr/bin/chromium``
(``apt-get install chromium``) or the executable named by ``NPFL_CHROMIUM``; no browser
is ever downloaded. Without them :func:`launch_browser` skips the test, unless
``NPFL_REQUIRE_BROWSER=1`` (set by ``.ci/run``) turns the skip into a failure.

:class:`Steps` numbers the screenshots of a test; :func:`keep_screenshots` copies them
to ``$NPFL_ARTIFACTS/browser/<test>/`` (default: ``artifacts/`` in the repository).
Used by tests/test_browser.py and tests/test_hub_cycle.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # reported by launch_browser
    sync_playwright = Browser = Page = expect = None

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_MS = 120_000  # a cold kernel on a loaded 2-core CI machine imports torch slowly

# JupyterLab's user settings: no news or update checks (no internet), every cell of a
# notebook rendered (windowing renders only the cells in view; the checks read all), and
# terminals with their text in the page (xterm.js draws on a canvas otherwise).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/terminal-extension/plugin": {"screenReaderMode": True},
}


def write_lab_settings(directory: Path) -> None:
    """Writes :data:`LAB_SETTINGS` into a JupyterLab user-settings folder
    (``$JUPYTERLAB_SETTINGS_DIR``, by default ``~/.jupyter/lab/user-settings``)."""
    for name, values in LAB_SETTINGS.items():
        path = directory / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def chromium() -> str | None:
    path = os.environ.get("NPFL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).is_file() else None


def unavailable(reason: str) -> None:
    """Skips the test, or fails it under ``NPFL_REQUIRE_BROWSER=1``."""
    if os.environ.get("NPFL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"NPFL_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def launch_browser() -> Iterator[Browser]:
    """A headless Chromium (see the module's docstring for what it needs)."""
    if sync_playwright is None:
        unavailable("playwright is not installed (pip install playwright)")
    executable = chromium()
    if executable is None:
        unavailable("no Chromium (apt-get install chromium, or set NPFL_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, errors: list[str] | None = None) -> tuple[Page, list[str]]:
    """A page (1400x900) in a browser context of its own (its own cookies: one person),
    and the list that collects the JavaScript errors of its pages (``errors`` if given)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    errors = [] if errors is None else errors

    def watch(page: Page) -> None:
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))

    context.on("page", watch)  # also the tabs that the page opens
    return context.new_page(), errors


class Steps:
    """Numbered screenshots of one test: of ``page``, or of the page given to ``shot``
    (one numbering for all the people of a test, so the files sort as it happened)."""

    def __init__(self, page: Page | None, folder: Path):
        self.page, self.folder, self.count = page, folder, 0
        self.pages: list[Page] = [page] if page is not None else []
        folder.mkdir(parents=True, exist_ok=True)

    def shot(self, name: str, page: Page | None = None, full_page: bool = False) -> Path:
        page = page or self.page
        if page not in self.pages:
            self.pages.append(page)
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path


def keep_screenshots(request, steps: Steps, errors: list[str], always: bool = False) -> None:
    """Copies the screenshots of ``steps`` to ``$NPFL_ARTIFACTS/browser/<test>/``: after a
    failure (with one more of each page as it was then, and the pages' JavaScript errors),
    or ``always``."""
    report = getattr(request.node, "rep_call", None)
    failed = report is not None and report.failed
    if not (failed or always):
        return
    if failed:
        for number, page in enumerate(steps.pages):
            try:
                steps.shot(f"at-failure-{number}", page)
            except Exception as error:  # a crashed page: keep what the steps saved
                print(f"no screenshot at the failure: {error}")
    (steps.folder / "page-errors.txt").write_text("\n".join(errors))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    artifacts = Path(os.environ.get("NPFL_ARTIFACTS") or REPO / "artifacts")
    target = artifacts / "browser" / safe
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(steps.folder, target)
    print(f"screenshots of {request.node.name}: {target}")


# ----------------------------------------------------------------------------------
# What people do in JupyterLab
# ----------------------------------------------------------------------------------


def open_menu(page: Page, top: str):
    """Opens the menu bar's ``top`` menu; the open menu. A menu opened while JupyterLab
    still lays itself out (a busy machine) may close at once: then it tries again."""
    label = page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(top)}$"))
    opened = page.locator(".lm-Menu.lm-MenuBar-menu")
    for _ in range(3):
        label.click()
        try:
            expect(opened).to_be_visible(timeout=5_000)
            page.wait_for_timeout(200)  # still open a moment later: it stays
            if opened.is_visible():
                return opened
        except AssertionError:
            pass
        page.keyboard.press("Escape")
    expect(opened).to_be_visible()
    return opened


def menu(page: Page, top: str, item: str) -> None:
    """Clicks the menu bar's ``top`` menu, then its entry ``item``."""
    entry = open_menu(page, top).locator(".lm-Menu-itemLabel")
    entry.filter(has_text=re.compile(f"^{re.escape(item)}$")).click()


def expect_lab_loaded(page: Page) -> None:
    expect(page.locator(".lm-MenuBar-itemLabel", has_text="Help")).to_be_visible(timeout=TIMEOUT_MS)


def expect_nbgrader_loaded(page: Page) -> None:
    """The Nbgrader menu comes from nbgrader's lab extension."""
    nbgrader = page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader")
    try:
        expect(nbgrader).to_be_visible(timeout=15_000)
    except AssertionError:
        pytest.fail(
            "nbgrader's JupyterLab extension did not load (no Nbgrader menu): check "
            "`jupyter labextension list` and the nbgrader/jupyterlab pins in pyproject.toml"
        )


def kernel_idle(page: Page) -> None:
    status = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$"))
    expect(status.first).to_be_visible(timeout=TIMEOUT_MS)


def execution_counts(page: Page) -> list[int | None]:
    prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    counts = []
    for text in prompts:
        match = re.search(r"\[(\d+)\]", text)
        counts.append(int(match.group(1)) if match else None)
    return counts


def run_all(page: Page) -> None:
    """Run > Run All Cells, then waits until every code cell ran in this run."""
    before = max((c for c in execution_counts(page) if c is not None), default=0)
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """before => {
            const prompts = [...document.querySelectorAll(
                '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
            return prompts.length > 0 && prompts.every(p => {
                const m = p.textContent.match(/\\[(\\d+)\\]/);
                return m && Number(m[1]) > before;
            });
        }""",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    kernel_idle(page)


def error_outputs(page: Page):
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")


def write_cell(page: Page, starts_with: str, text: str) -> None:
    """Replaces the content of the code cell whose code starts with ``starts_with``, as a
    person does: click into its editor, select all, type (paste) the new text."""
    editor = page.locator(".jp-CodeCell .cm-content", has_text=starts_with)
    expect(editor).to_have_count(1)
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("ControlOrMeta+a")
    # insert_text types like a paste: the editor's auto-indent leaves the text as it is.
    page.keyboard.insert_text(text)


def validate(page: Page):
    """Presses Validate and returns the results dialog once validation has finished."""
    page.get_by_title("Validate Assignment").click()
    dialog = page.locator(".jp-Dialog")
    header = dialog.locator(".jp-Dialog-header")
    # "Validation failed" is the extension's own error (e.g. nbgrader 0.9.1's version check).
    expect(header).to_have_text(re.compile(r"Validation (Results|failed)"), timeout=TIMEOUT_MS)
    expect(header, dialog.inner_text()).to_have_text("Validation Results")
    return dialog


def close_dialog(dialog) -> None:
    dialog.get_by_role("button", name="Ok").click()
    expect(dialog).to_be_hidden()
