"""``spann3r serve``: run the streaming service (uvicorn). Every ``ServeSettings`` field is a flag
(``--max-sessions``) and an environment variable (``SPANN3R_MAX_SESSIONS``); flags win."""

from __future__ import annotations

import argparse
import logging
import typing

import uvicorn
from pydantic import ValidationError

from ..core.errors import USER_ERRORS as CORE_USER_ERRORS
from ..server.app import create_app
from ..server.service import load_engine_for
from ..server.settings import ServeSettings
from .errors import UserError

log = logging.getLogger(__name__)

USER_ERRORS = CORE_USER_ERRORS  # printed as one line by main


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(annotation) -> str:
    args = typing.get_args(annotation)
    if annotation is bool or bool in args:
        return "bool"
    return "value"


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Serve Spann3R to many streaming clients at once. Every option can also be "
        "set through an environment variable SPANN3R_<OPTION> (e.g. "
        "SPANN3R_MAX_SESSIONS=16); flags win.",
    )
    for setting, field in ServeSettings.model_fields.items():
        setting_help = (field.description or "") + f" [env SPANN3R_{setting.upper()}]"
        if _kind(field.annotation) == "bool":
            p.add_argument(
                flag(setting),
                dest=setting,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=setting_help,
            )
        else:
            choices = None
            args = typing.get_args(field.annotation)
            if typing.get_origin(field.annotation) is typing.Literal:
                choices = list(args)
            p.add_argument(flag(setting), dest=setting, default=argparse.SUPPRESS, choices=choices, help=setting_help)
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    """Flags given on the command line (others come from the environment or the defaults)."""
    given = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields}
    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"--{'-'.join(str(x) for x in first['loc'])}: {first['msg']}") from None


def uvicorn_config(app, settings):
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # the app refuses messages above max_message_bytes with an error; far larger ones are cut off here
        ws_max_size=2 * settings.max_message_bytes,
        ws="websockets-sansio",
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )


def run(args) -> int:

    settings = settings_from_args(args)
    # load before listening: a missing or broken checkpoint fails here in one line, not behind /readyz
    engine, weights = load_engine_for(settings)
    uvicorn.Server(uvicorn_config(create_app(settings, engine, weights), settings)).run()
    return 0
