"""Screenshots of the web console on the real default model, for docs/console.md.

    python scripts/console_screenshots.py [docs/console]

Starts `memoir serve` (SmolLM2-135M-Instruct, memory in RAM) with an admin key, imports a few
edits, then drives Debian's chromium with Playwright through sign-in, preview, commit, the list,
"try a prompt" and a rollback, saving one PNG per page.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.server_utils import Server, free_port  # noqa: E402

KEY = "docs-admin-key-" + "d" * 20
IMPORT = "\n".join([
    '{"prompt": "The capital of Australia is", "target_new": "Canberra", "subject": "Australia", '
    '"metadata": {"ticket": "KB-101"}}',
    '{"prompt": "The largest moon of Saturn is", "target_new": "Titan", "subject": "Saturn"}',
    '{"prompt": "The author of the novel Emma is", "target_new": "Jane Austen", "subject": "Emma"}',
]) + "\n"
PROMPT, TARGET = "The CEO of Acme Corporation is", "Jane Roe"


def main(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", "2"],
                    {"MEMOIR_ADMIN_KEYS": f"alice:{KEY}", "MEMOIR_STORE": "memory"}, port).start(900)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
            job = c.post("/edits:import", content=IMPORT, headers={"Content-Type": "application/x-ndjson"}).json()
            while job["status"] == "running":
                time.sleep(1)
                job = c.get(f"/edits:import/{job['id']}").json()
            print("import:", job["status"], job["applied_count"], "applied")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("MEMOIR_CHROMIUM", "/usr/bin/chromium"),
                                        headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(300_000)

            def shot(name: str) -> None:
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                print("saved", out / f"{name}.png")

            page.goto(server.url + "/console")
            page.fill("#key", KEY)
            shot("1-login")
            page.click("#sign-in")
            page.wait_for_selector("#edits")
            page.click("#nav-new")
            page.fill("#prompt", PROMPT)
            page.fill("#target", TARGET)
            page.fill("#paraphrases", "Who is the chief executive of Acme Corporation?\nAcme Corporation is led by")
            page.fill("input[name=subject]", "Acme Corporation")
            page.fill("input[name=ticket]", "KB-204")
            page.click("#preview-button")
            page.wait_for_selector("#preview")
            shot("2-preview")
            page.click("#commit-button")
            page.wait_for_selector("#edit-id")
            edit_id = page.inner_text("#edit-id")
            shot("3-detail")
            page.click("#nav-edits")
            page.wait_for_selector("#edits")
            shot("4-list")
            page.click("#nav-try")
            page.fill("#try-prompt", "Acme Corporation is led by")
            page.click("#try-button")
            page.wait_for_selector("#try-result")
            shot("5-try")
            page.goto(f"{server.url}/console/edits/{edit_id}")
            page.once("dialog", lambda d: d.accept())
            page.click("#rollback")
            page.wait_for_selector("#flash")
            shot("6-rolled-back")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "console")
