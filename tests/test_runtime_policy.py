"""The batching policy (batching.py), as a function of the waiting requests and the time: no
threads, no engine, no sleeping."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from p2phd_infer.batching import BatchPolicy, Decision

SMALL, BIG = (64, 128), (128, 256)


@dataclass
class R:
    seq: int
    t_ready: float
    size: tuple = SMALL


def seqs(decision: Decision) -> list[int]:
    return [r.seq for r in decision.batch]


def test_nothing_waiting_waits_for_input():
    assert BatchPolicy(4, 1000).next_batch([], now=5.0) == Decision([], None)


def test_a_full_batch_goes_at_once_and_takes_the_oldest_first():
    waiting = [R(i, t_ready=10.0 + i / 1e6) for i in range(6)]
    d = BatchPolicy(4, 1_000_000).next_batch(waiting, now=10.0)
    assert seqs(d) == [0, 1, 2, 3]


def test_a_part_batch_waits_until_its_oldest_request_has_waited_the_delay():
    policy = BatchPolicy(4, 2000)                       # 2 ms
    waiting = [R(0, t_ready=1.0), R(1, t_ready=1.0015)]
    d = policy.next_batch(waiting, now=1.001)
    assert d.batch == [] and d.wake_at == pytest.approx(1.002)
    assert seqs(policy.next_batch(waiting, now=1.002)) == [0, 1]      # due exactly at the deadline
    assert seqs(policy.next_batch(waiting, now=7.0)) == [0, 1]


def test_no_delay_sends_whatever_is_waiting():
    assert seqs(BatchPolicy(8, 0).next_batch([R(3, 2.0)], now=2.0)) == [3]


def test_only_frames_of_the_oldest_requests_size_batch_together():
    policy = BatchPolicy(3, 0)
    waiting = [R(0, 1.0, BIG), R(1, 1.1, SMALL), R(2, 1.2, BIG), R(3, 1.3, SMALL), R(4, 1.4, BIG),
               R(5, 1.5, BIG)]
    assert seqs(policy.next_batch(waiting, now=2.0)) == [0, 2, 4]
    rest = [r for r in waiting if r.seq not in (0, 2, 4)]
    assert seqs(policy.next_batch(rest, now=2.0)) == [1, 3]


def test_a_full_batch_of_another_size_does_not_overtake_the_oldest():
    """Three BIG frames would fill a batch, but the oldest request is SMALL: its batch waits
    for its own deadline and the BIG ones wait behind it (arrival order is kept)."""
    policy = BatchPolicy(3, 5000)
    waiting = [R(0, 1.0, SMALL), R(1, 1.001, BIG), R(2, 1.001, BIG), R(3, 1.001, BIG)]
    d = policy.next_batch(waiting, now=1.002)
    assert d.batch == [] and d.wake_at == pytest.approx(1.005)


def test_drained_or_flushed_input_goes_out_unfilled():
    policy = BatchPolicy(8, 60_000_000)
    waiting = [R(5, 1.0), R(6, 1.0)]
    assert policy.next_batch(waiting, now=1.0).batch == []
    assert seqs(policy.next_batch(waiting, now=1.0, drained=True)) == [5, 6]
    assert seqs(policy.next_batch(waiting, now=1.0, flush_seq=5)) == [5, 6]
    assert policy.next_batch(waiting, now=1.0, flush_seq=4).batch == []   # flushed before 5


def test_bounds():
    with pytest.raises(ValueError):
        BatchPolicy(0, 0)
    with pytest.raises(ValueError):
        BatchPolicy(1, -1)
