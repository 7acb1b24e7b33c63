"""RolloutSource: rollouts on demand, or one step ahead in the background (ppo.async_rollout)."""

from __future__ import annotations

import threading
import time

import pytest

from ray_align.algorithms.rollout_source import RolloutSource


class Sampler:
    """Records which steps were sampled, in which thread, and lets a test hold a sampling until released."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds
        self.calls: list[tuple[int, str]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, k: int) -> str:
        self.release.wait(5.0)
        time.sleep(self.seconds)
        self.calls.append((k, threading.current_thread().name))
        return f"rollout {k}"


def test_on_demand_samples_in_the_callers_thread_and_never_ahead():
    sampler = Sampler()
    with RolloutSource(sampler, ahead=False) as source:
        source.prefetch(2)  # ignored without ahead
        first = source.take(1)
        assert first.samples == "rollout 1" and first.waited >= first.seconds
        assert source.settle() < 0.1
        assert source.take(2).samples == "rollout 2"
    assert sampler.calls == [(1, "MainThread"), (2, "MainThread")]


def test_ahead_samples_the_next_step_while_the_caller_works():
    sampler = Sampler(seconds=0.3)
    with RolloutSource(sampler, ahead=True) as source:
        source.take(1)
        source.prefetch(2)
        time.sleep(0.4)  # the step's training: the prefetch runs meanwhile
        second = source.take(2)
    assert second.samples == "rollout 2"
    assert second.seconds >= 0.3 and second.waited < 0.2  # sampled during the sleep, not after it
    assert sampler.calls[0][1] == "MainThread" and sampler.calls[1][1].startswith("rollout")


def test_settle_waits_for_the_sampling_in_flight_before_a_weight_sync():
    sampler = Sampler()
    sampler.release.clear()
    with RolloutSource(sampler, ahead=True) as source:
        source.prefetch(2)
        threading.Timer(0.3, sampler.release.set).start()
        waited = source.settle()
        assert waited >= 0.25 and sampler.calls == [(2, sampler.calls[0][1])]  # done before settle returned
        assert source.take(2).samples == "rollout 2"


def test_a_failed_prefetch_is_raised_by_the_step_that_needs_it():
    def broken(k: int) -> str:
        raise RuntimeError(f"generator died sampling step {k}")

    with RolloutSource(broken, ahead=True) as source:
        source.prefetch(3)
        source.settle()  # does not raise: the sync of the current step may still go ahead
        with pytest.raises(RuntimeError, match="step 3"):
            source.take(3)
