"""A network's input–output Jacobian as a SciPy ``LinearOperator``: matvec = JVP, rmatvec = VJP.

After one forward pass of an :mod:`arraynorm.nn` model at ``x``, ``model.jvp(v)`` is J·v and
``model.backward(u)`` is Jᵀ·u at that point, both exact and closed-form. The Jacobian of a
batch-normalized stack couples the whole batch (an (N·d) × (N·d) matrix: 65536² for 64 × 1024
inputs), so it is never formed: ``scipy.sparse.linalg.svds``/``eigsh`` find its extreme
singular values from products alone. :func:`dense_jacobian` forms it for small cases (tests,
full spectra), with as few passes as possible (rows by VJP or columns by JVP).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse.linalg import LinearOperator

from ._backend import Backend

__all__ = ["jacobian_operator", "dense_jacobian"]


def jacobian_operator(model: Any, x: Any, backend: Backend | None = None) -> tuple[LinearOperator, Any]:
    """``(J, y)``: the Jacobian of ``model`` at ``x`` as a float64 ``LinearOperator`` on the
    flattened input and output, and the output ``y = model(x)``.

    ``x`` is an array of the model's backend; vectors cross to and from it as float64 NumPy
    (SciPy's side). The model's forward cache must stay in place while J is used: do not call
    ``model.forward`` again until done.
    """
    b = backend or Backend()
    model.requires_grad_(True)
    y = model.forward(x)
    in_shape, out_shape = tuple(x.shape), tuple(y.shape)
    n, m = int(np.prod(in_shape)), int(np.prod(out_shape))

    def matvec(v: np.ndarray) -> np.ndarray:
        return b.to_numpy(model.jvp(b.asarray(np.reshape(v, in_shape)))).ravel()

    def rmatvec(u: np.ndarray) -> np.ndarray:
        return b.to_numpy(model.backward(b.asarray(np.reshape(u, out_shape)))).ravel()

    def matmat(v: np.ndarray) -> np.ndarray:
        return np.stack([matvec(c) for c in v.T], axis=1)

    def rmatmat(u: np.ndarray) -> np.ndarray:
        return np.stack([rmatvec(c) for c in u.T], axis=1)

    op = LinearOperator((m, n), matvec=matvec, rmatvec=rmatvec, matmat=matmat, rmatmat=rmatmat,
                        dtype=np.float64)
    return op, y


def dense_jacobian(model: Any, x: Any, backend: Backend | None = None, *,
                   mode: str = "auto") -> np.ndarray:
    """The Jacobian of ``model`` at ``x`` as a dense float64 (m, n) matrix: m VJPs (rows,
    ``mode="vjp"``) or n JVPs (columns, ``mode="jvp"``); ``"auto"`` picks the fewer."""
    op, _ = jacobian_operator(model, x, backend)
    m, n = op.shape
    if mode not in ("auto", "vjp", "jvp"):
        raise ValueError(f"dense_jacobian: mode must be 'auto', 'vjp' or 'jvp', got {mode!r}")
    if mode == "vjp" or (mode == "auto" and m <= n):
        return op.rmatmat(np.eye(m)).T
    return op.matmat(np.eye(n))
