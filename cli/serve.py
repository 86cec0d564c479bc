"""``spann3r serve``: run the streaming service (uvicorn). Every ``ServeSettings`` field is a flag
(``--max-sessions``) and an environment variable (``SPANN3R_MAX_SESSIONS``); flags win."""

from __future__ import annotations

import argparse
import logging
import typing

log = logging.getLogger(__name__)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(annotation) -> str:
    args = typing.get_args(annotation)
    if annotation is bool or bool in args:
        return "bool"
    return "value"


def register(sub) -> None:
    from .settings import ServeSettings

    p = sub.add_parser("serve", help="run the streaming service (REST + WebSocket)",
                       description="Serve Spann3R to many streaming clients at once. Every option can also be "
                                   "set through an environment variable SPANN3R_<OPTION> (e.g. "
                                   "SPANN3R_MAX_SESSIONS=16); flags win.")
    for name, field in ServeSettings.model_fields.items():
        help_text = (field.description or "") + f" [env SPANN3R_{name.upper()}]"
        if _kind(field.annotation) == "bool":
            p.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
        else:
            choices = None
            args = typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is typing.Literal:
                choices = list(args)
            p.add_argument(flag(name), dest=name, default=argparse.SUPPRESS, choices=choices, help=help_text)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """Flags given on the command line (others come from the environment or the defaults)."""
    from pydantic import ValidationError

    from .cli import UserError
    from .settings import ServeSettings

    given = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"--{'-'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


def uvicorn_config(app, settings):
    import uvicorn

    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # the app refuses messages above max_message_bytes with an error; far larger ones are cut off here
        ws_max_size=2 * settings.max_message_bytes, ws="websockets-sansio",
        timeout_graceful_shutdown=30, proxy_headers=True)


def run(args) -> int:
    import uvicorn

    from .app import create_app
    from .service import load_engine_for

    settings = settings_from_args(args)
    # load before listening: a missing or broken checkpoint fails here in one line, not behind /readyz
    engine, weights = load_engine_for(settings)
    uvicorn.Server(uvicorn_config(create_app(settings, engine, weights), settings)).run()
    return 0
