"""Cross-check against PyTorch: ``torch.nn.functional`` forward and autograd backward.

The oracle is PyTorch CPU run in float64 on the same (dtype-rounded) inputs: its functional
ops for the forward pass and autograd for dx, dweight, dbias. Methods PyTorch lacks (positional
norm, ghost BN, AdaIN, batch renorm, generic compositions) are checked against the same
functional ops applied as the method's definition says, or the paper's formula in torch ops. arraynorm runs on every ``xp``
backend in float32 and float64, and its closed-form pullback (``vjp``) is compared to
autograd for a random cotangent dy, with random γ/β.

Tolerances (relative to the largest reference magnitude of each compared array, plus an
elementwise relative part): float64 1e-12; float32 1e-5 for forward values and 2e-5 for
gradients (the backward of a standardization subtracts means of dy·ŷ, so a float32
gradient carries a few ulps times the condition of that cancellation). float16 outputs are
compared with torch's float32 computation cast to float16 and may differ by one float16 ulp.

Every comparison is recorded; the module prints the largest errors per group on teardown
(``python -m pytest -q -s tests/test_torch_crosscheck.py`` shows the table).
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import arraynorm as an  # noqa: E402
from _helpers import backend_name, from_numpy, to_numpy  # noqa: E402

pytestmark = pytest.mark.torch

EPS = 1e-5
TOLS = {
    "float64": {"forward": 1e-12, "backward": 1e-12},
    "float32": {"forward": 1e-5, "backward": 2e-5},
}

# ---------------------------------------------------------------------------------------
# error bookkeeping: the largest abs / relative error seen per (group, dtype, what)

_ERRORS: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])


@pytest.fixture(scope="module", autouse=True)
def _print_error_table():
    yield
    if not _ERRORS:
        return
    print("\n\ntorch cross-check: max abs error, max error relative to max|reference|")
    print(f"{'group':<22}{'dtype':<9}{'what':<9}{'max abs':>12}{'max rel':>12}")
    for (group, dt, what), (ea, er) in sorted(_ERRORS.items()):
        print(f"{group:<22}{dt:<9}{what:<9}{ea:12.3e}{er:12.3e}")


def _record(group: str, dt: str, what: str, got: np.ndarray, ref: np.ndarray) -> None:
    err = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    rec = _ERRORS[(group, dt, what)]
    rec[0] = max(rec[0], err)
    rec[1] = max(rec[1], err / max(scale, 1e-300))


def _compare(group: str, dt: str, what: str, got: Any, ref: np.ndarray, *, xp: Any,
             expected_dtype: Any, name: str) -> None:
    """Value and metadata check: namespace, dtype and shape kept, values within tolerance."""
    from array_api_compat import array_namespace

    assert array_namespace(got) is xp, f"{name}: namespace changed"
    assert got.dtype == expected_dtype, f"{name}: dtype {got.dtype}, expected {expected_dtype}"
    g = to_numpy(got)
    assert g.shape == ref.shape, f"{name}: shape {g.shape}, expected {ref.shape}"
    _record(group, dt, what, g, ref)
    tol = TOLS[dt][what]
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    np.testing.assert_allclose(g.astype(np.float64), ref, rtol=tol, atol=tol * scale,
                               err_msg=f"{group} {name} ({dt})")


# ---------------------------------------------------------------------------------------
# cases: an arraynorm call and the PyTorch expression it must equal


class Case(NamedTuple):
    id: str
    group: str
    op: Callable[..., Any]
    call: Callable[[dict], tuple[tuple, dict]]  # backend arrays -> (args, kwargs) for op
    torch_fn: Callable[[dict, str], Any]        # (float64 tensors, tested dtype) -> output
    arrays: dict[str, np.ndarray]
    diff: tuple[str, ...]                       # inputs whose cotangent is compared


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _affine_params(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {"weight": rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape),
            "bias": rng.standard_normal(shape)}


def _channel_first(t: Any, axis: int) -> Any:
    return t if axis == 1 else t.movedim(axis, 1)


def _channel_back(t: Any, axis: int) -> Any:
    return t if axis == 1 else t.movedim(1, axis)


def bn_train(shape: tuple[int, ...], axis: int = 1, seed: int = 0) -> Case:
    rng = _rng(seed)
    c = shape[axis]
    arrays = {"x": 2.0 + 3.0 * rng.standard_normal(shape), **_affine_params(rng, (c,))}

    def torch_fn(t, dt):
        y = F.batch_norm(_channel_first(t["x"], axis), None, None, t["weight"], t["bias"],
                         training=True, eps=EPS)
        return _channel_back(y, axis)

    return Case(f"bn_train-{shape}-axis{axis}", "batch_norm train", an.batch_norm,
                lambda a: ((a["x"], a["weight"], a["bias"]), {"eps": EPS, "axis": axis}),
                torch_fn, arrays, ("x", "weight", "bias"))


def bn_infer(shape: tuple[int, ...], axis: int = 1, seed: int = 1) -> Case:
    rng = _rng(seed)
    c = shape[axis]
    arrays = {"x": rng.standard_normal(shape), **_affine_params(rng, (c,)),
              "mean": rng.standard_normal(c), "var": rng.uniform(0.2, 2.0, c)}

    def torch_fn(t, dt):
        y = F.batch_norm(_channel_first(t["x"], axis), t["mean"], t["var"], t["weight"],
                         t["bias"], training=False, eps=EPS)
        return _channel_back(y, axis)

    return Case(f"bn_infer-{shape}-axis{axis}", "batch_norm infer", an.batch_norm,
                lambda a: ((a["x"], a["weight"], a["bias"]),
                           {"mean": a["mean"], "var": a["var"], "eps": EPS, "axis": axis}),
                torch_fn, arrays, ("x", "weight", "bias"))


def ln(shape: tuple[int, ...], axis: int | tuple[int, ...], seed: int = 2) -> Case:
    rng = _rng(seed)
    nd = len(shape)
    axes = tuple(sorted(a % nd for a in ((axis,) if isinstance(axis, int) else axis)))
    pshape = tuple(shape[a] for a in axes)
    arrays = {"x": rng.standard_normal(shape) - 1.0, **_affine_params(rng, pshape)}
    # torch normalizes trailing axes only: move the normalized axes to the end, in order
    rest = tuple(a for a in range(nd) if a not in axes)
    perm = rest + axes
    inv = tuple(int(i) for i in np.argsort(perm))

    def torch_fn(t, dt):
        y = F.layer_norm(t["x"].permute(perm), pshape, t["weight"], t["bias"], eps=EPS)
        return y.permute(inv)

    return Case(f"ln-{shape}-axis{axis}", "layer_norm", an.layer_norm,
                lambda a: ((a["x"], a["weight"], a["bias"]), {"axis": axis, "eps": EPS}),
                torch_fn, arrays, ("x", "weight", "bias"))


def inorm(shape: tuple[int, ...], axis: int = 1, seed: int = 3) -> Case:
    rng = _rng(seed)
    c = shape[axis]
    arrays = {"x": 0.5 + rng.standard_normal(shape), **_affine_params(rng, (c,))}

    def torch_fn(t, dt):
        y = F.instance_norm(_channel_first(t["x"], axis), weight=t["weight"], bias=t["bias"],
                            eps=EPS)
        return _channel_back(y, axis)

    return Case(f"in-{shape}-axis{axis}", "instance_norm", an.instance_norm,
                lambda a: ((a["x"], a["weight"], a["bias"]), {"eps": EPS, "axis": axis}),
                torch_fn, arrays, ("x", "weight", "bias"))


def gn(shape: tuple[int, ...], groups: int, axis: int = 1, seed: int = 4) -> Case:
    rng = _rng(seed)
    c = shape[axis]
    arrays = {"x": rng.standard_normal(shape) * 2.0, **_affine_params(rng, (c,))}

    def torch_fn(t, dt):
        y = F.group_norm(_channel_first(t["x"], axis), groups, t["weight"], t["bias"], eps=EPS)
        return _channel_back(y, axis)

    return Case(f"gn-{shape}-G{groups}-axis{axis}", "group_norm", an.group_norm,
                lambda a: ((a["x"], groups, a["weight"], a["bias"]), {"eps": EPS, "axis": axis}),
                torch_fn, arrays, ("x", "weight", "bias"))


def rms(shape: tuple[int, ...], axis: int | tuple[int, ...], eps: float | None,
        seed: int = 5) -> Case:
    rng = _rng(seed)
    nd = len(shape)
    axes = tuple(sorted(a % nd for a in ((axis,) if isinstance(axis, int) else axis)))
    assert axes == tuple(range(nd - len(axes), nd)), "torch's rms_norm takes trailing axes"
    pshape = tuple(shape[a] for a in axes)
    arrays = {"x": rng.standard_normal(shape) + 0.3,
              "weight": _affine_params(rng, pshape)["weight"]}

    def torch_fn(t, dt):
        # eps=None means the machine epsilon of the input's dtype (both libraries); the
        # oracle runs in float64, so the tested dtype's epsilon is passed explicitly
        eps_used = float(np.finfo(dt).eps) if eps is None else eps
        return F.rms_norm(t["x"], pshape, t["weight"], eps=eps_used)

    return Case(f"rms-{shape}-axis{axis}-eps{eps}", "rms_norm", an.rms_norm,
                lambda a: ((a["x"], a["weight"]), {"axis": axis, "eps": eps}),
                torch_fn, arrays, ("x", "weight"))


def lrn(shape: tuple[int, ...], size: int, alpha: float = 0.7, beta: float = 0.75,
        k: float = 1.5, seed: int = 6) -> Case:
    rng = _rng(seed)
    arrays = {"x": rng.standard_normal(shape) * 1.5}
    return Case(f"lrn-{shape}-size{size}", "local_response_norm", an.local_response_norm,
                lambda a: ((a["x"], size), {"alpha": alpha, "beta": beta, "k": k}),
                lambda t, dt: F.local_response_norm(t["x"], size, alpha=alpha, beta=beta, k=k),
                arrays, ("x",))


def lp(shape: tuple[int, ...], p: float, axis: int | tuple[int, ...], eps: float = 1e-12,
       scale: float = 1.0, seed: int = 7, x: np.ndarray | None = None) -> Case:
    rng = _rng(seed)
    arrays = {"x": rng.standard_normal(shape) * scale if x is None else x}

    def torch_fn(t, dt):
        if isinstance(axis, int):
            return F.normalize(t["x"], p=p, dim=axis, eps=eps)
        # F.normalize takes one dim; its definition x / max(‖x‖_p, eps) over several
        norm = torch.linalg.vector_norm(t["x"], ord=p, dim=axis, keepdim=True)
        return t["x"] / norm.clamp_min(eps)

    return Case(f"normalize-{shape}-p{p}-axis{axis}-eps{eps}-scale{scale}", "l2_normalize",
                an.l2_normalize, lambda a: ((a["x"],), {"p": p, "axis": axis, "eps": eps}),
                torch_fn, arrays, ("x",))


def generic(shape: tuple[int, ...], label: str, seed: int = 8) -> Case:
    """``normalize(x, partition, operation, weight, bias)`` compositions that PyTorch has."""
    from arraynorm.operation import RMSScale, Standardize
    from arraynorm.partition import Group, Layer

    rng = _rng(seed)
    x = rng.standard_normal(shape) + 0.5
    if label == "group2-standardize":
        arrays = {"x": x, **_affine_params(rng, (shape[1],))}
        return Case(f"normalize-{shape}-{label}", "normalize", an.normalize,
                    lambda a: ((a["x"], Group(2), Standardize(), a["weight"], a["bias"]),
                               {"eps": EPS}),
                    lambda t, dt: F.group_norm(t["x"], 2, t["weight"], t["bias"], eps=EPS),
                    arrays, ("x", "weight", "bias"))
    pshape = tuple(shape[-2:])
    arrays = {"x": x, "weight": _affine_params(rng, pshape)["weight"]}
    return Case(f"normalize-{shape}-{label}", "normalize", an.normalize,
                lambda a: ((a["x"], Layer((-2, -1)), RMSScale(), a["weight"]), {"eps": EPS}),
                lambda t, dt: F.rms_norm(t["x"], pshape, t["weight"], eps=EPS),
                arrays, ("x", "weight"))


def pn(shape: tuple[int, ...], seed: int = 9) -> Case:
    """Positional norm is F.layer_norm over the channel axis moved last."""
    rng = _rng(seed)
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), **_affine_params(rng, (c,))}

    def torch_fn(t, dt):
        y = F.layer_norm(t["x"].movedim(1, -1), (c,), t["weight"], t["bias"], eps=EPS)
        return y.movedim(-1, 1)

    return Case(f"pn-{shape}", "position_norm", an.position_norm,
                lambda a: ((a["x"], a["weight"], a["bias"]), {"eps": EPS}),
                torch_fn, arrays, ("x", "weight", "bias"))


def ghost(shape: tuple[int, ...], k: int, seed: int = 10) -> Case:
    """Ghost BN is F.batch_norm on each chunk of k samples."""
    rng = _rng(seed)
    arrays = {"x": 1.0 + rng.standard_normal(shape), **_affine_params(rng, (shape[1],))}

    def torch_fn(t, dt):
        return torch.cat([F.batch_norm(xc, None, None, t["weight"], t["bias"], training=True,
                                       eps=EPS) for xc in torch.split(t["x"], k, dim=0)])

    return Case(f"ghost-{shape}-k{k}", "ghost_batch_norm", an.ghost_batch_norm,
                lambda a: ((a["x"], k, a["weight"], a["bias"]), {"eps": EPS}),
                torch_fn, arrays, ("x", "weight", "bias"))


def adain_case(cshape: tuple[int, ...], sshape: tuple[int, ...], seed: int = 11) -> Case:
    """AdaIN written with torch ops (biased variance + eps for both, as documented)."""
    rng = _rng(seed)
    arrays = {"content": rng.standard_normal(cshape),
              "style": 2.0 + 1.5 * rng.standard_normal(sshape)}

    def stats(a):
        dims = tuple(range(2, a.ndim))
        return a.mean(dim=dims, keepdim=True), torch.sqrt(
            a.var(dim=dims, unbiased=False, keepdim=True) + EPS)

    def torch_fn(t, dt):
        (mc, sc), (ms, ss) = stats(t["content"]), stats(t["style"])
        return ss * (t["content"] - mc) / sc + ms

    return Case(f"adain-{cshape}-{sshape}", "adain", an.adain,
                lambda a: ((a["content"], a["style"]), {"eps": EPS}),
                torch_fn, arrays, ("content", "style"))


def renorm(shape: tuple[int, ...], rmax: float, dmax: float, seed: int = 12) -> Case:
    """Batch renorm as Ioffe (2017), Algorithm 1, in torch: r and d under stop_gradient."""
    rng = _rng(seed)
    c = shape[1]
    arrays = {"x": 0.5 + 2.0 * rng.standard_normal(shape), **_affine_params(rng, (c,)),
              "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.3, 9.0, c)}

    def torch_fn(t, dt):
        x = t["x"]
        dims = (0,) + tuple(range(2, x.ndim))
        view = (1, c) + (1,) * (x.ndim - 2)
        mu, var = x.mean(dim=dims, keepdim=True), x.var(dim=dims, unbiased=False, keepdim=True)
        sigma_b = torch.sqrt(var + EPS)
        sigma = torch.sqrt(t["running_var"].reshape(view) + EPS)
        r = (sigma_b / sigma).detach().clamp(1.0 / rmax, rmax)
        d = ((mu - t["running_mean"].reshape(view)) / sigma).detach().clamp(-dmax, dmax)
        yhat = (x - mu) / sigma_b * r + d
        return yhat * t["weight"].reshape(view) + t["bias"].reshape(view)

    return Case(f"renorm-{shape}-rmax{rmax}-dmax{dmax}", "batch_renorm", an.batch_renorm,
                lambda a: ((a["x"], a["weight"], a["bias"]),
                           {"running_mean": a["running_mean"], "running_var": a["running_var"],
                            "rmax": rmax, "dmax": dmax, "eps": EPS}),
                torch_fn, arrays, ("x", "weight", "bias"))


CASES = [
    bn_train((6, 3)),
    bn_train((4, 3, 3, 2)),
    bn_train((3, 2, 4, 3), axis=-1),  # NHWC
    bn_train((4, 5, 3)),
    bn_infer((5, 3)),
    bn_infer((3, 4, 2, 2)),
    bn_infer((2, 3, 2, 4), axis=-1),
    ln((4, 6), -1),
    ln((3, 4, 5), (-2, -1)),
    ln((2, 3, 4, 2), (1, 2, 3)),
    ln((2, 3, 4, 2), (1, 2)),          # non-trailing axes: torch on a permuted tensor
    inorm((2, 3, 5)),
    inorm((2, 3, 3, 4)),
    inorm((2, 3, 4, 3), axis=-1),
    gn((2, 6, 3, 2), 1),
    gn((2, 6, 3, 2), 2),
    gn((2, 6, 3, 2), 3),
    gn((2, 6, 3, 2), 6),
    gn((3, 4, 5), 2),
    gn((4, 6), 2),
    gn((2, 3, 2, 6), 3, axis=-1),
    rms((4, 6), -1, None),
    rms((3, 4, 5), (-2, -1), 1e-6),
    rms((2, 3, 4), -1, 0.1),
    lrn((2, 5, 3), 3),
    lrn((2, 6, 3, 2), 2),
    lrn((2, 4, 3), 1),
    lrn((2, 4, 2, 2), 5),
    lrn((2, 3, 4), 7),                 # window wider than the channel count
    lp((3, 5), 2.0, 1),
    lp((3, 5), 1.0, 1),
    lp((3, 5), 3.0, 1),
    lp((3, 5), float("inf"), 1),
    lp((2, 3, 4), 2.0, -1),
    lp((2, 3, 4), 3.0, 0),
    lp((2, 3, 4), 2.0, (1, 2)),
    lp((3, 4), 2.0, 1, eps=0.3, scale=0.05),       # norm below eps: the clamp is active
    lp((3, 4), float("inf"), 1, eps=0.5, scale=0.05),
    # tied maxima: PyTorch splits the norm's subgradient equally between them
    lp((3, 3), float("inf"), 1, x=np.array([[1.0, -1.0, 0.5], [0.25, -0.5, 0.5],
                                            [-2.0, -2.0, -2.0]])),
    generic((2, 4, 3), "group2-standardize"),
    generic((2, 3, 4), "layer-rms"),
    pn((2, 3, 2, 2)),
    ghost((6, 3, 2), 3),
    adain_case((2, 3, 4, 2), (2, 3, 3, 3)),
    renorm((4, 3, 2), 1.5, 0.5),       # some channels clip r or d, others do not
    renorm((5, 3), 3.0, 5.0),
    renorm((4, 3, 2), 1.0, 0.0),       # rmax = 1, dmax = 0: plain BN
]


def _torch_inputs(arrays: dict[str, np.ndarray], diff: tuple[str, ...]) -> dict[str, Any]:
    return {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in diff)
            for k, v in arrays.items()}


def _run_torch(case: Case, arrays: dict[str, np.ndarray], dy: np.ndarray, dt: str):
    t = _torch_inputs(arrays, case.diff)
    y = case.torch_fn(t, dt)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return y.detach().numpy(), {k: t[k].grad.numpy() for k in case.diff}


def _cotangents_by_name(op: Callable[..., Any], cts: tuple) -> dict[str, Any]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in inspect.signature(op).parameters.values() if p.kind in kinds]
    assert len(cts) == len(names), f"pullback returned {len(cts)} cotangents for {names}"
    return dict(zip(names, cts))


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_forward_and_vjp_match_torch_autograd(case: Case, dt: str, xp) -> None:
    rng = _rng(100)
    # round the inputs to the tested dtype first, so both sides see the same numbers
    arrays = {k: v.astype(dt).astype(np.float64) for k, v in case.arrays.items()}
    first = next(iter(case.arrays.values()))  # x or content: the output has its shape
    dy = rng.standard_normal(first.shape).astype(dt).astype(np.float64)
    y_ref, grads_ref = _run_torch(case, arrays, dy, dt)

    backend = {k: from_numpy(xp, v, dt) for k, v in arrays.items()}
    args, kwargs = case.call(backend)
    y, pullback = an.vjp(case.op, *args, **kwargs)
    dtype = getattr(xp, dt)
    # (that the op itself returns the VJP rule's y is checked in test_gradients_fd.py)
    _compare(case.group, dt, "forward", y, y_ref, xp=xp, expected_dtype=dtype, name="y")
    cts = _cotangents_by_name(case.op, pullback(from_numpy(xp, dy, dt)))
    for name in case.diff:
        _compare(case.group, dt, "backward", cts[name], grads_ref[name], xp=xp,
                 expected_dtype=dtype, name=f"d{name}")


# ---------------------------------------------------------------------------------------
# float16: statistics in float32, result rounded once to float16


def _assert_within_one_fp16_ulp(got: np.ndarray, ref16: np.ndarray, name: str) -> None:
    assert got.dtype == np.float16 and ref16.dtype == np.float16
    ulp = np.spacing(np.abs(ref16)).astype(np.float64)
    diff = np.abs(got.astype(np.float64) - ref16.astype(np.float64))
    _record(name, "float16", "forward", got, ref16.astype(np.float64))
    bad = diff > ulp
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} float16 outputs differ from torch's float32 result by more "
        f"than one float16 ulp; worst {diff.max()} at ulp {ulp[np.argmax(diff - ulp)]}"
    )


FP16_CASES = {
    "layer_norm": (lambda x, w, b: an.layer_norm(x, w, b, axis=(-2, -1)),
                   lambda x, w, b: F.layer_norm(x, (3, 8), w, b, eps=EPS), (4, 3, 8), (3, 8)),
    "group_norm": (lambda x, w, b: an.group_norm(x, 2, w, b),
                   lambda x, w, b: F.group_norm(x, 2, w, b, eps=EPS), (3, 4, 5, 2), (4,)),
    "batch_norm": (lambda x, w, b: an.batch_norm(x, w, b),
                   lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=EPS),
                   (6, 4, 3, 2), (4,)),
}


@pytest.mark.parametrize("name", list(FP16_CASES))
def test_float16_forward_matches_torch_float32_rounded(name: str, xp) -> None:
    f16 = getattr(xp, "float16", None)
    if f16 is None and backend_name(xp) == "dask":
        f16 = np.dtype(np.float16)  # dask arrays carry NumPy dtypes; its namespace omits it
    if f16 is None:
        pytest.skip(f"{xp.__name__} has no float16 dtype (the array API standard has none)")
    an_fn, torch_fn, xshape, pshape = FP16_CASES[name]
    rng = _rng(11)
    # activations with an offset mean, where float16 statistics would lose digits
    x16 = (20.0 + 4.0 * rng.standard_normal(xshape)).astype(np.float16)
    w16 = rng.uniform(0.5, 2.0, pshape).astype(np.float16)
    b16 = rng.standard_normal(pshape).astype(np.float16)
    ref = torch_fn(*(torch.tensor(a).float() for a in (x16, w16, b16))).half().numpy()
    y = an_fn(*(from_numpy(xp, a) for a in (x16, w16, b16)))
    assert y.dtype == f16
    _assert_within_one_fp16_ulp(to_numpy(y), ref, name)


# ---------------------------------------------------------------------------------------
# running statistics against torch.nn.BatchNorm buffers


@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "cumulative"])
@pytest.mark.parametrize("shape", [(5, 3, 2, 3), (7, 4)], ids=["4d", "2d"])
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_running_stats_follow_torch_batchnorm_buffers(shape, momentum, dt, xp) -> None:
    rng = _rng(12)
    c = shape[1]
    layer_cls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    bn = layer_cls(c, eps=EPS, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(rng.uniform(0.5, 1.5, c)))
        bn.bias.copy_(torch.tensor(rng.standard_normal(c)))
    rm = from_numpy(xp, np.zeros(c), dt)
    rv = from_numpy(xp, np.ones(c), dt)
    count = int(np.prod(shape)) // c
    dtype = getattr(xp, dt)
    w = from_numpy(xp, bn.weight.detach().numpy(), dt)
    b = from_numpy(xp, bn.bias.detach().numpy(), dt)
    for step in range(1, 5):
        # batches drift so the running statistics move every step
        x = (step + rng.uniform(0.5, 3.0) * rng.standard_normal(shape)).astype(dt)
        bn.train()
        y_ref = bn(torch.tensor(x, dtype=torch.float64)).detach().numpy()
        xb = from_numpy(xp, x)
        # training output equals batch_norm with the layer's affine parameters
        _compare("BatchNorm layer", dt, "forward", an.batch_norm(xb, w, b, eps=EPS), y_ref,
                 xp=xp, expected_dtype=dtype, name=f"train output step {step}")
        bm, bv = an.batch_moments(xb)
        rm, rv = an.update_running_stats(rm, rv, bm, bv, count, momentum=momentum,
                                         num_batches_tracked=step)
        assert int(bn.num_batches_tracked) == step
        _compare("running stats", dt, "forward", rm, bn.running_mean.numpy(), xp=xp,
                 expected_dtype=dtype, name=f"running_mean step {step}")
        _compare("running stats", dt, "forward", rv, bn.running_var.numpy(), xp=xp,
                 expected_dtype=dtype, name=f"running_var step {step}")
    # inference with the accumulated statistics equals the layer in eval mode
    bn.eval()
    x = rng.standard_normal(shape).astype(dt)
    y_ref = bn(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    y = an.batch_norm(from_numpy(xp, x), w, b, mean=rm, var=rv, eps=EPS)
    _compare("BatchNorm layer", dt, "forward", y, y_ref, xp=xp, expected_dtype=dtype,
             name="eval output")
