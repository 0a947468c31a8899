"""Expert parallel at eight GPUs (issue 8): the real `moectl train` worker under torchrun, FSDP2 + experts split.

Each stage is a real run of `python -m moe_core.train` (what `moectl train` and the container run), timed from
the worker's own `metrics.jsonl`, `checkpoint_times.jsonl` and `resume.json`:

  base:    `mini` on 1 GPU (FSDP2 on one GPU, as the worker always runs on GPU) and on 2 GPUs with
           `--expert-parallel`, the same batch per GPU: the baselines of the scaling efficiency, same call.
  ep:      `mini` on N GPUs (default 8), FSDP2 + expert parallel, the same batch per GPU.
  fsdp:    (not by default) `mini` on N GPUs with FSDP2 alone (experts all-gathered, not split).
  large:   `lite` (15.7B) on N GPUs, FSDP2 + expert parallel, fp32 weights and AdamW state: 16 B x 15.7B =
           251 GB, more than two H200s hold (the 2-GPU run of issue 4 needed `--param-dtype bfloat16`).
  reshard: `mini` on N GPUs with expert parallel, a checkpoint at the middle step; that checkpoint resumed on 2
           GPUs with the same global batch; the resumed steps' losses set against the straight run's.

Per GPU: tokens/s / GPUs, MFU (the worker's: against the bf16 datasheet peak), expert load max/mean (mean
over MoE layers, from the all-reduced loads), peak memory per GPU (the highest `nvidia-smi` memory.used seen
on each GPU while the run lasted, sampled every 0.5 s: the caching allocator's reserve plus the CUDA context;
the worker's own `max_memory_allocated` is rank 0's only).

  python bench/bench_train.py prepare --data-dir bench/.data        # once, here: corpus, tokenizer, shards
  python bench/bench_ep8.py --data-dir bench/.data --out $OUT        # on the 8-GPU machine
  python bench/bench_ep8.py --quick --out /tmp/ep8                   # tiny on CPU, 2 and 1 gloo processes

`--quick` runs every stage with `tiny` on CPU (gloo), N = 2 and resuming on 1: it checks the script and
measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import TOKENIZER_VOCAB, prepare  # noqa: E402  (the same data as issue 4's benchmark)

# NVLink multicast stays off on the lent machines (KINDS.md); torchrun's workers inherit these.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


class GpuMemoryPoller:
    """The highest memory.used (MiB) nvidia-smi reports for each GPU while it runs; nothing without GPUs."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.peak_mib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuMemoryPoller:
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                text = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in text.splitlines():
                try:
                    idx, used = (int(v) for v in line.split(","))
                except ValueError:  # "[N/A]" or a warning line: not a reading
                    continue
                self.peak_mib[idx] = max(self.peak_mib.get(idx, 0), used)
            self._stop.wait(self.interval_s)


