"""The training loop: data, model, AdamW with warmup + cosine, router bias updates, checkpoints, export.

`run_training` is what `moectl train` runs in every process (alone, or under torchrun). It resumes from the
newest complete checkpoint, trains to `max_steps`, and writes the artifact that serving loads. SIGTERM makes
it checkpoint and raise `Preempted`; the CLI turns the named errors into exit codes and task results.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from moe_control.checkpoints import open_store
from moe_core.config import ConfigError, ModelConfig
from moe_core.data.corpus import DatasetError, LocalDataset, resolve_dataset
from moe_core.data.prepare import PreparedData, ensure_shards, ensure_tokenizer
from moe_core.data.sampler import PackedSampler, SamplerError
from moe_core.data.tokenizer import TokenizerError
from moe_core.train.checkpoint import CheckpointManager
from moe_core.train.distributed import (
    Dist,
    all_reduce_sum,
    any_rank,
    apply_fsdp,
    barrier,
    init_distributed,
    shutdown_distributed,
    world_mesh,
)
from moe_core.train.errors import BadInput, Diverged, Preempted
from moe_core.train.metrics import (
    LOSS_CURVE_FILE,
    MetricsLogger,
    peak_flops,
    plot_loss_curve,
    read_metrics,
    summarize,
)
from moe_core.train.options import ResolvedOptions, TrainOptions

log = logging.getLogger("moe_core.train")

MODEL_DIR = "model"
ROUTING_STATS_FILE = "routing_stats.json"
SUMMARY_FILE = "metrics_summary.json"
VOCAB_MULTIPLE = 64  # the model's vocabulary is the tokenizer's, rounded up for friendlier matmul shapes


@dataclass
class TrainResult:
    run_id: str
    final_step: int
    output: Path
    model_dir: Path | None
    artifact_uri: str | None
    checkpoint_uri: str
    metrics: dict = field(default_factory=dict)
    resumed_from: int | None = None
    resume_seconds: float | None = None
    skipped_checkpoints: list[dict] = field(default_factory=list)

    def task_output(self) -> dict:
        return {
            "run_id": self.run_id,
            "artifact_uri": self.artifact_uri or (str(self.model_dir) if self.model_dir else None),
            "final_step": self.final_step,
            "metrics": self.metrics,
            "checkpoint_uri": self.checkpoint_uri,
        }


class _StopFlag:
    """Set by SIGTERM; the loop checks it between steps so a checkpoint is never cut in half."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a test harness): no preemption handling
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.set = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def lr_at(step: int, r: ResolvedOptions) -> float:
    """Linear warmup to r.lr, then cosine down to r.lr * min_lr_ratio at max_steps (step counts from 0)."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.max_steps - r.warmup_steps)
    floor = r.lr * r.min_lr_ratio
    return floor + (r.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: the trunk (model core's formula) plus the MTP block and its head pass."""
    from moe_core.model import causal_lm_flops_per_token
    from moe_core.params import count_mtp_params, count_params

    active = count_params(cfg)["active"] - cfg.dim  # one embedding row is a lookup, not a matmul
    flops = causal_lm_flops_per_token(cfg, seq_len, active)
    if cfg.mtp_depth:
        mtp = count_mtp_params(cfg)
        routed = 3 * cfg.dim * cfg.moe_inter_dim * cfg.n_routed_experts if cfg.n_moe_layers else 0
        mtp_active = mtp - routed + routed * cfg.n_activated_experts // max(1, cfg.n_routed_experts)
        attn = 3 * 2 * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len / 2
        flops += 6 * (mtp_active + cfg.vocab_size * cfg.dim) + attn
    return flops


def _setup_logging(d: Dist) -> None:
    logging.basicConfig(
        level=logging.INFO if d.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {d.rank}] %(levelname)s %(message)s",
    )


