"""Templates (Jinja2, autoescaped), the static files, form bodies and error messages of the console."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.service.writer import EditBatchError

from ..errors import KNOWN, status_of

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}

env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


env.filters["when"] = when


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(request=request, msg=request.query_params.get("msg"), **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                          "X-Frame-Options": "DENY",
                                                          "Content-Security-Policy": "default-src 'self'; "
                                                          "frame-ancestors 'none'; form-action 'self'"})


def static(name: str) -> Response:
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                    headers={"Cache-Control": "max-age=300"})


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body, first value of each field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def message(error: BaseException) -> tuple[int, str]:
    """The HTTP status and the message to show for an error raised by the engine or the writer."""
    inner = error.error if isinstance(error, EditBatchError) else error
    status, _ = status_of(inner)
    if status >= 500 and not isinstance(inner, KNOWN):
        return status, f"internal error ({type(inner).__name__}); see the server log"
    return status, str(inner)
