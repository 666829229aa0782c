"""Gradient normalization family: transforms of a model's gradients before the update.

The survey's third family (Huang et al., arXiv 2009.12836, §5): normalize or clip the
gradient itself — globally, per block (layer), or per output unit relative to the weights.

=============================  ===================================================  ========================
function                       result                                               reference
=============================  ===================================================  ========================
normalized_gradient            g / (‖g‖ + eps), ‖g‖ over all arrays                  normalized gradient
block_normalized_gradient      g_i / (‖g_i‖ + eps) per array                         Yu et al. 2017
clip_by_global_norm            g · min(1, c/(‖g‖_p + 1e-6))                          torch clip_grad_norm_
clip_by_value                  clip(g, −c, c)                                        torch clip_grad_value_
adaptive_gradient_clipping     unit-wise g · min(1, λ·max(‖W‖, eps)/‖g‖)             Brock et al. 2021 (AGC)
lars_trust_ratio               η‖w‖ / (‖g‖ + β‖w‖ + eps)                             You et al. 2017 (LARS)
lamb_trust_ratio               ‖w‖ / (‖u‖ + eps)                                     You et al. 2019 (LAMB)
gradient_centralization        g − mean over all axes but 0                          Yong et al. 2020
=============================  ===================================================  ========================

Containers: ``grads`` is a list, tuple (named tuples included), dict (any mutable mapping
type, copied) or a single array, and the result has the same type and keys; ``None`` entries
(parameters without a gradient, as PyTorch skips them) pass through. All arrays must come
from one namespace and device. Everything is *functional*: new arrays are returned, the
inputs are never written (unlike PyTorch's in-place ``…_`` functions).

Norms are accumulated in float32 at least and scaled by the largest magnitude before being
raised to the power p, so a finite gradient never has an overflowing norm (PyTorch's
``vector_norm`` returns inf for float32 gradients above ~1e19 and then zeroes them). Scalar
results (total norm, trust ratios) are 0-d arrays in that accumulation dtype: a float16 norm
would overflow at 65504. No function here looks at array values in Python (lazy- and
async-safe), except ``clip_by_global_norm(…, error_if_nonfinite=True)``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, MutableMapping
from typing import Any

from ._array_api import (
    xp_check_bool,
    xp_check_eps,
    xp_check_finite_scalar,
    xp_check_floating,
    xp_compute_dtype,
    xp_device,
    xp_namespace,
)
from ._statistics import lp_norm
from ._typing import Array, Namespace, Pullback
from ._vjp import defvjp

__all__ = [
    "normalized_gradient", "block_normalized_gradient", "clip_by_global_norm",
    "clip_by_value", "adaptive_gradient_clipping", "lars_trust_ratio", "lamb_trust_ratio",
    "gradient_centralization",
]

Tree = Any


# ---------------------------------------------------------------------------------------------
# containers

def _flatten(fname: str, name: str, tree: Tree) -> tuple[list[str], list[Any], Callable[[list[Any]], Tree]]:
    """(labels, leaves, rebuild) of a list / tuple / mapping / single array."""
    if isinstance(tree, MutableMapping):
        keys = list(tree)

        def rebuild_map(leaves: list[Any]) -> Tree:
            out = copy.copy(tree)  # keeps the mapping's type (OrderedDict, defaultdict …)
            for k, leaf in zip(keys, leaves):
                out[k] = leaf
            return out

        return [f"{name}[{k!r}]" for k in keys], [tree[k] for k in keys], rebuild_map
    if isinstance(tree, (list, tuple)):
        rebuild: Callable[[list[Any]], Tree]
        if isinstance(tree, tuple) and hasattr(tree, "_fields"):
            rebuild = lambda leaves: type(tree)(*leaves)  # noqa: E731  named tuple
        elif isinstance(tree, tuple):
            rebuild = tuple
        else:
            rebuild = list
        return [f"{name}[{i}]" for i in range(len(tree))], list(tree), rebuild
    return [name], [tree], lambda leaves: leaves[0]


def _gather(fname: str, name: str,
            tree: Tree) -> tuple[Any, list[str], list[Any], Callable[[list[Any]], Tree]]:
    """Flatten ``tree``, check its arrays share one namespace and are floating, return xp."""
    labels, leaves, rebuild = _flatten(fname, name, tree)
    if all(leaf is None for leaf in leaves):
        raise ValueError(f"{fname}: {name} holds no arrays, got {tree!r}")
    xp = xp_namespace(fname, **dict(zip(labels, leaves)))
    for label, leaf in zip(labels, leaves):
        if leaf is not None:
            xp_check_floating(fname, label, leaf, xp)
    return xp, labels, leaves, rebuild


def _map(xp: Namespace, leaves: list[Any], f: Callable[[Array, Array], Array]) -> list[Any]:
    """Apply f(leaf_in_compute_dtype, leaf) to each array, cast back to the leaf's dtype."""
    out: list[Any] = []
    for leaf in leaves:
        if leaf is None:
            out.append(None)
            continue
        ct = xp_compute_dtype(xp, leaf.dtype)
        r = xp.astype(f(xp.astype(leaf, ct, copy=False), leaf), leaf.dtype, copy=False)
        # NumPy turns 0-d results into scalars (np.float64); give back an array as received
        out.append(xp.asarray(r) if leaf.ndim == 0 else r)
    return out



