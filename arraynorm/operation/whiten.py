"""Whitening operations (stage 2, the survey's §3.2.2): decorrelate the features of each
partition, not only standardize them.

A whitening operation works on a partition's view with three kinds of axes: the reduced
axes (m samples per statistic), ``layout.feature_axis`` (d features that get decorrelated)
and every other axis (independent blocks: channel groups, or samples). Per block,

    X_c = X − μ,   Σ = X_c X_cᵀ / m + eps·I,   Y = W X_c,

with the whitening matrix W chosen by the operation:

==================  ==========================================  ===========================
operation           W                                           reference
==================  ==========================================  ===========================
ZCAWhiten           Σ^{-1/2} = U Λ^{-1/2} Uᵀ                    Huang et al. 2018 (DBN)
PCAWhiten           Λ^{-1/2} Uᵀ (descending λ, signed U)        Huang et al. 2018, §3
CholeskyWhiten      L^{-1}, Σ = L Lᵀ                            Siarohin et al. 2019
IterNormWhiten(T)   p_T(Σ/trΣ)/sqrt(trΣ), Newton iterations     Huang et al. 2019
GivenWhitening      a given mean and W (inference)              —
==================  ==========================================  ===========================

The named methods that compose them (decorrelated BN, IterNorm, group whitening) are in
:mod:`arraynorm.whitening`; the layers that keep their running statistics choose the
operation by name through :data:`WHITENING_METHODS` / :func:`whitening_operation`, the one
method table.

Backward passes are exact and closed-form (:mod:`arraynorm._linalg`): through the symmetric
eigendecomposition (ZCA, PCA), the Cholesky factor and its inverse, or the unrolled Newton
iterations, and through the centring and the covariance, so the gradient reaches x. Each
operation's ``jvp`` is the forward-mode product through the same steps, its transpose:
Daleckii–Krein for ZCA, the eigenvector derivative dU = U (F ∘ Uᵀ dΣ U) for PCA,
dL = L Φ(L⁻¹ dΣ L⁻ᵀ) for Cholesky, the Newton recurrence differentiated forward for IterNorm.

Backends: ZCA, PCA and Cholesky need batched ``xp.linalg.eigh`` / ``cholesky`` (the
capability table, :func:`arraynorm._array_api.xp_capabilities`); Dask has neither and gets
``NotImplementedError``. IterNorm needs only ``matmul`` and runs lazily on Dask too.

Numerics (:func:`arraynorm._linalg.whiten_rows`): the mean is the shifted one of the
standardize operation (:func:`arraynorm._statistics.centre`), so a constant input gives
exactly 0 and an offset of 10⁴ in float32 costs no accuracy; the centred values are scaled by
a power of two per block before the covariance is formed, so finite inputs of any magnitude
give the right output. A whitening matrix of no values does not exist: an empty batch,
spatial size 0 or no channels raise ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _linalg
from .._array_api import xp_check_floating, xp_check_int, xp_namespace
from .._linalg import Linearization, Pullback
from .._statistics import pow2_scale
from .._typing import Array, Namespace
from ..partition import Layout
from .base import Operation

__all__ = ["Whiten", "ZCAWhiten", "PCAWhiten", "CholeskyWhiten", "IterNormWhiten", "GivenWhitening",
           "WhiteningState", "GivenWhiteningState", "WHITENING_METHODS", "whitening_operation"]


# --------------------------------------------------------------------------------------
# the view as a stack of (d, m) matrices
# --------------------------------------------------------------------------------------

#: columns per tile of the NumPy transposing copy of :meth:`_Blocks.from_blocks` (× 4: measured
#: best of 16–1024 for 8192×512 float32)
_TILE = 64


@dataclass(frozen=True)
class _Blocks:
    """A layout's view seen as (B, d, m): kept axes -> B blocks, feature axis -> d rows,
    reduced axes -> m columns. Blocks enumerate the kept axes in view order (C order)."""

    perm: tuple[int, ...]
    inverse: tuple[int, ...]
    permuted_shape: tuple[int, ...]
    stats_permuted_shape: tuple[int, ...]
    b: int
    d: int
    m: int

    @classmethod
    def of(cls, layout: Layout) -> "_Blocks":
        view, reduce, f = layout.view_shape, layout.reduce_axes, layout.feature_axis
        assert f is not None  # Normalizer refuses partitions without one (needs_feature_axis)
        kept = tuple(a for a in range(len(view)) if a not in reduce and a != f)
        perm = kept + (f,) + tuple(reduce)
        inverse = tuple(perm.index(a) for a in range(len(view)))
        permuted = tuple(view[a] for a in perm)
        stats = tuple(1 if a in reduce else view[a] for a in perm)
        return cls(perm, inverse, permuted, stats, math.prod(view[a] for a in kept),
                   view[f], layout.group_size)

    def to_blocks(self, xp: Namespace, a: Array) -> Array:
        return xp.reshape(xp.permute_dims(a, self.perm), (self.b, self.d, self.m))

    def from_blocks(self, xp: Namespace, a: Array, *, ordered: bool = True) -> Array:
        """(B, d, m) blocks back in the view's shape. On NumPy, ``ordered`` (outputs: ŷ, the
        JVP) copies them into the view's own C order (blocks already in that memory order, as
        :class:`~arraynorm._linalg.RowWhitening` forms Y and gX for (N, C) batches, come back
        as a view); otherwise (the input cotangent, as before) the result is the permuted
        view, which costs no second input-sized array at the backward's peak."""
        if ordered and isinstance(a, np.ndarray) and a.shape == self.permuted_shape:
            back = np.transpose(a, self.inverse)
            if back.flags.c_contiguous:  # the blocks were formed in the view's order
                return back
        if ordered and self._tiled(a):
            # not the permuted view: ŷ, the output and every later pass over them would be
            # strided (the affine's backward 3× slower); one block and a tile of columns at
            # a time (8192×512 float32: 19.8 ms at once, 5.3 ms in tiles)
            out = np.empty(tuple(self.permuted_shape[i] for i in self.inverse), a.dtype)
            dst = np.transpose(out, self.perm)
            for k in range(self.b):
                for lo in range(0, self.m, 4 * _TILE):
                    dst[k, :, lo:lo + 4 * _TILE] = a[k, :, lo:lo + 4 * _TILE]
            return out
        return xp.permute_dims(xp.reshape(a, self.permuted_shape), self.inverse)

    def _tiled(self, a: Array) -> bool:
        """The NumPy lane of :meth:`from_blocks`: one kept axis (the blocks), one feature axis
        and one reduced axis (BatchGroups on (N, C) input: DBN, IterNorm), large enough to
        matter, and not already in the target order. (:meth:`to_blocks` stays a view where
        the permutation allows one: a tiled copy there measured as fast again but added an
        input-sized array to the backward's peak, 7.15 → 8.15× the input.)"""
        return (isinstance(a, np.ndarray) and len(self.permuted_shape) == 3
                and self.perm != (0, 1, 2) and a.size >= 1 << 16)

    def stats_to_blocks(self, xp: Namespace, a: Array) -> Array:
        """A statistic in ``layout.stats_shape`` as (B, d, 1)."""
        return xp.reshape(xp.permute_dims(a, self.perm), (self.b, self.d, 1))

    def stats_from_blocks(self, xp: Namespace, a: Array) -> Array:
        return xp.permute_dims(xp.reshape(a, self.stats_permuted_shape), self.inverse)


