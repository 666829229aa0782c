"""The NumPy fast paths' output pool (``arraynorm._kernels._buffers``): a buffer is handed out
again only once no array refers to it, the pool stays within its limit, and the values of
outputs in reused buffers are those of the portable path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import arraynorm as an
from arraynorm._kernels import _buffers

# 4 MiB of float32: past every fast path's threshold (the JIT's 128 KiB, the fused path's 2 MiB)
N, D = 1024, 1024


@pytest.fixture(autouse=True)
def fresh_pool():
    previous = an.set_buffer_pool(_buffers.DEFAULT_LIMIT)
    an.free_buffer_pool()
    yield
    an.free_buffer_pool()
    an.set_buffer_pool(previous)


def _x(seed, shape=(N, D), dtype=np.float32, offset=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) + offset).astype(dtype)


def _pooled(a):
    """Whether ``a`` is a view of one of the pool's buffers."""
    return any(a.base is s[0] for s in _buffers._slots.values())


def _consistent():
    slots = _buffers._slots
    assert _buffers._held == sum(s[0].nbytes for s in slots.values())
    by_size = {k: s for d in _buffers._by_size.values() for k, s in d.items()}
    assert by_size.keys() == slots.keys()
    assert all(n == s[0].nbytes for n, d in _buffers._by_size.items() for s in d.values())
    assert _buffers._held <= _buffers._limit


def _portable_ln(x):
    with an.use_fast_paths(False):
        return an.layer_norm(x)


def test_a_buffer_is_reused_only_once_nothing_refers_to_it():
    x1, x2, x3 = _x(1), _x(2, offset=1e4), _x(3)
    y1 = an.layer_norm(x1)
    assert _pooled(y1) and an.buffer_pool_info()["buffers"] == 1
    y2 = an.layer_norm(x2)           # y1 alive: another buffer
    assert not np.shares_memory(y1, y2)
    ref1 = _portable_ln(x1)
    np.testing.assert_allclose(y1, ref1, atol=2e-6)   # y2's computation left y1 alone
    np.testing.assert_allclose(y2, _portable_ln(x2), atol=2e-6)
    row = y1[5]                      # a view keeps the buffer in use
    del y1
    y3 = an.layer_norm(x3)
    assert not np.shares_memory(row, y3)
    np.testing.assert_allclose(row, ref1[5], atol=2e-6)
    del row, y3
    info = an.buffer_pool_info()
    assert info["buffers"] == 3 and info["idle"] == 2 * x1.nbytes  # y2 still held
    y4 = an.layer_norm(x3)
    assert _pooled(y4) and an.buffer_pool_info()["buffers"] == 3  # an idle one, not a new one
    _consistent()
    np.testing.assert_allclose(y4, _portable_ln(x3), atol=2e-6)