def _prepare_dataset(opts: TrainOptions, d: Dist, staging: Path, s3) -> LocalDataset:
    """The local main process stages the corpus; the others read what it staged."""
    local: LocalDataset | None = None
    if d.is_local_main:
        local = resolve_dataset(opts.data, staging, s3_client=s3, stdlib_bytes=opts.stdlib_bytes)
    barrier(d)
    if local is None:
        if opts.data == "stdlib":
            root = staging / "stdlib"
        elif opts.data.startswith("s3://"):
            root = staging / "s3"
        else:
            root = Path(opts.data)
        local = resolve_dataset(str(root), staging)
    return local


def _prepare_data(dataset: LocalDataset, r: ResolvedOptions, d: Dist, data_dir: Path, tokenizer: Path | None):
    prepared: PreparedData | None = None
    if d.is_local_main:
        tok_path = ensure_tokenizer(dataset, data_dir, r.vocab_size, given=tokenizer)
        prepared = ensure_shards(dataset, tok_path, data_dir)
    barrier(d)
    if prepared is None:
        from moe_core.data.shards import read_index

        prepared = PreparedData(
            dataset, data_dir / "tokenizer.json", data_dir / "shards", read_index(data_dir / "shards")
        )
    return prepared


def build_config(r: ResolvedOptions, tokenizer_vocab: int) -> ModelConfig:
    """The preset's model; its vocabulary grows (to a multiple of 64) only if the tokenizer needs more."""
    base = ModelConfig.from_preset(r.preset)
    vocab = max(base.vocab_size, -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    overrides = {"vocab_size": vocab, "max_seq_len": max(base.max_seq_len, r.seq_len), **r.model_overrides}
    return ModelConfig.from_preset(r.preset, **overrides)


def _build_model(cfg: ModelConfig, r: ResolvedOptions, d: Dist):
    """The model, sharded for this world; also the expert-parallel parameters (empty without it)."""
    from moe_core.model import Transformer

    # Every rank builds the same full model from the same seed, so 1 and N processes start equal; FSDP2
    # then keeps only each rank's shard.
    torch.manual_seed(r.seed)
    with torch.device(d.device):
        model = Transformer(cfg)
    if r.param_dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    ep_params: list = []
    if d.fsdp:
        mesh = world_mesh(d)
        if r.expert_parallel and d.world_size > 1:
            from moe_core.train.expert_parallel import ExpertParallelError, apply_expert_parallel

            try:
                ep_params = apply_expert_parallel(model, mesh)
                log.info(
                    "expert parallel: %d routed experts per process", cfg.n_routed_experts // d.world_size
                )
            except ExpertParallelError as e:
                raise BadInput(str(e)) from None
        apply_fsdp(
            model, d, torch.bfloat16 if d.device.type == "cuda" else None, mesh=mesh, ignored=set(ep_params)
        )
    model.train()
    return model, ep_params


def _build_optimizer(model, r: ResolvedOptions, d: Dist) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "embed.weight" else decay).append(p)
    groups = [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(0.9, 0.95), eps=1e-8)


