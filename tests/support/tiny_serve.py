"""`python -m tests.support.tiny_serve`: the tiny random model served the way `memoir serve` serves
(app/http/server.py: its protocol with the slow-client deadlines, its shutdown), configured by
MEMOIR_* variables."""

from __future__ import annotations

from app.http.main import create_app
from app.http.server import serve
from app.settings import Settings

from .tiny_server import builder


def main() -> None:
    settings = Settings()
    if settings.served_model_name is None:
        settings = settings.model_copy(update={"served_model_name": "tiny"})
    raise SystemExit(serve(settings, lambda s: create_app(s, builder=builder())))


if __name__ == "__main__":
    main()
