"""Training benchmark: the real `moectl train` worker, timed from its own metrics and checkpoint logs.

Stages (each a real run of `python -m moe_core.train`, under torchrun for two processes):
  single: one GPU, `mini`, 8 x 2048 tokens: tokens/s and MFU of the whole step (optimizer, router bias update,
          metrics included), the blocking time of a synchronous checkpoint save, then the time to resume
          from it (find, verify checksums, load), then the same run with asynchronous saves;
  multi:  two GPUs, FSDP2: `mini` with the same per-GPU batch (scaling efficiency against `single`), then `lite`
          (bf16 weights and optimizer state, as fp32 AdamW state for 15.7B parameters does not fit two H200s).

The corpus, tokenizer and shards are prepared once (`prepare`) and copied into each run, so the GPU time
goes to training. `--quick` runs the same stages with `tiny` on CPU (gloo) to check the script.

  python bench/bench_train.py prepare --data-dir bench/.data
  python bench/bench_train.py run --data-dir bench/.data --out $OUT --stages single,multi
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_VOCAB = 8192  # the presets keep their own vocabulary size; the tokenizer fills the first 8192 ids


def prepare(data_dir: Path, corpus_bytes: int) -> None:
    from moe_core.data.corpus import resolve_dataset, write_stdlib_dataset
    from moe_core.data.prepare import ensure_shards, ensure_tokenizer

    corpus = data_dir / "corpus"
    if not (corpus / "manifest.json").is_file():
        write_stdlib_dataset(corpus, corpus_bytes, name="stdlib-bench")
    ds = resolve_dataset(str(corpus), data_dir / "staging")
    tok = ensure_tokenizer(ds, data_dir / "template", TOKENIZER_VOCAB)
    index = ensure_shards(ds, tok, data_dir / "template").index
    print(f"prepared {ds.manifest.total_bytes} bytes -> {index.total_tokens} tokens in {data_dir}")


def _records(out: Path) -> list[dict]:
    p = out / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.data = Path(args.data_dir)
        self.results: dict = {"stages": {}, "notes": []}
        self.deadline = time.monotonic() + args.budget_s
        self.quick = args.quick

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def train(self, name: str, nproc: int, extra: list[str], timeout: float, fresh: bool = True) -> dict:
        run = self.work / name
        if fresh:
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(self.data / "template", run / "data")
        base = [
            "--data", str(self.data / "corpus"), "--output", str(run), "--vocab-size", str(TOKENIZER_VOCAB),
            "--no-progress", "--no-export", "--lr", "1e-3",
        ]  # fmt: skip
        if self.quick:
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
                *mod,
            ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if nproc == 1 and not self.quick:
            env["CUDA_VISIBLE_DEVICES"] = "0"
        timeout = max(10.0, min(timeout, self.left()))
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", (e.stderr.decode() if isinstance(e.stderr, bytes) else str(e.stderr or ""))
        wall = time.monotonic() - t0
        (self.out / f"{name}.log").write_text(err[-200_000:])
        print(f"[{name}] rc={rc} wall={wall:.1f}s", flush=True)
        if rc != 0:
            print(err[-3000:], flush=True)
        return {"rc": rc, "wall_s": wall, "run": run}

    @staticmethod
    def steady(records: list[dict], skip: int, exclude: set[int]) -> dict:
        rs = [r for r in records if r["step"] > skip and r["step"] not in exclude]
        if not rs:
            return {}
        tps = statistics.median(r["tokens_per_s"] for r in rs)
        mfus = [r["mfu"] for r in rs if r.get("mfu") is not None]
        mem = [r["max_memory_gib"] for r in rs if r.get("max_memory_gib") is not None]
        return {
            "steps_timed": len(rs),
            "tokens_per_s": tps,
            "step_s": statistics.median(r["step_s"] for r in rs),
            "mfu": statistics.median(mfus) if mfus else None,
            "max_memory_gib": max(mem) if mem else None,
            "final_loss": records[-1]["loss"],
        }

    def stage_single(self) -> None:
        a = self.args
        shape = ["--preset", a.preset, "--seq-len", str(a.seq_len), "--batch-size", str(a.batch)]
        at = a.steps // 2 + 1  # one checkpoint, mid-run: the steps after it overlap an asynchronous save
        common = [*shape, "--checkpoint-every", str(at), "--keep", "1", "--no-final-checkpoint"]
        res: dict = {}
        self.results["stages"]["single"] = res
        sync = self.train("single_sync", 1, [*common, "--max-steps", str(a.steps)], timeout=300)
        res["sync_rc"] = sync["rc"]
        res["throughput"] = self.steady(_records(sync["run"]), a.warmup, {at, at + 1})
        times = _jsonl(sync["run"] / "checkpoint_times.jsonl")
        res["sync_blocking_s"] = [t["blocking_s"] for t in times if "blocking_s" in t]
        res["sync_complete_s"] = [t["complete_s"] for t in times if "complete_s" in t]
        res["checkpoint_bytes"] = next((t["bytes"] for t in times if "bytes" in t), None)
        self.flush()
        if sync["rc"] == 0 and self.left() > 30:
            # The same run asked to stop at the checkpoint's step: it finds the checkpoint, verifies every
            # file's sha256, loads model + optimizer + sampler, and exits without training.
            resume = self.train("single_sync", 1, [*common, "--max-steps", str(at)], timeout=240, fresh=False)
            rj = sync["run"] / "resume.json"
            res["resume_rc"] = resume["rc"]
            res["resume"] = json.loads(rj.read_text()) if rj.is_file() else None
            res["resume_process_wall_s"] = resume["wall_s"]
            self.flush()
        shutil.rmtree(sync["run"] / "checkpoints", ignore_errors=True)
        if not a.skip_async and self.left() > 30:
            asy = self.train(
                "single_async", 1, [*common, "--max-steps", str(a.steps), "--async-save"], timeout=300
            )
            times = _jsonl(asy["run"] / "checkpoint_times.jsonl")
            res["async_rc"] = asy["rc"]
            res["async_blocking_s"] = [t["blocking_s"] for t in times if "blocking_s" in t]
            res["async_complete_s"] = [t["complete_s"] for t in times if "complete_s" in t]
            recs = _records(asy["run"])
            res["async_throughput"] = self.steady(recs, a.warmup, {at, at + 1})
            # The steps right after the save run while the checkpoint is written in the background.
            res["async_overlap_step_s"] = [r["step_s"] for r in recs if at < r["step"] <= at + 3]
            shutil.rmtree(asy["run"] / "checkpoints", ignore_errors=True)
        self.flush()

    def stage_multi(self) -> None:
        a = self.args
        res: dict = {}
        self.results["stages"]["multi"] = res
        n = 2
        no_ckpt = ["--checkpoint-every", "1000000", "--no-final-checkpoint"]
        mini = self.train(
            "multi_mini", n,
            ["--preset", a.preset, "--seq-len", str(a.seq_len), "--batch-size", str(a.batch * n),
             "--max-steps", str(a.steps), *no_ckpt],
            timeout=300,
        )  # fmt: skip
        res["mini_rc"] = mini["rc"]
        res["mini"] = self.steady(_records(mini["run"]), a.warmup, set())
        self.flush()
        if a.lite_preset and self.left() > 60:
            lite = self.train(
                "multi_lite", n,
                ["--preset", a.lite_preset, "--seq-len", str(a.seq_len), "--batch-size", str(a.lite_batch),
                 "--max-steps", str(a.lite_steps), "--param-dtype", "bfloat16", *no_ckpt],
                timeout=400,
            )  # fmt: skip
            res["lite_rc"] = lite["rc"]
            res["lite"] = self.steady(_records(lite["run"]), min(a.warmup, a.lite_steps - 2), set())
        elif a.lite_preset:
            self.results["notes"].append("lite skipped: out of time")
        self.flush()

    def stage_ep(self) -> None:
        """Two GPUs, FSDP2 + expert parallelism (experts split by expert, token all-to-all): `mini`."""
        a = self.args
        n = 2
        run = self.train(
            "multi_mini_ep", n,
            ["--preset", a.preset, "--seq-len", str(a.seq_len), "--batch-size", str(a.batch * n),
             "--max-steps", str(a.steps), "--checkpoint-every", "1000000", "--no-final-checkpoint",
             "--expert-parallel"],
            timeout=300,
        )  # fmt: skip
        self.results["stages"]["ep"] = {
            "rc": run["rc"],
            "mini": self.steady(_records(run["run"]), a.warmup, set()),
        }
        self.flush()

    def flush(self) -> None:
        (self.out / "bench_train.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "bench_train.md").write_text(self.table())

    def table(self) -> str:
        a = self.args
        s = self.results["stages"]
        lines = [
            f"preset `{a.preset}`, {a.batch} x {a.seq_len} tokens per GPU per step, {a.steps} steps "
            f"(first {a.warmup} and checkpoint steps excluded, medians)",
            "",
            "| measurement | value |",
            "| --- | --- |",
        ]

        def row(k, v):
            lines.append(f"| {k} | {v} |")

        def f(x, p=1):
            return "-" if x is None else (f"{x:,.{p}f}" if isinstance(x, float | int) else str(x))

        single = s.get("single", {})
        t = single.get("throughput") or {}
        if t:
            row("1 GPU: tokens/s (whole step)", f(t.get("tokens_per_s"), 0))
            row("1 GPU: step time (s)", f(t.get("step_s"), 3))
            row("1 GPU: MFU", f(100 * t["mfu"], 1) + " %" if t.get("mfu") else "-")
            row("1 GPU: peak memory (GiB)", f(t.get("max_memory_gib")))
        if single:
            row("checkpoint size (GB)", f((single.get("checkpoint_bytes") or 0) / 1e9, 2))
            row(
                "sync save: blocking time (s), each save",
                ", ".join(f(x, 2) for x in single.get("sync_blocking_s", [])),
            )
            row(
                "async save: blocking time (s), each save",
                ", ".join(f(x, 2) for x in single.get("async_blocking_s", [])),
            )
            row(
                "async save: until the manifest is written (s)",
                ", ".join(f(x, 2) for x in single.get("async_complete_s", [])),
            )
            row(
                "async save: step time while it writes (s)",
                ", ".join(f(x, 3) for x in single.get("async_overlap_step_s", [])),
            )
            r = single.get("resume") or {}
            row("resume: find + verify sha256 + load (s)", f(r.get("seconds"), 2))
            row("resume: whole process, start to exit (s)", f(single.get("resume_process_wall_s"), 1))
        multi = s.get("multi", {})
        m = multi.get("mini") or {}
        if m:
            row("2 GPUs FSDP2: tokens/s", f(m.get("tokens_per_s"), 0))
            row("2 GPUs FSDP2: MFU", f(100 * m["mfu"], 1) + " %" if m.get("mfu") else "-")
            if t.get("tokens_per_s"):
                row(
                    "2 GPUs FSDP2: scaling efficiency",
                    f(100 * m["tokens_per_s"] / (2 * t["tokens_per_s"]), 1) + " %",
                )
        elif multi:
            row("2 GPUs FSDP2 mini", f"failed (rc {multi.get('mini_rc')})")
        lite = multi.get("lite") or {}
        if lite:
            row(f"2 GPUs FSDP2 `{a.lite_preset}` (bf16 state): tokens/s", f(lite.get("tokens_per_s"), 0))
            row(
                f"2 GPUs FSDP2 `{a.lite_preset}`: MFU",
                f(100 * lite["mfu"], 1) + " %" if lite.get("mfu") else "-",
            )
            row(f"2 GPUs FSDP2 `{a.lite_preset}`: peak memory per GPU (GiB)", f(lite.get("max_memory_gib")))
            row(
                f"2 GPUs FSDP2 `{a.lite_preset}`: final loss after {a.lite_steps} steps",
                f(lite.get("final_loss"), 3),
            )
        elif "lite_rc" in multi:
            row(f"2 GPUs FSDP2 `{a.lite_preset}`", f"failed (rc {multi.get('lite_rc')})")
        ep = (s.get("ep") or {}).get("mini") or {}
        if ep:
            row("2 GPUs FSDP2 + expert parallel: tokens/s", f(ep.get("tokens_per_s"), 0))
            row("2 GPUs FSDP2 + expert parallel: MFU", f(100 * ep["mfu"], 1) + " %" if ep.get("mfu") else "-")
            row("2 GPUs FSDP2 + expert parallel: peak memory per GPU (GiB)", f(ep.get("max_memory_gib")))
        elif "ep" in s:
            row("2 GPUs FSDP2 + expert parallel", f"failed (rc {s['ep'].get('rc')})")
        for note in self.results["notes"]:
            lines.append(f"\nNote: {note}")
        return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data-dir", default="bench/.data")
    p.add_argument("--corpus-bytes", type=int, default=6_000_000)
    r = sub.add_parser("run")
    r.add_argument("--data-dir", default="bench/.data")
    r.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    r.add_argument("--work", default="/tmp/bench_train")
    r.add_argument("--stages", default="single,multi")
    r.add_argument("--budget-s", type=float, default=480)
    r.add_argument("--quick", action="store_true", help="tiny on CPU: checks the script, measures nothing")
    r.add_argument("--preset", default="mini")
    r.add_argument("--lite-preset", default="lite")
    r.add_argument("--seq-len", type=int, default=2048)
    r.add_argument("--batch", type=int, default=8, help="sequences per GPU per step")
    r.add_argument("--lite-batch", type=int, default=8, help="global sequences per step for lite")
    r.add_argument("--steps", type=int, default=14)
    r.add_argument("--lite-steps", type=int, default=8)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument(
        "--skip-async", action="store_true", help="single: only the synchronous save and the resume"
    )
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(Path(args.data_dir), args.corpus_bytes)
        return
    if args.quick:
        args.preset, args.lite_preset, args.seq_len, args.batch, args.lite_batch = "tiny", "tiny", 64, 4, 8
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    stages = args.stages.split(",")
    if "ep" in stages:
        bench.stage_ep()
    if "single" in stages:
        bench.stage_single()
    if "multi" in stages:
        bench.stage_multi()
    bench.flush()
    print(bench.table())


if __name__ == "__main__":
    main()
