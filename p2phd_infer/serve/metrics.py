"""Prometheus metrics of one server, in its own CollectorRegistry (two apps in one process never
share or clash), named as NVIDIA Triton names them so its dashboards and `perf_analyzer
--collect-metrics` read them unchanged. Model figures come from the dataplane's statistics
(stats.py) at scrape time, so nothing is counted twice.

    nv_inference_request_success{model,version}           counter: requests answered
    nv_inference_request_failure{model,version,reason}    counter: REJECTED (queue full,
                                                          closing), CANCELED (client gone),
                                                          BACKEND (engine fault), OTHER (input)
    nv_inference_count / nv_inference_exec_count          counter: frames / engine calls
    nv_inference_request_duration_us                      counter: successful requests' time
    nv_inference_queue_duration_us                        counter: their time before the engine
    nv_inference_compute_input|infer|output_duration_us   counter: their engine calls' phases
    nv_inference_pending_request_count{model,version}     gauge: received, not yet answered
    nv_cpu_utilization, nv_cpu_memory_total_bytes, nv_cpu_memory_used_bytes   (Linux /proc)
    nv_gpu_utilization, nv_gpu_memory_total_bytes, nv_gpu_memory_used_bytes, nv_gpu_power_usage,
    nv_gpu_power_limit, nv_energy_consumption {gpu_uuid}  through NVML (nvidia-ml-py), where a
                                                          GPU is present

What Triton's names do not cover keeps a p2phd_ name:
    p2phd_batch_size                  histogram: frames per engine call (Triton has only counts)
    p2phd_failures_total{kind}        counter: every refused or failed HTTP request by kind (too
                                      large, not found, forbidden, input, ... not only infers)
    p2phd_requests_total{endpoint,status}, p2phd_request_latency_seconds{endpoint}
                                      per HTTP endpoint, the editor's and /v1/synthesize too
    p2phd_queue_depth                 gauge: frames (not requests) admitted and not yet answered
    p2phd_frames_per_second           gauge: frames answered in the last 10 s / 10, editor too
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram, \
    generate_latest
from prometheus_client.utils import floatToGoString
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily, Metric

from .stats import PHASES, REASONS

log = logging.getLogger("p2phd_infer.serve")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)
RATE_WINDOW_S = 10.0


class ServerMetrics:
    """The metrics of one server over its dataplane (dataplane.py), read at each scrape."""

    def __init__(self, dataplane):
        self.dp = dataplane
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = PCounter("p2phd_requests", "HTTP requests answered",
                                 ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("p2phd_request_latency_seconds",
                                 "Time from receipt to answer", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        depth = Gauge("p2phd_queue_depth", "Frames admitted and not yet answered",
                      registry=self.registry)
        depth.set_function(lambda: sum(m.pool.queue_depth() for m in self.dp.served()
                                       if m.pool is not None))
        self._done: deque[float] = deque()
        self._lock = threading.Lock()
        self.registry.register(_OwnCollector(self))
        # Triton's names, written by render() exactly as Triton writes them.
        self.triton = CollectorRegistry(auto_describe=True)
        self.triton.register(_ModelCollector(self))
        self.triton.register(_HostCollector())

    def render(self) -> bytes:
        """The Prometheus text format of every metric: Triton's names, then the p2phd_ ones."""
        return _triton_text(self.triton) + generate_latest(self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def frames_done(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._done.extend([now] * n)
            self._trim(now)

    def frames_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return len(self._done) / RATE_WINDOW_S

    def _trim(self, now: float) -> None:
        while self._done and self._done[0] < now - RATE_WINDOW_S:
            self._done.popleft()


class TritonCounter(Metric):
    """A counter whose samples carry exactly Triton's name (rendered by _triton_text:
    prometheus_client's own writer names every counter `..._total`, which Triton's dashboards
    and perf_analyzer do not look for)."""

    def __init__(self, name: str, doc: str, labels):
        super().__init__(name, doc, "counter")
        self._labels = list(labels)

    def add_metric(self, values, value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labels, values)), value)


def _triton_text(registry: CollectorRegistry) -> bytes:
    """The text format (version 0.0.4) of a registry's metrics, each family's HELP and TYPE
    under the family's own name, as Triton writes `# TYPE nv_inference_count counter`."""
    out = []
    for metric in registry.collect():
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.type}\n")
        for sample in metric.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            out.append(f"{sample.name}{{{labels}}} " if labels else f"{sample.name} ")
            out.append(f"{floatToGoString(sample.value)}\n")
    return "".join(out).encode()


def _escape(value: str) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _powers_of_two(top: int) -> list[int]:
    out, b = [], 1
    while b < top:
        out.append(b)
        b *= 2
    return out + [top]


