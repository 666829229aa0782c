"""The benchmark timer (``benchmarks.timing.interleaved``): samples interleaved across
backends in a rotating order, each after the idle pause that lets the previous backend's
spinning thread pools fall asleep."""

from __future__ import annotations

import time

from benchmarks.timing import interleaved


def test_every_sample_follows_an_idle_pause_and_the_order_rotates():
    events: list[tuple[str, float, float]] = []

    def backend(name):
        def run():
            t0 = time.perf_counter()
            events.append((name, t0, time.perf_counter()))
        return run

    fns = {"a": (backend("a"), "cpu"), "b": (backend("b"), "cpu"), "c": (backend("c"), "cpu")}
    out = interleaved(fns, repeats=3, warmup=1, min_sample_s=0.0, settle_s=0.03)
    assert all(len(t.samples) == 3 and t.inner == 1 for t in out.values())
    names = [e[0] for e in events]
    assert names == ["a", "b", "c",             # warm-ups
                     "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    gaps = [nxt[1] - prev[2] for prev, nxt in zip(events, events[1:])]
    assert min(gaps) >= 0.03
    # without the pause the calls follow each other at once (all 11 gaps together well under
    # the 0.33 s the pauses add)
    events.clear()
    interleaved(fns, repeats=3, warmup=1, min_sample_s=0.0)
    assert sum(nxt[1] - prev[2] for prev, nxt in zip(events, events[1:])) < 0.15
