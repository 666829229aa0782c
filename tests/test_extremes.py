"""Issue 8: no silent wrong answer under extreme inputs. Each reproducer of the issue is a test
here, on every backend where it applies: the NumPy fast path's statistics (the low part of the
mean across blocks, float32 sums of squares), the whitening family's centring, overflow and
underflow of sums of squares, empty inputs, clip_by_global_norm's arrays and VJP, running
statistics. Oracles: float64 NumPy references (tests/references.py, or exact rescalings of the
input where float64 itself would overflow), float64 eigendecompositions, PyTorch float64
autograd and SciPy finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

import arraynorm as an
import references as ref
from _helpers import backend_name, from_numpy, has_linalg, supports_inplace, to_numpy
import arraynorm._kernels as kernels
from arraynorm._kernels import PORTABLE, numba_jit, numpy_fused
from arraynorm.operation import WHITENING_METHODS

def fused(ctx) -> bool:
    """Whether a fast implementation (NumPy blocks or numba JIT) ran the forward that made
    ``ctx``."""
    return ctx.implementation is not None and ctx.implementation is not PORTABLE


RNG = np.random.default_rng(8)


def rel_err(got, want):
    got, want = np.asarray(to_numpy(got), np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


def exact_standardize(x, axes, eps=1e-5):
    """Float64 standardization over ``axes`` with the mean computed after subtracting the
    first value exactly (for values within a factor 2 of each other the subtraction is exact):
    np.mean of values offset by 1e10 would itself err by ~1e-5."""
    x = np.asarray(x, np.float64)
    first = x[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
    xs = x - first
    xc = xs - xs.mean(axis=axes, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + eps)


@pytest.fixture(params=["numpy_fused", "numba_jit"])
def tiny_blocks(request, monkeypatch):
    """Each fast implementation alone, on small arrays cut into tiny blocks (256 bytes for
    the NumPy recipe, 16 elements for the JIT's channel blocks): every statistic spans
    several chunks whose partial moments are merged, as with BN over a large N·H·W."""
    if request.param == "numba_jit" and not numba_jit.available():
        pytest.skip("numba (the optional [jit] extra) is not installed")
    monkeypatch.setattr(kernels, "IMPLEMENTATIONS", (kernels.implementation(request.param),))
    monkeypatch.setattr(numpy_fused, "MIN_BYTES", 0)
    monkeypatch.setattr(numpy_fused, "BLOCK_BYTES", 256)
    monkeypatch.setattr(numba_jit, "MIN_BYTES", 0)
    monkeypatch.setattr(numba_jit, "BLOCK_ELEMS", 16)
    monkeypatch.setattr(numba_jit, "PARALLEL_MIN_BYTES", 0)


def fast_forward(partition, x, eps=1e-5):
    y, ctx = an.Normalizer(partition, an.operation.Standardize(), eps).forward(x)
    assert fused(ctx)
    return y, ctx


PARTITIONS = [
    (an.partition.Batch(1), (0, 2, 3)), (an.partition.Layer(-1), (3,)),
    (an.partition.Layer((1, 2, 3)), (1, 2, 3)), (an.partition.Instance(1), (2, 3)),
    (an.partition.Position(1), (1,)),
]


# 1. the NumPy fast path's mean across blocks (float64) ----------------------------------------

def test_fast_path_batch_norm_of_a_constant_1e30_is_exactly_zero():
    """Issue 8.1 as reported: (3, 1, 300, 311) takes the default fast path in 35 chunks; the
    merged mean used to round off an ulp of 1e30 and every value became −1."""
    y, ctx = fast_forward(an.partition.Batch(1), np.full((3, 1, 300, 311), 1e30))
    assert ctx.saved.plan.rows_per_block == 0  # chunked statistics
    np.testing.assert_array_equal(y, 0.0)


def test_fast_path_batch_norm_with_offset_1e10_matches_the_exact_reference():
    """Issue 8.1: 1e10 + 1e-3·N(0, 1) in float64 erred by 2.4e-4 on the fast path."""
    x = 1e10 + 1e-3 * np.random.default_rng(0).standard_normal((64, 2, 64, 64))
    y, ctx = fast_forward(an.partition.Batch(1), x)
    assert np.max(np.abs(y - exact_standardize(x, (0, 2, 3)))) <= 1e-12
    # the statistic's mean is kept as mean + mean_lo, exact to float64 rounding of the sum
    xs = x - x[0, :, 0, 0][None, :, None, None]
    mean_s = xs.mean(axis=(0, 2, 3))
    hi, lo = ctx.state.mean.ravel(), ctx.saved.mean_lo.ravel()
    assert np.max(np.abs((hi - x[0, :, 0, 0]) + lo - mean_s)) <= 1e-15


@pytest.mark.parametrize("partition,axes", PARTITIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("case", ["offset 1e10", "constant 1e30"])
def test_every_partition_keeps_the_low_part_of_the_mean_across_chunks(tiny_blocks, partition, axes, case):
    """All partitions were affected when a statistic spans several blocks."""
    shape = (4, 3, 6, 5)
    x = (1e10 + 1e-3 * RNG.standard_normal(shape)) if case == "offset 1e10" else np.full(shape, 1e30)
    dy = RNG.standard_normal(shape)
    (y, pb) = an.Normalizer(partition, an.operation.Standardize()).vjp(x)
    expected = exact_standardize(x, axes)
    assert np.max(np.abs(y - expected)) <= 1e-11
    with an.use_fast_paths(False):
        _, pb_portable = an.Normalizer(partition, an.operation.Standardize()).vjp(x)
    np.testing.assert_allclose(pb(dy)[0], pb_portable(dy)[0], rtol=1e-9, atol=1e-9 * np.abs(pb_portable(dy)[0]).max())


def test_portable_path_on_every_backend_is_exact_for_offset_1e10_and_constant_1e30(xp):
    x = 1e10 + 1e-3 * RNG.standard_normal((16, 2, 8, 8))
    assert rel_err(an.batch_norm(from_numpy(xp, x)), exact_standardize(x, (0, 2, 3))) <= 1e-12
    np.testing.assert_array_equal(to_numpy(an.batch_norm(from_numpy(xp, np.full((3, 1, 30, 31), 1e30)))), 0.0)


# 2. float32 sums of squares on the fast path ---------------------------------------------------

def test_fast_float32_layer_norm_of_values_near_1e18_is_accurate():
    """Issue 8.2 as reported: LN of a 1024×1024 float32 input with |x| ~ 1e18 erred by 5.0
    on the fast path (a float32 sum of squares past 3.4e38), 6.8e-7 on the portable one."""
    x = (1e18 * np.random.default_rng(0).standard_normal((1024, 1024))).astype(np.float32)
    y, ctx = fast_forward(an.partition.Layer(-1), x)
    assert np.max(np.abs(y - ref.layer_norm(x))) <= 2e-6
    assert rel_err(ctx.state.var.ravel(), x.astype(np.float64).var(axis=1)) <= 2e-6


def test_float32_layer_norm_of_values_near_1e18_is_accurate_on_every_backend(xp):
    x = (1e18 * RNG.standard_normal((16, 1024))).astype(np.float32)
    assert np.max(np.abs(to_numpy(an.layer_norm(from_numpy(xp, x))) - ref.layer_norm(x))) <= 2e-6


# 3. the whitening family's centring ------------------------------------------------------------

def methods_on(xp):
    """Whitening methods the backend supports (Dask has no batched eigh/cholesky)."""
    return [m for m, op in WHITENING_METHODS.items() if has_linalg(xp, *op.routines)]


@pytest.mark.parametrize("value,dtype", [(1000.1, "float32"), (1e30, "float64")])
def test_whitening_a_constant_input_gives_exactly_zero(xp, value, dtype):
    """Issue 8.3: DBN of a constant (7, 3) input gave max|y| = 0.019 (float32 1000.1) and 20
    (1e30; Cholesky raised LinAlgError) where BN gives 0."""
    x = from_numpy(xp, np.full((7, 3), value), dtype)
    for method in methods_on(xp):
        y = an.decorrelated_batch_norm(x, method=method)
        np.testing.assert_array_equal(to_numpy(y), 0.0, err_msg=method)
    gw = an.group_whitening(from_numpy(xp, np.full((2, 4, 5), value), dtype), 2, method=methods_on(xp)[0])
    np.testing.assert_array_equal(to_numpy(gw), 0.0)


def test_whitening_with_one_channel_per_group_is_batch_norm_on_offset_float32_input(xp):
    """Issue 8.3: with one channel per group DBN and IterNorm are BN, and group whitening with
    one group is GN(1) — the same maths; offset float32 input gave differences of 0.066."""
    x = (1e4 + 1e-2 * np.random.default_rng(0).standard_normal((256, 4))).astype(np.float32)
    xa = from_numpy(xp, x, "float32")
    bn = to_numpy(an.batch_norm(xa))
    assert rel_err(bn, ref.batch_norm(x)) <= 2e-5  # the float32 values' own float64 BN
    for method in methods_on(xp):
        y = an.iter_norm(xa, num_groups=4) if method == "iternorm" else \
            an.decorrelated_batch_norm(xa, num_groups=4, method=method)
        assert np.max(np.abs(to_numpy(y) - bn)) <= 2e-5, method
    x3 = (1e4 + 1e-2 * RNG.standard_normal((2, 4, 64))).astype(np.float32)
    gw = an.group_whitening(from_numpy(xp, x3, "float32"), 1, method=methods_on(xp)[0])
    assert rel_err(gw, ref.group_norm(x3, 1)) <= 2e-5


# 4. overflow and underflow of sums of squares -------------------------------------------------

X20 = (1e20 * np.random.default_rng(1).standard_normal((4, 6, 5, 5))).astype(np.float32)

OPS_1E20 = {
    # name: (op, extra args, keywords, float64 reference, torch functional call)
    "batch_norm": (an.batch_norm, (), {}, ref.batch_norm,
                   lambda F, t: F.batch_norm(t, None, None, training=True)),
    "layer_norm": (an.layer_norm, (), {}, ref.layer_norm, lambda F, t: F.layer_norm(t, (5,))),
    "instance_norm": (an.instance_norm, (), {}, ref.instance_norm, lambda F, t: F.instance_norm(t)),
    "group_norm": (an.group_norm, (2,), {}, lambda x: ref.group_norm(x, 2), lambda F, t: F.group_norm(t, 2)),
    "position_norm": (an.position_norm, (), {}, ref.position_norm, None),
    "rms_norm": (an.rms_norm, (), {"eps": 1e-6}, lambda x: ref.rms_norm(x, eps=1e-6),
                 lambda F, t: F.rms_norm(t, (5,), eps=1e-6)),
    "l2_normalize": (an.l2_normalize, (), {}, ref.l2_normalize, lambda F, t: F.normalize(t)),
    "local_response_norm": (an.local_response_norm, (3,), {}, lambda x: ref.local_response_norm(x, 3),
                            lambda F, t: F.local_response_norm(t, 3)),
}


@pytest.mark.parametrize("name", sorted(OPS_1E20))
def test_float32_values_of_1e20_are_normalized_correctly(xp, name):
    """Issue 8.4: float32 |x| ~ 1e20 made all of these return 0 (PyTorch does the same)."""
    f, args, kw, reference, _ = OPS_1E20[name]
    y = f(from_numpy(xp, X20, "float32"), *args, **kw)
    assert to_numpy(y).dtype == np.float32
    assert rel_err(y, reference(X20)) <= 2e-6


@pytest.mark.parametrize("name", sorted(k for k, v in OPS_1E20.items() if v[4] is not None))
def test_float32_values_of_1e20_have_the_right_cotangents(xp, name):
    """The VJP at |x| ~ 1e20 against PyTorch's float64 autograd on the same values."""
    torch = pytest.importorskip("torch")
    f, args, kw, _, tf = OPS_1E20[name]
    dy = RNG.standard_normal(X20.shape).astype(np.float32)
    y, pb = an.vjp(f, from_numpy(xp, X20, "float32"), *args, **kw)
    dx = to_numpy(pb(from_numpy(xp, dy, "float32"))[0])
    t = torch.tensor(X20.astype(np.float64), requires_grad=True)
    tf(torch.nn.functional, t).backward(torch.tensor(dy.astype(np.float64)))
    assert rel_err(dx, t.grad.numpy()) <= 5e-6


@pytest.mark.parametrize("name", ["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"])
def test_fast_path_float32_values_of_1e20_match_the_reference(tiny_blocks, name):
    f, args, kw, reference, _ = OPS_1E20[name]
    y = f(X20, *args, **kw)
    assert rel_err(y, reference(X20)) <= 2e-6


@pytest.mark.parametrize("scale", [1e20, 1e-23])
def test_weight_norm_of_extreme_float32_weights_has_rows_of_norm_g(xp, scale):
    """Issue 8.4: weight_norm returned 0 for float32 |v| ~ 1e20 and inf for 1e-23 (squares
    underflow). Oracle for the VJP: PyTorch's float64 autograd of torch._weight_norm."""
    v = (scale * RNG.standard_normal((4, 30))).astype(np.float32)
    g = RNG.uniform(0.5, 2.0, 4).astype(np.float32)
    w, pb = an.vjp(an.weight_norm, from_numpy(xp, v, "float32"), from_numpy(xp, g, "float32"))
    np.testing.assert_allclose(np.linalg.norm(to_numpy(w).astype(np.float64), axis=1), g, rtol=2e-6)
    torch = pytest.importorskip("torch")
    tv = torch.tensor(v.astype(np.float64), requires_grad=True)
    tg = torch.tensor(g.astype(np.float64)[:, None], requires_grad=True)
    dw = RNG.standard_normal(v.shape).astype(np.float32)
    torch._weight_norm(tv, tg, 0).backward(torch.tensor(dw.astype(np.float64)))
    dv, dg, _ = pb(from_numpy(xp, dw, "float32"))
    assert rel_err(dv, tv.grad.numpy()) <= 5e-6
    assert rel_err(dg, tg.grad.numpy()[:, 0]) <= 5e-6


def test_spectral_norm_of_float32_weights_near_1e20_equals_the_rescaled_computation(xp):
    """Issue 8.4: spectral_norm returned ±inf for float32 |W| ~ 1e20. W/σ̃ is invariant to an
    exact power-of-two rescaling of W and its cotangent scales by the inverse, so the float64
    computation on W·2⁻⁶⁶ (values ~1) is the oracle."""
    w = (1e20 * RNG.standard_normal((5, 8))).astype(np.float32)
    w64 = w.astype(np.float64) * 2.0 ** -66
    u = an.spectral_norm_init_u(w64, 0)
    dw = RNG.standard_normal(w.shape)
    (w_sn, u_new), pb = an.vjp(an.spectral_norm, from_numpy(xp, w, "float32"),
                               from_numpy(xp, u, "float32"), n_power_iterations=5)
    (w_sn64, u64), pb64 = an.vjp(an.spectral_norm, w64, u, n_power_iterations=5)
    assert rel_err(w_sn, w_sn64) <= 5e-6 and rel_err(u_new, u64) <= 5e-6
    dweight = pb((from_numpy(xp, dw, "float32"), None))[0]
    assert rel_err(dweight, pb64((dw, None))[0] * 2.0 ** -66) <= 5e-6


def zca_reference(x, eps):
    """Float64 ZCA whitening of the rows of (N, C) data by np.linalg.eigh."""
    xc = x - x.mean(axis=0)
    lam, u = np.linalg.eigh(xc.T @ xc / x.shape[0] + eps * np.eye(x.shape[1]))
    return xc @ (u / np.sqrt(lam)) @ u.T


def test_whitening_float32_values_of_1e20_matches_float64_references(xp):
    """Issue 8.4: DBN/IterNorm of float32 |x| ~ 1e20 gave NaN or LinAlgError. ZCA and
    Cholesky against float64 NumPy decompositions; IterNorm (eps = 0, exactly scale
    invariant) against its float64 computation on the data rescaled by 2⁻⁶⁶."""
    x = (1e20 * RNG.standard_normal((64, 4)) @ np.diag([1.0, 2.0, 3.0, 4.0])).astype(np.float32)
    x64 = x.astype(np.float64)
    xa = from_numpy(xp, x, "float32")
    if has_linalg(xp, "eigh", "cholesky", "inv"):
        assert rel_err(an.decorrelated_batch_norm(xa), zca_reference(x64, 1e-5)) <= 5e-5
        xc = x64 - x64.mean(axis=0)
        chol = np.linalg.cholesky(xc.T @ xc / 64 + 1e-5 * np.eye(4))
        assert rel_err(an.decorrelated_batch_norm(xa, method="cholesky"), np.linalg.solve(chol, xc.T).T) <= 5e-5
        pca = to_numpy(an.decorrelated_batch_norm(xa, method="pca")).astype(np.float64)
        np.testing.assert_allclose(pca.T @ pca / 64, np.eye(4), atol=1e-4)  # white
    it = an.iter_norm(xa, eps=0.0)
    assert rel_err(it, an.iter_norm(x64 * 2.0 ** -66, eps=0.0)) <= 5e-5


@pytest.mark.parametrize("scale", [1e9, 1e11, 1e13])
def test_lrn_backward_of_float32_with_beta_2_is_correctly_rounded(xp, scale):
    """Issue 8.4: the LRN backward underflowed its intermediates (s^{-β-1}) from x ~ 1e9 with
    β = 2: 239 to 1.7e7 float32 ulps off PyTorch's float64 autograd; now within one ulp."""
    torch = pytest.importorskip("torch")
    x = (scale * RNG.standard_normal((2, 6, 3, 3))).astype(np.float32)
    g = RNG.standard_normal(x.shape).astype(np.float32)
    _, pb = an.vjp(an.local_response_norm, from_numpy(xp, x, "float32"), 3, 1e-4, 2.0, 1.0)
    dx = to_numpy(pb(from_numpy(xp, g, "float32"))[0]).astype(np.float64)
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    torch.nn.functional.local_response_norm(t, 3, 1e-4, 2.0, 1.0).backward(torch.tensor(g.astype(np.float64)))
    want = t.grad.numpy()
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(dx - want) / ulp) <= 1.0


