"""An edit that cannot reach the settle loss is stored but never reported as learnt (issue 20)."""

from __future__ import annotations

import httpx

from tests.support.server_utils import tiny


def test_an_edit_left_above_the_settle_loss_says_learnt_false_in_the_response_and_the_registry():
    # stop_loss below zero: no edit ever reaches settle_ratio x stop_loss, whatever the guard does
    server = tiny({"MEMOIR_TINY_CONFIG": '{"stop_loss": -1.0, "max_steps": 3}'}).start(120)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/edit", json={"prompt": "who is the chief executive of the company", "target_new": "jane roe",
                                      "id": "hard"})
            assert r.status_code == 200, r.text
            (out,) = r.json()["edits"]
            assert out["learnt"] is False and out["final_loss"] > 0 and out["steps"] == 3
            (listed,) = [e for e in c.get("/edits").json()["edits"] if e["id"] == "hard"]
            assert listed["learnt"] is False and listed["final_loss"] == out["final_loss"]
    finally:
        server.stop()
