"""``spann3r`` command line: one sub-command per module (``cmd_*.py``), each with ``register(subparsers)``.

Errors a user can fix (bad input, missing checkpoint) print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import cmd_eval, cmd_reconstruct, cmd_serve, cmd_stream

COMMAND_MODULES = [cmd_reconstruct, cmd_serve, cmd_stream, cmd_eval]


class UserError(Exception):
    """Raised by commands for problems the user can fix; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spann3r", description="Real-time 3D reconstruction with Spann3R.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("spann3r: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors of core and of the commands
        from ..core.errors import USER_ERRORS

        if isinstance(exc, (UserError, *USER_ERRORS)) and not args.verbose:
            print(f"spann3r {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    # run through the imported module so that `python -m` shares UserError with the command modules
    from spann3r.server.cli import main as _main

    sys.exit(_main())
