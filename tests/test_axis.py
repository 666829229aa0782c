"""``axis`` (issue 12, Conventions): the kept *channel* axis of the batch, instance, group,
position, ghost-batch, renorm, whitening, LRN and AdaIN ops, the *reduced* axes of layer, RMS
and L2 normalization (Keras' meaning). Negative axes count from the end; tuples are accepted
where they mean something (the reduced axes) and refused with a ValueError where they do not
(one channel axis).

Oracles: NumPy float64 formulas written here (BN, IN, GN, PN, LN, RMS, L2 on the channel-last
or multi-axis layout), and for the rest "move the channel to axis 1, run the op with its
default axis, move it back"."""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm as an
from arraynorm import nn

BACKENDS = ["numpy", "array_api_strict"]
EPS = 1e-5
RNG = np.random.default_rng(3)
X = RNG.standard_normal((4, 3, 5, 6)) * 2.0 + 0.5      # (N, H, W, C): channels last
C = X.shape[-1]
W = np.linspace(0.5, 1.5, C)
B = np.linspace(-1.0, 1.0, C)


@pytest.fixture(params=BACKENDS)
def ns(request):
    if request.param == "numpy":
        return np
    return pytest.importorskip("array_api_strict")


def _np(a):
    return np.asarray(a)


def _std(x, axes):
    m = x.mean(axis=axes, keepdims=True)
    v = ((x - m) ** 2).mean(axis=axes, keepdims=True)
    return (x - m) / np.sqrt(v + EPS)


