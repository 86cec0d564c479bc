"""Weights: the state-dict layout of the official checkpoint, the synthetic rule, checkpoint round trips."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from spann3r.core.config import ModelConfig
from spann3r.core.model import Spann3R
from spann3r.core.weights import WeightsError, build_model, load_weights, save_checkpoint, synthetic_tensor


def test_state_dict_layout_equals_official_manifest(golden_dir):
    manifest = json.loads((golden_dir / "state_dict_manifest.json").read_text())
    with torch.device("meta"):
        sd = Spann3R().state_dict()
    ours = {k: list(v.shape) for k, v in sd.items()}
    assert ours == {e["key"]: e["shape"] for e in manifest["entries"]}
    assert sum(v.numel() for v in sd.values()) == manifest["totals"]["n_elements_all_keys"]
    with torch.device("meta"):
        assert sum(p.numel() for p in Spann3R().parameters()) == manifest["totals"]["n_unique_parameters"]


def test_synthetic_weights_match_fingerprint_of_every_key(official_model, golden_dir):
    """sha256 of all 1101 tensors the model holds, as the reference generated them."""
    fp = json.loads((golden_dir / "weights_fingerprint.json").read_text())["keys"]
    sd = official_model.state_dict()
    assert set(sd) == set(fp)
    bad = [
        k
        for k, v in sd.items()
        if hashlib.sha256(v.detach().contiguous().numpy().astype("<f4").tobytes()).hexdigest() != fp[k]["sha256_f32le"]
    ]
    assert not bad, f"{len(bad)} tensors differ from the fingerprint, e.g. {bad[:3]}"


def test_aliased_dpt_convs_share_one_tensor(official_model):
    sd = official_model.state_dict()
    for h in (1, 2):
        for i in range(1, 5):
            a = sd[f"dust3r.downstream_head{h}.dpt.scratch.layer{i}_rn.weight"]
            b = sd[f"dust3r.downstream_head{h}.dpt.scratch.layer_rn.{i - 1}.weight"]
            assert a.data_ptr() == b.data_ptr()


def test_rule_scales():
    w = synthetic_tensor("x.attn.proj.weight", (64, 64))
    v = synthetic_tensor("x.attn.qkv.weight", (64, 64))
    assert 0.05 < w.std() * 8 / 0.1 < 2 and abs(v.std() * 8 - 1) < 0.1
    assert abs(synthetic_tensor("n.weight", (1000,)).mean() - 1) < 0.02
    assert abs(synthetic_tensor("n.bias", (1000,)).std() - 0.02) < 0.003


@pytest.fixture(scope="module")
def tiny_pair():
    model, _ = build_model("synthetic", ModelConfig.tiny())
    # perturb so that a round trip cannot pass by re-generating the synthetic rule
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip_strict(tiny_pair, tmp_path, suffix):
    path = tmp_path / f"ckpt{suffix}"
    save_checkpoint(tiny_pair, path)
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)
        assert set(raw) == {"model"}  # the official layout: {'model': state_dict}
    loaded, info = build_model(str(path), ModelConfig.tiny())
    assert not info.synthetic and info.kind == "checkpoint"
    a, b = tiny_pair.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bare_state_dict_also_loads(tiny_pair, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(tiny_pair.state_dict(), path)
    loaded, _ = build_model(str(path), ModelConfig.tiny())
    assert torch.equal(loaded.value_out.weight, tiny_pair.value_out.weight)


def test_wrong_keys_are_refused_with_names(tiny_pair, tmp_path):
    sd = dict(tiny_pair.state_dict())
    sd.pop("norm_q.weight")
    sd["extra.weight"] = torch.zeros(3)
    sd["value_out.bias"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsError) as err:
        build_model(str(path), ModelConfig.tiny())
    msg = str(err.value)
    assert "norm_q.weight" in msg and "extra.weight" in msg and "value_out.bias" in msg


def test_checkpoint_of_another_size_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    save_checkpoint(build_model("synthetic", ModelConfig.tiny())[0], path)
    from dataclasses import replace

    narrower = replace(ModelConfig.tiny(), dec_embed_dim=32)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_weights(Spann3R(narrower), str(path))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04broken zip"])
def test_unreadable_checkpoint(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        build_model(str(path), ModelConfig.tiny())


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsError, match=r"spann3r\.pth"):
        build_model(str(tmp_path / "nope.pth"), ModelConfig.tiny())


def test_hub_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"offline|cannot"):
        build_model("hf:someone/spann3r/spann3r.pth", ModelConfig.tiny())


def test_hub_spec_needs_a_file():
    with pytest.raises(WeightsError, match="hf:OWNER/REPO/FILE"):
        build_model("hf:only-repo", ModelConfig.tiny())


def test_hub_cached_file_loads(tiny_pair, tmp_path, monkeypatch):
    """A file already in the Hub cache loads offline (the download call is the real huggingface_hub one)."""
    import huggingface_hub

    src = tmp_path / "spann3r.pth"
    save_checkpoint(tiny_pair, src)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(src))
    model, info = build_model("hf:someone/spann3r/spann3r.pth", ModelConfig.tiny())
    assert info.kind == "hub" and torch.equal(model.value_out.weight, tiny_pair.value_out.weight)
