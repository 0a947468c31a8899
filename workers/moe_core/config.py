"""The model's configuration: one dataclass and its named presets, defined once for the whole project.

No torch import here: the CLI and the control plane read configs without paying for torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A preset name, a field or a value that does not describe a valid model."""


@dataclass
class ModelConfig:
    # Vocabulary and trunk.
    vocab_size: int = 2048
    dim: int = 128
    n_layers: int = 4
    n_dense_layers: int = 1  # the first k layers use a dense SwiGLU FFN instead of MoE ("first_k_dense")
    dense_inter_dim: int = 512
    n_heads: int = 4
    # Multi-Head Latent Attention.
    q_lora_rank: int = 64  # 0 = no low-rank q (DeepSeek-V2-Lite)
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    # Mixture of experts.
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    n_activated_experts: int = 3  # routed experts per token (top-k)
    moe_inter_dim: int = 64
    n_expert_groups: int = 4
    n_limited_groups: int = 2  # groups kept per token (topk_group)
    route_scale: float = 2.5
    bias_update_speed: float = 1e-3  # gamma of the auxiliary-loss-free balancing
    seq_aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight; 0 = off
    # Positions, MTP and numerics.
    rope_theta: float = 10000.0
    max_seq_len: int = 512
    mtp_depth: int = 1  # 0 = no multi-token prediction; only depth 0 or 1 is implemented
    mtp_loss_weight: float = 0.3
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        self.validate()

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def latent_cache_dim(self) -> int:
        """Elements cached per token per layer by the absorbed MLA path (576 for DeepSeek-V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def validate(self) -> None:
        positive = ["vocab_size", "dim", "n_layers", "n_heads", "kv_lora_rank", "qk_nope_head_dim"]
        positive += ["qk_rope_head_dim", "v_head_dim", "max_seq_len"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(
                f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}"
            )
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise ConfigError(
                f"n_dense_layers must be in [0, n_layers={self.n_layers}], got {self.n_dense_layers}"
            )
        if self.n_dense_layers and self.dense_inter_dim <= 0:
            raise ConfigError("dense_inter_dim must be > 0 when there are dense layers")
        if self.q_lora_rank < 0:
            raise ConfigError(f"q_lora_rank must be >= 0 (0 = no q low-rank), got {self.q_lora_rank}")
        if self.mtp_depth not in (0, 1):
            raise ConfigError(f"mtp_depth must be 0 or 1 (only depth 1 is implemented), got {self.mtp_depth}")
        if self.n_moe_layers or self.mtp_depth:
            self._validate_moe()

    def _validate_moe(self) -> None:
        e, k, g, kg = (
            self.n_routed_experts,
            self.n_activated_experts,
            self.n_expert_groups,
            self.n_limited_groups,
        )
        if e <= 0 or self.moe_inter_dim <= 0:
            raise ConfigError("MoE layers need n_routed_experts > 0 and moe_inter_dim > 0")
        if g <= 0 or e % g:
            raise ConfigError(f"n_routed_experts={e} must split evenly into n_expert_groups={g}")
        if not 1 <= kg <= g:
            raise ConfigError(f"n_limited_groups must be in [1, n_expert_groups={g}], got {kg}")
        per_group = e // g
        if g > 1 and per_group < 2:
            raise ConfigError(
                "group-limited routing scores a group by its top-2 experts: need >= 2 per group"
            )
        if not 1 <= k <= kg * per_group:
            raise ConfigError(
                f"n_activated_experts={k} must be in [1, {kg * per_group}] (experts in kept groups)"
            )
        if self.n_shared_experts < 0:
            raise ConfigError("n_shared_experts must be >= 0")

    # ---- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, ModelConfig] = {
    # Every feature on (MLA with q low-rank, groups, shared expert, dense first layer, MTP), small enough
    # that CPU tests and the demo train in seconds.
    "tiny": ModelConfig(),
    # DeepSeek-V3's proportions at ~1.23B total / ~0.16B active: fits one H200 for training.
    "mini": ModelConfig(
        vocab_size=32000,
        dim=1024,
        n_layers=12,
        n_dense_layers=1,
        dense_inter_dim=4096,
        n_heads=16,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=128,
        n_shared_experts=1,
        n_activated_experts=8,
        moe_inter_dim=256,
        n_expert_groups=8,
        n_limited_groups=4,
        route_scale=2.5,
        max_seq_len=4096,
        mtp_depth=1,
    ),
    # DeepSeek-V2-Lite's dimensions (~15.7B total, ~2.45B active) with V3's sigmoid routing. V2-Lite has
    # one group and softmax weights summing to 1 over top-6; route_scale 1.0 keeps that output scale.
    "lite": ModelConfig(
        vocab_size=102400,
        dim=2048,
        n_layers=27,
        n_dense_layers=1,
        dense_inter_dim=10944,
        n_heads=16,
        q_lora_rank=0,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=64,
        n_shared_experts=2,
        n_activated_experts=6,
        moe_inter_dim=1408,
        n_expert_groups=1,
        n_limited_groups=1,
        route_scale=1.0,
        max_seq_len=4096,
        mtp_depth=0,
    ),
    # The real DeepSeek-V3 (671B total, 37B active; MTP adds ~14B).
    "deepseek-v3": ModelConfig(
        vocab_size=129280,
        dim=7168,
        n_layers=61,
        n_dense_layers=3,
        dense_inter_dim=18432,
        n_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=256,
        n_shared_experts=1,
        n_activated_experts=8,
        moe_inter_dim=2048,
        n_expert_groups=8,
        n_limited_groups=4,
        route_scale=2.5,
        seq_aux_loss_alpha=1e-4,
        max_seq_len=4096,
        mtp_depth=1,
    ),
}