def _grad_norm(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def run_training(opts: TrainOptions) -> TrainResult:
    d = init_distributed(opts.device)
    _setup_logging(d)
    stop = _StopFlag()
    stop.install()
    try:
        return _train(opts, d, stop)
    finally:
        stop.uninstall()
        shutdown_distributed()


def _s3_client_if_needed(*uris: str | None):
    if any(u and str(u).startswith("s3://") for u in uris):
        from moe_control.aws import client

        return client("s3")
    return None


def _train(opts: TrainOptions, d: Dist, stop: _StopFlag) -> TrainResult:
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    s3 = _s3_client_if_needed(opts.data, opts.checkpoint_uri, opts.artifact_uri)
    try:
        dataset = _prepare_dataset(opts, d, out / "data" / "corpus", s3)
    except DatasetError as e:
        raise BadInput(str(e)) from None
    r = opts.resolve(dataset.manifest.training)
    if r.deterministic:
        torch.use_deterministic_algorithms(True)
    log.info(
        "run %s: preset %s, %d steps, batch %d x %d, %d process(es) on %s",
        r.run_id,
        r.preset,
        r.max_steps,
        r.batch_size,
        r.seq_len,
        d.world_size,
        d.device,
    )
    if r.batch_size % d.world_size:
        raise BadInput(f"--batch-size {r.batch_size} does not split evenly over {d.world_size} processes")

    store = open_store(r.checkpoint_uri, s3)
    ckpt = CheckpointManager(
        store,
        run_id=r.run_id,
        work_dir=out,
        rank=d.rank,
        world_size=d.world_size,
        keep=r.keep,
        async_save=r.async_save,
        process_group=d.checkpoint_group,
        timing_log=out / "checkpoint_times.jsonl",
    )
    t_resume = time.perf_counter()
    point = ckpt.resume_point()
    try:
        data = _prepare_data(dataset, r, d, out / "data", point[1] / "tokenizer.json" if point else None)
        cfg = build_config(r, data.index.vocab_size)
    except (TokenizerError, ConfigError) as e:
        raise BadInput(str(e)) from None
    try:
        sampler = PackedSampler(data.stream(verify=d.is_local_main), r.seq_len, r.seed)
    except SamplerError as e:
        raise BadInput(str(e)) from None

    model, ep_params = _build_model(cfg, r, d)
    optimizer = _build_optimizer(model, r, d)
    n_routers = len(model.routers())
    routing_totals = np.zeros((n_routers, cfg.n_routed_experts), dtype=np.float64)
    step = 0
    resumed_from = resume_seconds = None
    if point is not None:
        state = ckpt.load(point[0], point[1], model, optimizer)
        try:
            sampler.load_state_dict(state["sampler"])
        except SamplerError as e:
            raise BadInput(str(e)) from None
        step = resumed_from = state["step"]
        routing_totals = np.asarray(state["routing_totals"], dtype=np.float64)
        resume_seconds = time.perf_counter() - t_resume
        log.info("resumed at step %d in %.2f s", step, resume_seconds)
        if d.is_main:
            resume = {"step": step, "seconds": resume_seconds, "checkpoint_bytes": point[0].total_bytes}
            (out / "resume.json").write_text(json.dumps(resume))

    metrics = MetricsLogger(
        out, enabled=d.is_main, max_steps=r.max_steps, port=r.metrics_port, progress=r.progress
    )
    metrics.start(step)
    peak = peak_flops(torch.cuda.get_device_name(d.device)) if d.device.type == "cuda" else None
    fpt = flops_per_token(cfg, r.seq_len)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if d.device.type == "cuda" and r.param_dtype == "float32"
        else nullcontext()
    )
    tokens_per_step = r.batch_size * r.seq_len
    last_record: dict = {}

    def trainer_state() -> dict:
        return {
            "step": step,
            "sampler": sampler.state_dict(),
            "routing_totals": routing_totals.tolist(),
            "run_id": r.run_id,
            "world_size": d.world_size,
            "preset": r.preset,
            "config": cfg.to_dict(),
            "batch_size": r.batch_size,
            "seq_len": r.seq_len,
        }

    def save() -> None:
        secs = ckpt.save(step, model, optimizer, trainer_state(), data.tokenizer_path, last_record)
        if d.is_main:
            log.info(
                "checkpoint of step %d: %.3f s blocking (%s)", step, secs, "async" if r.async_save else "sync"
            )
            with (out / "checkpoint_times.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "blocking_s": secs, "async": r.async_save}) + "\n")

    try:
        while step < r.max_steps:
            if any_rank(stop.set, d):
                if ckpt.last_saved_step != step:
                    save()
                ckpt.wait()
                raise Preempted(step, store.step_location(step))
            t0 = time.perf_counter()
            x_np, y_np = sampler.next_batch(r.batch_size, d.rank, d.world_size)
            x = torch.from_numpy(x_np).to(d.device, non_blocking=True)
            y = torch.from_numpy(y_np).to(d.device, non_blocking=True)
            lr = lr_at(step, r)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with autocast:
                out_loss = model.loss(x, y)
            out_loss.loss.backward()
            if ep_params:
                from moe_core.train.expert_parallel import scale_expert_grads

                scale_expert_grads(ep_params, d.world_size)
            grad_norm = _grad_norm(model, r.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                load = all_reduce_sum(model.expert_load().to(d.device), d)
                model.update_router_bias(load)
                losses = torch.stack([out_loss.loss.detach().float(), out_loss.lm_loss.detach().float()])
                losses = all_reduce_sum(losses, d) / d.world_size
            load_np = load.cpu().numpy().astype(np.float64)
            loss, lm_loss = losses.tolist()
            step += 1
            routing_totals += load_np
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise Diverged(f"loss {loss} / grad norm {grad_norm} at step {step}")
            dt = time.perf_counter() - t0
            tps = tokens_per_step / dt
            imbalance = (
                float(np.mean(load_np.max(axis=1) / np.maximum(load_np.mean(axis=1), 1e-9)))
                if n_routers
                else None
            )
            last_record = {
                "step": step,
                "loss": loss,
                "lm_loss": lm_loss,
                "lr": lr,
                "tokens": tokens_per_step,
                "tokens_per_s": tps,
                "mfu": (fpt * tps / (peak * d.world_size)) if peak else None,
                "grad_norm": grad_norm,
                "max_memory_gib": torch.cuda.max_memory_allocated(d.device) / 2**30
                if d.device.type == "cuda"
                else None,
                "expert_load_max_over_mean": imbalance,
                "step_s": dt,
            }
            # Logged before the checkpoint: a kill in between must not leave a checkpoint without its line.
            metrics.log(last_record)
            if step % r.checkpoint_every == 0 or (step == r.max_steps and r.final_checkpoint):
                save()
        ckpt.wait()
    finally:
        metrics.close()

    model_dir, artifact_uri, summary = _export(model, cfg, r, d, data, routing_totals, out, s3)
    return TrainResult(
        run_id=r.run_id,
        final_step=step,
        output=out,
        model_dir=model_dir,
        artifact_uri=artifact_uri,
        checkpoint_uri=store.location,
        metrics=summary,
        resumed_from=resumed_from,
        resume_seconds=resume_seconds,
        skipped_checkpoints=[{"step": s.step, "reason": s.reason} for s in ckpt.skipped],
    )


def _export(
    model, cfg: ModelConfig, r: ResolvedOptions, d: Dist, data: PreparedData, routing_totals, out: Path, s3
):
    """The artifact serving loads: config + safetensors + tokenizer + routing stats + metrics + loss curve."""
    records = read_metrics(out / "metrics.jsonl") if d.is_main else []
    summary = summarize(records)
    if not r.export:
        return None, None, summary
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from moe_core.artifact import save_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None, None, summary
    model_dir = out / MODEL_DIR
    save_model(full, cfg, model_dir)
    shutil.copyfile(data.tokenizer_path, model_dir / "tokenizer.json")
    routing = {
        "steps": records[-1]["step"] if records else 0,
        "n_routed_experts": cfg.n_routed_experts,
        "layers": [
            {
                "router": i,
                "layer": cfg.n_dense_layers + i if i < cfg.n_moe_layers else f"mtp{i - cfg.n_moe_layers}",
                "tokens_per_expert": [int(v) for v in row],
            }
            for i, row in enumerate(routing_totals)
        ],
    }
    (model_dir / ROUTING_STATS_FILE).write_text(json.dumps(routing, indent=1))
    (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    if records:
        plot_loss_curve(records, model_dir / LOSS_CURVE_FILE, f"{r.run_id} ({r.preset})")
        shutil.copyfile(model_dir / LOSS_CURVE_FILE, out / LOSS_CURVE_FILE)
    artifact_uri = None
    if r.artifact_uri:
        from moe_control.checkpoints import parse_s3_uri

        bucket, prefix = parse_s3_uri(r.artifact_uri)
        for p in sorted(model_dir.iterdir()):
            s3.upload_file(str(p), bucket, f"{prefix}/{p.name}" if prefix else p.name)
        artifact_uri = f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket}/"
    log.info("model written to %s%s", model_dir, f" and {artifact_uri}" if artifact_uri else "")
    return model_dir, artifact_uri, summary