@pytest.mark.parametrize("f,args", [
    (an.batch_norm, ()), (an.layer_norm, ()), (an.group_norm, (2,)), (an.rms_norm, ()),
    (an.l2_normalize, ()), (an.position_norm, ()),
], ids=["batch_norm", "layer_norm", "group_norm", "rms_norm", "l2_normalize", "position_norm"])
@pytest.mark.parametrize("k", [700, -700])
def test_float64_values_beyond_the_square_range_are_scale_invariant(xp, f, args, k):
    """float64 values of 2^±700 (~1e±211) have squares outside float64's range; with eps = 0
    these ops are invariant to the exact rescaling by 2^k and their cotangent scales by 2^-k,
    so the computation at scale 1 is the oracle."""
    x = RNG.standard_normal((4, 6, 5))
    dy = RNG.standard_normal(x.shape)
    y, pb = an.vjp(f, from_numpy(xp, x * 2.0 ** k), *args, eps=0.0)
    y1, pb1 = an.vjp(f, x, *args, eps=0.0)
    assert rel_err(y, y1) <= 1e-13
    assert rel_err(pb(from_numpy(xp, dy))[0], pb1(dy)[0] * 2.0 ** -k) <= 1e-12


@pytest.mark.parametrize("f,args", [
    (an.batch_norm, ()), (an.layer_norm, ()), (an.group_norm, (2,)), (an.instance_norm, ()),
    (an.rms_norm, ()),
], ids=["batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"])
@pytest.mark.parametrize("k", [600, -600])
def test_fast_implementations_keep_float64_cotangents_beyond_the_square_range(tiny_blocks, f, args, k):
    """The fast implementations' backward must never form rstd² (it underflows for a spread of
    2^600 and overflows for 2^-600): with eps = 0, dx(2^k·x) = 2^-k·dx(x) exactly, and
    dγ, dβ do not change, so the computation at scale 1 is the oracle."""
    x = 3.0 + RNG.standard_normal((4, 6, 5))
    dy = RNG.standard_normal(x.shape)
    c = x.shape[-1] if f in (an.layer_norm, an.rms_norm) else x.shape[1]
    w = RNG.uniform(0.5, 1.5, c)
    extra = () if f is an.rms_norm else (RNG.standard_normal(c),)
    y, pb = an.vjp(f, x * 2.0 ** k, *args, w, *extra, eps=0.0)
    y1, pb1 = an.vjp(f, x, *args, w, *extra, eps=0.0)
    got, want = pb(dy), pb1(dy)
    assert rel_err(y, y1) <= 1e-13
    assert rel_err(got[0], want[0] * 2.0 ** -k) <= 1e-12
    assert rel_err(got[-1], want[-1]) <= 1e-12


