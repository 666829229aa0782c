"""Gradient normalization family (arraynorm.gradient) against float64 NumPy references
written here from the papers' formulas, and PyTorch's clip_grad_norm_ / clip_grad_value_."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from _helpers import assert_close, backend_name, from_numpy, to_numpy

from arraynorm.gradient import (
    adaptive_gradient_clipping,
    block_normalized_gradient,
    clip_by_global_norm,
    clip_by_value,
    gradient_centralization,
    lamb_trust_ratio,
    lars_trust_ratio,
    normalized_gradient,
)

SHAPES = [(4, 3), (5,), (2, 3, 2, 2), ()]


def _grads(seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in SHAPES]


def _to(xp, arrays):
    return [from_numpy(xp, a) for a in arrays]


def _global_norm(arrays, p=2.0) -> float:
    flat = np.concatenate([np.ravel(a) for a in arrays])
    if p == math.inf:
        return float(np.max(np.abs(flat)))
    return float(np.sum(np.abs(flat) ** p) ** (1.0 / p))


# ------------------------------------------------------------------------------------------
# normalized gradients

def test_normalized_gradient_divides_by_the_global_norm(xp):
    g = _grads(1)
    out = normalized_gradient(_to(xp, g), eps=1e-8)
    assert isinstance(out, list)
    total = _global_norm(g)
    for o, a in zip(out, g):
        assert_close(o, a / (total + 1e-8), xp=xp, dtype=xp.float64)
    assert _global_norm([to_numpy(o) for o in out]) == pytest.approx(1.0, rel=1e-7)


def test_block_normalized_gradient_normalizes_each_array(xp):
    g = _grads(2)
    out = block_normalized_gradient(tuple(_to(xp, g)), eps=1e-8)
    assert isinstance(out, tuple)
    for o, a in zip(out, g):
        assert_close(o, a / (np.sqrt(np.sum(a * a)) + 1e-8), xp=xp, dtype=xp.float64)


def test_containers_keep_their_type_keys_and_none_entries(xp):
    g = _grads(3)
    Pair = collections.namedtuple("Pair", "w b")
    d = collections.OrderedDict(conv=from_numpy(xp, g[0]), skip=None, bias=from_numpy(xp, g[1]))
    out = block_normalized_gradient(d)
    assert type(out) is collections.OrderedDict and list(out) == ["conv", "skip", "bias"]
    assert out["skip"] is None
    assert d["conv"] is not out["conv"]  # a new container and new arrays: the input is untouched
    pair = clip_by_value(Pair(from_numpy(xp, g[0]), from_numpy(xp, g[1])), 0.5)
    assert type(pair) is Pair
    assert_close(pair.b, np.clip(g[1], -0.5, 0.5), xp=xp)
    single = normalized_gradient(from_numpy(xp, g[0]))
    assert_close(single, g[0] / (np.linalg.norm(g[0]) + 1e-8), xp=xp)


def test_zero_gradient_stays_zero(xp):
    z = [from_numpy(xp, np.zeros((3, 2))), from_numpy(xp, np.zeros(4))]
    for f in (normalized_gradient, block_normalized_gradient):
        for o in f(z):
            assert_close(o, np.zeros(tuple(o.shape)), xp=xp)


# ------------------------------------------------------------------------------------------
# clip by global norm

@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.7, 1e3])  # clipping active / inactive
def test_clip_by_global_norm_matches_torch_clip_grad_norm(xp, norm_type, max_norm):
    torch = pytest.importorskip("torch")
    g = _grads(4)
    params = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for p, a in zip(params, g):
        p.grad = torch.tensor(a)
    t_total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    clipped, total = clip_by_global_norm(_to(xp, g), max_norm, norm_type=norm_type)
    assert tuple(total.shape) == ()
    assert_close(total, t_total.numpy(), xp=xp, dtype=xp.float64)
    assert_close(total, _global_norm(g, norm_type), xp=xp)
    for c, p in zip(clipped, params):
        assert_close(c, p.grad.numpy(), xp=xp, dtype=xp.float64)


def test_clip_by_global_norm_float32_against_float64_reference(xp):
    g = _grads(5, scale=3.0)
    clipped, total = clip_by_global_norm([from_numpy(xp, a, "float32") for a in g], 1.0)
    ref_total = _global_norm(g)
    assert_close(total, ref_total, xp=xp, dtype=xp.float32)
    coef = min(1.0, 1.0 / (ref_total + 1e-6))
    for c, a in zip(clipped, g):
        assert_close(c, a.astype(np.float32).astype(np.float64) * coef, xp=xp, dtype=xp.float32)


def test_clip_by_global_norm_huge_float32_gradient_has_a_finite_norm(xp):
    # squares of 1e30 overflow float32; the scaled norm does not
    g = [np.array([[3e30, -4e30]]), np.array([1e30])]
    clipped, total = clip_by_global_norm([from_numpy(xp, a, "float32") for a in g], 1.0,
                                         error_if_nonfinite=True)
    assert_close(total, _global_norm(g), xp=xp, rtol=1e-6)
    assert_close(clipped[0], g[0] / _global_norm(g), xp=xp, rtol=1e-5, atol=1e-12)


def test_clip_by_global_norm_error_if_nonfinite_raises_like_torch(xp):
    torch = pytest.importorskip("torch")
    g = [np.array([1.0, np.inf]), np.array([2.0])]
    p = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for pp, a in zip(p, g):
        pp.grad = torch.tensor(a)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(p, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=r"clip_by_global_norm: the total norm .* non-finite"):
        clip_by_global_norm(_to(xp, g), 1.0, error_if_nonfinite=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # inf·0, as in PyTorch
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_by_global_norm_nonfinite_propagates_like_torch_by_default(xp, bad):
    torch = pytest.importorskip("torch")
    g = [np.array([1.0, bad]), np.array([2.0, -1.0])]
    p = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for pp, a in zip(p, g):
        pp.grad = torch.tensor(a)
    t_total = torch.nn.utils.clip_grad_norm_(p, 1.0)
    clipped, total = clip_by_global_norm(_to(xp, g), 1.0)
    np.testing.assert_array_equal(to_numpy(total), t_total.numpy())
    for c, pp in zip(clipped, p):
        np.testing.assert_array_equal(to_numpy(c), pp.grad.numpy())


def test_clip_by_global_norm_empty_array_counts_as_zero(xp):
    g = [np.zeros((0, 3)), np.array([3.0, 4.0])]
    clipped, total = clip_by_global_norm(_to(xp, g), 10.0)
    assert_close(total, 5.0, xp=xp)
    assert tuple(clipped[0].shape) == (0, 3)


# ------------------------------------------------------------------------------------------
# clip by value

def test_clip_by_value_matches_torch_clip_grad_value(xp):
    torch = pytest.importorskip("torch")
    g = _grads(6)
    params = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch.float64)) for a in g]
    for p, a in zip(params, g):
        p.grad = torch.tensor(a)
    torch.nn.utils.clip_grad_value_(params, 0.3)
    out = clip_by_value({f"p{i}": a for i, a in enumerate(_to(xp, g))}, 0.3)
    for i, p in enumerate(params):
        assert_close(out[f"p{i}"], p.grad.numpy(), xp=xp, dtype=xp.float64)


# ------------------------------------------------------------------------------------------
# adaptive gradient clipping

def _agc_reference(g: np.ndarray, w: np.ndarray, clipping: float, eps: float) -> np.ndarray:
    """Brock et al. 2021, eq. (3), one output unit (row) at a time."""
    if g.ndim <= 1:
        rows_g, rows_w = [g.reshape(-1)], [w.reshape(-1)]
    else:
        rows_g, rows_w = list(g.reshape(g.shape[0], -1)), list(w.reshape(w.shape[0], -1))
    out = []
    for gi, wi in zip(rows_g, rows_w):
        gn, wn = math.sqrt(float(gi @ gi)), math.sqrt(float(wi @ wi))
        limit = clipping * max(wn, eps)
        out.append(gi * (limit / max(gn, 1e-6)) if gn > limit else gi)
    return np.stack(out).reshape(g.shape)


def test_adaptive_gradient_clipping_matches_the_unitwise_formula(xp):
    rng = np.random.default_rng(7)
    shapes = [(4, 3, 2, 2), (5, 3), (6,), ()]
    w = [rng.standard_normal(s) for s in shapes]
    w[1][2] = 0.0  # a zero unit: clipped against clipping·eps
    g = [rng.standard_normal(s) * rng.choice([1e-3, 1.0], size=s) for s in shapes]
    out = adaptive_gradient_clipping(_to(xp, g), _to(xp, w), clipping=0.05, eps=1e-3)
    n_clipped = 0
    for o, gi, wi in zip(out, g, w):
        ref = _agc_reference(gi, wi, 0.05, 1e-3)
        n_clipped += int(not np.allclose(ref, gi))
        assert_close(o, ref, xp=xp, dtype=xp.float64)
    assert n_clipped >= 2  # both branches are exercised


def test_adaptive_gradient_clipping_checks_structure(xp):
    g = _to(xp, [np.ones((2, 3)), np.ones(3)])
    with pytest.raises(ValueError, match=r"adaptive_gradient_clipping: params must have the structure"):
        adaptive_gradient_clipping(g, g[:1])
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(4,\) but grads\[1\] has \(3,\)"):
        adaptive_gradient_clipping(g, [g[0], from_numpy(xp, np.ones(4))])
    with pytest.raises(ValueError, match=r"params\[0\] is None but grads\[0\] is an array"):
        adaptive_gradient_clipping(g, [None, g[1]])


# ------------------------------------------------------------------------------------------
# trust ratios

@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_lars_trust_ratio_matches_the_paper(xp, weight_decay):
    rng = np.random.default_rng(8)
    w, g = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2)) * 1e-2
    wn, gn = np.linalg.norm(w.ravel()), np.linalg.norm(g.ravel())
    expected = 0.001 * wn / (gn + weight_decay * wn + 1e-9)  # You et al. 2017, eq. 6
    r = lars_trust_ratio(from_numpy(xp, w), from_numpy(xp, g), trust_coefficient=0.001,
                         weight_decay=weight_decay, eps=1e-9)
    assert tuple(r.shape) == ()
    assert_close(r, expected, xp=xp, dtype=xp.float64)


def test_lamb_trust_ratio_matches_the_paper(xp):
    rng = np.random.default_rng(9)
    w, u = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    r = lamb_trust_ratio(from_numpy(xp, w), from_numpy(xp, u), eps=1e-6)
    assert_close(r, np.linalg.norm(w) / (np.linalg.norm(u) + 1e-6), xp=xp, dtype=xp.float64)


def test_trust_ratios_are_one_where_a_norm_is_zero(xp):
    z, a = from_numpy(xp, np.zeros((3, 2))), from_numpy(xp, np.ones((3, 2)))
    for param, other in ((z, a), (a, z), (z, z)):
        assert_close(lars_trust_ratio(param, other), 1.0, xp=xp)
        assert_close(lamb_trust_ratio(param, other), 1.0, xp=xp)


# ------------------------------------------------------------------------------------------
# gradient centralization

def test_gradient_centralization_subtracts_the_per_unit_mean(xp):
    g = _grads(10)
    out = gradient_centralization(_to(xp, g))
    for o, a in zip(out, g):
        if a.ndim > 1:
            rows = a.reshape(a.shape[0], -1)
            ref = (rows - rows.mean(axis=1, keepdims=True)).reshape(a.shape)
        else:
            ref = a
        assert_close(o, ref, xp=xp, dtype=xp.float64)
    conv = to_numpy(out[2]).reshape(2, -1)
    np.testing.assert_allclose(conv.sum(axis=1), 0.0, atol=1e-12)
    single = gradient_centralization(from_numpy(xp, g[0]))
    assert_close(single, to_numpy(out[0]), xp=xp)


# ------------------------------------------------------------------------------------------
# precision policy and laziness

def test_float16_gradients_are_computed_in_float32(xp):
    if backend_name(xp) == "array_api_strict":
        pytest.skip("the array API standard (array_api_strict) has no float16")
    g = [a.astype(np.float16).astype(np.float64) for a in _grads(11, scale=100.0)]
    g16 = [from_numpy(xp, a, "float16") for a in g]
    clipped, total = clip_by_global_norm(g16, 1.0)
    # the total exceeds float16's range (65504) only if accumulated in float16
    assert to_numpy(total).dtype == np.float32
    np.testing.assert_allclose(to_numpy(total), _global_norm(g), rtol=1e-5)
    for c, a in zip(clipped, g):
        assert to_numpy(c).dtype == np.float16
        np.testing.assert_allclose(to_numpy(c).astype(np.float64), a / _global_norm(g),
                                   rtol=2e-3, atol=1e-6)


def test_dask_stays_lazy():
    da = pytest.importorskip("dask.array")
    g = [da.from_array(a, chunks=2) for a in _grads(12)[:3]]
    outs = [*normalized_gradient(g), *block_normalized_gradient(g), *clip_by_global_norm(g, 1.0)[0],
            clip_by_global_norm(g, 1.0)[1], *clip_by_value(g, 0.1),
            *adaptive_gradient_clipping(g, g), lars_trust_ratio(g[0], g[0]),
            lamb_trust_ratio(g[0], g[0]), *gradient_centralization(g)]
    assert all(isinstance(o, da.Array) for o in outs)


# ------------------------------------------------------------------------------------------
# errors

def test_errors_name_the_function_and_argument(xp):
    g = _to(xp, [np.ones((2, 3)), np.ones(3)])
    ints = from_numpy(xp, np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match=r"clip_by_global_norm: grads\[1\] must have a real floating"):
        clip_by_global_norm([g[0], ints], 1.0)
    with pytest.raises(ValueError, match=r"normalized_gradient: grads holds no arrays"):
        normalized_gradient([])
    with pytest.raises(ValueError, match=r"clip_by_global_norm: max_norm must be >= 0"):
        clip_by_global_norm(g, -1.0)
    with pytest.raises(ValueError, match=r"clip_by_global_norm: norm_type must be > 0"):
        clip_by_global_norm(g, 1.0, norm_type=0.0)
    with pytest.raises(TypeError, match=r"clip_by_global_norm: norm_type must be a real number"):
        clip_by_global_norm(g, 1.0, norm_type="2")
    with pytest.raises(ValueError, match=r"clip_by_value: clip_value must be >= 0"):
        clip_by_value(g, -0.1)
    with pytest.raises(ValueError, match=r"block_normalized_gradient: eps must be >= 0"):
        block_normalized_gradient(g, eps=-1.0)
    with pytest.raises(ValueError, match=r"adaptive_gradient_clipping: clipping must be finite"):
        adaptive_gradient_clipping(g, g, clipping=math.inf)
    with pytest.raises(ValueError, match=r"lars_trust_ratio: grad must have the shape of param"):
        lars_trust_ratio(g[0], g[1])
    with pytest.raises(ValueError, match=r"lars_trust_ratio: weight_decay must be >= 0"):
        lars_trust_ratio(g[0], g[0], weight_decay=-1.0)
    with pytest.raises(TypeError, match=r"lamb_trust_ratio: update must have a real floating"):
        lamb_trust_ratio(g[1], ints)
    with pytest.raises(TypeError, match=r"gradient_centralization: grad\['a'\] must be an array"):
        gradient_centralization({"a": [1.0, 2.0]})


def test_mixed_namespaces_in_one_container_are_named():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"grads\[1\] is a torch array but grads\[0\] is a numpy"):
        clip_by_global_norm([np.ones(3), torch.ones(3)], 1.0)
    with pytest.raises(TypeError, match=r"params\[0\] is a torch array but grads\[0\] is a numpy"):
        adaptive_gradient_clipping([np.ones(3)], [torch.ones(3)])