class Bench:
    def __init__(self, args):
        self.a = args
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.data = Path(args.data_dir)
        self.results: dict = {"args": vars(args), "runs": {}, "reshard": {}, "notes": []}
        self.deadline = time.monotonic() + args.budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # ---- one worker run ---------------------------------------------------------------------------------
    def train(self, name: str, nproc: int, extra: list[str], timeout: float, run: Path | None = None) -> dict:
        """`python -m moe_core.train` on ``nproc`` processes (torchrun above one); a fresh run folder unless
        ``run`` is given (a resume)."""
        if run is None:
            run = self.work / name
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(self.data / "template", run / "data")
        base = [
            "--data", str(self.data / "corpus"), "--output", str(run), "--run-id", "ep8",
            "--vocab-size", str(TOKENIZER_VOCAB), "--no-progress", "--no-export", "--lr", "1e-3",
        ]  # fmt: skip
        if self.a.quick:
            base += ["--device", "cpu"]
        mod = ["-m", "moe_core.train", *base, *extra]
        if nproc == 1:
            cmd = [sys.executable, *mod]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(nproc),
            ]
            cmd += mod
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **NO_MULTICAST}
        if self.a.quick:
            env["OMP_NUM_THREADS"] = "1"
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(nproc))
        timeout = max(10.0, min(timeout, self.left()))
        t0 = time.monotonic()
        with GpuMemoryPoller() as mem:
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
                rc, err = p.returncode, p.stderr
            except subprocess.TimeoutExpired as e:
                rc = "timeout"
                err = e.stderr.decode() if isinstance(e.stderr, bytes) else str(e.stderr or "")
        wall = time.monotonic() - t0
        (self.out / f"{name}.log").write_text(err[-200_000:])
        print(f"[{name}] {nproc} process(es) rc={rc} wall={wall:.1f}s", flush=True)
        if rc != 0:
            print(err[-3000:], flush=True)
        peaks = [mem.peak_mib[i] / 1024 for i in range(nproc) if i in mem.peak_mib]
        return {"rc": rc, "wall_s": wall, "run": run, "gpus": nproc, "peak_gib_per_gpu": peaks}

    def steady(self, res: dict, skip: int) -> dict:
        """Medians over the steps after the first ``skip``."""
        records = _jsonl(res["run"] / "metrics.jsonl")
        rs = [r for r in records if r["step"] > skip]
        out = {
            "rc": res["rc"],
            "gpus": res["gpus"],
            "wall_s": res["wall_s"],
            "peak_gib_per_gpu": res["peak_gib_per_gpu"],
        }
        if not rs:
            return out

        def med(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        tps = med("tokens_per_s")
        out.update(
            steps_timed=len(rs),
            tokens_per_s=tps,
            tokens_per_s_per_gpu=tps / res["gpus"],
            step_s=med("step_s"),
            mfu=med("mfu"),
            load_max_over_mean=med("expert_load_max_over_mean"),
            load_max_over_mean_last=rs[-1].get("expert_load_max_over_mean"),
            rank0_max_allocated_gib=max(
                (r["max_memory_gib"] for r in rs if r.get("max_memory_gib")), default=None
            ),
            final_loss=records[-1]["loss"],
        )
        return out

    def throughput(
        self, name: str, preset: str, nproc: int, per_gpu_batch: int, steps: int, extra: list[str]
    ):
        a = self.a
        res = self.train(
            name, nproc,
            ["--preset", preset, "--seq-len", str(a.seq_len), "--batch-size", str(per_gpu_batch * nproc),
             "--max-steps", str(steps), "--checkpoint-every", "1000000", "--no-final-checkpoint", *extra],
            timeout=a.run_timeout_s,
        )  # fmt: skip
        self.results["runs"][name] = {
            "preset": preset,
            "per_gpu_batch": per_gpu_batch,
            "comparable": preset == a.preset and per_gpu_batch == a.batch,  # a row of the scaling columns
            **self.steady(res, min(a.warmup, steps - 2)),
        }
        shutil.rmtree(res["run"], ignore_errors=True)
        self.flush()

    # ---- stages -----------------------------------------------------------------------------------------
    def stage_base(self) -> None:
        a = self.a
        self.throughput(f"{a.preset}_1", a.preset, 1, a.batch, a.steps, [])
        self.throughput(f"{a.preset}_2_ep", a.preset, 2, a.batch, a.steps, ["--expert-parallel"])

    def stage_ep(self) -> None:
        a = self.a
        if f"{a.preset}_{a.gpus}_ep" in self.results["runs"]:
            return  # N = 2 (--quick): the base stage ran it
        self.throughput(f"{a.preset}_{a.gpus}_ep", a.preset, a.gpus, a.batch, a.steps, ["--expert-parallel"])

    def stage_fsdp(self) -> None:
        a = self.a
        self.throughput(f"{a.preset}_{a.gpus}_fsdp", a.preset, a.gpus, a.batch, a.steps, [])

    def stage_large(self) -> None:
        a = self.a
        name = f"{a.large_preset}_{a.gpus}_ep_large"
        self.throughput(name, a.large_preset, a.gpus, a.large_batch, a.large_steps, ["--expert-parallel"])

    def stage_reshard(self) -> None:
        """Save on N GPUs, resume on fewer with the same global batch; the resumed steps against the straight
        run. On GPU they agree only to bf16 rounding (other per-GPU shapes, other reduction order)."""
        a = self.a
        at, steps = a.reshard_steps // 2, a.reshard_steps
        shape = [
            "--preset", a.preset, "--seq-len", str(a.seq_len), "--batch-size", str(a.reshard_batch),
            "--max-steps", str(steps), "--checkpoint-every", str(at), "--keep", "2", "--expert-parallel",
        ]  # fmt: skip
        res = self.results["reshard"]
        res.update(
            save_gpus=a.gpus, resume_gpus=a.resume_gpus, global_batch=a.reshard_batch, at=at, steps=steps
        )
        straight = self.train(f"reshard_{a.gpus}", a.gpus, shape, timeout=a.run_timeout_s)
        res["save_rc"] = straight["rc"]
        res["save_peak_gib_per_gpu"] = straight["peak_gib_per_gpu"]
        times = _jsonl(straight["run"] / "checkpoint_times.jsonl")
        res["save_blocking_s"] = [t["blocking_s"] for t in times if "blocking_s" in t]
        res["checkpoint_bytes"] = next((t["bytes"] for t in times if "bytes" in t), None)
        self.flush()
        if straight["rc"] != 0 or self.left() < 60:
            self.results["notes"].append("reshard: resume skipped (the save run failed or time ran out)")
            return
        resumed_dir = self._copy_at(straight["run"], self.work / f"reshard_{a.gpus}_to_{a.resume_gpus}", at)
        resumed = self.train(
            f"reshard_{a.gpus}_to_{a.resume_gpus}", a.resume_gpus,
            [*shape[:-1], *(["--expert-parallel"] if a.resume_gpus > 1 else [])],
            timeout=a.run_timeout_s, run=resumed_dir,
        )  # fmt: skip
        res["resume_rc"] = resumed["rc"]
        res["resume_peak_gib_per_gpu"] = resumed["peak_gib_per_gpu"]
        rj = resumed_dir / "resume.json"
        res["resume"] = json.loads(rj.read_text()) if rj.is_file() else None
        res["resumed_from_log"] = (
            f"resumed from the checkpoint of step {at}"
            in (self.out / f"reshard_{a.gpus}_to_{a.resume_gpus}.log").read_text()
        )
        a_recs = {r["step"]: r for r in _jsonl(straight["run"] / "metrics.jsonl")}
        b_recs = {r["step"]: r for r in _jsonl(resumed_dir / "metrics.jsonl")}
        pairs = [(a_recs[s], b_recs[s]) for s in range(at + 1, steps + 1) if s in a_recs and s in b_recs]
        res["compared_steps"] = [x["step"] for x, _ in pairs]
        res["losses"] = [[x["loss"], y["loss"]] for x, y in pairs]
        res["max_loss_rel_diff"] = max(
            (abs(y["loss"] - x["loss"]) / abs(x["loss"]) for x, y in pairs), default=None
        )
        res["max_grad_norm_rel_diff"] = max(
            (abs(y["grad_norm"] - x["grad_norm"]) / abs(x["grad_norm"]) for x, y in pairs), default=None
        )
        sa = straight["run"] / "checkpoints" / f"step-{steps:010d}" / "trainer_state.json"
        sb = resumed_dir / "checkpoints" / f"step-{steps:010d}" / "trainer_state.json"
        if sa.is_file() and sb.is_file():
            ta, tb = json.loads(sa.read_text()), json.loads(sb.read_text())
            res["sampler_equal"] = ta["sampler"] == tb["sampler"]
            res["final_world_sizes"] = [ta["world_size"], tb["world_size"]]
        self.flush()
        shutil.rmtree(straight["run"], ignore_errors=True)
        shutil.rmtree(resumed_dir, ignore_errors=True)

    @staticmethod
    def _copy_at(run: Path, dest: Path, step: int) -> Path:
        """The run folder as it was after the checkpoint of ``step``: checkpoint files hard-linked (resuming
        reads them and writes new folders; it never rewrites a file), everything else copied."""
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints"))
        for src in sorted((run / "checkpoints").glob("step-*")):
            if int(src.name.split("-")[1]) <= step:
                shutil.copytree(src, dest / "checkpoints" / src.name, copy_function=os.link)
        return dest

    # ---- report -----------------------------------------------------------------------------------------
    def flush(self) -> None:
        (self.out / "bench_ep8.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "bench_ep8.md").write_text(self.table())

    def table(self) -> str:
        a = self.a
        runs = self.results["runs"]

        def f(x, p=1):
            return "-" if x is None else (f"{x:,.{p}f}" if isinstance(x, float | int) else str(x))

        def per_gpu(name):
            r = runs.get(name) or {}
            return r.get("tokens_per_s_per_gpu")

        one, two = per_gpu(f"{a.preset}_1"), per_gpu(f"{a.preset}_2_ep")
        lines = [
            f"{a.seq_len} tokens per sequence; medians over the steps after the first {a.warmup}",
            "",
            "| run | GPUs | batch / GPU | tokens/s | tokens/s per GPU | MFU | scaling vs 1 GPU | scaling vs 2 GPUs "
            "| expert load max/mean | peak memory per GPU (GiB, nvidia-smi) | rank 0 max allocated (GiB) "
            "| final loss |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for name, r in runs.items():
            if r.get("tokens_per_s") is None:
                lines.append(
                    f"| {name} (`{r['preset']}`) | {r['gpus']} | {r['per_gpu_batch']} | failed (rc {r['rc']}) |"
                )
                continue
            pg = r["tokens_per_s_per_gpu"]
            vs1 = f(100 * pg / one, 1) + " %" if one and r["comparable"] and r["gpus"] > 1 else "-"
            vs2 = f(100 * pg / two, 1) + " %" if two and r["comparable"] and r["gpus"] > 2 else "-"
            mfu = f(100 * r["mfu"], 1) + " %" if r.get("mfu") is not None else "-"
            peaks = r.get("peak_gib_per_gpu") or []
            mem = f"{min(peaks):.1f} - {max(peaks):.1f}" if peaks else "-"
            lines.append(
                f"| {name} (`{r['preset']}`) | {r['gpus']} | {r['per_gpu_batch']} | {f(r['tokens_per_s'], 0)} "
                f"| {f(pg, 0)} | {mfu} | {vs1} | {vs2} | {f(r.get('load_max_over_mean'), 2)} | {mem} "
                f"| {f(r.get('rank0_max_allocated_gib'))} | {f(r.get('final_loss'), 3)} |"
            )
        rs = self.results["reshard"]
        if rs:
            lines += ["", "| save on more GPUs, resume on fewer | value |", "| --- | ---: |"]

            def row(k, v):
                lines.append(f"| {k} | {v} |")

            row("saved on / resumed on (processes)", f"{rs['save_gpus']} / {rs['resume_gpus']}")
            row(
                "global batch (sequences), checkpoint step / last step",
                f"{rs['global_batch']}, {rs['at']} / {rs['steps']}",
            )
            row("checkpoint size (GB)", f((rs.get("checkpoint_bytes") or 0) / 1e9, 2))
            row(
                f"save on {rs['save_gpus']}: blocking time per save (s)",
                ", ".join(f(x, 2) for x in rs.get("save_blocking_s", [])),
            )
            r = rs.get("resume") or {}
            row(f"resume on {rs['resume_gpus']}: find + verify sha256 + load (s)", f(r.get("seconds"), 2))
            row("resumed from the saved step", rs.get("resumed_from_log", "-"))
            row("steps compared", ", ".join(str(s) for s in rs.get("compared_steps", [])) or "-")
            row("loss, max relative difference from the straight run", _sci(rs.get("max_loss_rel_diff")))
            row("gradient norm, max relative difference", _sci(rs.get("max_grad_norm_rel_diff")))
            row("sampler position equal at the last step", rs.get("sampler_equal", "-"))
            peaks = rs.get("resume_peak_gib_per_gpu") or []
            row(
                f"resume on {rs['resume_gpus']}: peak memory per GPU (GiB)",
                ", ".join(f(x) for x in peaks) or "-",
            )
        for note in self.results["notes"]:
            lines.append(f"\nNote: {note}")
        return "\n".join(lines) + "\n"


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


STAGES = ("base", "ep", "fsdp", "large", "reshard")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-dir", default="bench/.data", help="made by `bench_train.py prepare` (made if absent)"
    )
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    ap.add_argument("--work", default="/tmp/bench_ep8")
    ap.add_argument(
        "--stages", default="base,ep,large,reshard", help=f"comma-separated, of {', '.join(STAGES)}"
    )
    ap.add_argument("--budget-s", type=float, default=570)
    ap.add_argument("--run-timeout-s", type=float, default=300)
    ap.add_argument("--quick", action="store_true", help="tiny on CPU, 2 and 1 processes: checks the script")
    ap.add_argument("--gpus", type=int, default=8, help="N: the GPUs of the expert-parallel runs")
    ap.add_argument("--resume-gpus", type=int, default=2, help="processes the reshard stage resumes on")
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--large-preset", default="lite")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8, help="sequences per GPU per step (mini)")
    ap.add_argument("--large-batch", type=int, default=4, help="sequences per GPU per step (large preset)")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--large-steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reshard-steps", type=int, default=10, help="checkpoint at half, resume from it")
    ap.add_argument(
        "--reshard-batch", type=int, default=16, help="global sequences per step (both world sizes)"
    )
    args = ap.parse_args()
    stages = args.stages.split(",")
    if unknown := set(stages) - set(STAGES):
        ap.error(f"unknown stages {sorted(unknown)}; stages: {', '.join(STAGES)}")
    if args.quick:
        args.preset = args.large_preset = "tiny"
        args.gpus, args.resume_gpus = 2, 1
        args.seq_len, args.batch, args.large_batch, args.reshard_batch = 64, 4, 2, 8
        args.steps, args.large_steps, args.reshard_steps, args.warmup = 6, 4, 6, 2
    if not (Path(args.data_dir) / "template" / "shards").is_dir():
        prepare(Path(args.data_dir), 1_000_000 if args.quick else 6_000_000)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    for stage in stages:
        if bench.left() < 30:
            bench.results["notes"].append(f"stage {stage} skipped: out of time")
            continue
        getattr(bench, f"stage_{stage}")()
    bench.flush()
    print(bench.table())


if __name__ == "__main__":
    main()
