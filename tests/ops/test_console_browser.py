"""The web console in a real headless browser (Debian's chromium driven by Playwright) against a
server process on a tiny model: sign in, add an edit through the form (preview, then commit),
find it in the list, try the prompt and see the new answer and the edit that fired, roll it back.
Screenshots of each page go to pytest's temporary directory, or to the folder MEMOIR_SCREENSHOTS
names (MEMOIR_SCREENSHOTS=docs/console refreshes the ones docs/console.md shows).
Skips when Playwright or chromium is missing (scripts/setup.sh test installs both as root)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.console_utils import ADMIN, console
from tests.support.server_utils import REPO

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
    page.fill("#probes", "what colour is the sky today")
    page.click("#preview-button")
    page.wait_for_selector("#preview")
    answers = page.inner_text("#answers")
    assert TARGET in answers and "yes (1.000)" in answers
    # the operator's own "must not change" prompt is asked before and after, with the memory's decision
    neighbours = page.inner_text("#neighbours")
    assert "given" in neighbours and "what colour is the sky today" in neighbours
    assert "Subject:" in page.inner_text("#subject")
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


def sign_in(browser, base: str):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(base + "/console/login")
    page.fill("#key", ADMIN)
    page.click("#sign-in")
    page.wait_for_selector("#edits")
    return page


def test_console_import_history_rollback(browser, server, shots):
    def shot(page, name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    page = sign_in(browser, server.url)
    rows = [{"prompt": f"who is the head of unit {n}", "target_new": f"carol {n}", "id": f"unit-{n}"}
            for n in range(1, 4)]
    lines = [json.dumps(rows[0]), '{"prompt": "no target"}', json.dumps(rows[1]), json.dumps(rows[2])]
    page.click("#nav-import")
    page.set_input_files("#import-file", files=[{"name": "fixes.jsonl", "mimeType": "application/x-ndjson",
                                                 "buffer": ("\n".join(lines) + "\n").encode()}])
    page.wait_for_function("document.getElementById('import-body').value.includes('unit-3')")
    assert page.input_value("#import-format") == "jsonl"
    page.click("#import-button")
    page.wait_for_selector("#job-id")
    job_id = page.inner_text("#job-id")
    for _ in range(120):  # the page refreshes itself while the job runs
        if page.inner_text("#job-status") != "running":
            break
        page.wait_for_timeout(500)
        page.goto(page.url)
    assert page.inner_text("#job-status") == "done"
    assert page.inner_text("#applied-count") == "3" and page.inner_text("#error-count") == "1"
    refused = page.inner_text("#row-errors tbody")
    assert refused.startswith("2") and "target_new" in refused
    assert all(f"unit-{n}" in page.inner_text("#row-applied") for n in range(1, 4))
    shot(page, "7-import")

    # the rows are in the history, under the import's id, with the import itself
    page.click("#nav-history")
    page.fill("#history-search", job_id)
    page.click("#history-apply")
    page.wait_for_selector("#history")
    history = page.inner_text("#history tbody")
    assert all(f"unit-{n}" in history for n in range(1, 4)) and "3 of 4 rows applied, 1 refused" in history
    assert page.locator("#history tbody tr.event-edit").count() == 3

    # roll one back, then the history says who did it and the answer before and after
    page.goto(f"{server.url}/console/edits/unit-2")
    page.once("dialog", lambda d: d.accept())
    page.click("#rollback")
    page.wait_for_selector("#flash")
    page.goto(f"{server.url}/console/history?kind=rollback&q=unit-2")
    row = page.locator("#history tbody tr.event-rollback")
    assert row.count() == 1
    text = row.inner_text()
    assert "unit-2" in text and "ops" in text and "answer before" in text and "after" in text
    assert page.locator("#history tbody tr.event-rollback q.before").inner_text() != "not available"
    shot(page, "8-history")
    page.close()