def test_results_that_cannot_be_represented_are_inf_or_nan_never_finite_and_wrong(xp):
    """A float32 variance of values ~1e20 (~1e40) is not representable: batch_moments reports
    inf, not a finite number, while the mean stays right, and inference with it gives NaN; a
    float64 LRN window whose squares overflow gives NaN, not the 0 it used to."""
    mean, var = an.batch_moments(from_numpy(xp, X20, "float32"))
    assert np.all(np.isinf(to_numpy(var)))
    assert rel_err(mean, X20.astype(np.float64).mean(axis=(0, 2, 3))) <= 1e-6
    y = to_numpy(an.local_response_norm(from_numpy(xp, np.full((1, 3, 2), 1e200)), 3))
    assert np.all(np.isnan(y))
    # inference with that inf running variance: NaN, not the 0 that (x − mean)/inf would give
    y = to_numpy(an.batch_norm(from_numpy(xp, X20, "float32"), mean=mean, var=var))
    assert np.all(np.isnan(y))


# 5. empty inputs -----------------------------------------------------------------------------

EMPTY_OPS = {
    "batch_norm": (an.batch_norm, ()), "instance_norm": (an.instance_norm, ()),
    "layer_norm": (an.layer_norm, ()), "group_norm": (an.group_norm, (3,)),
    "rms_norm": (an.rms_norm, ()), "position_norm": (an.position_norm, ()),
    "ghost_batch_norm": (an.ghost_batch_norm, (1,)), "local_response_norm": (an.local_response_norm, (3,)),
    "l2_normalize": (an.l2_normalize, ()),
}


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (2, 0, 4)])
@pytest.mark.parametrize("name", sorted(EMPTY_OPS) + ["l2_normalize p=inf", "l2_normalize p=3"])
def test_empty_inputs_give_empty_outputs_and_cotangents(xp, name, shape):
    """Issues 8.5 and 8.11, PyTorch's choice: an empty batch or spatial size 0 gives an empty
    result (training-mode BN and IN raised "expected more than 1 value"; l2_normalize with
    p = inf raised "zero-size array to reduction" — PyTorch raises there too, we do not)."""
    f, args = EMPTY_OPS[name.split()[0]]
    kw = {"p": float(name.split("=")[1])} if "p=" in name else {}
    if name == "group_norm" and shape[1] == 0:
        args = (1,)
    x = from_numpy(xp, np.zeros(shape))
    y, pb = an.vjp(f, x, *args, **kw)
    dx = pb(from_numpy(xp, np.ones(shape)))[0]
    assert tuple(y.shape) == shape and tuple(dx.shape) == shape and y.dtype == x.dtype


