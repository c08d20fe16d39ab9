"""Per-model inference statistics, counted once and read by Triton's statistics extension (HTTP
`/v2/models/{m}/stats`, gRPC ModelStatistics) and by the Prometheus metrics (metrics.py).

Triton's meaning of each field, which perf_analyzer relies on for its server-side breakdown:
  - success / fail: requests, and their whole time in the server (receipt to answer);
  - queue: per successful request, time before its first frame reached the engine (decode,
    checks, the batching delay, a busy engine);
  - compute_input / compute_infer / compute_output: per successful request, the time of the
    engine calls its frames were in (preparation and upload / network / download);
  - inference_count: frames inferred; execution_count: engine calls (a batch of 4 frames is 4
    inferences, 1 execution);
  - batch_stats: per batch size, the engine calls of that size and their phases.
A request of B frames is one request. `cancelled`: requests whose client went away; they count as
failures (Triton's CANCELED reason) and their frames not yet computed never reach the engine.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

PHASES = ("compute_input", "compute_infer", "compute_output")
# Failure reasons, as Triton's nv_inference_request_failure labels them.
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_OPEN_BATCHES = 4096          # engine calls whose frames are still being accounted


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, n: int = 1) -> None:
        self.count += n
        self.ns += int(ns)

    def json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Batch:
    phases: dict = field(default_factory=lambda: {p: Duration() for p in PHASES})


class ModelStats:
    """Thread-safe counters of one model version. The dataplane calls `request_done` once per
    request with the timings (runtime.FrameTiming) of its computed frames."""

    def __init__(self, name: str, version: str):
        self.name, self.version = name, version
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute = {p: Duration() for p in PHASES}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.failures = {r: 0 for r in REASONS}
        self.pending = 0                  # requests received and not yet answered
        self.batches: dict[int, _Batch] = {}
        # Engine calls already counted: a call holding frames of several requests counts once.
        self._seen: OrderedDict[tuple, None] = OrderedDict()

    def request_started(self) -> None:
        with self._lock:
            self.pending += 1

    def request_done(self, duration_ns: int, frames: int, timings: list, pool_key=None,
                     reason: str | None = None) -> None:
        """One request of `frames` frames answered: `reason` None for a success, else one of
        REASONS. `timings`: the FrameTiming (or None) of each of its engine-bound Futures, also
        for a failed request (its engine calls happened); `pool_key` tells apart the batch
        numbers of different RuntimePools."""
        with self._lock:
            self.pending -= 1
            self.last_inference_ms = int(time.time() * 1000)
            own: dict[int, object] = {}
            for t in timings:
                if t is None:
                    continue
                own.setdefault(t.batch, t)
                key = (pool_key, t.batch)
                if key in self._seen:
                    continue
                self._seen[key] = None
                if len(self._seen) > _OPEN_BATCHES:
                    self._seen.popitem(last=False)
                self.execution_count += 1
                b = self.batches.setdefault(t.batch_size, _Batch())
                for p, ns in zip(PHASES, (t.input_ns, t.infer_ns, t.output_ns)):
                    b.phases[p].add(ns)
            if reason is not None:
                self.fail.add(duration_ns)
                self.failures[reason] += 1
                return
            self.success.add(duration_ns)
            self.inference_count += frames
            if own:
                self.queue.add(min(t.queued_ns for t in own.values()))
                for p, attr in zip(PHASES, ("input_ns", "infer_ns", "output_ns")):
                    self.compute[p].add(sum(getattr(t, attr) for t in own.values()))

    def json(self) -> dict:
        """Triton's model_stats entry."""
        with self._lock:
            return {
                "name": self.name, "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.json(), "fail": self.fail.json(),
                    "queue": self.queue.json(),
                    **{p: self.compute[p].json() for p in PHASES},
                    # No response cache: Triton reports zeros then.
                    "cache_hit": Duration().json(), "cache_miss": Duration().json(),
                },
                "batch_stats": [{"batch_size": size,
                                 **{p: b.phases[p].json() for p in PHASES}}
                                for size, b in sorted(self.batches.items())],
                "memory_usage": [],
            }
