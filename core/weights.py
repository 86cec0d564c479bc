"""Model weights: the official checkpoint (local path or Hugging Face Hub) and the deterministic synthetic rule.

Sources, as strings the CLI and the server accept:
- ``synthetic``: untrained, deterministic pseudo-random weights (the rule of the golden reference). Loud warning.
- ``hf:REPO_ID/FILENAME``: downloaded and cached through ``huggingface_hub``.
- any other string: a local ``.pth``/``.pt`` (official layout: a dict whose ``model`` entry is the state dict,
  or a bare state dict) or ``.safetensors`` file.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from .config import ModelConfig
from .model import Spann3R

if TYPE_CHECKING:
    from .engine import Engine, Precision

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT_HELP = (
    "Get the official Spann3R checkpoint 'spann3r.pth' from the authors' release "
    "(github.com/HengyiWang/spann3r, README 'Download checkpoints') and pass --weights /path/to/spann3r.pth, "
    "or pass --weights hf:REPO/FILE for a copy on the Hugging Face Hub. "
    "'--weights synthetic' runs the untrained demo (deterministic random weights, meaningless geometry)."
)


class WeightsError(RuntimeError):
    """A checkpoint that cannot be found, read, or does not fit the model. The message is user-facing."""


@dataclass(frozen=True)
class LoadedWeights:
    kind: str  # "synthetic" | "checkpoint" | "hub"
    source: str  # what the user asked for
    synthetic: bool


# ----------------------------------------------------------------------------- synthetic rule
def _alias_source(key: str) -> str:
    # The DPT 'scratch.layer{i}_rn' conv is also registered as 'scratch.layer_rn.{i-1}'; its value comes from that name.
    for i in range(1, 5):
        key = key.replace(f"scratch.layer{i}_rn.", f"scratch.layer_rn.{i - 1}.")
    return key


def synthetic_tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The golden reference's weight rule for one state-dict entry (float32, C order)."""
    name = _alias_source(key)
    z = np.random.default_rng(zlib.crc32(name.encode("utf-8"))).standard_normal(size=shape, dtype=np.float32)
    x = z.astype(np.float64)
    if name.endswith(".bias"):
        y = 0.02 * x
    elif len(shape) == 1:
        y = 1.0 + 0.1 * x
    else:
        fan_in = math.prod(shape[1:])
        if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            y = (0.1 * x) / math.sqrt(fan_in)  # damped residual-branch outputs
        else:
            y = x / math.sqrt(fan_in)
    return y.astype(np.float32)


def synthetic_state_dict(model: Spann3R, threads: int | None = None) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL while sampling
        arrays = pool.map(lambda kv: synthetic_tensor(*kv), shapes.items())
        return {k: torch.from_numpy(a) for k, a in zip(shapes, arrays)}


# ----------------------------------------------------------------------------- checkpoints
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}. {OFFICIAL_CHECKPOINT_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, wrong format, pickle with code
        raise WeightsError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state dict (expected a dict of tensors, or one under the key 'model')")
    return obj


def hub_download(spec: str) -> Path:
    """``REPO_OWNER/REPO_NAME/path/in/repo.pth`` → local cached file."""
    parts = spec.split("/")
    if len(parts) < 3:
        raise WeightsError(f"hub weights must look like hf:OWNER/REPO/FILE, got hf:{spec}")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"cannot download {filename} from the Hub repo {repo_id}: offline and not in the local cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it once with network access, "
            "or pass a local path."
        ) from None
    except Exception as exc:
        raise WeightsError(f"cannot fetch hf:{spec}: {exc.__class__.__name__}: {exc}") from None


