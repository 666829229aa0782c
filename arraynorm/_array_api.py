"""Namespace, device and dtype helpers, and input validation: the package's one helpers module.

This is the only module that knows backends exist. Every op asks it for the array namespace
of its inputs (``xp_namespace``), validates with ``xp_check_*`` and computes in the dtype
``xp_compute_dtype`` chooses; what a backend can do comes from the capability table of
:mod:`arraynorm._capabilities`, which this module owns and re-exports
(``xp_capabilities``). Helpers are prefixed ``xp_`` as in SciPy's ``_array_api``; every
module of the package imports its validators and dtype/device helpers from here.

Validation only ever looks at shapes, dtypes and Python hyperparameters, never at array
values: a Dask graph stays lazy, CuPy never synchronizes, JAX can trace.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_dask_array, to_device
from array_api_compat import device as xp_device

from ._capabilities import Capabilities, capability_table, xp_backend_name, xp_capabilities
from ._typing import Array, Dtype, Namespace, Shape

__all__ = [
    # namespaces, devices, capabilities
    "xp_namespace", "xp_device", "xp_backend_name", "xp_capabilities", "Capabilities",
    "capability_table", "xp_supports_inplace",
    # validation of arrays
    "xp_check_floating", "xp_check_cotangent", "xp_check_tangent", "xp_check_param_shape",
    # validation of Python hyperparameters
    "xp_check_finite_scalar", "xp_check_eps", "xp_check_int", "xp_check_bool",
    "xp_check_unit_interval", "xp_check_momentum", "xp_check_shape",
    "xp_normalize_axis", "xp_normalize_axes", "xp_check_channel_axis",
    # dtypes
    "xp_compute_dtype", "xp_accumulation_dtype", "xp_in_compute_dtype",
    # moving arrays between libraries and devices
    "xp_resolve_namespace", "xp_to_host_numpy", "xp_move", "xp_from_host", "xp_whole_axes",
]


def xp_namespace(fname: str, **arrays: Array) -> Namespace:
    """Return the single array namespace shared by the named arrays (``None`` entries skipped).

    Raises ``TypeError`` naming the offending arguments when an argument is not an array or
    when two arguments come from different libraries, and ``ValueError`` when they live on
    different devices. The names make errors such as "weight is a torch array but x is a
    numpy array" possible, which ``array_namespace`` alone cannot say.

    An array without a device (a JAX tracer inside ``jit``: it is placed where the
    computation runs) is compatible with any device; the devices of the others are still
    compared with each other.
    """
    # plain NumPy arrays (the common case, and every layer of a deep stack): one namespace, one
    # device; array_namespace costs ~8 µs a call, a type test ~50 ns
    given = [a for a in arrays.values() if a is not None]
    if given and all(type(a) is np.ndarray for a in given):
        return _NUMPY_XP
    first_name = first_xp = None
    dev_name, first_dev = None, None
    for name, a in arrays.items():
        if a is None:
            continue
        try:
            xp = array_namespace(a)
        except TypeError:
            raise _not_an_array(fname, name, a) from None
        if first_xp is None:
            first_name, first_xp = name, xp
        elif xp is not first_xp:
            raise TypeError(
                f"{fname}: {name} is a {xp_backend_name(xp)} array but {first_name} is a "
                f"{xp_backend_name(first_xp)} array; pass arrays from one library"
            )
        dev = xp_device(a)
        if dev is None:
            continue
        if first_dev is None:
            dev_name, first_dev = name, dev
        elif dev != first_dev:
            raise ValueError(
                f"{fname}: {name} is on device {dev} but {dev_name} is on device "
                f"{first_dev}; move them to one device"
            )
    if first_xp is None:
        raise TypeError(f"{fname}: no array argument given")
    return first_xp


#: array_api_compat's NumPy namespace (what array_namespace returns for a NumPy array)
_NUMPY_XP: Namespace = array_namespace(np.empty(0))


def _not_an_array(fname: str, name: str, a: Any) -> TypeError:
    return TypeError(
        f"{fname}: {name} must be an array (NumPy, CuPy, PyTorch, JAX, Dask or any array-API "
        f"array), got {type(a).__name__}"
    )


def xp_check_floating(fname: str, name: str, a: Any, xp: Namespace) -> None:
    """Raise ``TypeError`` unless ``a`` is an array with a real floating dtype (``None`` or a
    list where a required array belongs is a ``TypeError`` naming the argument too)."""
    if type(a) is np.ndarray and a.dtype.kind == "f":
        return  # float16/32/64 (and longdouble, which the ops refuse where they compute)
    if a is None or not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise _not_an_array(fname, name, a)
    if not xp.isdtype(a.dtype, "real floating"):
        raise TypeError(
            f"{fname}: {name} must have a real floating dtype (float16, bfloat16, float32 or "
            f"float64), got {a.dtype}"
        )


def xp_check_cotangent(fname: str, name: str, d: Any, like: Any) -> None:
    """A cotangent ``d`` of the output ``like`` must be an array of the same library and
    device, with a real floating dtype (any precision: it is cast) and ``like``'s shape.

    ``TypeError`` otherwise (an integer, bool or complex cotangent — whose imaginary part
    would be dropped silently —, a list, an array of another library), ``ValueError`` for
    another device or shape, each naming ``name``.
    """
    xp = xp_namespace(fname, output=like, **{name: d})
    xp_check_floating(fname, name, d, xp)
    if tuple(d.shape) != tuple(like.shape):
        raise ValueError(
            f"{fname}: {name} must have the output's shape {tuple(like.shape)}, "
            f"got {tuple(d.shape)}"
        )


def xp_compute_dtype(xp: Namespace, dtype: Any) -> Any:
    """Dtype in which statistics are accumulated: at least float32 (DESIGN.md §3.3).

    float16 and bfloat16 inputs are promoted for the whole op and the result cast back,
    as PyTorch's kernels do with their accumulation type.
    """
    if dtype == xp.float64 or dtype == xp.float32:
        return dtype
    return xp.float32


def xp_accumulation_dtype(xp: Namespace, a: Array) -> Dtype:
    """Dtype in which the sums behind a statistic of ``a`` are accumulated.

    float64 for float32 data wherever the backend computes in float64: NumPy sums a strided
    axis (BN's batch axis) one element after another, so a float32 sum of 10⁶ values errs by
    ~1e-3 relative — every digit a variance needs. float64 accumulation is exact enough and,
    the reduction being memory-bound, costs little. Kept at float32 where float64 is missing
    or emulated (the capability table: JAX without ``jax_enable_x64``, PyTorch's MPS device).
    """
    if a.dtype != xp.float32 or not xp_capabilities(xp, a).float64:
        return a.dtype
    return xp.float64


def xp_in_compute_dtype(xp: Namespace, a: Array) -> Array:
    """``a`` in :func:`xp_compute_dtype` (float16/bfloat16 promoted to float32; no copy when
    it is there already)."""
    return xp.astype(a, xp_compute_dtype(xp, a.dtype), copy=False)


def xp_check_finite_scalar(fname: str, name: str, value: Any, *, minimum: float | None = None,
                           strict: bool = False) -> float:
    """Validate a Python real hyperparameter and return it as ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {name} must be a real Python number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{fname}: {name} must be finite, got {v}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        rel = ">" if strict else ">="
        raise ValueError(f"{fname}: {name} must be {rel} {minimum}, got {v}")
    return v


def xp_check_eps(fname: str, eps: Any, name: str = "eps") -> float:
    """eps must be a finite Python float >= 0."""
    return xp_check_finite_scalar(fname, name, eps, minimum=0.0)


def xp_check_int(fname: str, name: str, value: Any, *, minimum: int = 1,
                 strict_type: bool = False) -> int:
    """Validate a Python int hyperparameter >= ``minimum`` (``bool`` refused) and return it.

    By default anything else is one ``ValueError``: "must be a positive int" (minimum 1) or
    "must be an int >= minimum". With ``strict_type`` a non-int is a ``TypeError`` ("must be
    an int") and an int below the bound a ``ValueError`` ("must be >= minimum") — the style
    of the arguments that count iterations.
    """
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if strict_type:
        if not is_int:
            raise TypeError(f"{fname}: {name} must be an int, got {type(value).__name__}")
        if value < minimum:
            raise ValueError(f"{fname}: {name} must be >= {minimum}, got {value}")
    elif not is_int or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{fname}: {name} must be {what}, got {value!r}")
    return int(value)


def xp_check_bool(fname: str, name: str, value: Any) -> bool:
    """``value`` must be a Python ``bool`` (``TypeError`` otherwise: 0/1 are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{fname}: {name} must be a bool, got {type(value).__name__}")
    return value


def _in_unit_interval(fname: str, name: str, value: Any, closed: bool, alternative: str) -> float:
    v = xp_check_finite_scalar(fname, name, value, minimum=0.0)
    if v > 1.0 or (not closed and v == 1.0):
        raise ValueError(f"{fname}: {name} must be in [0, 1{']' if closed else ')'}{alternative}, "
                         f"got {v}")
    return v


def xp_check_unit_interval(fname: str, name: str, value: Any, *, closed: bool = True) -> float:
    """A real number in [0, 1] (``closed``, default) or in [0, 1)."""
    return _in_unit_interval(fname, name, value, closed, "")


def xp_check_momentum(fname: str, momentum: Any) -> float | None:
    """Running-statistics momentum: PyTorch's weight of the new batch, in [0, 1], or ``None``
    (the cumulative average)."""
    return None if momentum is None else _in_unit_interval(fname, "momentum", momentum, True,
                                                          " or None")


def xp_check_shape(fname: str, name: str, shape: Any) -> Shape:
    """An int or a non-empty sequence of positive ints, as a tuple (a layer's feature shape)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        out = tuple(int(n) for n in shape)
    except TypeError:
        raise TypeError(f"{fname}: {name} must be an int or a tuple of ints, got {shape!r}") from None
    if not out or any(n < 1 for n in out):
        raise ValueError(f"{fname}: {name} must be positive, got {out}")
    return out


def xp_normalize_axis(fname: str, axis: Any, ndim: int, name: str = "axis") -> int:
    """Map an int axis into ``[0, ndim)`` or raise ``ValueError`` naming the argument."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{fname}: {name} must be an int, got {type(axis).__name__}")
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise ValueError(
            f"{fname}: {name}={ax} is out of range for an input of rank {ndim}"
        )
    return ax % ndim


def xp_normalize_axes(fname: str, axes: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """Map an int or a sequence of ints to sorted, unique, non-negative axes."""
    if isinstance(axes, numbers.Integral) and not isinstance(axes, bool):
        axes = (axes,)
    if not isinstance(axes, Sequence) or len(axes) == 0:
        raise TypeError(f"{fname}: {name} must be an int or a non-empty tuple of ints, got {axes!r}")
    out = tuple(sorted(xp_normalize_axis(fname, a, ndim, name) for a in axes))
    if len(set(out)) != len(out):
        raise ValueError(f"{fname}: {name}={tuple(axes)} repeats an axis")
    return out


def xp_check_channel_axis(fname: str, axis: Any, ndim: int | None) -> int:
    """The channel axis in [1, ndim): any valid axis but the batch axis 0, negative ones
    counting from the end. One axis only: a tuple or list is a ``ValueError`` (the ops'
    parameters, running statistics and whitening matrices are per channel, so several
    channel axes would be one channel axis reshaped). ``ndim=None`` checks only the type (a layer's constructor) and returns ``axis``."""
    if isinstance(axis, (tuple, list)):
        raise ValueError(f"{fname}: axis is the channel axis, one int, got {tuple(axis)!r}: "
                         f"the parameters and statistics are per channel, so several channel "
                         f"axes are one channel axis reshaped (x.reshape(N, C1 * C2, ...)); "
                         f"layer_norm, rms_norm and l2_normalize take a tuple of axes to reduce")
    if ndim is None:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"{fname}: axis must be an int, got {type(axis).__name__}")
        return int(axis)
    ax = xp_normalize_axis(fname, axis, ndim)
    if ax == 0:
        raise ValueError(f"{fname}: axis (the channel axis) cannot be 0, the batch axis")
    return ax


def xp_check_param_shape(fname: str, name: str, a: Any, expected: tuple[int, ...]) -> None:
    """γ/β/statistics must have exactly the expected shape."""
    if a is not None and tuple(a.shape) != tuple(expected):
        raise ValueError(
            f"{fname}: {name} must have shape {tuple(expected)}, got {tuple(a.shape)}"
        )


def xp_check_tangent(fname: str, name: str, t: Any, xp: Namespace, shape: tuple[int, ...],
                     of: str = "the primal") -> None:
    """A tangent must be a real floating array of the forward pass's namespace ``xp`` with the
    shape of its primal ``of``; raise ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    try:
        txp = array_namespace(t)
    except TypeError:
        raise TypeError(f"{fname}: {name} must be an array, got {type(t).__name__}") from None
    if xp_backend_name(txp) != xp_backend_name(xp):
        raise TypeError(f"{fname}: {name} is a {xp_backend_name(txp)} array but the forward pass "
                        f"ran on {xp_backend_name(xp)}")
    xp_check_floating(fname, name, t, xp)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fname}: {name} must have {of}'s shape {tuple(shape)}, got "
                         f"{tuple(t.shape)}")


# --------------------------------------------------------------------------------------
# Moving arrays between array libraries and devices (``Module.to``, ``load_state_dict``,
# optimizer state). The route is chosen here, by capability: an array already in the target
# namespace only changes device (``to_device``); otherwise it goes through a host NumPy copy,
# which every library can read and write (DLPack cannot cross devices, Dask has no DLPack).
# --------------------------------------------------------------------------------------


def xp_resolve_namespace(xp: Namespace) -> Any:
    """The array-API namespace for ``xp``: a namespace/module (``numpy``, ``cupy``,
    ``array_api_strict``, ``torch``, ``dask.array``) or its name as a string."""
    if isinstance(xp, str):
        try:
            xp = importlib.import_module(xp)
        except ImportError as exc:
            raise ValueError(f"to: cannot import the array library {xp!r} ({exc})") from None
    try:
        return array_namespace(xp.asarray([0.0]))
    except (AttributeError, TypeError):
        raise TypeError(
            f"to: xp must be an array namespace (numpy, cupy, torch, array_api_strict, "
            f"dask.array) or its name, got {xp!r}"
        ) from None


def xp_to_host_numpy(a: Any) -> np.ndarray:
    """A NumPy copy of any array (computing a Dask graph, copying a GPU array to the host).

    NumPy scalars (``np.float64(1.0)``, what a computed 0-d Dask array is) give 0-d arrays.
    """
    if is_dask_array(a):
        a = a.compute()
    if isinstance(a, (np.ndarray, np.generic)):
        return np.array(a, copy=True)
    try:
        host = to_device(a, "cpu")
    except Exception:  # libraries whose CPU device has another name (array_api_strict)
        host = a
    return np.array(np.from_dlpack(host), copy=True)


def xp_move(a: Any, xp: Namespace, device: Any = None, dtype: Any = None) -> Any:
    """``a`` converted to namespace ``xp`` on ``device`` (default: the namespace's default
    device, or ``a``'s own device when it stays in its namespace), cast to ``dtype`` if given."""
    src = array_namespace(a)
    if xp_backend_name(src) == xp_backend_name(xp):
        out = a if device is None or xp_device(a) == device else to_device(a, device)
    else:
        host = xp_to_host_numpy(a)
        out = xp.asarray(host) if device is None else xp.asarray(host, device=device)
    if dtype is not None and out.dtype != dtype:
        out = xp.astype(out, dtype)
    return out


def xp_from_host(host: np.ndarray, xp: Namespace = None, device: Any = None, dtype: Any = None) -> Any:
    """A host NumPy array (float64 from the initializers) created in namespace ``xp``
    (default NumPy) on ``device``, in ``dtype`` (a dtype of ``xp`` or its name; default the
    namespace's default floating dtype: float64 for NumPy, float32 for PyTorch)."""
    ns = xp_resolve_namespace("numpy" if xp is None else xp)
    if isinstance(dtype, str):
        dtype = getattr(ns, dtype)
    if dtype is None:
        dtype = ns.zeros(0, device=device).dtype if device is not None else ns.zeros(0).dtype
    arr = ns.asarray(host) if device is None else ns.asarray(host, device=device)
    return ns.astype(arr, dtype, copy=False)


def xp_supports_inplace(a: Array) -> bool:
    """Whether ``a`` can be updated in place (``a += b`` mutating it): the capability table's
    ``inplace`` — NumPy, CuPy, PyTorch and array-api-strict arrays; not JAX (immutable) nor
    Dask (a Dask array is a node of a lazy graph), which get new arrays."""
    return xp_capabilities(array_namespace(a), a).inplace


def xp_whole_axes(a: Any, axes: Sequence[int]) -> Any:
    """``a`` with each of ``axes`` held in one piece: a Dask array is rechunked so that those
    axes are single chunks; any other array is returned as it is.

    Sliding-window ops (convolution, pooling) slice every window offset across the channel
    and spatial axes and sum placements back; on a Dask array chunked along them every slice
    and every sum cuts and re-aligns each chunk, and the task graph grows with the chunk
    count (a 4×4 convolution of a (2, 2, 5, 5) input in 16 chunks: ~8 000 tasks forward,
    ~550 with those axes whole). Batch chunks stay, so the work still splits across samples.
    """
    if is_dask_array(a) and any(len(a.chunks[ax]) > 1 for ax in axes):
        return a.rechunk({ax: -1 for ax in axes})
    return a
