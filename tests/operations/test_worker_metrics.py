"""The workers' machine metrics (moe_core.system_metrics) and the Grafana dashboards in monitoring/grafana.

No GPU, EFA adapter or NVIDIA driver exists here: the no-GPU path runs for real (nvidia-ml-py is installed and
its nvmlInit fails), and the GPU path runs against a stand-in of the NVML calls the collector makes, with the
values and units NVML documents (milliwatts, percentages, bytes). The dashboards are checked against the metric
names the real registries of both workers expose."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from moe_core.system_metrics import SystemCollector, _load_nvml
from tests.conftest import free_port

DASHBOARDS = Path(__file__).resolve().parents[2] / "monitoring" / "grafana"


class StandInNvml:
    """The pynvml calls SystemCollector makes, for machines without a GPU (a stand-in: no NVML here)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict], broken: set[int] = frozenset()):
        self.gpus, self.broken = gpus, broken

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i in self.broken:
            raise RuntimeError("GPU is lost")
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self.gpus[h]["temp"]

    def nvmlDeviceGetPowerUsage(self, h):
        return self.gpus[h]["mw"]

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.gpus[h]["used"], total=143_771_336_704, free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.gpus[h]["util"], memory=40)


def _samples(collector) -> dict[tuple[str, tuple], float]:
    reg = CollectorRegistry()
    reg.register(collector)
    text = generate_latest(reg).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_without_nvidia_ml_py_or_a_driver_there_are_no_gpu_metrics(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the import fails
    assert _load_nvml() is None
    monkeypatch.delitem(sys.modules, "pynvml")
    import pynvml

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert _load_nvml() is None
    samples = _samples(SystemCollector(nvml=None))
    assert samples[("moe_gpu_available", ())] == 0.0
    assert not [name for name, _ in samples if name.startswith("moe_gpu_") and name != "moe_gpu_available"]


def test_gpu_temperature_power_memory_and_utilisation_in_prometheus_units():
    gpus = [
        {"temp": 41, "mw": 312_500, "used": 80 * 2**30, "util": 97},
        {"temp": 55, "mw": 650_000, "used": 2**30, "util": 0},
    ]
    samples = _samples(SystemCollector(nvml=StandInNvml(gpus), infiniband_root=Path("/nonexistent")))
    gpu1 = (("gpu", "1"), ("name", "NVIDIA H200"))
    assert samples[("moe_gpu_available", ())] == 1.0
    assert samples[("moe_gpu_temperature_celsius", gpu1)] == 55.0
    assert samples[("moe_gpu_power_watts", gpu1)] == 650.0
    assert samples[("moe_gpu_power_limit_watts", gpu1)] == 700.0
    assert samples[("moe_gpu_memory_used_bytes", (("gpu", "0"), ("name", "NVIDIA H200")))] == 80 * 2**30
    assert samples[("moe_gpu_memory_total_bytes", gpu1)] == 143_771_336_704
    assert samples[("moe_gpu_utilization_ratio", (("gpu", "0"), ("name", "NVIDIA H200")))] == 0.97
    assert samples[("moe_gpu_memory_bandwidth_utilization_ratio", gpu1)] == 0.4


def test_a_gpu_that_fails_to_answer_does_not_hide_the_others():
    gpus = [{"temp": 40, "mw": 1000, "used": 1, "util": 1}] * 3
    samples = _samples(
        SystemCollector(nvml=StandInNvml(gpus, broken={1}), infiniband_root=Path("/nonexistent"))
    )
    reported = sorted(
        dict(labels)["gpu"] for name, labels in samples if name == "moe_gpu_temperature_celsius"
    )
    assert reported == ["0", "2"]


def test_network_bytes_per_interface_and_rdma_bytes_per_adapter_port(tmp_path):
    efa = tmp_path / "rdmap16s27" / "ports" / "1" / "hw_counters"
    efa.mkdir(parents=True)
    (efa / "rx_bytes").write_text("1000\n")
    (efa / "tx_bytes").write_text("2000\n")
    ib = tmp_path / "mlx5_0" / "ports" / "1" / "counters"
    ib.mkdir(parents=True)
    (ib / "port_rcv_data").write_text("25\n")  # 4-byte words
    (ib / "port_xmit_data").write_text("50\n")
    samples = _samples(SystemCollector(nvml=None, infiniband_root=tmp_path))
    assert samples[("moe_rdma_receive_bytes_total", (("device", "rdmap16s27/1"),))] == 1000.0
    assert samples[("moe_rdma_transmit_bytes_total", (("device", "rdmap16s27/1"),))] == 2000.0
    assert samples[("moe_rdma_receive_bytes_total", (("device", "mlx5_0/1"),))] == 100.0
    assert samples[("moe_rdma_transmit_bytes_total", (("device", "mlx5_0/1"),))] == 200.0
    assert samples[("moe_network_receive_bytes_total", (("device", "lo"),))] >= 0
    assert ("moe_network_transmit_bytes_total", (("device", "lo"),)) in samples


# ------------------------------------------------------------------------------------------- both workers


def _exposed_names(text: str) -> set[str]:
    """Every series name a scrape can hold, also of families with no sample yet (a labelled counter before its
    first increment): counters as NAME_total, histograms as NAME_bucket/_sum/_count."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


@pytest.fixture(scope="module")
def training_names(tmp_path_factory) -> set[str]:
    from moe_core.train.metrics import MetricsLogger

    port = free_port()
    MetricsLogger(tmp_path_factory.mktemp("train"), enabled=True, max_steps=1, port=port, progress=False)
    return _exposed_names(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


@pytest.fixture(scope="module")
def serving_names() -> set[str]:
    import torch

    from moe_core.config import ModelConfig
    from moe_core.experts.store import offload_experts
    from moe_core.experts.tiers import HostTier
    from moe_core.model import Transformer
    from moe_core.serve.engine import EngineConfig, LLMEngine
    from moe_core.serve.metrics import ServerMetrics

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny", vocab_size=512, mtp_depth=0)).eval()
    store = offload_experts(model, budget=0.5, tiers=[HostTier(None)], policy="lfu")
    metrics = ServerMetrics(LLMEngine(model, EngineConfig(max_num_seqs=2)), store)
    return _exposed_names(generate_latest(metrics.registry).decode())


@pytest.fixture(scope="module")
def gpu_names(tmp_path_factory) -> set[str]:
    """What a GPU machine with an EFA adapter adds (the stand-in NVML and a sysfs tree)."""
    root = tmp_path_factory.mktemp("sysfs")
    efa = root / "rdmap0" / "ports" / "1" / "hw_counters"
    efa.mkdir(parents=True)
    (efa / "rx_bytes").write_text("1")
    (efa / "tx_bytes").write_text("1")
    collector = SystemCollector(
        nvml=StandInNvml([{"temp": 1, "mw": 1, "used": 1, "util": 1}]), infiniband_root=root
    )
    reg = CollectorRegistry()
    reg.register(collector)
    return _exposed_names(generate_latest(reg).decode())


def test_both_workers_expose_the_machine_metrics(training_names, serving_names):
    for names in (training_names, serving_names):
        assert {
            "moe_gpu_available",
            "moe_network_receive_bytes_total",
            "moe_network_transmit_bytes_total",
        } <= names
    assert "moe_train_loss" in training_names and "moe_kv_cache_usage_ratio" in serving_names


def _dashboard_metrics(path: Path) -> tuple[dict, set[str]]:
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)
    ]
    return dashboard, {m for e in exprs for m in re.findall(r"\b(moe_[a-z0-9_]+)\b", e)}


@pytest.mark.parametrize("name", ["training", "serving"])
def test_dashboard_parses_and_references_only_metrics_that_exist(
    name, training_names, serving_names, gpu_names
):
    dashboard, used = _dashboard_metrics(DASHBOARDS / f"{name}.json")
    assert dashboard["uid"] == f"moe-{name}" and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
    exposed = (training_names if name == "training" else serving_names) | gpu_names
    assert used - exposed == set()
    # each dashboard shows its worker's own metrics and the machine's: GPU temperature, power, memory,
    # utilisation, and network bytes
    own = {m for m in used if m.startswith("moe_train_")} if name == "training" else {"moe_requests_total"}
    assert own and own <= used
    machine = {
        "moe_gpu_temperature_celsius",
        "moe_gpu_power_watts",
        "moe_gpu_memory_used_bytes",
        "moe_gpu_utilization_ratio",
        "moe_network_receive_bytes_total",
        "moe_rdma_receive_bytes_total",
    }
    assert machine <= used


def test_the_dashboard_check_catches_a_metric_that_does_not_exist(training_names, gpu_names, tmp_path):
    dashboard = json.loads((DASHBOARDS / "training.json").read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = "moe_train_lose"  # a typo
    (tmp_path / "training.json").write_text(json.dumps(dashboard))
    _, used = _dashboard_metrics(tmp_path / "training.json")
    assert used - (training_names | gpu_names) == {"moe_train_lose"}
