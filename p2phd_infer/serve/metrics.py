"""Prometheus metrics of one server, in its own CollectorRegistry (two apps in one process never
share or clash).

    p2phd_requests_total{endpoint,status}       counter: every HTTP request answered
    p2phd_failures_total{kind}                  counter: input, queue_full, too_large, engine,
                                                not_found, internal
    p2phd_request_latency_seconds{endpoint}     histogram: receipt to answer
    p2phd_queue_depth                           gauge: frames admitted and not yet answered
    p2phd_batch_size                            histogram: frames per engine call, read from the
                                                runtimes' stats (RuntimeStats.batch_sizes)
    p2phd_frames_total                          counter: frames synthesized
    p2phd_frames_per_second                     gauge: frames answered in the last 10 s / 10
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily

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
        self.registry.register(_RuntimeCollector(self))

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


def _powers_of_two(top: int) -> list[int]:
    out, b = [], 1
    while b < top:
        out.append(b)
        b *= 2
    return out + [top]


class _RuntimeCollector:
    """Reads the runtimes' own counters at scrape time: nothing is counted twice."""

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
        sizes = Counter()
        for m in models:
            if m.pool is not None:
                sizes.update(m.pool.batch_sizes())
        top = max([m.max_batch_size for m in models] or [1])
        hist = HistogramMetricFamily("p2phd_batch_size", "Frames per engine call")
        cumulative, buckets = 0, []
        for bound in _powers_of_two(top):
            cumulative = sum(n for size, n in sizes.items() if size <= bound)
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", sum(sizes.values())))
        hist.add_metric([], buckets, sum_value=float(sum(s * n for s, n in sizes.items())))
        yield hist
        frames = CounterMetricFamily("p2phd_frames", "Frames synthesized")
        frames.add_metric([], float(sum(s * n for s, n in sizes.items())))
        yield frames
        rate = GaugeMetricFamily("p2phd_frames_per_second",
                                 f"Frames answered over the last {RATE_WINDOW_S:g} s, per second")
        rate.add_metric([], self.m.frames_per_second())
        yield rate
