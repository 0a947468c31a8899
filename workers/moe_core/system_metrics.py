"""Prometheus metrics of the machine a worker runs on, read at scrape time: each GPU's temperature, power,
memory and utilisation through NVML (nvidia-ml-py, optional: without it or without a GPU these are simply
absent and `moe_gpu_available` is 0), and network bytes per interface - the kernel's counters and, where the
machine has EFA or InfiniBand adapters (whose RDMA traffic bypasses the kernel's counters), theirs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("moe_core.metrics")

INFINIBAND_ROOT = Path("/sys/class/infiniband")


def _load_nvml() -> Any | None:
    """The initialised NVML module, or None where nvidia-ml-py or the driver is missing (CPU machines)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no GPU here
        log.info("no GPU metrics: NVML is not available (%s)", exc)
        return None
    return pynvml


class SystemCollector:
    """Register with a CollectorRegistry; `nvml` and `infiniband_root` are parameters so tests can point them at
    stand-ins (no GPU or adapter exists on a CI machine)."""

    def __init__(self, nvml: Any | None = ..., infiniband_root: Path = INFINIBAND_ROOT):
        self.nvml = _load_nvml() if nvml is ... else nvml
        self.infiniband_root = infiniband_root

    def collect(self):
        yield from self._gpus()
        yield from self._network()

    def _gpus(self):
        available = GaugeMetricFamily("moe_gpu_available", "1 when NVML reports this machine's GPUs, else 0")
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount() if nvml is not None else 0
        except Exception as exc:
            log.warning("NVML failed: %s", exc)
            count = 0
        available.add_metric([], 1.0 if count else 0.0)
        yield available
        if not count:
            return
        labels = ["gpu", "name"]
        temperature = GaugeMetricFamily("moe_gpu_temperature_celsius", "GPU core temperature", labels=labels)
        power = GaugeMetricFamily("moe_gpu_power_watts", "GPU power draw", labels=labels)
        power_limit = GaugeMetricFamily(
            "moe_gpu_power_limit_watts", "GPU enforced power limit", labels=labels
        )
        used = GaugeMetricFamily("moe_gpu_memory_used_bytes", "GPU memory in use", labels=labels)
        total = GaugeMetricFamily("moe_gpu_memory_total_bytes", "GPU memory installed", labels=labels)
        util = GaugeMetricFamily(
            "moe_gpu_utilization_ratio", "Share of the last sample period a kernel ran (0-1)", labels=labels
        )
        mem_util = GaugeMetricFamily(
            "moe_gpu_memory_bandwidth_utilization_ratio",
            "Share of the last sample period device memory was read or written (0-1)",
            labels=labels,
        )
        for i in range(count):
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else str(name)
                key = [str(i), name]
                temperature.add_metric(
                    key, float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
                )
                power.add_metric(key, nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)  # milliwatts
                power_limit.add_metric(key, nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
                memory = nvml.nvmlDeviceGetMemoryInfo(h)
                used.add_metric(key, float(memory.used))
                total.add_metric(key, float(memory.total))
                rates = nvml.nvmlDeviceGetUtilizationRates(h)  # percentages
                util.add_metric(key, rates.gpu / 100.0)
                mem_util.add_metric(key, rates.memory / 100.0)
            except Exception as exc:
                # one GPU that fails to answer (fallen off the bus) must not hide the others
                log.warning("NVML failed for GPU %d: %s", i, exc)
        yield from (temperature, power, power_limit, used, total, util, mem_util)

    def _network(self):
        try:
            import psutil
        except ImportError:  # an image without it still serves its other metrics
            return
        rx = CounterMetricFamily(
            "moe_network_receive_bytes", "Bytes received per interface", labels=["device"]
        )
        tx = CounterMetricFamily("moe_network_transmit_bytes", "Bytes sent per interface", labels=["device"])
        for device, c in sorted(psutil.net_io_counters(pernic=True).items()):
            rx.add_metric([device], float(c.bytes_recv))
            tx.add_metric([device], float(c.bytes_sent))
        yield rx
        yield tx
        rdma_rx = CounterMetricFamily(
            "moe_rdma_receive_bytes",
            "Bytes received per EFA/InfiniBand port (RDMA included)",
            labels=["device"],
        )
        rdma_tx = CounterMetricFamily(
            "moe_rdma_transmit_bytes", "Bytes sent per EFA/InfiniBand port (RDMA included)", labels=["device"]
        )
        for device, received, sent in _rdma_counters(self.infiniband_root):
            rdma_rx.add_metric([device], received)
            rdma_tx.add_metric([device], sent)
        yield rdma_rx
        yield rdma_tx


def _rdma_counters(root: Path) -> list[tuple[str, float, float]]:
    """(device/port, bytes received, bytes sent) from sysfs: EFA's hw_counters count bytes; InfiniBand's
    port_*_data counters count 4-byte words."""
    out = []
    if not root.is_dir():
        return out
    for port in sorted(root.glob("*/ports/*")):
        name = f"{port.parent.parent.name}/{port.name}"
        try:
            efa = port / "hw_counters"
            if (efa / "rx_bytes").is_file():
                out.append(
                    (name, float((efa / "rx_bytes").read_text()), float((efa / "tx_bytes").read_text()))
                )
            elif (port / "counters" / "port_rcv_data").is_file():
                rcv = float((port / "counters" / "port_rcv_data").read_text()) * 4
                xmit = float((port / "counters" / "port_xmit_data").read_text()) * 4
                out.append((name, rcv, xmit))
        except (OSError, ValueError) as exc:
            log.warning("cannot read the counters of %s: %s", name, exc)
    return out
