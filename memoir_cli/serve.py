"""`memoir serve`: the HTTP server on one model, in one process with one worker.

Every setting of app/settings.py is a flag here, derived from the settings model so the two
cannot drift: `--max-batch 32` is MEMOIR_MAX_BATCH=32. A flag wins over the environment, which
wins over the built-in default. `--config FILE` (or MEMOIR_CONFIG) holds MemoirConfig fields
for a new memory, such as the file `memoir calibrate` writes; `--set field=value` overrides one.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
import typing
from typing import Any, Literal

METAVARS = {int: "N", float: "X", str: "TEXT"}
HELP = "serve the model over HTTP (default: SmolLM2-135M-Instruct on 127.0.0.1:8000)"


def add_parsers(sub) -> None:
    from app.settings import PREFIX, Settings

    p = sub.add_parser("serve", help=HELP, description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in Settings.model_fields.items():
        variable = PREFIX + name.upper()
        if name == "config":
            p.add_argument("--config", metavar="FILE", help=f"{field.description} [{variable}]")
            p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                           help="one MemoirConfig field over the --config file's (repeatable)")
            continue
        kind, choices = _kind(field.annotation)
        default = "" if field.default is None or field.default_factory else f", {field.default}"
        text = f"{field.description} " if field.description else ""
        options: dict[str, Any] = {"dest": name, "default": None,
                                   "help": f"{text}[{variable}{default}]".replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, choices=choices, metavar=None if choices else METAVARS[kind])
        if name.endswith("_key") or name.endswith("_keys") or name == "state_url":
            options["help"] += " (a flag is visible to other users in ps: prefer the variable)"
        p.add_argument("--" + name.replace("_", "-"), **options)
    p.set_defaults(func=run_serve)


def _kind(annotation) -> tuple[type, list | None]:
    """The argparse type of a settings field: Optional dropped, a Literal's values as choices,
    secrets and paths as plain strings (pydantic converts them)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _kind(args[0])
    if typing.get_origin(annotation) is Literal:
        return str, list(args)
    if annotation in (bool, int, float):
        return annotation, None
    return str, None


def settings_from(args) -> Any:
    """Settings from the flags over the environment; the config file and --set go through
    memoir_core.config's one check (an unknown field is refused)."""
    from app.settings import Settings
    from memoir_core.config import checked

    from .evaluation import parse_sets

    values = {n: getattr(args, n) for n in Settings.model_fields if getattr(args, n, None) is not None}
    sets = checked(parse_sets(args.set), "--set") if args.set else {}
    settings = Settings(**values)
    if sets:
        settings = Settings(**{**values, "config": {**settings.config, **sets}})
    return settings


def run_serve(args) -> int:
    from pydantic import ValidationError

    from app.settings import PREFIX, warn_unknown_variables

    warn_unknown_variables(os.environ)
    try:
        settings = settings_from(args)
    except ValidationError as error:
        for e in error.errors():
            name = str(e["loc"][0]) if e["loc"] else "settings"
            given = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
            message = str(e["msg"]).removeprefix("Value error, ")
            print(f"memoir serve: error: --{name.replace('_', '-')} / {PREFIX}{name.upper()}: {message}{given}",
                  file=sys.stderr)
        return 2
    except ValueError as error:  # --set or the config file
        print(f"memoir serve: error: {error}", file=sys.stderr)
        return 2
    # The server's modules (torch, transformers: seconds to import) only once the settings hold,
    # so a mistyped setting fails at once.
    from app.http.main import create_app
    from app.http.server import serve

    # An app object (not an import string) runs in this process: one worker, which is what a
    # single model owner needs.
    return serve(settings, create_app)
