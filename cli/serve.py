"""``spann3r serve``: run the streaming service (uvicorn). Every ``ServeSettings`` field is a flag
(``--max-sessions``) and an environment variable (``SPANN3R_MAX_SESSIONS``); flags win."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import tempfile
import typing
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from ..core.errors import USER_ERRORS as CORE_USER_ERRORS
from ..server.app import create_app, uvicorn_config
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


def run(args) -> int:

    settings = settings_from_args(args)
    if settings.cluster or settings.ray_address:
        return run_cluster(settings)
    # load before listening: a missing or broken checkpoint fails here in one line, not behind /readyz
    engine, weights = load_engine_for(settings)
    uvicorn.Server(uvicorn_config(create_app(settings, engine, weights), settings)).run()
    return 0


def run_cluster(settings: ServeSettings) -> int:
    """``serve --cluster N`` (a local Ray with N workers, this process the ingress) or ``serve --ray-address
    HOST:PORT`` (an ingress for the workers already on that cluster, plus ``--cluster`` more). docs/cluster.md."""
    if importlib.util.find_spec("ray") is None:  # not imported here: init_ray sets Ray's address switch first
        raise UserError("--cluster and --ray-address need Ray: pip install 'spann3r-service[cluster]'")
    from ..server.cluster import WorkerPool, init_ray, start_workers, worker_ids
    from ..server.gateway import create_gateway
    from ..server.store import open_store

    if settings.state_dir is None and settings.state_url is None:
        # failover restores sessions from the store: a local cluster without one keeps it in a temporary folder
        state = Path(tempfile.mkdtemp(prefix="spann3r-state-"))
        log.warning("no --state-dir or --state-url: session state of this cluster is kept in %s", state)
        settings = settings.model_copy(update={"state_dir": state})
    store = open_store(settings.state_dir, settings.state_url)
    assert store is not None
    init_ray(settings, num_cpus=max(os.cpu_count() or 1, settings.cluster * (settings.threads or 1)))
    workers = []
    if settings.cluster:
        existing = worker_ids()
        first = 1 + max((int(w[1:]) for w in existing if w[1:].isdigit()), default=-1)
        log.info("starting %d workers (w%d…) on Ray", settings.cluster, first)
        workers = start_workers(settings, settings.cluster, first)  # held: they live as long as this process
    uvicorn.Server(uvicorn_config(create_gateway(settings, store, WorkerPool(store)), settings)).run()
    del workers
    return 0