def _gn_last(x, g):
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(x.shape[:-1] + (g, c // g))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    return _std(xg, axes).reshape(x.shape)


# name -> (call with channels last via axis=-1 on x (N, H, W, C), float64 oracle)
CHANNEL_LAST = {
    "batch_norm": (lambda x, w, b, k: an.batch_norm(x, w, b, axis=k),
                   lambda x: _std(x, (0, 1, 2)) * W + B),
    "instance_norm": (lambda x, w, b, k: an.instance_norm(x, w, b, axis=k),
                      lambda x: _std(x, (1, 2)) * W + B),
    "group_norm": (lambda x, w, b, k: an.group_norm(x, 3, w, b, axis=k),
                   lambda x: _gn_last(x, 3) * W + B),
    "position_norm": (lambda x, w, b, k: an.position_norm(x, w, b, axis=k),
                      lambda x: _std(x, (3,)) * W + B),
    "ghost_batch_norm": (lambda x, w, b, k: an.ghost_batch_norm(x, 2, w, b, axis=k),
                         lambda x: np.concatenate([_std(x[:2], (0, 1, 2)), _std(x[2:], (0, 1, 2))]) * W + B),
    "batch_renorm": (lambda x, w, b, k: an.batch_renorm(x, w, b, running_mean=_like(x, np.full(C, 0.3)),
                                                        running_var=_like(x, np.full(C, 2.0)), axis=k),
                     None),
    "decorrelated_batch_norm": (lambda x, w, b, k: an.decorrelated_batch_norm(x, w, b, num_groups=2, axis=k), None),
    "iter_norm": (lambda x, w, b, k: an.iter_norm(x, w, b, num_groups=3, axis=k), None),
    "group_whitening": (lambda x, w, b, k: an.group_whitening(x, 2, w, b, axis=k), None),
    "local_response_norm": (lambda x, w, b, k: an.local_response_norm(x, 3, alpha=0.5, axis=k), None),
    "adain": (lambda x, w, b, k: an.adain(x, _flip(x) * 2.0 + 1.0, axis=k), None),
    "batch_moments": (lambda x, w, b, k: an.batch_moments(x, axis=k),
                      lambda x: (x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))),
    "whitening_moments": (lambda x, w, b, k: an.whitening_moments(x, num_groups=2, axis=k), None),
}
# the ops whose result is per channel (no channel axis to move back)
PER_CHANNEL = {"batch_moments", "whitening_moments"}


def _flip(x):
    return np.flip(x, axis=0) if isinstance(x, np.ndarray) else __import__("array_api_strict").flip(x, axis=0)


def _like(x, a):
    return a if isinstance(x, np.ndarray) else __import__("array_api_strict").asarray(a)


def _to(ns, a):
    return a if ns is np else ns.asarray(a)


@pytest.mark.parametrize("name", list(CHANNEL_LAST))
@pytest.mark.parametrize("axis", [-1, 3])
def test_channel_axis_last_matches_the_oracle(ns, name, axis):
    op, oracle = CHANNEL_LAST[name]
    y = op(_to(ns, X), _to(ns, W), _to(ns, B), axis)
    if oracle is not None:
        ref = oracle(X)
    else:   # move the channel to 1, run the op with its default axis (on NumPy), move back
        y1 = op(np.moveaxis(X, -1, 1).copy(), W, B, 1)
        ref = y1 if name in PER_CHANNEL else np.moveaxis(y1, 1, -1)
    for a, r in zip(y if isinstance(y, tuple) else (y,), ref if isinstance(ref, tuple) else (ref,)):
        np.testing.assert_allclose(_np(a), r, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(CHANNEL_LAST))
def test_a_tuple_channel_axis_is_a_value_error(name):
    op = CHANNEL_LAST[name][0]
    with pytest.raises(ValueError, match=rf"{name}: axis is the channel axis, one int, got \(1, 3\)"):
        op(X, W, B, (1, 3))


@pytest.mark.parametrize("name", list(CHANNEL_LAST))
def test_out_of_range_and_batch_channel_axes_are_refused(name):
    op = CHANNEL_LAST[name][0]
    with pytest.raises(ValueError, match=rf"{name}: axis=-5 is out of range for an input of rank 4"):
        op(X, W, B, -5)
    with pytest.raises(ValueError, match=rf"{name}: axis \(the channel axis\) cannot be 0"):
        op(X, W, B, -4)


# reduced axes: (axis argument, the same axes as NumPy reduces them)
REDUCED = [(-1, (3,)), (3, (3,)), ((-2, -1), (2, 3)), ((2, 3), (2, 3)), ((1, -1), (1, 3)),
           ((-1, 1), (1, 3)), ((1, 2, 3), (1, 2, 3))]


@pytest.mark.parametrize("axis, axes", REDUCED, ids=[str(a) for a, _ in REDUCED])
def test_reduced_axes_match_the_oracle(ns, axis, axes):
    x = _to(ns, X)
    shape = tuple(X.shape[a] for a in axes)
    w = np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape)
    wb = w.reshape(tuple(X.shape[a] if a in axes else 1 for a in range(X.ndim)))
    np.testing.assert_allclose(_np(an.layer_norm(x, _to(ns, w), _to(ns, w - 1.0), axis=axis)),
                               _std(X, axes) * wb + (wb - 1.0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(an.rms_norm(x, _to(ns, w), axis=axis, eps=EPS)),
                               X / np.sqrt((X ** 2).mean(axis=axes, keepdims=True) + EPS) * wb,
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(an.l2_normalize(x, axis=axis)),
                               X / np.sqrt((X ** 2).sum(axis=axes, keepdims=True)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", [an.layer_norm, an.rms_norm, an.l2_normalize])
def test_bad_reduced_axes_are_refused(op):
    name = op.__name__
    with pytest.raises(ValueError, match=rf"{name}: axis=\(1, -3\) repeats an axis"):
        op(X, axis=(1, -3))
    with pytest.raises(ValueError, match=rf"{name}: axis=4 is out of range for an input of rank 4"):
        op(X, axis=(1, 4))
    with pytest.raises(TypeError, match=rf"{name}: axis must be an int or a non-empty tuple"):
        op(X, axis=())


# ----------------------------------------------------------------------------- nn layers
LAYERS = {
    "BatchNorm": lambda k: nn.BatchNorm(C, axis=k),
    "BatchRenorm": lambda k: nn.BatchRenorm(C, axis=k),
    "UncenteredBatchNorm": lambda k: nn.UncenteredBatchNorm(C, axis=k),
    "InstanceNorm": lambda k: nn.InstanceNorm(C, affine=True, axis=k),
    "GroupNorm": lambda k: nn.GroupNorm(3, C, axis=k),
    "PositionNorm": lambda k: nn.PositionNorm(C, axis=k),
    "DecorrelatedBatchNorm": lambda k: nn.DecorrelatedBatchNorm(C, 2, axis=k),
    "IterNorm": lambda k: nn.IterNorm(C, 3, axis=k),
    "LocalResponseNorm": lambda k: nn.LocalResponseNorm(3, alpha=0.5, axis=k),
}


def _set_params(layer):
    for k, p in layer.params.items():
        layer.params[k] = np.linspace(0.5, 1.5, p.size).reshape(p.shape) - (k == "bias")
    return layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_channel_last_layers_match_the_channel_first_layer(ns, name):
    """A layer with axis=-1 on NHWC = the axis=1 layer on NCHW (moved): outputs, dx, γ/β
    gradients, running statistics after a training step and the eval output."""
    make = LAYERS[name]
    last, first = _set_params(make(-1)).to(ns), _set_params(make(1))
    dy = RNG.standard_normal(X.shape)
    y = last(_to(ns, X))
    dx = last.backward(_to(ns, dy))
    y1 = first(np.moveaxis(X, -1, 1).copy())
    dx1 = first.backward(np.moveaxis(dy, -1, 1).copy())
    np.testing.assert_allclose(_np(y), np.moveaxis(y1, 1, -1), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(_np(dx), np.moveaxis(dx1, 1, -1), rtol=1e-8, atol=1e-9)
    for k in first.grads:
        np.testing.assert_allclose(_np(last.grads[k]), first.grads[k], rtol=1e-8, atol=1e-9)
    for k, v in first.buffers.items():
        np.testing.assert_allclose(_np(last.buffers[k]), np.asarray(v), rtol=1e-9, atol=1e-12)
    last.eval(), first.eval()
    np.testing.assert_allclose(_np(last(_to(ns, X))), np.moveaxis(first(np.moveaxis(X, -1, 1).copy()), 1, -1),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(LAYERS) + ["AdaIN"])
def test_layers_refuse_a_tuple_channel_axis_at_construction(name):
    make = LAYERS.get(name, lambda k: nn.AdaIN(axis=k))
    with pytest.raises(ValueError, match=r"axis is the channel axis, one int, got \(1, 2\)"):
        make((1, 2))


@pytest.mark.parametrize("cls", [nn.LayerNorm, nn.RMSNorm])
@pytest.mark.parametrize("axis, axes", [((-2, -1), (2, 3)), ((1, 3), (1, 3)), (1, (1,)), (-3, (1,))])
def test_layer_and_rms_norm_layers_take_the_reduced_axes(ns, cls, axis, axes):
    shape = tuple(X.shape[a] for a in axes)
    layer = _set_params(cls(shape, axis=axis, eps=EPS)).to(ns)
    w = np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape)
    wb = w.reshape(tuple(X.shape[a] if a in axes else 1 for a in range(X.ndim)))
    y = _np(layer(_to(ns, X)))
    if cls is nn.LayerNorm:
        ref = _std(X, axes) * wb + (wb - 1.0)
    else:
        ref = X / np.sqrt((X ** 2).mean(axis=axes, keepdims=True) + EPS) * wb
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)
    # the default (trailing axes) is torch.nn.LayerNorm's, and axis names the same ones
    if axes == (2, 3):
        np.testing.assert_allclose(_np(_set_params(cls(shape, eps=EPS)).to(ns)(_to(ns, X))), y,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("axis, error, message", [
    ((1,), ValueError, r"must name one axis per entry of normalized_shape=\(5, 6\)"),
    ((3, 2), ValueError, r"must be increasing"),
    ((1, -1), ValueError, r"mixes negative and non-negative"),
    ((2, 2), ValueError, r"repeats an axis"),
    ("last", TypeError, r"axis must be an int or a non-empty tuple of ints"),
])
def test_layer_norm_layer_refuses_bad_axes(axis, error, message):
    with pytest.raises(error, match=rf"LayerNorm: .*{message}"):
        nn.LayerNorm((5, 6), axis=axis)




TORCH_LAYERS = {
    "DecorrelatedBatchNorm": lambda t, k, dt: t.DecorrelatedBatchNorm(C, 2, axis=k, dtype=dt),
    "IterNorm": lambda t, k, dt: t.IterNorm(C, 3, axis=k, dtype=dt),
    "GroupWhitening": lambda t, k, dt: t.GroupWhitening(2, C, axis=k, dtype=dt),
    "PositionNorm": lambda t, k, dt: t.PositionNorm(C, affine=True, axis=k, dtype=dt),
    "BatchRenorm": lambda t, k, dt: t.BatchRenorm(C, axis=k, dtype=dt),
    "GhostBatchNorm": lambda t, k, dt: t.GhostBatchNorm(C, 2, axis=k, dtype=dt),
    "AdaIN": lambda t, k, dt: t.AdaIN(axis=k),
}


@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_torch_bridge_layers_take_the_channel_axis_the_same_way(name):
    """The torch layers (optional extra): axis=-1 on NHWC = axis=1 on NCHW; a tuple is refused
    at construction."""
    torch = pytest.importorskip("torch")
    import arraynorm.torch as ant

    make = TORCH_LAYERS[name]
    last, first = make(ant, -1, torch.float64), make(ant, 1, torch.float64)
    xs = (torch.tensor(X),) + ((torch.tensor(X[::-1] * 2.0 + 1.0),) if name == "AdaIN" else ())
    xs1 = tuple(torch.movedim(a, -1, 1).contiguous() for a in xs)
    y = last(*xs).detach().numpy()
    y1 = first(*xs1).detach().numpy()
    np.testing.assert_allclose(y, np.moveaxis(y1, 1, -1), rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match=r"axis is the channel axis, one int, got \(1, 2\)"):
        make(ant, (1, 2), torch.float64)
