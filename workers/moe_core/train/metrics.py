"""What a run tells the world while it trains: one JSON line per step, a progress bar, a Prometheus endpoint,
and at the end a loss-curve PNG and a summary. Only rank 0 reports."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

log = logging.getLogger("moe_core.train")

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
# bf16 dense peak of the datasheets, per GPU; MFU is reported only where the peak is known.
PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(device_name: str) -> float | None:
    for key, flops in PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return None


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Per-step records to ``DIR/metrics.jsonl``; on resume the lines after the checkpoint's step are dropped,
    so the file always describes one straight run."""

    def __init__(self, out_dir: Path, *, enabled: bool, max_steps: int, port: int = 0, progress: bool = True):
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        self.max_steps = max_steps
        self._bar = None
        self._gauges = None
        self._progress = progress
        if enabled and port:
            self._start_prometheus(port)

    def _start_prometheus(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        reg = CollectorRegistry()
        names = ["step", "loss", "lr", "tokens_per_s", "mfu", "grad_norm", "expert_load_max_over_mean"]
        self._gauges = {
            n: Gauge(f"moe_train_{n}", f"training {n.replace('_', ' ')}", registry=reg) for n in names
        }
        self._tokens = Counter("moe_train_tokens", "tokens trained on by this process's run", registry=reg)
        from moe_core.system_metrics import SystemCollector

        reg.register(SystemCollector())  # GPU temperature, power, memory, utilisation; network bytes
        start_http_server(port, registry=reg)
        log.info("Prometheus metrics on :%d/metrics", port)

    def start(self, start_step: int) -> None:
        if not self.enabled:
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if self._progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.max_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None
            )

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._gauges is not None:
            for name, gauge in self._gauges.items():
                v = record.get(name)
                if v is not None and math.isfinite(v):
                    gauge.set(v)
            self._tokens.inc(record.get("tokens", 0))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summarize(records: list[dict], last_n: int = 10) -> dict:
    """Final metrics: the last step's values plus means over the last ``last_n`` steps."""
    if not records:
        return {}
    tail = records[-last_n:]

    def mean(key: str) -> float | None:
        vals = [r[key] for r in tail if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "final_step": records[-1]["step"],
        "final_loss": records[-1]["loss"],
        "first_loss": records[0]["loss"],
        f"mean_loss_last_{len(tail)}": mean("loss"),
        "mean_tokens_per_s": mean("tokens_per_s"),
        "mean_mfu": mean("mfu"),
        "tokens": sum(r.get("tokens", 0) for r in records),
    }


def plot_loss_curve(records: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2, label="loss")
    if records and records[0].get("lm_loss") is not None:
        ax.plot(
            [r["step"] for r in records], [r["lm_loss"] for r in records], lw=0.8, alpha=0.7, label="lm loss"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
