"""A small HTTP client of a running memoir server's admin routes (used by `memoir client`).

The server's URL and admin key come from the environment: MEMOIR_URL (default
http://127.0.0.1:8000) and MEMOIR_ADMIN_KEY (sent as `Authorization: Bearer KEY`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """The server refused a request (its error message), or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, timeout: float = 600.0):
        self.url = (url or os.environ.get("MEMOIR_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("MEMOIR_ADMIN_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ClientError(f"cannot reach the server at {self.url}: {error}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:500] or r.reason_phrase
            raise ClientError(f"{r.status_code}: {message}", r.status_code)
        return r.json()

    # -- the routes -----------------------------------------------------------------------------
    def edit(self, edit: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        return self.request("POST", "/edit", json={**edit, "dry_run": True} if dry_run else edit)

    def edits(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every edit of the registry, in the order they were applied (paged)."""
        offset = 0
        while True:
            body = self.request("GET", "/edits", params={"offset": offset, "limit": page})
            yield from body["edits"]
            offset += len(body["edits"])
            if not body["edits"] or offset >= body["count"]:
                return

    def get(self, edit_id: str) -> dict[str, Any]:
        return self.request("GET", f"/edits/{edit_id}")

    def delete(self, edit_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/edits/{edit_id}")

    def start_import(self, data: bytes, fmt: str) -> dict[str, Any]:
        ctype = "text/csv" if fmt == "csv" else "application/x-ndjson"
        return self.request("POST", "/edits:import", params={"format": fmt}, content=data,
                            headers={"Content-Type": ctype})

    def import_job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/edits:import/{job_id}")


# Fields of a registry entry that POST /edit (and an import) takes back.
EDIT_FIELDS = ("id", "prompt", "target_new", "rephrase_prompts", "subject", "metadata")


def importable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in EDIT_FIELDS if entry.get(k) not in (None, [], {})}
