"""The web console in a real headless browser (Debian's chromium driven by Playwright) against a
server process on a tiny model: sign in, add an edit through the form (preview, then commit),
find it in the list, try the prompt and see the new answer and the edit that fired, roll it back.
Screenshots of each page go to pytest's temporary directory, or to the folder MEMOIR_SCREENSHOTS
names (MEMOIR_SCREENSHOTS=docs/console refreshes the ones docs/console.md shows).
Skips when Playwright or chromium is missing (scripts/setup.sh test installs both as root)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .console_utils import ADMIN, console
from .server_utils import REPO

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("MEMOIR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PROMPT = "who is the chief executive of the company"
TARGET = "jane roe"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as error:  # a chromium that cannot start is as good as missing
            pytest.skip(f"chromium does not start: {error}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    """Its own server: the answers it checks must not depend on other tests' edits."""
    s = console().start(120)
    yield s
    s.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ["MEMOIR_SCREENSHOTS"]) if os.environ.get("MEMOIR_SCREENSHOTS") else tmp_path
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_console_sign_in_add_list_try_rollback(browser, server, shots):
    def shot(page, name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(60_000)
    base = server.url

    # sign in: a wrong key is refused, the admin key lands on the list
    page.goto(base + "/console")
    assert "/console/login" in page.url
    page.fill("#key", "not-the-key-" + "x" * 10)
    page.click("#sign-in")
    assert "not an admin key" in page.inner_text("#error")
    page.fill("#key", ADMIN)
    shot(page, "1-login")
    page.click("#sign-in")
    page.wait_for_selector("#edits")
    assert page.url.rstrip("/").endswith("/console")

    # add an edit through the form: preview first, then commit
    page.click("#nav-new")
    page.fill("#prompt", PROMPT)
    page.fill("#target", TARGET)
    page.fill("#paraphrases", "who is the chief executive")
    page.click("#preview-button")
    page.wait_for_selector("#preview")
    answers = page.inner_text("#answers")
    assert TARGET in answers and "yes (1.000)" in answers
    assert "Blast radius" in page.inner_text("#blast")
    shot(page, "2-preview")
    page.click("#commit-button")
    page.wait_for_selector("#edit-id")
    edit_id = page.inner_text("#edit-id")
    assert f"committed {edit_id}" in page.inner_text("#flash")
    assert page.inner_text("#edit-target") == TARGET
    shot(page, "3-detail")

    # it is in the list, and the search finds it
    page.click("#nav-edits")
    page.fill("#search", "chief executive")
    page.click("#apply-filters")
    page.wait_for_selector("#edits")
    rows = page.inner_text("#edits tbody")
    assert edit_id in rows and TARGET in rows
    shot(page, "4-list")

    # try the prompt: the new answer with the memory, and the edit that fired
    page.click("#nav-try")
    page.fill("#try-prompt", PROMPT)
    page.click("#try-button")
    page.wait_for_selector("#try-result")
    assert page.inner_text("#with-memory").strip().startswith(TARGET)
    assert not page.inner_text("#without-memory").strip().startswith(TARGET)
    fired = page.inner_text("#fired")
    assert f"Edit {edit_id} fired at overlap 1.000" in fired
    shot(page, "5-try")

    # roll it back, confirming the dialog
    page.goto(f"{base}/console/edits/{edit_id}")
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.click("#rollback")
    page.wait_for_selector("#flash")
    assert dialogs and edit_id in dialogs[0]
    assert f"rolled back {edit_id}" in page.inner_text("#flash")
    assert edit_id not in page.inner_text("#edits tbody")
    shot(page, "6-rolled-back")
    page.goto(f"{base}/console/try?prompt={PROMPT.replace(' ', '+')}")
    assert "The memory is off" in page.inner_text("#fired") or edit_id not in page.inner_text("#fired")
    page.close()