# ---------------------------------------------------------------------------------------------
# norms

def _norm(xp: Namespace, a: Array, p: float = 2.0, axis: tuple[int, ...] | None = None,
          keepdims: bool = False) -> Array:
    """‖a‖_p over ``axis`` (all axes if None) in the compute dtype, without overflow
    (:func:`arraynorm.operation.lp_norm`: squares accumulated in float64 for float32, other
    powers scaled by the largest magnitude). inf/NaN entries make the norm inf (or NaN when a
    NaN is present), as ``vector_norm`` does; an empty reduction gives 0.
    """
    a = xp.astype(a, xp_compute_dtype(xp, a.dtype), copy=False)
    axes = tuple(range(a.ndim)) if axis is None else axis
    m = lp_norm(xp, a, p, axes)
    return m if keepdims else xp.reshape(m, tuple(n for ax, n in enumerate(a.shape) if ax not in axes))


def _total_norm(xp: Namespace, leaves: list[Any], p: float) -> Array:
    """‖(‖g_1‖_p, …, ‖g_k‖_p)‖_p = ‖g‖_p over all arrays, in their common compute dtype."""
    norms = [_norm(xp, leaf, p) for leaf in leaves if leaf is not None]
    dtype = xp.result_type(*(n.dtype for n in norms)) if len(norms) > 1 else norms[0].dtype
    return _norm(xp, xp.stack([xp.astype(n, dtype, copy=False) for n in norms]), p)


def _unitwise_norm(xp: Namespace, a: Array) -> Array:
    """L2 norm per output unit (axis 0) for rank > 1, keepdims; whole-array for rank <= 1."""
    if a.ndim <= 1:
        return _norm(xp, a)
    return _norm(xp, a, 2.0, tuple(range(1, a.ndim)), keepdims=True)


