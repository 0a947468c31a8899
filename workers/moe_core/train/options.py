"""A training run's options: what the CLI passes, with the dataset manifest's `training` spec as defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from moe_control.datasets import TrainingSpec

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class TrainOptions:
    data: str
    output: Path
    # None = take it from the manifest's training spec.
    preset: str | None = None
    max_steps: int | None = None
    checkpoint_every: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None  # global: sequences per step over all processes
    vocab_size: int | None = None
    seed: int | None = None
    run_id: str | None = None
    checkpoint_uri: str | None = None  # default: OUTPUT/checkpoints
    keep: int = 3
    async_save: bool = False
    artifact_uri: str | None = None
    task_token: str | None = None
    heartbeat_seconds: float = 60.0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # default: 5% of max_steps, at least 1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    device: str = "auto"  # auto | cpu | cuda
    metrics_port: int = 0
    expert_parallel: bool = False
    deterministic: bool = False
    param_dtype: str = "float32"  # float32 | bfloat16 (bf16 weights and optimizer state: lite on two GPUs)
    stdlib_bytes: int | None = None
    export: bool = True
    final_checkpoint: bool = (
        True  # also checkpoint the last step when it is not a multiple of checkpoint_every
    )
    progress: bool = True
    model_overrides: dict = field(default_factory=dict)

    def resolve(self, spec: TrainingSpec) -> ResolvedOptions:
        """Fill every unset field from the dataset's spec and check the combination."""
        from moe_core.train.errors import BadInput

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in (
            "preset",
            "max_steps",
            "checkpoint_every",
            "seq_len",
            "batch_size",
            "vocab_size",
            "seed",
        ):
            if values[name] is None:
                values[name] = getattr(spec, name)
        r = ResolvedOptions(**values)
        from moe_core.config import PRESETS

        if r.preset not in PRESETS:
            raise BadInput(f"unknown preset {r.preset!r}; presets: {', '.join(PRESETS)}")
        if r.run_id is None:
            r.run_id = Path(r.output).resolve().name
        if not _RUN_ID.match(r.run_id):
            raise BadInput(
                f"run id {r.run_id!r} must be 1-128 of [A-Za-z0-9._-], starting with a letter or digit"
            )
        for name in ("max_steps", "checkpoint_every", "seq_len", "batch_size", "keep"):
            if getattr(r, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {getattr(r, name)}")
        if r.lr <= 0 or not 0 <= r.min_lr_ratio <= 1:
            raise BadInput("--lr must be > 0 and the minimum LR ratio in [0, 1]")
        if r.warmup_steps is None:
            r.warmup_steps = max(1, r.max_steps // 20)
        if r.device not in ("auto", "cpu", "cuda"):
            raise BadInput(f"--device must be auto, cpu or cuda, got {r.device!r}")
        if r.param_dtype not in ("float32", "bfloat16"):
            raise BadInput(f"--param-dtype must be float32 or bfloat16, got {r.param_dtype!r}")
        if r.checkpoint_uri is None:
            r.checkpoint_uri = str(Path(r.output) / "checkpoints")
        return r


@dataclass
class ResolvedOptions(TrainOptions):
    preset: str = "tiny"
    max_steps: int = 1
    checkpoint_every: int = 1
    seq_len: int = 128
    batch_size: int = 8
    vocab_size: int = 2048
    seed: int = 0