def test_instance_norm_with_spatial_size_0_is_empty_and_size_1_is_still_refused(xp):
    """Issue 8.11: IN's message wrongly said "(spatial size 1)" for spatial size 0."""
    assert tuple(an.instance_norm(from_numpy(xp, np.zeros((2, 3, 0)))).shape) == (2, 3, 0)
    with pytest.raises(ValueError, match=r"spatial size 1\) .*got input of shape \(2, 3, 1\)"):
        an.instance_norm(from_numpy(xp, np.zeros((2, 3, 1))))


def test_batch_norm_layer_leaves_its_running_statistics_alone_on_an_empty_batch():
    bn = an.nn.BatchNorm(3)
    bn(RNG.standard_normal((4, 3)))
    state = bn.state_dict()
    assert bn(np.zeros((0, 3))).shape == (0, 3)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


@pytest.mark.parametrize("shape", [(0, 3), (2, 3, 0), (2, 0)])
def test_whitening_of_no_values_raises_a_clear_error(shape):
    """The choice for the whitening family: a whitening matrix of no values does not exist."""
    for f in (an.decorrelated_batch_norm, an.iter_norm, an.whitening_moments):
        with pytest.raises(ValueError, match="needs at least one feature and one value per feature"):
            f(np.zeros(shape))
    assert an.group_whitening(np.zeros((0, 4, 3)), 2).shape == (0, 4, 3)  # per-sample statistics


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (3, 0, 2)])
def test_spectral_norm_of_an_empty_weight_is_empty(xp, shape):
    """Issue 8.5: spectral_norm on a (0, 4) weight raised "cannot reshape array of size 0";
    PyTorch's parametrization returns the empty weight. u is returned unchanged."""
    w = from_numpy(xp, np.zeros(shape))
    u = from_numpy(xp, RNG.standard_normal(shape[0]))
    (w_sn, u_new), pb = an.vjp(an.spectral_norm, w, u)
    assert tuple(w_sn.shape) == shape
    np.testing.assert_array_equal(to_numpy(u_new), to_numpy(u))
    assert tuple(pb((from_numpy(xp, np.zeros(shape)), None))[0].shape) == shape
    if backend_name(xp) != "dask":
        assert tuple(an.spectral_norm_exact(w).shape) == shape


