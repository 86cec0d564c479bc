"""Model and memory configuration. Defaults are the official Spann3R (DUSt3R ViT-L/B-512-DPT) values."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelConfig:
    img_size: int = 224  # inference resolution; every input is a square 224x224 crop
    patch_size: int = 16
    # DUSt3R encoder (ViT-Large)
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    # DUSt3R decoders (ViT-Base), two stacks
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    # DPT heads
    dpt_hooks: tuple[int, ...] = (0, 6, 9, 12)
    dpt_layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    # Spann3R memory encoders
    value_depth: int = 6

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @classmethod
    def tiny(cls) -> ModelConfig:
        """Same architecture, small widths and depths: for plumbing tests and the service's CPU demos."""
        return cls(
            enc_embed_dim=64,
            enc_depth=2,
            enc_num_heads=2,
            dec_embed_dim=64,
            dec_depth=4,
            dec_num_heads=2,
            dpt_hooks=(0, 2, 3, 4),
            dpt_layer_dims=(8, 16, 32, 64),
            dpt_feature_dim=32,
            dpt_last_dim=16,
            value_depth=1,
        )

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        if name == "official":
            return cls()
        if name == "tiny":
            return cls.tiny()
        raise ValueError(f"unknown model preset {name!r}; choose one of ['official', 'tiny']")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MemoryConfig:
    """Inference behaviour of the official SpatialMemory in eval mode."""

    long_mem_size: int = 4000  # long-term memory budget in tokens (also the prune's top-k)
    work_mem_size: int = 5  # working memory, in frames
    attn_thresh: float = 5e-4  # read-attention entries strictly below this are removed
    sim_thresh: float = 0.95  # a key more similar than this to the working memory is not written
    protect_margin: int = 5  # tokens written fewer than work_mem_size + this writes ago survive a prune

    @property
    def top_k(self) -> int:
        return self.long_mem_size

    @property
    def protect_below(self) -> int:
        return self.work_mem_size + self.protect_margin

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_MODEL = ModelConfig()
DEFAULT_MEMORY = MemoryConfig()
