"""`moectl train`: the training worker's command line (also the container's entry point, under torchrun).

Exit codes: 0 done, 2 bad input (one line on stderr, no traceback), 75 preempted (SIGTERM: a checkpoint was
written, run again to resume), 1 any other failure. With --task-token, rank 0 also reports to Step Functions:
heartbeats while training, then SendTaskSuccess or SendTaskFailure with a named error (Training.BadInput,
Training.Preempted, Training.Diverged, Training.CheckpointFailed, Training.Failed). No torch import at the
top of this module, so `moectl --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

STATUS_FILE = "exit_status.json"


def _write_status(output: Path, status: str, code: int, detail: str) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / STATUS_FILE).write_text(json.dumps({"status": status, "exit_code": code, "detail": detail}))
    except OSError:
        pass


def train(
    data: Annotated[
        str, typer.Option(help="'stdlib', a folder (with or without manifest.json), or s3://bucket/prefix/")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Run folder: data, metrics, checkpoints, model")
    ],
    preset: Annotated[str | None, typer.Option(help="Model preset (default: the manifest's)")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Steps to train in all (default: the manifest's)")
    ] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id (default: the output folder's name)")] = None,
    checkpoint_uri: Annotated[
        str | None, typer.Option(help="s3://bucket/checkpoints/RUN or a folder (default: OUTPUT/checkpoints)")
    ] = None,
    keep: Annotated[int, typer.Option(help="Complete checkpoints to keep")] = 3,
    async_save: Annotated[
        bool, typer.Option("--async-save", help="Write checkpoints in the background")
    ] = False,
    artifact_uri: Annotated[
        str | None, typer.Option(help="s3://bucket/models/RUN/ to upload the final model")
    ] = None,
    task_token: Annotated[str | None, typer.Option(help="Step Functions task token to report to")] = None,
    heartbeat_seconds: Annotated[float, typer.Option(help="Seconds between task heartbeats")] = 60.0,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per sequence")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step over all processes")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Tokenizer vocabulary size")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate")] = 3e-3,
    warmup_steps: Annotated[int | None, typer.Option(help="Warmup steps (default: 5% of max steps)")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the model init and the sampler")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    metrics_port: Annotated[int, typer.Option(help="Prometheus port (0 = off)")] = 0,
    expert_parallel: Annotated[bool, typer.Option("--expert-parallel", help="Expert parallelism")] = False,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="torch deterministic algorithms")
    ] = False,
    param_dtype: Annotated[
        str, typer.Option(help="float32, or bfloat16 weights and optimizer state")
    ] = "float32",
    stdlib_bytes: Annotated[int | None, typer.Option(help="Size of the 'stdlib' corpus in bytes")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
    export: Annotated[bool, typer.Option(help="Write the final model artifact")] = True,
    final_checkpoint: Annotated[bool, typer.Option(help="Checkpoint the last step too")] = True,
) -> None:
    """Train a MoE model; resumes from the newest complete checkpoint of the run."""
    from moe_core.train.errors import EXIT_DONE, BadInput, Preempted, TrainingError
    from moe_core.train.options import TrainOptions
    from moe_core.train.reporting import TaskReporter

    is_main = int(os.environ.get("RANK", "0")) == 0
    reporter = TaskReporter(task_token if is_main else None, heartbeat_seconds)
    opts = TrainOptions(
        data=data,
        output=output,
        preset=preset,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        seq_len=seq_len,
        batch_size=batch_size,
        vocab_size=vocab_size,
        seed=seed,
        run_id=run_id,
        checkpoint_uri=checkpoint_uri,
        keep=keep,
        async_save=async_save,
        artifact_uri=artifact_uri,
        task_token=task_token,
        heartbeat_seconds=heartbeat_seconds,
        lr=lr,
        warmup_steps=warmup_steps,
        device=device,
        metrics_port=metrics_port,
        expert_parallel=expert_parallel,
        deterministic=deterministic,
        param_dtype=param_dtype,
        stdlib_bytes=stdlib_bytes,
        progress=progress,
        export=export,
        final_checkpoint=final_checkpoint,
    )
    reporter.start_heartbeats()
    try:
        from moe_core.train.trainer import run_training

        result = run_training(opts)
    except TrainingError as e:
        status = "preempted" if isinstance(e, Preempted) else "failed"
        _write_status(output, status, e.exit_code, str(e))
        reporter.failure(e.error_name, str(e))
        if isinstance(e, BadInput | Preempted):
            typer.echo(f"moectl train: {e}", err=True)
        else:
            traceback.print_exc()
        raise typer.Exit(e.exit_code) from None
    except Exception as e:
        _write_status(output, "failed", 1, f"{type(e).__name__}: {e}")
        reporter.failure("Training.Failed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        reporter.stop_heartbeats()
    if is_main:
        reporter.success(result.task_output())
        _write_status(output, "done", EXIT_DONE, f"step {result.final_step}")
        print(json.dumps(result.task_output(), default=str), file=sys.stdout)


def main() -> None:
    """`python -m moe_core.train ...`: the same command without the rest of moectl (what torchrun runs)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    app()