# 6. clip_by_global_norm -----------------------------------------------------------------------

def test_clip_by_global_norm_of_a_0d_array_returns_a_0d_array(xp):
    """Issue 8.6: a 0-d NumPy input came back as a NumPy scalar (np.float64)."""
    g = from_numpy(xp, np.asarray(3.0))
    clipped, total = an.clip_by_global_norm(g, 1.0)
    assert type(clipped) is type(g) and tuple(clipped.shape) == ()
    assert float(to_numpy(clipped)) == pytest.approx(1.0 / (1.0 + 1e-6 / 3.0))
    (out,) = an.block_normalized_gradient([g])
    assert type(out) is type(g)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clipping", "not-clipping"])
def test_clip_by_global_norm_vjp_matches_finite_differences(norm_type, max_norm):
    """Issue 8.6: clip_by_global_norm had no VJP rule. Oracle: SciPy finite differences of
    ⟨dclipped, clipped⟩ + dtotal·total with respect to every gradient entry."""
    from scipy.optimize import approx_fprime

    grads = {"w": RNG.standard_normal((2, 3)), "b": RNG.standard_normal(3)}
    dclipped = {"w": RNG.standard_normal((2, 3)), "b": RNG.standard_normal(3)}
    dtotal = np.asarray(0.7)
    (clipped, total), pb = an.vjp(an.clip_by_global_norm, grads, max_norm, norm_type=norm_type)
    dgrads, dmax = pb((dclipped, dtotal))
    assert dmax is None and set(dgrads) == {"w", "b"}

    def loss(v):
        g = {"w": v[:6].reshape(2, 3), "b": v[6:]}
        c, t = an.clip_by_global_norm(g, max_norm, norm_type=norm_type)
        return float(np.sum(c["w"] * dclipped["w"]) + np.sum(c["b"] * dclipped["b"]) + 0.7 * t)

    flat = np.concatenate([grads["w"].ravel(), grads["b"]])
    fd = approx_fprime(flat, loss, 1e-7)
    np.testing.assert_allclose(np.concatenate([dgrads["w"].ravel(), dgrads["b"]]), fd, atol=1e-6)


