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


def _portable_ln(x):
    with an.use_fast_paths(False):
        return an.layer_norm(x)


def test_a_buffer_is_reused_only_once_nothing_refers_to_it():
    x1, x2, x3 = _x(1), _x(2, offset=1e4), _x(3)
    y1 = an.layer_norm(x1)
    assert y1.base is not None and an.buffer_pool_info()["buffers"] == 1
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
    assert any(y4.base is s[0] for s in _buffers._slots.values())  # an idle one, not a new one
    assert an.buffer_pool_info()["buffers"] == 3
    np.testing.assert_allclose(y4, _portable_ln(x3), atol=2e-6)


def test_the_freed_buffer_is_the_one_handed_out_again():
    x = _x(4)
    y = an.layer_norm(x)
    p = y.ctypes.data
    del y
    y = an.layer_norm(_x(5))
    assert y.ctypes.data == p
    np.testing.assert_allclose(y, _portable_ln(_x(5)), atol=2e-6)


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
        assert dx.base is not None
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


def test_threads_never_share_a_buffer_in_use():
    xs = [_x(20 + i) for i in range(4)]
    refs = [_portable_ln(x) for x in xs]
    errors: list[str] = []

    def work(i):
        for _ in range(6):
            y = an.layer_norm(xs[i])
            y2 = an.layer_norm(xs[(i + 1) % 4])
            if not (np.allclose(y, refs[i], atol=2e-6) and np.allclose(y2, refs[(i + 1) % 4], atol=2e-6)):
                errors.append(f"thread {i}")

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert an.buffer_pool_info()["held"] <= _buffers.DEFAULT_LIMIT


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
