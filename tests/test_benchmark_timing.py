"""The benchmark timer (``benchmarks.timing.interleaved``): samples interleaved across
backends in a rotating order, each after the idle pause that lets the previous backend's
spinning thread pools fall asleep and one untimed call that wakes its own."""

from __future__ import annotations

import time

from benchmarks.timing import interleaved


def test_every_sample_follows_an_idle_pause_and_a_wake_call_and_the_order_rotates():
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
    order = ["a", "b", "c",                     # warm-ups
             "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert names == [n for n in order for _ in (0, 1)]  # each call after its untimed twin
    gaps = [nxt[1] - prev[2] for prev, nxt in zip(events, events[1:])]
    assert min(gaps[1::2]) >= 0.03   # the pause comes before the wake call ...
    assert max(gaps[0::2]) < 0.03    # ... which the timed call follows at once
    # without the pause the calls follow each other at once (all gaps together well under
    # the 0.33 s the pauses add); without the wake call each sample is the one call
    events.clear()
    interleaved(fns, repeats=3, warmup=1, min_sample_s=0.0, wake=False)
    assert [e[0] for e in events] == order
    assert sum(nxt[1] - prev[2] for prev, nxt in zip(events, events[1:])) < 0.15


def test_the_first_call_after_an_idle_pause_is_not_timed():
    """A backend whose first call after 10 ms idle takes 40 ms (a sleeping pool waking up)
    and every later one ~0: the wake call takes the slow one."""
    last = [0.0]

    def sleepy():
        if time.perf_counter() - last[0] > 0.01:
            time.sleep(0.04)
        last[0] = time.perf_counter()

    woken = interleaved({"s": (sleepy, "cpu")}, repeats=3, warmup=1, min_sample_s=0.0,
                        settle_s=0.02)["s"]
    assert max(woken.samples) < 0.01
    cold = interleaved({"s": (sleepy, "cpu")}, repeats=3, warmup=1, min_sample_s=0.0,
                       settle_s=0.02, wake=False)["s"]
    assert min(cold.samples) >= 0.04


def test_each_sample_records_the_page_faults_of_a_call():
    import mmap

    pages = 1024

    def fresh():  # an anonymous mapping, touched page by page: one minor fault a page
        m = mmap.mmap(-1, pages * mmap.PAGESIZE)
        for i in range(0, pages * mmap.PAGESIZE, mmap.PAGESIZE):
            m[i] = 1
        m.close()

    out = interleaved({"fresh": (fresh, "cpu"), "none": (lambda: None, "cpu")},
                      repeats=3, warmup=1, min_sample_s=0.0)
    assert len(out["fresh"].faults) == 3
    assert min(out["fresh"].faults) >= pages
    assert max(out["none"].faults) < pages / 100


_ALLOC_STEPS = """
import sys, numpy as np
from benchmarks import allocator
note = allocator.pin() if sys.argv[1] == "pin" else "defaults"
def step():  # two 1 MiB outputs, freed together: a normalization's y and dx
    a = np.ones(2**18, np.float32); b = np.ones(2**18, np.float32)
    return float(a[0] + b[-1])
for _ in range(3): step()
f0 = allocator.minor_faults()
for _ in range(20): step()
print(note); print((allocator.minor_faults() - f0) / 20)
"""


def test_pinned_allocator_thresholds_stop_fresh_outputs_from_page_faulting():
    """glibc's moving trim threshold hands two freed 1 MiB arrays back to the kernel after
    every step (2 MiB = 512 pages, of which the step touches 480+ again); pinned, none."""
    import os
    import subprocess
    import sys

    import pytest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def faults(mode):
        r = subprocess.run([sys.executable, "-c", _ALLOC_STEPS, mode], cwd=root, check=True,
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root))
        note, n = r.stdout.split("\n")[:2]
        return note, float(n)

    note, pinned = faults("pin")
    if "pinned" not in note:
        pytest.skip(f"not glibc here: {note}")
    assert pinned < 8
    _, default = faults("default")
    assert default >= 256


def test_the_harness_reports_the_implementation_that_ran_even_when_it_was_remembered():
    """The "runs" column: a normalizer remembers its selection per input signature, so the
    harness counts the forward passes that ran, not the selector's answers (of which a warm
    layer or op gives none)."""
    import numpy as np

    import arraynorm as an
    from arraynorm.nn import BatchNorm
    from benchmarks.harness import _implementations

    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    norm = an.Normalizer(an.partition.Layer(), an.operation.Standardize())
    norm.forward(x)
    assert _implementations(lambda: norm.forward(x)) == {"portable": 1}
    layer = BatchNorm(4)
    layer(x)
    want = layer._saved()["ctx"].implementation.name
    assert _implementations(lambda: (layer(x), layer(x))) == {want: 2}
    assert "forward" not in vars(an._kernels.PORTABLE)  # the recording is taken off again