def test_clip_by_global_norm_pullback_keeps_the_container_and_backend(xp):
    grads = [from_numpy(xp, RNG.standard_normal((2, 3))), None, from_numpy(xp, RNG.standard_normal(4))]
    (clipped, total), pb = an.vjp(an.clip_by_global_norm, grads, 0.1)
    dgrads, _ = pb(([xp.ones_like(clipped[0]), None, xp.ones_like(clipped[2])], None))
    assert isinstance(dgrads, list) and dgrads[1] is None
    assert tuple(dgrads[0].shape) == (2, 3) and type(dgrads[0]) is type(grads[0])


# 10. the fast path's reference to x -----------------------------------------------------------

def test_modifying_x_in_place_after_the_forward_is_documented_and_harmless_on_the_portable_path(xp):
    """Issue 8.10: the NumPy fast path keeps a reference to x (as PyTorch does); the public
    docs say so, and the portable path keeps what its backward needs."""
    assert "in place" in an.vjp.__doc__ and "copy" in an.vjp.__doc__
    x = RNG.standard_normal((6, 40))
    dy = RNG.standard_normal(x.shape)
    expected = an.vjp(an.layer_norm, x)[1](dy)[0]
    if not supports_inplace(xp):  # Dask arrays are immutable
        return
    xa = from_numpy(xp, x.copy())
    with an.use_fast_paths(False):
        _, pb = an.vjp(an.layer_norm, xa)
    xa *= 3.0
    np.testing.assert_allclose(to_numpy(pb(from_numpy(xp, dy))[0]), expected, rtol=1e-12, atol=1e-12)


