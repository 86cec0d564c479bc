"""``spann3r`` command line. Commands are imported only when they run: ``spann3r stream`` (the Python client)
then needs neither torch nor the server's packages.

Errors a user can fix (bad input, missing checkpoint) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import UserError

# command → (module in spann3r.cli, one-line help for `spann3r --help`)
COMMANDS = {
    "reconstruct": ("reconstruct", "reconstruct an image folder or a video offline"),
    "serve": ("serve", "run the streaming service (REST + WebSocket)"),
    "stream": ("stream", "stream frames to a running service and save the results"),
    "eval": ("eval", "accuracy / completion / normal consistency on 7-Scenes or Neural-RGBD"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, that command's arguments too (its module is imported)."""
    parser = argparse.ArgumentParser(prog="spann3r", description="Real-time 3D reconstruction with Spann3R.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(f"{__package__}.{module}").register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # a command module names the library errors whose message is meant for the user (USER_ERRORS)
    module = importlib.import_module(f"{__package__}.{COMMANDS[args.command][0]}")
    user_errors = (UserError, *getattr(module, "USER_ERRORS", ()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spann3r: interrupted", file=sys.stderr)
        return 130
    except user_errors as exc:
        if args.verbose:
            raise
        print(f"spann3r {args.command}: error: {exc}", file=sys.stderr)
        return 2
