"""Parameter counts (total and active per token) read off a model built on the meta device, not a formula."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moe_core.config import ModelConfig

if TYPE_CHECKING:
    from moe_core.model import Transformer


def _as_config(preset_or_config: str | ModelConfig) -> ModelConfig:
    if isinstance(preset_or_config, ModelConfig):
        return preset_or_config
    return ModelConfig.from_preset(preset_or_config)


def build_meta_model(preset_or_config: str | ModelConfig) -> Transformer:
    """The model with every tensor on the meta device: shapes only, no memory, built in milliseconds."""
    import torch

    from moe_core.model import Transformer

    with torch.device("meta"):
        return Transformer(_as_config(preset_or_config))


def count_params(preset_or_config: str | ModelConfig) -> dict[str, int]:
    """{"total", "active"} without the MTP module (as DeepSeek-V3's 671B / 37B are quoted).

    active = what one token's forward touches: one embedding row, all attention/norm/dense/shared/router
    weights, the output head, and only n_activated_experts of each MoE layer's routed experts.
    """
    from moe_core.model import RoutedExperts

    model = build_meta_model(preset_or_config)
    config = model.config
    total = active = 0
    for name, param in model.named_parameters():
        if name.startswith("mtp."):
            continue
        n = param.numel()
        total += n
        if name == "embed.weight":
            active += config.dim
        elif _owner(model, name).__class__ is RoutedExperts:
            active += n // config.n_routed_experts * config.n_activated_experts
        else:
            active += n
    return {"total": total, "active": active}


def count_mtp_params(preset_or_config: str | ModelConfig) -> int:
    """Parameters of the MTP module alone (its embedding and head are the trunk's and not counted here)."""
    model = build_meta_model(preset_or_config)
    return sum(p.numel() for p in model.mtp.parameters())


def _owner(model, param_name: str):
    return model.get_submodule(param_name.rsplit(".", 1)[0])