class _ModelCollector:
    """Triton's nv_inference_* families, read from the dataplane's statistics at scrape time."""

    def __init__(self, m: ServerMetrics):
        self.m = m

    def describe(self):
        return []

    def collect(self):
        models = self.m.dp.served()
        labels = ["model", "version"]

        def family(name, doc, kind=TritonCounter, extra=()):
            return kind(name, doc, labels=labels + list(extra))

        success = family("nv_inference_request_success", "Successful inference requests")
        failure = family("nv_inference_request_failure", "Failed inference requests",
                         extra=["reason"])
        count = family("nv_inference_count", "Inferences performed (frames)")
        execs = family("nv_inference_exec_count", "Model executions (engine calls)")
        duration = family("nv_inference_request_duration_us",
                          "Cumulative time of successful requests, microseconds")
        queue = family("nv_inference_queue_duration_us",
                       "Cumulative time successful requests waited before the engine, "
                       "microseconds")
        phases = {p: family(f"nv_inference_{p}_duration_us",
                            f"Cumulative {p.replace('_', ' ')} time of successful requests, "
                            f"microseconds") for p in PHASES}
        pending = family("nv_inference_pending_request_count",
                         "Requests received and not yet answered", GaugeMetricFamily)
        for m in models:
            s = m.stats.json()
            st = s["inference_stats"]
            key = [m.name, m.version]
            success.add_metric(key, float(st["success"]["count"]))
            for reason in REASONS:
                failure.add_metric(key + [reason], float(m.stats.failures[reason]))
            count.add_metric(key, float(s["inference_count"]))
            execs.add_metric(key, float(s["execution_count"]))
            duration.add_metric(key, st["success"]["ns"] / 1e3)
            queue.add_metric(key, st["queue"]["ns"] / 1e3)
            for p in PHASES:
                phases[p].add_metric(key, st[p]["ns"] / 1e3)
            pending.add_metric(key, float(m.stats.pending))
        yield from (success, failure, count, execs, duration, queue, *phases.values(), pending)


class _OwnCollector:
    """The p2phd_ figures Triton's names do not cover, read at scrape time."""

    def __init__(self, m: ServerMetrics):
        self.m = m

    def describe(self):
        return []

    def collect(self):
        models = self.m.dp.served()
        failures = CounterMetricFamily("p2phd_failures", "Failed requests by kind",
                                       labels=["kind"])
        for kind, n in sorted(self.m.dp.failures.items()):
            failures.add_metric([kind], float(n))
        yield failures
        sizes = self.m.dp.batch_sizes()
        top = max([m.max_batch_size for m in models] or [1])
        hist = HistogramMetricFamily("p2phd_batch_size", "Frames per engine call")
        buckets = []
        for bound in _powers_of_two(top):
            buckets.append((str(float(bound)), sum(n for size, n in sizes.items()
                                                   if size <= bound)))
        buckets.append(("+Inf", sum(sizes.values())))
        hist.add_metric([], buckets, sum_value=float(sum(s * n for s, n in sizes.items())))
        yield hist
        rate = GaugeMetricFamily("p2phd_frames_per_second",
                                 f"Frames answered over the last {RATE_WINDOW_S:g} s, per second")
        rate.add_metric([], self.m.frames_per_second())
        yield rate


class _HostCollector:
    """nv_cpu_* from /proc (Linux) and nv_gpu_* from NVML, as Triton reports them."""

    def __init__(self):
        self._last_cpu: tuple[int, int] | None = None
        self._nvml = _Nvml()

    def describe(self):
        return []

    def collect(self):
        busy = self._cpu_utilization()
        if busy is not None:
            g = GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]")
            g.add_metric([], busy)
            yield g
        mem = _meminfo()
        if mem is not None:
            total, available = mem
            g = GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), bytes")
            g.add_metric([], float(total))
            yield g
            g = GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), bytes")
            g.add_metric([], float(total - available))
            yield g
        yield from self._nvml.collect()

    def _cpu_utilization(self) -> float | None:
        """Busy share of all CPUs since the previous scrape (since boot at the first)."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)     # idle + iowait
        total = sum(fields[:8])
        last, self._last_cpu = self._last_cpu, (idle, total)
        if last is not None and total > last[1]:
            idle, total = idle - last[0], total - last[1]
        return 1.0 - idle / total if total else 0.0


def _meminfo() -> tuple[int, int] | None:
    try:
        values = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    values[key] = int(rest.split()[0]) * 1024
        return values["MemTotal"], values["MemAvailable"]
    except (OSError, ValueError, KeyError):
        return None


class _Nvml:
    """GPU figures through NVML (the `pynvml` module of nvidia-ml-py); nothing where there is no
    NVIDIA driver or package."""

    def __init__(self):
        self.nv = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nv = pynvml
        except Exception as e:  # noqa: BLE001 - no package, no driver, no GPU: no nv_gpu_*
            log.debug("no GPU metrics: %s", e)

    def collect(self):
        nv = self.nv
        if nv is None:
            return
        names = {"util": ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0]"),
                 "total": ("nv_gpu_memory_total_bytes", "GPU total memory, bytes"),
                 "used": ("nv_gpu_memory_used_bytes", "GPU used memory, bytes"),
                 "power": ("nv_gpu_power_usage", "GPU power usage, watts"),
                 "limit": ("nv_gpu_power_limit", "GPU power management limit, watts"),
                 "energy": ("nv_energy_consumption", "GPU energy consumption since the "
                                                      "driver loaded, joules")}
        fams = {k: (TritonCounter if k == "energy" else GaugeMetricFamily)(
            n, doc, labels=["gpu_uuid"]) for k, (n, doc) in names.items()}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = nv.nvmlDeviceGetUUID(h)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                for key, read in (
                        ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0),
                        ("total", lambda: float(mem.total)),
                        ("used", lambda: float(mem.used)),
                        ("power", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                        ("limit", lambda: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0),
                        ("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0)):
                    try:
                        fams[key].add_metric([uuid], read())
                    except nv.NVMLError:       # a figure this GPU does not report
                        pass
        except Exception as e:  # noqa: BLE001 - a scrape never fails for a GPU read
            log.debug("GPU metrics: %s", e)
        yield from fams.values()
