"""What each array backend can do: one table, read by the code and by the tests.

Like SciPy's ``xp_capabilities``, the table is data, not scattered ``if backend == …``
branches: the ops ask :func:`xp_capabilities` whether in-place writes, a batched linear-algebra
routine or native float64 are there, the test suite's skip marks ask the same function
(``tests/_helpers.py``), and :func:`capability_table` renders it for the documentation
(``docs/architecture.md``, checked equal by ``tests/test_architecture.py``), so code, tests
and docs cannot disagree. Owned by :mod:`arraynorm._array_api`, which re-exports it.

Two entries depend on the array, not only on the library, and are refined per call:
JAX computes in float64 only with ``jax_enable_x64``; PyTorch's Apple ``mps`` device has no
float64.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import array_api_compat

from ._typing import Array, Namespace

__all__ = ["Capabilities", "xp_backend_name", "xp_capabilities", "capability_table", "BACKENDS"]

#: the batched ``xp.linalg`` routines the package uses
_ALL_LINALG = frozenset({"eigh", "cholesky", "inv", "svd", "svdvals"})


@dataclass(frozen=True)
class Capabilities:
    """What one backend offers the package.

    Attributes
    ----------
    backend : short name (``numpy``, ``cupy``, ``torch``, ``jax``, ``dask``, ``array_api_strict``).
    inplace : ``a += b`` writes into ``a`` (optimizers and the convolution's scatter then
        update in place; otherwise they build new arrays).
    linalg : the ``xp.linalg`` routines usable on stacks of matrices (whitening by
        decomposition, OWN, exact spectral norm); without ``eigh`` those raise
        ``NotImplementedError`` naming the matmul-only alternative.
    float64 : float64 is computed natively, so float32 statistics accumulate in float64.
    lazy : arrays are nodes of a task graph whose values exist only once computed
        (sharing one is already a copy; reading values means computing).
    devices : where its arrays live.
    """

    backend: str
    inplace: bool
    linalg: frozenset[str]
    float64: bool
    lazy: bool
    devices: str


#: the table (rows in the order of the test matrix, then the optional backends)
BACKENDS: dict[str, Capabilities] = {c.backend: c for c in (
    Capabilities("numpy", True, _ALL_LINALG, True, False, "cpu"),
    # the strict namespace proves standard-only code: its linalg extension is the standard's
    Capabilities("array_api_strict", True, _ALL_LINALG, True, False, "CPU_DEVICE"),
    # Dask's linalg wraps NumPy's for single-chunk matrices: no eigh, and cholesky/inv refuse
    # stacks of matrices, so no batched routine is offered (its svd of a matrix chunked along
    # one axis is used by spectral_norm_exact, which tries it)
    Capabilities("dask", False, frozenset(), True, True, "cpu (chunks on workers)"),
    Capabilities("torch", True, _ALL_LINALG, True, False, "cpu, cuda (mps: no float64)"),
    Capabilities("cupy", True, _ALL_LINALG, True, False, "cuda"),
    # JAX arrays are immutable; float64 only with jax_enable_x64
    Capabilities("jax", False, _ALL_LINALG, True, False, "cpu, gpu, tpu"),
)}


def xp_backend_name(xp: Namespace) -> str:
    """Short human name of an array namespace (``numpy``, ``cupy``, ``torch``, ``dask`` …)."""
    for name, test in (
        ("numpy", array_api_compat.is_numpy_namespace),
        ("cupy", array_api_compat.is_cupy_namespace),
        ("torch", array_api_compat.is_torch_namespace),
        ("dask", array_api_compat.is_dask_namespace),
        ("jax", array_api_compat.is_jax_namespace),
        ("array_api_strict", array_api_compat.is_array_api_strict_namespace),
    ):
        if test(xp):
            return name
    return getattr(xp, "__name__", repr(xp))


def _unknown(xp: Namespace) -> Capabilities:
    """A library outside the table: what its namespace and array type declare."""
    linalg = getattr(xp, "linalg", None)
    routines = frozenset(r for r in _ALL_LINALG if linalg is not None and hasattr(linalg, r))
    probe = xp.asarray([0.0])
    return Capabilities(xp_backend_name(xp), hasattr(type(probe), "__iadd__"), routines,
                        hasattr(xp, "float64"), False, "unknown")


def xp_capabilities(xp: Namespace, a: Array | None = None) -> Capabilities:
    """The capabilities of namespace ``xp`` (of the array ``a``, where they depend on it).

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm._array_api import xp_capabilities
    >>> caps = xp_capabilities(np)
    >>> caps.inplace, "eigh" in caps.linalg, caps.lazy
    (True, True, False)
    """
    name = xp_backend_name(xp)
    caps = BACKENDS.get(name) or _unknown(xp)
    if name == "jax":
        # JAX is loaded already when its namespace is at hand; no import happens here
        jax = sys.modules.get("jax")
        x64 = bool(getattr(getattr(jax, "config", None), "jax_enable_x64", False))
        return caps if x64 else replace(caps, float64=False)
    if name == "torch" and getattr(getattr(a, "device", None), "type", "cpu") == "mps":
        return replace(caps, float64=False)
    return caps


def capability_table() -> str:
    """The table as Markdown, one row per backend (the documentation's copy is checked equal)."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = ["| backend | in-place writes | batched linalg | float64 | lazy | devices |",
            "|---|---|---|---|---|---|"]
    for c in BACKENDS.values():
        linalg = ", ".join(sorted(c.linalg)) or "—"
        f64 = {"jax": "with `jax_enable_x64`"}.get(c.backend, yes(c.float64))
        rows.append(f"| {c.backend} | {yes(c.inplace)} | {linalg} | {f64} | {yes(c.lazy)} | "
                    f"{c.devices} |")
    return "\n".join(rows)