# 11. batch statistics and running statistics --------------------------------------------------

def test_batch_moments_mean_is_inf_when_the_first_value_is_inf(xp):
    """Issue 8.11: the shift computed inf − inf and the mean became NaN; it is inf (the mean
    of values with one +inf), the variance NaN."""
    x = RNG.standard_normal((4, 2))
    x[0, 0] = np.inf
    mean, var = an.batch_moments(from_numpy(xp, x))
    mean, var = to_numpy(mean), to_numpy(var)
    assert mean[0] == np.inf and np.isnan(var[0])
    np.testing.assert_allclose(mean[1], x[:, 1].mean(), rtol=1e-12)


def test_float16_running_statistics_are_blended_in_float32_and_rounded_once(xp):
    """Issue 8.11: blending in float16 erred by up to 84 ulps; the exact blend rounded to
    float16 once is within half an ulp (plus float32 rounding)."""
    if backend_name(xp) not in ("numpy", "dask", "torch", "cupy"):
        pytest.skip("no float16 on this backend")
    rm = RNG.standard_normal(64).astype(np.float16)
    rv = RNG.uniform(0.5, 2.0, 64).astype(np.float16)
    bm = (3.0 * RNG.standard_normal(64)).astype(np.float32)
    bv = RNG.uniform(0.5, 2.0, 64).astype(np.float32)
    new_m, new_v = an.update_running_stats(*(from_numpy(xp, a) for a in (rm, rv, bm, bv)), 10)
    assert to_numpy(new_m).dtype == np.float16
    for got, want in ((new_m, 0.9 * rm.astype(np.float64) + 0.1 * bm.astype(np.float64)),
                      (new_v, 0.9 * rv.astype(np.float64) + 0.1 * bv.astype(np.float64) * 10 / 9)):
        ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)
        assert np.max(np.abs(to_numpy(got).astype(np.float64) - want) / ulp) <= 0.51


