"""The `memoir` command."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memoir", description="an LLM inference server that takes knowledge edits live")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import calibrate_cmd, client_cmd, evaluation, model_cmd, serve, state_cmd

    evaluation.add_parsers(sub)
    calibrate_cmd.add_parsers(sub)
    model_cmd.add_parsers(sub)
    serve.add_parsers(sub)
    state_cmd.add_parsers(sub)
    client_cmd.add_parsers(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
