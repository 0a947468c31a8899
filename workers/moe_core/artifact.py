"""Save and load a model as a directory: `config.json` (ModelConfig) + `model.safetensors` (the state dict).

The training worker adds `tokenizer.json` and `routing_stats.json` beside them; other files are ignored here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from moe_core.config import ConfigError, ModelConfig

if TYPE_CHECKING:
    import torch

    from moe_core.model import Transformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ArtifactError(RuntimeError):
    """A model directory that is missing a file or whose weights do not match its config."""


def save_model(model_or_state, config: ModelConfig, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into `directory` (created if needed); returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    # safetensors refuses shared or strided storage: store each tensor as its own contiguous copy.
    tensors = {
        name: t.detach().contiguous().clone() if not t.is_contiguous() else t.detach()
        for name, t in state.items()
    }
    tensors = {name: t.cpu() for name, t in tensors.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config.save(directory / CONFIG_FILE)
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"no {CONFIG_FILE} in model directory {directory}")
    try:
        return ModelConfig.load(path)
    except (ConfigError, json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(f"{path} is not a valid model config: {exc}") from exc


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """Build the model from config.json on the meta device, then fill it from model.safetensors (strict)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from moe_core.model import Transformer

    config = load_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"no {WEIGHTS_FILE} in model directory {directory}")
    try:
        state = load_file(str(weights), device=str(device))
    except SafetensorError as exc:
        raise ArtifactError(f"{weights} is not a readable safetensors file: {exc}") from exc
    with torch.device("meta"):
        model = Transformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise ArtifactError(
            f"{weights} does not match {CONFIG_FILE}: missing={missing[:5]} unexpected={unexpected[:5]} "
            f"wrong_shape={wrong_shape[:5]}"
        )
    model.to_empty(device=device)
    model.load_state_dict(state, strict=True)
    model.reset_buffers()
    if dtype is not None:
        model.to(dtype)
    return model