@dataclass
class WhiteningState:
    """What a whitening operation keeps: the batch ``mean`` (in ``layout.stats_shape``, like
    :class:`~arraynorm.operation.StandardizeState`) and ``whitening_matrix`` W of shape
    (B, d, d), one per block of the view (the groups for :class:`BatchGroups`, (sample,)
    for :class:`Group`), so running statistics can be kept. ``pullback`` maps the view's
    cotangent, as (B, d, m), to the input's; ``pushforward`` the input's tangent to the
    view's."""

    mean: Array
    whitening_matrix: Array
    blocks: _Blocks
    pullback: Pullback
    pushforward: Pullback


# --------------------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------------------

class Whiten(Operation):
    """Base of the whitening operations that compute their statistics from the input:
    subclasses give :meth:`matrix`. The keyword ``name`` is the function that error
    messages name (default the class name; the named methods pass their own)."""

    needs_feature_axis = True
    #: what the operation is called in messages, and the ``xp.linalg`` routines it needs
    what: str = "whitening"
    routines: tuple[str, ...] = ()

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def matrix(self, xp: Namespace, sigma: Array, eps: Array) -> tuple[Array, Linearization]:  # pragma: no cover
        """W and its pullback for the covariance ``sigma`` (..., d, d), which holds ``eps``
        (..., 1) on its diagonal (the scaled eps of :func:`arraynorm._linalg.whiten_rows`)."""
        raise NotImplementedError

    def _whiten(self, xp: Namespace, xv: Array, layout: Layout,
                eps: float) -> tuple[_Blocks, _linalg.RowWhitening]:
        blocks = _Blocks.of(layout)
        rw = _linalg.whiten_rows(xp, self.row_blocks(xp, xv, layout), self.matrix,
                                 scale=1.0 / blocks.m, eps=eps)
        return blocks, rw

    def statistics(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, Array]:
        """(mean in ``layout.stats_shape``, W of shape (B, d, d)) without forming the output."""
        blocks, rw = self._whiten(xp, xv, layout, eps)
        return blocks.stats_from_blocks(xp, rw.mean), rw.w

    def row_blocks(self, xp: Namespace, xv: Array, layout: Layout) -> Array:
        """The view as (B, d, m) blocks whose rows get decorrelated (:meth:`statistics`'s
        input), after checking the backend and the sizes as :meth:`forward` does."""
        if self.routines:
            _linalg.require_linalg(self.name, xp, self.what, self.routines)
        blocks = _Blocks.of(layout)
        if blocks.m == 0 or blocks.d == 0:
            # unlike BN's empty output, a whitening matrix of no values (or of no features)
            # does not exist, and the running statistics would have nothing to average
            raise ValueError(
                f"{self.name}: {self.what} needs at least one feature and one value per "
                f"feature, got input of shape {layout.shape} ({blocks.d} features, {blocks.m} "
                f"values each)"
            )
        return blocks.to_blocks(xp, xv)

    def statistics_of_covariance(self, xp: Namespace, mean: Array, cov: Array, layout: Layout,
                                 eps: float) -> tuple[Array, Array]:
        """(mean in ``layout.stats_shape``, W (B, d, d)) from the rows' mean (B, d, 1) and
        covariance Σ (B, d, d), eps not added (the one-pass statistics of a chunked array).
        Scaled as :func:`arraynorm._linalg.whiten_rows`: W = W_Z/c with
        W_Z = matrix(Σ/c² + (eps/c²)·I) and c a power of two near sqrt(max|Σ|) (any c gives
        the same W; this one keeps Σ/c² near 1)."""
        blocks = _Blocks.of(layout)
        top = xp.max(xp.abs(cov), axis=(1, 2), keepdims=True)
        c = pow2_scale(xp, xp.sqrt(top), floor=_linalg._scale_floor(eps))
        eps_z = (eps / c) / c
        eye = xp.eye(blocks.d, dtype=cov.dtype)
        wz, _ = self.matrix(xp, (cov / c) / c + eps_z * eye, eps_z[..., 0])
        return blocks.stats_from_blocks(xp, mean), wz * (1.0 / c)

    def forward(self, xp: Namespace, xv: Array, layout: Layout, eps: float) -> tuple[Array, WhiteningState]:
        """ŷ = W (x − μ) per group, W the whitening matrix of Σ = X_c X_cᵀ/m + eps·I by this
        class's method (ZCA, PCA, Cholesky or Newton iterations).
        """
        blocks, rw = self._whiten(xp, xv, layout, eps)
        state = WhiteningState(blocks.stats_from_blocks(xp, rw.mean), rw.w, blocks, rw.pullback,
                               rw.jvp)
        return blocks.from_blocks(xp, rw.output()), state

    def backward(self, xp: Namespace, gv: Array, state: WhiteningState) -> Array:
        """dx through the centring and the matrix function W(Σ) (the decomposition's closed-form
        derivative).
        """
        blocks = state.blocks
        return blocks.from_blocks(xp, state.pullback(blocks.to_blocks(xp, gv)), ordered=False)

    def jvp(self, xp: Namespace, tv: Array, state: WhiteningState) -> Array:
        """The forward-mode product through centring, covariance, the whitening matrix and
        the product (:meth:`arraynorm._linalg.RowWhitening.jvp`)."""
        blocks = state.blocks
        return blocks.from_blocks(xp, state.pushforward(blocks.to_blocks(xp, tv)))


