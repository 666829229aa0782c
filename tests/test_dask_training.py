"""Training loops on Dask stay flat: ``Optimizer.step`` persists the model's parameters and
buffers (BatchNorm's running statistics) and its own state each step, so after 100 steps the
graph behind every array is still one task per chunk and the process memory has not grown.
The control (``persist = False``) shows the graphs the test measures do grow without it, and
the persisted run computes the same numbers as the same loop in NumPy."""

from __future__ import annotations

import os

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402
from array_api_compat import array_namespace  # noqa: E402

from arraynorm.nn import BatchNorm, Linear, MSELoss, ReLU, Sequential  # noqa: E402
from arraynorm.optim import SGD, Adam, persist  # noqa: E402

STEPS = 100


def _rss() -> int:
    """Resident memory of this process in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import psutil
        return int(psutil.Process().memory_info().rss)


def _model(xp):
    model = Sequential(Linear(8, 16, rng=0), BatchNorm(16), ReLU(), Linear(16, 1, rng=1))
    return model.to(xp) if xp is not None else model


def _batch(step, chunks):
    rng = np.random.default_rng(step)
    x = rng.standard_normal((64, 8))
    t = x[:, :1] * 0.5 - x[:, 1:2] + 0.1 * rng.standard_normal((64, 1))
    if chunks is None:
        return x, t
    return da.from_array(x, chunks=(chunks, 8)), da.from_array(t, chunks=(chunks, 1))


def _graph_sizes(model, opt):
    arrays = [a for _, m in model.named_modules() for a in (*m.params.values(), *m.buffers.values())]
    arrays += [a for st in opt.state.values() for a in st.values()]
    return max(len(a.__dask_graph__()) for a in arrays if hasattr(a, "__dask_graph__"))


def _train(xp, make_opt, steps, *, chunks, persist_steps=True, record=None):
    model = _model(xp)
    opt = make_opt(model)
    opt.persist = persist_steps
    loss = MSELoss()
    for step in range(steps):
        x, t = _batch(step, chunks)
        loss(model(x), t)
        opt.zero_grad()
        model.backward(loss.backward())
        opt.step()
        if record is not None:
            record(step, model, opt)
    return model, opt


def test_graphs_and_memory_stay_flat_over_100_steps():
    """Adam (the optimizer with the most state) on Linear-BatchNorm-ReLU-Linear, 100 steps of
    batches chunked in two; the control below uses SGD with momentum."""
    make_opt = lambda m: Adam(m, 1e-2)  # noqa: E731
    xp = array_namespace(da.zeros(1))
    sizes, rss = {}, {}

    def record(step, model, opt):
        sizes[step] = _graph_sizes(model, opt)
        rss[step] = _rss()

    with dask.config.set(scheduler="threads"):
        model, opt = _train(xp, make_opt, STEPS, chunks=32, record=record)
    # every parameter, running statistic and optimizer buffer: one task (one chunk) each
    assert max(sizes.values()) == 1, sizes
    # process memory after warm-up does not grow with the steps (a graph kept per step, or
    # inputs held by it, would grow it by the step's arrays every step)
    growth = rss[STEPS - 1] - rss[20]
    print(f"RSS step 20 -> {STEPS - 1}: {rss[20] / 2**20:.1f} -> {rss[STEPS - 1] / 2**20:.1f} MiB")
    assert growth < 32 * 2**20, growth
    # the same numbers as the NumPy loop
    ref, _ = _train(None, make_opt, STEPS, chunks=None)
    got, want = model.state_dict(), ref.state_dict()  # parameters and running statistics
    assert set(got) == set(want)
    for name, r in want.items():
        np.testing.assert_allclose(np.asarray(got[name]), r, rtol=1e-7, atol=1e-8, err_msg=name)


def test_without_persist_the_graphs_grow_with_the_steps():
    """The control: the same loop with ``persist = False`` carries every step in its graphs,
    and :func:`persist` by hand brings them back to one task per chunk."""
    xp = array_namespace(da.zeros(1))
    sizes = {}
    model, opt = _train(xp, lambda m: SGD(m, 0.05, momentum=0.9), 6, chunks=32,
                        persist_steps=False,
                        record=lambda s, m, o: sizes.__setitem__(s, _graph_sizes(m, o)))
    assert sizes[5] > sizes[2] > sizes[0] > 1
    n = persist(model, opt)
    assert n >= 4 + 2 + 4  # two Linear (w, b), BN (γ, β, running mean, running var), momenta
    assert _graph_sizes(model, opt) == 1