def test_the_freed_buffer_is_the_one_handed_out_again_and_only_for_its_own_size():
    y = an.layer_norm(_x(4))
    pooled = id(y.base)              # the pool keeps that buffer alive, so its id stays its own
    del y
    y = an.layer_norm(_x(5))
    assert id(y.base) == pooled and _pooled(y)
    np.testing.assert_allclose(y, _portable_ln(_x(5)), atol=2e-6)
    del y
    smaller = an.layer_norm(_x(6, (N // 2, D)))   # an idle larger buffer is not cut down
    assert id(smaller.base) != pooled and _pooled(smaller)
    assert an.buffer_pool_info()["buffers"] == 2
    _consistent()


def test_gradients_come_from_the_pool_and_are_right_after_reuse():
    x, dy = _x(6), _x(7)
    w, b = _x(8, (D,)), _x(9, (D,))
    with an.use_fast_paths(False):
        _, pull = an.vjp(an.layer_norm, x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
        ref = pull(dy.astype(np.float64))
    for _ in range(3):               # the second and third reuse the first's y and dx
        y, pull = an.vjp(an.layer_norm, x, w, b)
        dx, dw, db = pull(dy)
        for got, want in zip((dx, dw, db), ref):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))
        assert _pooled(dx) and _pooled(y)
        del y, pull, dx
    assert an.buffer_pool_info()["buffers"] == 2


def test_a_buffer_changes_dtype_and_shape_with_its_size():
    x64 = _x(10, (N // 2, D), np.float64)
    y = an.layer_norm(x64)
    p = y.ctypes.data
    del y
    x32 = _x(11)                     # the same bytes as float32
    y = an.layer_norm(x32)
    assert y.ctypes.data == p and y.dtype == np.float32 and y.shape == (N, D)
    np.testing.assert_allclose(y, _portable_ln(x32), atol=2e-6)


def test_the_pool_stays_within_its_limit_and_drops_idle_buffers_to_make_room():
    small, large = _x(12, (N // 2, D)), _x(13)
    an.set_buffer_pool(large.nbytes)           # room for one large buffer
    y = an.layer_norm(small)
    assert an.buffer_pool_info()["held"] == small.nbytes
    keep = an.layer_norm(large)                # would exceed: small is in use, large not pooled
    assert an.buffer_pool_info()["held"] == small.nbytes
    del y, keep
    z = an.layer_norm(large)                   # small idle now: dropped, large pooled
    info = an.buffer_pool_info()
    assert info == {"limit": large.nbytes, "held": large.nbytes, "idle": 0, "buffers": 1}
    np.testing.assert_allclose(z, _portable_ln(large), atol=2e-6)
    del z
    assert an.free_buffer_pool() == large.nbytes
    assert an.buffer_pool_info()["held"] == 0


def test_idle_buffers_stay_when_dropping_them_would_not_make_room():
    half, whole = _x(18, (N // 2, D)), _x(19)
    an.set_buffer_pool(whole.nbytes)
    a, b = an.layer_norm(half), an.layer_norm(_x(31, (N // 2, D)))
    del a                                       # one half idle, one in use: the pool is full
    big = an.layer_norm(whole)                  # dropping the idle half would not make room
    assert an.buffer_pool_info() == {"limit": whole.nbytes, "held": whole.nbytes,
                                     "idle": half.nbytes, "buffers": 2}
    again = an.layer_norm(half)                 # so the idle half serves the next request
    assert any(again.base is s[0] for s in _buffers._slots.values())
    np.testing.assert_allclose(big, _portable_ln(whole), atol=2e-6)
    del b


def test_limit_zero_turns_the_pool_off_and_small_outputs_never_use_it():
    small = an.layer_norm(_x(15, (8, 16)))
    assert an.buffer_pool_info()["buffers"] == 0
    assert an.set_buffer_pool(0) == _buffers.DEFAULT_LIMIT
    y = an.layer_norm(_x(14))
    assert an.buffer_pool_info() == {"limit": 0, "held": 0, "idle": 0, "buffers": 0}
    np.testing.assert_allclose(y, _portable_ln(_x(14)), atol=2e-6)
    np.testing.assert_allclose(small, _portable_ln(_x(15, (8, 16))), atol=2e-6)


def test_lowering_the_limit_drops_idle_buffers():
    y1, y2 = an.layer_norm(_x(16)), an.layer_norm(_x(17))
    del y1
    an.set_buffer_pool(y2.nbytes)
    assert an.buffer_pool_info() == {"limit": y2.nbytes, "held": y2.nbytes, "idle": 0, "buffers": 1}


def _run_four_threads(work):
    """``work(i)`` in four threads at once, switching as often as the interpreter can."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(interval)


def test_threads_never_share_a_buffer_in_use():
    xs = [_x(20 + i, (N // 4, D)) for i in range(4)]
    refs = [_portable_ln(x) for x in xs]
    errors: list[str] = []

    def work(i):
        try:
            for _ in range(60):
                y = an.layer_norm(xs[i])
                y2 = an.layer_norm(xs[(i + 1) % 4])
                if not (np.allclose(y, refs[i], atol=2e-6) and np.allclose(y2, refs[(i + 1) % 4], atol=2e-6)):
                    errors.append(f"thread {i}")
        except Exception as e:
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    _run_four_threads(work)
    assert not errors
    _consistent()


def test_the_pool_itself_under_threads_never_hands_one_buffer_to_two_holders():
    errors: list[str] = []
    shape = (_buffers.MIN_BYTES // 4,)

    def work(i):
        held = []
        try:
            for k in range(4000):
                a = _buffers.empty(shape, np.float32)
                a.fill(i * 10000 + k)
                held.append((a, i * 10000 + k))
                if len(held) > 3:
                    b, v = held.pop(0)
                    if not (b[0] == v and b[-1] == v):
                        errors.append(f"thread {i} step {k}")
        except Exception as e:  # a dict changed under another thread's loop, say
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    _run_four_threads(work)
    assert not errors, errors[:5]
    _consistent()


def test_many_buffers_in_use_do_not_hide_the_idle_ones():
    """A request looks at a bounded number of buffers: those handed out last and first."""
    shape = (_buffers.MIN_BYTES // 4,)
    kept = [_buffers.empty(shape, np.float32) for _ in range(3 * _buffers.SCAN)]
    for _ in range(10):              # a loop beside many kept outputs: one buffer serves it
        _buffers.empty(shape, np.float32)
    assert an.buffer_pool_info()["buffers"] == 3 * _buffers.SCAN + 1
    del kept
    for _ in range(3):               # a model's step: every output finds an idle buffer
        step = [_buffers.empty(shape, np.float32) for _ in range(3 * _buffers.SCAN + 1)]
        assert an.buffer_pool_info()["buffers"] == 3 * _buffers.SCAN + 1
        del step
    _consistent()


def test_a_full_pool_drops_idle_buffers_only_never_one_in_use():
    a, b = _x(40), _x(41, (3 * N // 4, D))
    an.set_buffer_pool(a.nbytes + b.nbytes)
    used = an.layer_norm(a)
    idle = an.layer_norm(b)
    del idle
    other = an.layer_norm(_x(42, (N // 2, D)))    # room only where the idle one was
    assert _pooled(used) and _pooled(other)
    assert an.buffer_pool_info()["buffers"] == 2
    np.testing.assert_allclose(used, _portable_ln(a), atol=2e-6)
    _consistent()


def test_turning_the_pool_off_or_lowering_its_limit_lets_go_of_buffers_in_use():
    ys = [an.layer_norm(_x(50 + i)) for i in range(3)]
    an.set_buffer_pool(ys[0].nbytes)
    info = an.buffer_pool_info()
    assert info["held"] <= ys[0].nbytes and info["idle"] == 0
    _consistent()
    an.set_buffer_pool(0)
    assert an.buffer_pool_info() == {"limit": 0, "held": 0, "idle": 0, "buffers": 0}
    for i, y in enumerate(ys):   # the arrays keep their memory
        np.testing.assert_allclose(y, _portable_ln(_x(50 + i)), atol=2e-6)


_REENTER = """
import numpy as real_np, arraynorm as an
from arraynorm._kernels import _buffers
x = real_np.random.default_rng(0).standard_normal((1024, 1024)).astype(real_np.float32)
inner = []
class Shim:  # numpy, but its first empty() inside the pool runs what a finalizer might
    def __getattr__(self, name):
        return getattr(real_np, name)
    def empty(self, *a, **k):
        if not inner:
            inner.append(None)
            inner[0] = an.layer_norm(x)      # a garbage collection's finalizer, say
        return real_np.empty(*a, **k)
_buffers.np = Shim()
y = an.layer_norm(x)
_buffers.np = real_np
ref = an.layer_norm(x.astype(real_np.float64))
print(len(inner), any(inner[0].base is s[0] for s in _buffers._slots.values()),
      any(y.base is s[0] for s in _buffers._slots.values()),
      float(abs(inner[0] - ref).max()), float(abs(y - ref).max()))
"""


def test_a_pool_call_reentered_in_its_thread_gets_a_plain_array_not_a_deadlock():
    """A garbage collection inside a pool call may run a finalizer that normalizes: the
    inner call must not wait for the lock its own thread holds."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _REENTER], capture_output=True, text=True, cwd=root,
                       timeout=60, env=dict(os.environ, PYTHONPATH=root))
    assert r.returncode == 0, r.stderr[-2000:]
    n, inner_pooled, outer_pooled, err_inner, err_outer = r.stdout.split()
    assert (n, inner_pooled, outer_pooled) == ("1", "False", "True")
    assert float(err_inner) < 2e-6 and float(err_outer) < 2e-6


def test_weight_norm_takes_its_weight_and_gradient_from_the_pool():
    from arraynorm._kernels import numba_jit

    if not numba_jit.available():    # WeightNorm's compiled sweep is the [jit] extra's
        pytest.skip("numba (the optional [jit] extra) is not installed or ARRAYNORM_JIT=0")
    rng = np.random.default_rng(60)
    v, g = rng.standard_normal((512, 512)).astype(np.float32), rng.standard_normal(512).astype(np.float32)
    dw = rng.standard_normal((512, 512)).astype(np.float32)
    with an.use_fast_paths(False):
        w_ref, pull = an.vjp(an.weight_norm, v.astype(np.float64), g.astype(np.float64))
        dv_ref, dg_ref, *_ = pull(dw.astype(np.float64))
    for _ in range(2):
        w, pull = an.vjp(an.weight_norm, v, g)
        dv, dg, *_ = pull(dw)
        assert _pooled(w) and _pooled(dv)
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dv, dv_ref, rtol=1e-4, atol=1e-5 * float(np.abs(dv_ref).max()))
        del w, pull, dv, dg
    assert an.buffer_pool_info()["buffers"] == 2


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        an.set_buffer_pool(-1)
    with pytest.raises(TypeError, match="max_bytes must be an int, got float"):
        an.set_buffer_pool(1.5)
    with pytest.raises(TypeError, match="max_bytes must be an int, got bool"):
        an.set_buffer_pool(True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", "import arraynorm"], capture_output=True, text=True,
                       cwd=root, env=dict(os.environ, ARRAYNORM_BUFFER_POOL_BYTES="lots"))
    assert r.returncode != 0
    assert "ARRAYNORM_BUFFER_POOL_BYTES must be a non-negative integer, got 'lots'" in r.stderr


def test_the_benchmarks_peak_memory_counts_outputs_the_pool_would_reuse():
    from benchmarks.timing import peak_memory

    x = _x(30)
    an.layer_norm(x)                 # its buffer idle in the pool now
    assert an.buffer_pool_info()["idle"] == x.nbytes
    assert peak_memory(lambda: an.layer_norm(x), "numpy") >= x.nbytes