class ZCAWhiten(Whiten):
    """ZCA whitening (DBN, Huang et al. 2018): W = Σ^{-1/2} = U Λ^{-1/2} Uᵀ.

    The whitening closest to the input (it minimizes ‖Y − X_c‖), so the output stays
    aligned with the input features. Backward by the Daleckii–Krein formula with the exact
    divided difference of λ^{-1/2}, valid for repeated eigenvalues
    (:func:`arraynorm._linalg.inv_sqrt_eigh`). Eigenvalues are clamped below at eps (their
    exact lower bound) so that float32 rounding cannot make W NaN.
    """

    what = "ZCA whitening"
    routines = ("eigh",)

    def matrix(self, xp: Namespace, sigma: Array, eps: Array) -> tuple[Array, Linearization]:
        return _linalg.inv_sqrt_eigh(xp, sigma, eps)


class PCAWhiten(Whiten):
    """PCA whitening: W = Λ^{-1/2} Uᵀ, principal components in descending order of
    variance, each eigenvector signed so its largest-magnitude entry is positive.

    Output feature k is the k-th principal component of the block, scaled to unit
    variance. Its backward involves 1/(λ_i − λ_j): it is guarded for equal eigenvalues
    (see :func:`arraynorm._linalg._eigh_vjp`) but large for close ones, and the output
    itself jumps when two eigenvalues cross (the components swap) — the "stochastic axis
    swapping" for which Huang et al. (2018) prefer ZCA.
    """

    what = "PCA whitening"
    routines = ("eigh",)

    def matrix(self, xp: Namespace, sigma: Array, eps: Array) -> tuple[Array, Linearization]:
        return _linalg.pca_whitening_matrix(xp, sigma, eps)