def _fill_aliases(state_dict: dict[str, torch.Tensor], expected) -> dict[str, torch.Tensor]:
    """A DPT scratch conv has two names; safetensors (and some exporters) keep only one. Restore the other."""
    out = dict(state_dict)
    for key in expected:
        if key not in out:
            other = _alias_source(key)
            if other == key:  # key is the 'layer_rn.{i}' name: look for 'layer{i+1}_rn'
                for i in range(1, 5):
                    other = other.replace(f"scratch.layer_rn.{i - 1}.", f"scratch.layer{i}_rn.")
            if other in out:
                out[key] = out[other]
    return out


def load_into(model: Spann3R, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a readable error for missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    state_dict = _fill_aliases(state_dict, expected)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:

        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if wrong:
            problems.append(f"{len(wrong)} keys with the wrong shape: {few(wrong)}")
        raise WeightsError(f"{source} does not fit the Spann3R model: " + "; ".join(problems))
    on_meta = model.value_out.weight.is_meta  # built without allocating: take the loaded tensors as they are
    model.load_state_dict(state_dict, strict=True, assign=on_meta)


def load_weights(model: Spann3R, source: str) -> LoadedWeights:
    """Fill ``model`` from ``source`` (see the module docstring)."""
    if source == "synthetic":
        log.warning(
            "*** UNTRAINED MODEL: loading deterministic synthetic weights. Outputs are a fingerprint of the "
            "computation, not a reconstruction. %s ***",
            OFFICIAL_CHECKPOINT_HELP.split(". ")[0],
        )
        load_into(model, synthetic_state_dict(model), "synthetic weights")
        return LoadedWeights("synthetic", source, True)
    if source.startswith("hf:"):
        path = hub_download(source[3:])
        load_into(model, read_state_dict(path), source)
        return LoadedWeights("hub", source, False)
    load_into(model, read_state_dict(source), source)
    return LoadedWeights("checkpoint", source, False)


def save_checkpoint(model: Spann3R, path: str | os.PathLike) -> None:
    """Write the official layout: ``{'model': state_dict}`` (or safetensors by extension)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_model

        save_model(model, str(path))
    else:
        torch.save({"model": model.state_dict()}, path)


def build_model(
    weights: str, cfg: ModelConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[Spann3R, LoadedWeights]:
    """Construct (on the meta device: no wasted random init), load, and move to ``device`` in eval mode."""
    with torch.device("meta"):
        model = Spann3R(cfg)
    info = load_weights(model, weights)
    return model.to(device).eval().requires_grad_(False), info


# ----------------------------------------------------------------------------- engine loading (CLI and service)

DEFAULT_CHECKPOINT = Path("checkpoints/spann3r.pth")


class DeviceError(RuntimeError):
    """A device that this machine does not have. The message is user-facing."""


def resolve_weights(weights: str | None) -> str:
    """The weights source to load: the one given, else ``checkpoints/spann3r.pth`` when it exists."""
    if weights is not None:
        return weights
    if DEFAULT_CHECKPOINT.is_file():
        return str(DEFAULT_CHECKPOINT)
    raise WeightsError(f"no weights given and no {DEFAULT_CHECKPOINT}. {OFFICIAL_CHECKPOINT_HELP}")


def load_engine(
    weights: str | None,
    device: str = "cpu",
    model: str = "official",
    threads: int | None = None,
    precision: Precision | Literal["auto"] = "auto",
) -> tuple[Engine, LoadedWeights]:
    """The streaming engine with its weights loaded: the one loader of ``spann3r reconstruct/eval`` and the service.

    Returns ``(Engine, LoadedWeights)``. ``model`` is a ``ModelConfig`` preset name; ``threads`` sets torch's CPU
    threads (None: torch's choice); ``precision``: fp32 | bf16 | fp16, or auto (``engine.default_precision``)."""
    from .engine import Engine, default_precision  # the engine imports the model; weights stays importable alone

    if threads:
        torch.set_num_threads(threads)
    source = resolve_weights(weights)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device}: CUDA is not available on this machine")
    net, info = build_model(source, ModelConfig.preset(model), dev)
    return Engine(net, precision=default_precision(dev) if precision == "auto" else precision), info
