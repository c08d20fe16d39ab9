"""The batching policy: which waiting requests form the next batch, and when. Pure: no threads,
no clock of its own (the time comes in as an argument), so every rule is testable as a function.
The Runtime (runtime.py) is its executor: it keeps the requests, waits as told, and runs what
is chosen.

The rules follow Triton Inference Server's dynamic batcher:

- a batch holds requests of one frame size (a batch is one tensor), taken in arrival order,
  starting from the oldest waiting request, at most `max_batch_size` of them;
- it is sent as soon as it is full, or once its oldest request has waited `max_queue_delay_us`;
- it is sent at once, full or not, when no more input can join it: the input is drained (the
  runtime is closing and nothing is still being decoded) or flushed (`Runtime.flush()`: every
  request up to that sequence number is due now).

Requests are anything with `seq` (submission order), `size` ((H, W), the batching key) and
`t_ready` (when it was ready to batch, on the caller's clock, in seconds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class Waiting(Protocol):
    seq: int
    size: tuple[int, int] | None
    t_ready: float


@dataclass(frozen=True)
class Decision:
    """What to do now: send `batch` (requests in arrival order), or, when it is empty, wait
    until `wake_at` (None: until new input arrives or the input ends)."""
    batch: list
    wake_at: float | None = None


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int = 1
    max_queue_delay_us: int = 0

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0:
            raise ValueError(f"max_batch_size {self.max_batch_size} must be >= 1 and "
                             f"max_queue_delay_us {self.max_queue_delay_us} >= 0")

    @property
    def delay_s(self) -> float:
        return self.max_queue_delay_us / 1e6

    def next_batch(self, waiting: Sequence[Waiting], now: float, *, drained: bool = False,
                   flush_seq: int = -1) -> Decision:
        """The decision for the requests `waiting` (oldest first) at time `now`. drained: no
        more input can come; flush_seq: requests with seq up to it are due now."""
        if not waiting:
            return Decision([])
        oldest = waiting[0]
        batch = [r for r in waiting if r.size == oldest.size][:self.max_batch_size]
        deadline = oldest.t_ready + self.delay_s
        if (len(batch) >= self.max_batch_size or now >= deadline or drained
                or oldest.seq <= flush_seq):
            return Decision(batch)
        return Decision([], deadline)