class CholeskyWhiten(Whiten):
    """Cholesky whitening: W = L^{-1} with Σ = L Lᵀ (lower triangular, so output feature k
    mixes input features 1..k only; the whitening of Siarohin et al. 2019, "Whitening and
    coloring batch transform for GANs"). Cheaper than an eigendecomposition but depends on
    the order of the features. Backward through the triangular inverse and the Cholesky
    factor (:func:`arraynorm._linalg.cholesky_whitening_matrix`)."""

    what = "Cholesky whitening"
    routines = ("cholesky", "inv")

    def matrix(self, xp: Namespace, sigma: Array, eps: Array) -> tuple[Array, Linearization]:
        return _linalg.cholesky_whitening_matrix(xp, sigma)


class IterNormWhiten(Whiten):
    """IterNorm (Huang et al. 2019): approximate ZCA by T Newton iterations, matmul only.

        Σ_N = Σ / tr(Σ),  P_0 = I,  P_{k+1} = 1.5 P_k − 0.5 P_k³ Σ_N,  W = P_T / sqrt(tr Σ).

    Default T = 5 (the paper's). The output is *not* exactly white: W Σ Wᵀ has the
    eigenvalues λ p_T(λ)² of Σ_N's eigenvalues λ, which the paper uses as a
    controllable degree of whitening. Keep T small: past convergence the iteration
    amplifies rounding errors (see :func:`arraynorm._linalg.newton_inv_sqrt`). Backward
    through the unrolled iterations. Runs on Dask (lazily).
    """

    what = "IterNorm whitening"

    def __init__(self, T: int = 5, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.T = xp_check_int(self.name, "T", T)

    def __repr__(self) -> str:
        return f"IterNormWhiten(T={self.T})"

    def matrix(self, xp: Namespace, sigma: Array, eps: Array) -> tuple[Array, Linearization]:
        return _linalg.newton_inv_sqrt(xp, sigma, self.T)


@dataclass
class GivenWhiteningState:
    """What :class:`GivenWhitening`'s backward needs: the given W and the view's group blocks."""

    whitening_matrix: Array
    blocks: _Blocks


class GivenWhitening(Operation):
    """Whiten with a given mean and whitening matrix (inference-mode DBN / IterNorm):
    Y = W (X − mean) per block.

    ``mean`` has the partition's parameter shape, (C,) for :class:`Batch` and
    :class:`BatchGroups`; ``whitening_matrix`` is (B, d, d), (G, C/G, C/G) for
    ``BatchGroups(G)`` ((1, C, C) for ``Batch``). The statistics must be shared by all
    samples, so per-sample partitions (Group, Instance) are refused. ``eps`` is not used
    (it is already inside W). Backward: ∂L/∂X = Wᵀ G per block (the statistics are inputs).
    """

    needs_feature_axis = True
    uses_input_statistics = False

    def __init__(self, mean: Array, whitening_matrix: Array, *, name: str | None = None) -> None:
        self.mean, self.whitening_matrix = mean, whitening_matrix
        self.name = name or type(self).__name__

    def arrays(self) -> dict[str, Array]:
        return {"mean": self.mean}

    def forward(self, xp: Namespace, xv: Array, layout: Layout,
                eps: float) -> tuple[Array, GivenWhiteningState]:
        """ŷ = W (x − μ) with the given μ and W (inference)."""
        fname, w = self.name, self.whitening_matrix
        blocks = _Blocks.of(layout)
        # shared by all samples: the batch axis is reduced (Group/Instance keep it, and a
        # matching element count alone, N·G == C, would let them through silently)
        if 0 not in layout.reduce_axes or math.prod(layout.stats_shape) != math.prod(layout.param_shape):
            raise ValueError(
                f"{fname}: given whitening statistics must be shared by all samples, but this "
                f"partition keeps statistics of shape {layout.stats_shape} for an input of "
                f"shape {layout.shape}; use BatchGroups or Batch"
            )
        xp_namespace(fname, x=xv, whitening_matrix=w)
        xp_check_floating(fname, "whitening_matrix", w, xp)
        expected = (blocks.b, blocks.d, blocks.d)
        if tuple(w.shape) != expected:
            raise ValueError(f"{fname}: whitening_matrix must have shape {expected}, got "
                             f"{tuple(w.shape)}")
        w = xp.astype(w, xv.dtype)
        mean = blocks.stats_to_blocks(xp, xp.reshape(xp.astype(self.mean, xv.dtype),
                                                     layout.stats_shape))
        y = xp.matmul(w, blocks.to_blocks(xp, xv) - mean)
        return blocks.from_blocks(xp, y), GivenWhiteningState(w, blocks)

    def backward(self, xp: Namespace, gv: Array, state: GivenWhiteningState) -> Array:
        """dx = Wᵀ g: μ and W are constants."""
        blocks = state.blocks
        g = xp.matmul(xp.matrix_transpose(state.whitening_matrix), blocks.to_blocks(xp, gv))
        return blocks.from_blocks(xp, g, ordered=False)

    def jvp(self, xp: Namespace, tv: Array, state: GivenWhiteningState) -> Array:
        """dY = W dX per block (linear in x)."""
        blocks = state.blocks
        return blocks.from_blocks(xp, xp.matmul(state.whitening_matrix, blocks.to_blocks(xp, tv)))


# --------------------------------------------------------------------------------------
# the method table: every named method and layer chooses its operation here
# --------------------------------------------------------------------------------------

#: whitening operations by the name the named methods and layers take (``method=``)
WHITENING_METHODS: dict[str, type[Whiten]] = {
    "zca": ZCAWhiten, "pca": PCAWhiten, "cholesky": CholeskyWhiten, "iternorm": IterNormWhiten,
}


def whitening_operation(fname: str, method: Any, T: int = 5) -> Whiten:
    """The whitening operation called ``method`` (case-insensitive; ``T`` Newton steps for
    "iternorm"), naming ``fname`` in its errors; ``ValueError`` for an unknown name."""
    if not isinstance(method, str) or method.lower() not in WHITENING_METHODS:
        raise ValueError(
            f"{fname}: method must be one of {', '.join(repr(k) for k in WHITENING_METHODS)}, "
            f"got {method!r}"
        )
    cls = WHITENING_METHODS[method.lower()]
    return IterNormWhiten(T, name=fname) if cls is IterNormWhiten else cls(name=fname)