def _check_norm_type(fname: str, p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{fname}: norm_type must be a real number, got {type(p).__name__}")
    order = float(p)
    if not (order > 0):  # also rejects NaN
        raise ValueError(f"{fname}: norm_type must be > 0 (or float('inf')), got {order}")
    return order


# ---------------------------------------------------------------------------------------------
# normalized gradients

def normalized_gradient(grads: Tree, *, eps: float = 1e-8) -> Tree:
    """Normalized gradient direction: g / (‖g‖₂ + eps), ‖g‖₂ the global norm over all arrays.

    The survey's normalized gradient step (§5): only the direction of the full gradient is
    kept, its length set to (almost) one, so the step size is the learning rate alone.
    ``eps`` (default 1e-8, >= 0) is added to the norm, so a zero gradient stays zero
    (eps = 0 gives NaN there). Returns the container type of ``grads``, each array in its
    own dtype.

    g_i ← g_i / (‖g‖₂ + eps),   ‖g‖₂² = Σ_i ‖g_i‖₂²

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> g = an.normalized_gradient([np.array([3.0, 0.0]), np.array([4.0])], eps=0.0)
    >>> g
    [array([0.6, 0. ]), array([0.8])]
    """
    fname = "normalized_gradient"
    eps = xp_check_eps(fname, eps)
    xp, _, leaves, rebuild = _gather(fname, "grads", grads)
    denom = _total_norm(xp, leaves, 2.0) + eps
    return rebuild(_map(xp, leaves, lambda g, _: g / xp.astype(denom, g.dtype, copy=False)))


def block_normalized_gradient(grads: Tree, *, eps: float = 1e-8) -> Tree:
    """Block-normalized gradient: each array g_i / (‖g_i‖₂ + eps) (Yu et al. 2017).

    Yu, Huang, Lin, Salakhutdinov & Carbonell, *Block-Normalized Gradient Method: An
    Empirical Study for Training Deep Neural Network* (arXiv 1707.04822): every block — here
    every array of the container, one layer's weight or bias — gets a unit-norm gradient.
    ``eps`` as in :func:`normalized_gradient`. Returns the container type of ``grads``.

    g_i ← g_i / (‖g_i‖₂ + eps)   for each array i

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> an.block_normalized_gradient({"w": np.array([3.0, 4.0]), "b": np.array([-2.0])}, eps=0.0)
    {'w': array([0.6, 0.8]), 'b': array([-1.])}
    """
    fname = "block_normalized_gradient"
    eps = xp_check_eps(fname, eps)
    xp, _, leaves, rebuild = _gather(fname, "grads", grads)
    return rebuild(_map(xp, leaves, lambda g, _: g / (_norm(xp, g) + eps)))


# ---------------------------------------------------------------------------------------------
# clipping

def clip_by_global_norm(grads: Tree, max_norm: float, *, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> tuple[Tree, Array]:
    """Clip gradients by their global norm: g · min(1, max_norm / (‖g‖_p + 1e-6)).

    The semantics of ``torch.nn.utils.clip_grad_norm_``: ‖g‖_p is the p-norm of all
    arrays together (``norm_type`` any p > 0 or ``float('inf')``, the largest magnitude), the
    coefficient max_norm/(total + 1e-6) is clamped to at most 1 and multiplies every array.
    Returns ``(clipped, total_norm)``: the container type of ``grads`` with new arrays (this
    is functional, nothing is modified in place — unlike PyTorch's trailing underscore) and
    the pre-clipping norm as a 0-d array in float32 at least.

    ``error_if_nonfinite=True`` raises ``RuntimeError`` when the total norm is inf or NaN,
    as PyTorch does; that check reads the value on the host, so it *synchronizes* the device
    (CuPy, PyTorch CUDA) and *computes* a Dask graph. By default (False) there is no sync
    and a NaN/inf norm propagates into the gradients (coefficient NaN, or 0 for inf) as in
    PyTorch. ``max_norm`` is a finite Python number >= 0.

    Difference from PyTorch: the norm is computed scaled (see the module docstring), so a
    finite float32 gradient whose squares would overflow still gets its finite norm (and
    no error) instead of inf.

    ``vjp(clip_by_global_norm, grads, max_norm)`` pulls ``(dclipped, dtotal)`` (a container
    like ``grads`` or ``None``, and a 0-d array or ``None``) back to ``(dgrads, None)``, with
    c = min(1, M/(N + 1e-6)) and ∂N/∂g = sign(g)|g/N|^{p−1}:

        dg = c·dclipped + (dtotal − [c < 1 or equal]·c·Σ dclipped·g/(N + 1e-6)) · ∂N/∂g,

    the ∞-norm's subgradient split equally between tied maxima, as for
    :func:`~arraynorm.l2_normalize`; for p < 1 the subgradient 0 is taken at g = 0.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> grads = {"w": np.array([[3.0, 0.0]]), "b": np.array([4.0])}
    >>> clipped, total = an.clip_by_global_norm(grads, 1.0)
    >>> float(total), np.round(clipped["b"], 6)
    (5.0, array([0.8]))
    """
    return _clip_by_global_norm(grads, max_norm, norm_type, error_if_nonfinite)[0]


def _clip_by_global_norm(grads: Tree, max_norm: float, norm_type: float,
                         error_if_nonfinite: bool) -> tuple[tuple[Tree, Array], Pullback]:
    fname = "clip_by_global_norm"
    max_norm = xp_check_finite_scalar(fname, "max_norm", max_norm, minimum=0.0)
    p = _check_norm_type(fname, norm_type)
    xp_check_bool(fname, "error_if_nonfinite", error_if_nonfinite)
    xp, _, leaves, rebuild = _gather(fname, "grads", grads)
    total = _total_norm(xp, leaves, p)
    if error_if_nonfinite and not bool(xp.all(xp.isfinite(total))):
        raise RuntimeError(
            f"{fname}: the total norm of order {norm_type} of the gradients is non-finite "
            f"(inf or NaN), so it cannot be clipped; pass error_if_nonfinite=False to scale "
            f"the gradients by the non-finite norm anyway"
        )
    raw = max_norm / (total + 1e-6)
    coef = xp.clip(raw, max=1.0)
    clipped = rebuild(_map(xp, leaves, lambda g, _: g * xp.astype(coef, g.dtype, copy=False)))

    def pullback(dy: tuple[Tree, Array | None]) -> tuple[Tree, None]:
        dclipped, dtotal = dy
        dleaves = [None] * len(leaves) if dclipped is None else _flatten(fname, "dy", dclipped)[1]
        n = total
        safe = xp.where(n > 0, n, xp.ones_like(n))
        # Σ dclipped·g/(N + 1e-6): each term of the order of dclipped, no product overflows
        terms = [xp.sum(xp.astype(d, n.dtype, copy=False) * (xp.astype(g, n.dtype, copy=False) / (n + 1e-6)))
                 for g, d in zip(leaves, dleaves) if g is not None and d is not None]
        sgx = sum(terms[1:], terms[0]) if terms else xp.zeros_like(n)
        k = xp.where(raw <= 1.0, -coef * sgx, xp.zeros_like(n))
        if dtotal is not None:
            k = k + xp.astype(dtotal, n.dtype, copy=False)
        if p == math.inf:
            hits = [None if g is None else xp.astype(xp.abs(xp.astype(g, n.dtype, copy=False)) == n, n.dtype)
                    for g in leaves]
            counts = [xp.sum(h) for h in hits if h is not None]
            ties = sum(counts[1:], counts[0])

        def one(i: int, g: Array) -> Array:
            d = dleaves[i]
            gc = xp.astype(g, n.dtype, copy=False)
            if p == math.inf:
                dnorm = xp.sign(gc) * hits[i] / ties
            else:
                u = gc / safe  # sign(0) = 0 picks the subgradient 0 where |u|^{p−1} is inf
                au = xp.where(u == 0, xp.ones_like(u), xp.abs(u))
                dnorm = u if p == 2.0 else xp.sign(u) * au ** (p - 1.0)
            dg = k * dnorm if d is None else coef * xp.astype(d, n.dtype, copy=False) + k * dnorm
            return xp.astype(dg, g.dtype, copy=False)

        dgrads = [None if g is None else one(i, g) for i, g in enumerate(leaves)]
        return rebuild([xp.asarray(a) if a is not None and a.ndim == 0 else a for a in dgrads]), None

    return (clipped, total), pullback


@defvjp(clip_by_global_norm)
def _clip_by_global_norm_vjp(grads: Tree, max_norm: float, *, norm_type: float = 2.0,
                             error_if_nonfinite: bool = False) -> tuple[tuple[Tree, Array], Pullback]:
    return _clip_by_global_norm(grads, max_norm, norm_type, error_if_nonfinite)


def clip_by_value(grads: Tree, clip_value: float) -> Tree:
    """Clip every gradient entry into [−clip_value, clip_value] (``torch.nn.utils.clip_grad_value_``).

    ``clip_value`` is a finite Python number >= 0 (PyTorch does not check its sign; a
    negative value there sets everything to it). NaN entries stay NaN, as with
    ``torch.clamp``. Returns new arrays in the container type of ``grads``.

    g ← clip(g, −clip_value, clip_value)   entrywise

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> an.clip_by_value(np.array([-3.0, 0.5, 2.0]), 1.0)
    array([-1. ,  0.5,  1. ])
    """
    fname = "clip_by_value"
    c = xp_check_finite_scalar(fname, "clip_value", clip_value, minimum=0.0)
    xp, _, leaves, rebuild = _gather(fname, "grads", grads)
    return rebuild(_map(xp, leaves, lambda g, _: xp.clip(g, min=-c, max=c)))


def adaptive_gradient_clipping(grads: Tree, params: Tree, *, clipping: float = 0.01,
                               eps: float = 1e-3) -> Tree:
    """Adaptive gradient clipping (AGC, Brock, De, Smith & Simonyan 2021, NFNets), unit-wise.

    For each output unit i (one row along axis 0 of a weight of rank >= 2; the whole array
    for scalars and vectors, i.e. biases and gains):

        ‖g_i‖ > λ·max(‖W_i‖, eps)  ⇒  g_i ← g_i · λ·max(‖W_i‖, eps) / max(‖g_i‖, 1e-6)

    otherwise g_i is kept; λ = ``clipping`` (default 0.01), norms are Frobenius over the
    unit's fan-in (axes 1…). Unit convention: PyTorch's (out, in, *kernel) layout, as timm's
    ``adaptive_clip_grad``; the NFNets JAX code uses HWIO kernels, so there the unit axis is
    the last one, and it treats arrays that *squeeze* to rank <= 1 (e.g. (1, n)) as vectors,
    while here the rank of the array decides. The 1e-6 floor is the reference code's.

    ``params`` has the structure of ``grads`` (same container type, keys/length, shapes);
    ``None`` gradients stay ``None``. Returns new arrays in the container type of ``grads``.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w = np.array([[1.0, 0.0], [0.0, 100.0]])
    >>> g = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> an.adaptive_gradient_clipping([g], [w], clipping=0.1)[0]   # only row 0 is clipped
    array([[0. , 0.1],
           [1. , 0. ]])
    """
    fname = "adaptive_gradient_clipping"
    lam = xp_check_finite_scalar(fname, "clipping", clipping, minimum=0.0)
    eps = xp_check_eps(fname, eps)
    xp, glabels, gleaves, rebuild = _gather(fname, "grads", grads)
    plabels, pleaves, _ = _flatten(fname, "params", params)
    if type(params) is not type(grads) or len(pleaves) != len(gleaves) or (
            isinstance(grads, MutableMapping) and list(params) != list(grads)):
        raise ValueError(
            f"{fname}: params must have the structure of grads (same container type and "
            f"keys), got {type(params).__name__} with {len(pleaves)} entries for "
            f"{type(grads).__name__} with {len(gleaves)}"
        )
    named = {lab: leaf for lab, leaf in zip(glabels + plabels, gleaves + pleaves)}
    xp_namespace(fname, **named)
    out: list[Any] = []
    for glab, plab, g, w in zip(glabels, plabels, gleaves, pleaves):
        if g is None:
            out.append(None)
            continue
        if w is None:
            raise ValueError(f"{fname}: {plab} is None but {glab} is an array")
        xp_check_floating(fname, plab, w, xp)
        if tuple(w.shape) != tuple(g.shape):
            raise ValueError(
                f"{fname}: {plab} has shape {tuple(w.shape)} but {glab} has {tuple(g.shape)}"
            )
        ct = xp_compute_dtype(xp, xp.result_type(g.dtype, w.dtype))
        gc = xp.astype(g, ct, copy=False)
        w_norm = xp.astype(_unitwise_norm(xp, w), ct, copy=False)
        g_norm = xp.astype(_unitwise_norm(xp, g), ct, copy=False)
        floor = xp.asarray(eps, dtype=ct, device=xp_device(gc))
        max_norm = xp.maximum(w_norm, floor) * lam
        tiny = xp.asarray(1e-6, dtype=ct, device=xp_device(gc))
        clipped = gc * (max_norm / xp.maximum(g_norm, tiny))
        out.append(xp.astype(xp.where(g_norm > max_norm, clipped, gc), g.dtype, copy=False))
    return rebuild(out)


# ---------------------------------------------------------------------------------------------
# layer-wise trust ratios

def _pair(fname: str, aname: str, a: Array, bname: str, b: Array) -> tuple[Any, Any]:
    xp = xp_namespace(fname, **{aname: a, bname: b})
    xp_check_floating(fname, aname, a, xp)
    xp_check_floating(fname, bname, b, xp)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{fname}: {bname} must have the shape of {aname} {tuple(a.shape)}, got {tuple(b.shape)}"
        )
    return xp, xp_compute_dtype(xp, xp.result_type(a.dtype, b.dtype))


def _ratio_or_one(xp: Namespace, num: Array, den: Array, zero: Array) -> Array:
    """num/den, and 1 where ``zero`` (without ever dividing by zero there)."""
    one = xp.ones_like(num)
    return xp.where(zero, one, num / xp.where(zero, one, den))


def lars_trust_ratio(param: Array, grad: Array, *, trust_coefficient: float = 0.001,
                     weight_decay: float = 0.0, eps: float = 0.0) -> Array:
    """LARS layer-wise trust ratio: η·‖w‖ / (‖g‖ + β·‖w‖ + eps) (You, Gitman & Ginsburg 2017).

    The local learning rate of *Large Batch Training of Convolutional Networks*
    (arXiv 1708.03888, eq. 6 / Algorithm 1): η = ``trust_coefficient`` (default 0.001), β =
    ``weight_decay``; the update of the layer is then lr · ratio · (g + β·w). The ratio is 1
    where ‖w‖ = 0 or ‖g‖ = 0 (a fresh zero-initialized layer, or no gradient): the
    convention of NVIDIA apex's LARC and of Optax's ``scale_by_trust_ratio``.

    Definition followed: the paper's, with β·‖w‖ in the denominator. Optax's ``lars``
    (weight decay added to the update first) uses ‖g + β·w‖ instead; with weight_decay=0
    the two agree (then this is Optax's ratio with its default eps=0).

    Shapes: ``param`` and ``grad`` alike (one layer); returns a 0-d array in float32 at least.

    ratio = η·‖w‖ / (‖g‖ + β·‖w‖ + eps)

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> w, g = np.array([3.0, 4.0]), np.array([0.0, 0.5])      # ‖w‖ = 5, ‖g‖ = 0.5
    >>> float(an.lars_trust_ratio(w, g, trust_coefficient=0.001))   # 0.001·5/0.5
    0.01
    """
    fname = "lars_trust_ratio"
    eta = xp_check_finite_scalar(fname, "trust_coefficient", trust_coefficient, minimum=0.0)
    beta = xp_check_finite_scalar(fname, "weight_decay", weight_decay, minimum=0.0)
    eps = xp_check_eps(fname, eps)
    xp, ct = _pair(fname, "param", param, "grad", grad)
    w_norm = xp.astype(_norm(xp, param), ct, copy=False)
    g_norm = xp.astype(_norm(xp, grad), ct, copy=False)
    zero = (w_norm == 0) | (g_norm == 0)
    return _ratio_or_one(xp, eta * w_norm, g_norm + beta * w_norm + eps, zero)


def lamb_trust_ratio(param: Array, update: Array, *, eps: float = 0.0) -> Array:
    """LAMB layer-wise trust ratio: ‖w‖ / (‖u‖ + eps) (You et al. 2019).

    *Large Batch Optimization for Deep Learning: Training BERT in 76 minutes*
    (arXiv 1904.00962, Algorithm 2) with φ the identity: ``update`` u is the layer's Adam
    direction plus the weight decay term, r + λ·w; the step is lr · ratio · u. The ratio is 1
    where ‖w‖ = 0 or ‖u‖ = 0, as Optax's ``lamb`` (``scale_by_trust_ratio``, eps 0 by
    default) does.

    Shapes: ``param`` and ``update`` alike; returns a 0-d array in float32 at least.

    ratio = ‖w‖ / (‖u‖ + eps)

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> float(an.lamb_trust_ratio(np.array([3.0, 4.0]), np.array([0.0, 2.0])))   # 5 / 2
    2.5
    """
    fname = "lamb_trust_ratio"
    eps = xp_check_eps(fname, eps)
    xp, ct = _pair(fname, "param", param, "update", update)
    w_norm = xp.astype(_norm(xp, param), ct, copy=False)
    u_norm = xp.astype(_norm(xp, update), ct, copy=False)
    return _ratio_or_one(xp, w_norm, u_norm + eps, (w_norm == 0) | (u_norm == 0))


# ---------------------------------------------------------------------------------------------
# centralization

def gradient_centralization(grad: Tree) -> Tree:
    """Gradient centralization: g − mean(g) over all axes but 0, for arrays of rank > 1 (Yong et al. 2020).

    *Gradient Centralization: A New Optimization Technique for Deep Neural Networks*
    (ECCV 2020): each output unit's gradient (a row along axis 0, PyTorch's weight layout)
    is made zero-mean, a projection that constrains the weight update to a hyperplane.
    Arrays of rank <= 1 (biases, gains) are returned unchanged, as in the paper's code.
    Takes one array or a container of them (same container type back).

    g_i ← g_i − mean(g_i),   g_i the row of output unit i (all axes but 0)

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> an.gradient_centralization(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]))
    array([[-1., 0., 1.],
           [-2., -2., 4.]])
    """
    fname = "gradient_centralization"
    xp, _, leaves, rebuild = _gather(fname, "grad", grad)

    def centre(g: Array, orig: Array) -> Array:
        if g.ndim <= 1:
            return orig
        return g - xp.mean(g, axis=tuple(range(1, g.ndim)), keepdims=True)

    return rebuild(_map(xp, leaves, centre))