def test_numpy_running_statistics_blend_as_the_namespace_code_does_bit_for_bit():
    """NumPy buffers take a shortcut around the namespace wrappers in ``blend`` (every BN
    layer's training step); the same operations in the same order, so the same bits as the
    array-API code on array_api_strict, for every pair of buffer and batch dtypes it has
    (float16 buffers: the documented float32 blend rounded once)."""
    strict = pytest.importorskip("array_api_strict")
    from arraynorm.running_stats import blend

    for rd in (np.float16, np.float32, np.float64):
        for bd in (np.float16, np.float32, np.float64):
            for m in (0.1, 1 / 3, 1.0):
                r = (100 * RNG.standard_normal(33)).astype(rd)
                b = (100 * RNG.standard_normal(33)).astype(bd)
                got = blend(r, b, m)
                assert type(got) is np.ndarray and got.dtype == rd
                if np.float16 in (rd, bd):
                    ct = np.float64 if rd == np.float64 else np.float32
                    want = ((1.0 - m) * r.astype(ct) + m * b.astype(ct)).astype(rd)
                else:
                    want = np.asarray(blend(strict.asarray(r), strict.asarray(b), m))
                np.testing.assert_array_equal(got, want)


def _merge_pattern(pattern: str) -> np.ndarray:
    """(64, 4) float64 rows alternating a, −a (every block or chunk of an even number of rows
    has the same mean and spread, exactly), or eight zero rows (a constant first block) and
    then normal values."""
    r = RNG.standard_normal((32, 4))
    if pattern.endswith("equal means"):
        return np.where(np.arange(64)[:, None] % 2 == 0, r[0], -r[0])
    return np.concatenate([np.zeros((8, 4)), r])


@pytest.mark.parametrize("pattern", ["blocks with equal means", "a constant block"])
@pytest.mark.parametrize("k", [-700, 700])
def test_fast_batch_norm_merges_blocks_of_float64_values_beyond_the_square_range(tiny_blocks, pattern, k):
    """The fast paths merge per-block moments under a common power-of-two scale. A block
    with no spread, or block means with no spread, have the neutral scale 1; taken into
    the common scale it swamps blocks of values near 2^-700, whose scaled squares then
    underflow (rstd inf, y NaN at eps = 0). With eps = 0, BN is invariant to the exact
    rescaling by 2^k, so the computation at scale 1 is the oracle (:func:`_merge_pattern`)."""
    x = _merge_pattern(pattern)
    dy = RNG.standard_normal(x.shape)
    y, pb = an.vjp(an.batch_norm, x * 2.0 ** k, eps=0.0)
    y1, pb1 = an.vjp(an.batch_norm, x, eps=0.0)
    assert np.all(np.isfinite(y))
    assert rel_err(y, y1) <= 1e-13
    assert rel_err(pb(dy)[0], pb1(dy)[0] * 2.0 ** -k) <= 1e-12


@pytest.mark.parametrize("pattern", ["chunks with equal means", "a constant chunk"])
def test_dask_batch_norm_merges_chunks_of_float64_values_beyond_the_square_range(pattern):
    """The Dask implementation merges per-chunk moments under a common power-of-two scale,
    with the same risk as the NumPy fast paths (above): a constant chunk, or chunk means that
    agree, must not set the scale of chunks of values near 2^-700. BN with eps = 0 is
    invariant to rescaling by 2^-700: the computation at scale 1 is the oracle."""
    da = pytest.importorskip("dask.array")
    x = _merge_pattern(pattern)
    dy = RNG.standard_normal(x.shape)

    def run(scale):
        xd = da.from_array(x * scale, chunks=(8, 4))
        y, pb = an.vjp(an.batch_norm, xd, eps=0.0)
        return np.asarray(y.compute()), np.asarray(pb(da.from_array(dy, chunks=(8, 4)))[0].compute())

    (y, dx), (y1, dx1) = run(2.0 ** -700), run(1.0)
    assert np.all(np.isfinite(y))
    assert rel_err(y, y1) <= 1e-13
    assert rel_err(dx, dx1 * 2.0 ** 700) <= 1e-12
