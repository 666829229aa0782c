"""Whitening layers: decorrelated batch normalization and IterNorm, with running statistics.

Each layer is the composition of :mod:`arraynorm.whitening` — ``BatchGroups(G)`` partition ∘
a whitening operation (ZCA, PCA, Cholesky, Newton iterations) ∘ per-channel affine — run by
the core's :class:`~arraynorm.Normalizer`, whose backward goes through the decomposition.
The layers add γ, β, the running mean (C,) and the running whitening matrix (G, C/G, C/G),
updated as the DBN and IterNorm reference implementations do, with PyTorch's momentum
convention (``momentum`` = weight of the new batch):

    running_mean ← (1 − m)·running_mean + m·μ_B,   running_W ← (1 − m)·running_W + m·W_B

(``momentum=None``: the cumulative average, m = 1/num_batches_tracked). μ_B and W_B are the
statistics the forward pass itself computed (the operation's state), so there is no second
pass over the batch. In eval mode the running mean and matrix are used
(:class:`~arraynorm.whitening.GivenWhitening`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._array_api import xp_check_int, xp_check_momentum, xp_from_host
from .._typing import Namespace
from ..compose import NormContext
from ..operation import GivenWhitening, IterNormWhiten, Operation, whitening_operation
from ..partition import BatchGroups
from ..running_stats import fold_batch
from .norm import Normalization

__all__ = ["DecorrelatedBatchNorm", "IterNorm"]


class _Whitening(Normalization):
    _name = "Whitening"

    def __init__(self, num_features: int, num_groups: int, eps: float, momentum: float | None,
                 affine: bool, axis: int, xp: Namespace, dtype: Any, device: Any) -> None:
        fname = self._name
        for name, n in (("num_features", num_features), ("num_groups", num_groups)):
            xp_check_int(fname, name, n)
        if num_features % num_groups:
            raise ValueError(f"{fname}: num_groups={num_groups} must divide num_features={num_features}")
        super().__init__(BatchGroups(num_groups, axis), self._operation(), num_features, eps=eps,
                         affine=affine, xp=xp, dtype=dtype, device=device)
        self.num_groups, self.axis = num_groups, axis
        self.momentum = xp_check_momentum(fname, momentum)
        d = num_features // num_groups
        eye = np.array(np.broadcast_to(np.eye(d), (num_groups, d, d)))
        self.register_buffer("running_mean", xp_from_host(np.zeros(num_features), xp, device, dtype))
        self.register_buffer("running_whitening", xp_from_host(eye, xp, device, dtype))
        self.register_buffer("num_batches_tracked", 0)

    def _operation(self) -> Operation:  # pragma: no cover - subclasses
        raise NotImplementedError

    def _operation_now(self) -> Operation:
        if self.training:
            return self.operation
        return GivenWhitening(self.buffers["running_mean"], self.buffers["running_whitening"],
                              name=self._name)

    def _after_forward(self, ctx: NormContext) -> None:
        if not self.training:
            return
        xp, st = ctx.xp, ctx.state
        fold_batch(self.buffers, {"running_mean": xp.reshape(st.mean, self.features),
                                  "running_whitening": st.whitening_matrix},
                   self.momentum, fname=self._name)

    def extra_repr(self) -> str:
        return (f"{self.features[0]}, num_groups={self.num_groups}, eps={self.eps}, "
                f"momentum={self.momentum}")


class DecorrelatedBatchNorm(_Whitening):
    """Decorrelated batch normalization (Huang et al. 2018): each group of C/G channels is
    centred and whitened, x̂ = W_B (x − μ_B) with W_B = Σ_B^{−1/2} (``method="zca"``, the
    paper's), or PCA / Cholesky / Newton-iteration whitening (``"pca"``, ``"cholesky"``,
    ``"iternorm"``: the method table of :mod:`arraynorm.operation`), then γ x̂ + β.

    ``axis`` is the *channel* axis, kept: its channels are whitened, in groups of C/G (default
    1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).

    Shapes: x (N, C, *S), channel at ``axis`` (default 1); γ, β (C,); running mean (C,) and
    running whitening matrix (G, C/G, C/G), G = ``num_groups`` (default 1). Same operation
    as :func:`arraynorm.decorrelated_batch_norm`. ZCA/PCA/Cholesky need ``xp.linalg.eigh`` /
    ``cholesky`` (not on Dask). PyTorch has no counterpart.
    """

    _name = "DecorrelatedBatchNorm"

    def __init__(self, num_features: int, num_groups: int = 1, method: str = "zca",
                 eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True, *,
                 axis: int = 1, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        self.method = method
        super().__init__(num_features, num_groups, eps, momentum, affine, axis, xp, dtype, device)

    def _operation(self) -> Operation:
        return whitening_operation(self._name, self.method)


class IterNorm(_Whitening):
    """Iterative normalization (Huang et al. 2019): whitening by ``T`` Newton iterations
    towards Σ^{−1/2} (only matmuls: runs on every backend, Dask included), per group of C/G
    channels. Shapes and running statistics as :class:`DecorrelatedBatchNorm`; same operation
    as :func:`arraynorm.iter_norm`. PyTorch has no counterpart.

    ``axis`` is the *channel* axis, kept: its channels are whitened, in groups of C/G (default
    1, NCHW; ``axis=-1`` for channels last; one int — a tuple is a ``ValueError``).
    """

    _name = "IterNorm"

    def __init__(self, num_features: int, num_groups: int = 1, T: int = 5, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, *, axis: int = 1,
                 xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        self.T = T
        super().__init__(num_features, num_groups, eps, momentum, affine, axis, xp, dtype, device)

    def _operation(self) -> Operation:
        return IterNormWhiten(self.T, name=self._name)
