"""The `memoir` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memoir",
                                     description="an LLM inference server that takes knowledge edits live")
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
    # one INFO line per HTTP request would drown the progress bars of `client import`
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from memoir_core.errors import ConfigError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not at exit
        return code
    except ConfigError as error:
        print(f"memoir {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as cat does; stdout now points at
        # nothing so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
