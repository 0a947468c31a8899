"""Fixtures of the serving tests: a tiny random-init model artifact with a real byte-level BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n"
    "The quick brown fox jumps over the lazy dog. Hello, world! Serving a mixture of experts model.\n"
    "import os\nimport sys\nfor i in range(10):\n    print(i * i)\n"
) * 40


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.json + model.safetensors (tiny preset, seeded random init) + tokenizer.json + routing_stats.json."""
    import torch

    from moe_core.artifact import save_model
    from moe_core.config import ModelConfig
    from moe_core.data.tokenizer import train_tokenizer
    from moe_core.model import Transformer

    directory = tmp_path_factory.mktemp("tiny-model")
    tok = train_tokenizer([TEXT], vocab_size=400)
    tok.save(str(directory / "tokenizer.json"))
    cfg = ModelConfig.from_preset("tiny", vocab_size=512, mtp_depth=0)
    torch.manual_seed(0)
    model = Transformer(cfg)
    save_model(model, cfg, directory)
    # the training worker's format
    layers = [
        {"router": i, "layer": layer, "tokens_per_expert": [100 - 5 * e for e in range(cfg.n_routed_experts)]}
        for i, layer in enumerate(range(cfg.n_dense_layers, cfg.n_layers))
    ]
    stats = {"steps": 1, "n_routed_experts": cfg.n_routed_experts, "layers": layers}
    (directory / "routing_stats.json").write_text(json.dumps(stats))
    return directory


@pytest.fixture
def tiny_model(tiny_artifact: Path):
    from moe_core.artifact import load_model

    return load_model(tiny_artifact).eval()


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """No cache at all: the full sequence recomputed from scratch for every new token."""
    import torch

    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]
