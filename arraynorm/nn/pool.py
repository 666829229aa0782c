"""Pooling over NCHW maps with exact backward passes and JVPs: max, average, global average,
and ``Flatten``.

Windows as in :mod:`arraynorm.nn._window` (kernel, stride — default the kernel —, padding):

==================  ===========================================  ===================================
layer               y                                            ∂L/∂x (and the JVP)
==================  ===========================================  ===================================
MaxPool2d           max over the window (−∞ padding)             dy routed to the window's argmax,
                                                                 summed where windows overlap; JVP:
                                                                 the tangent at the argmax
AvgPool2d           Σ window / divisor (k_h k_w, or the count    dy / divisor spread over the
                    of non-padding entries)                      window; JVP: the same op on dx
GlobalAvgPool2d     mean over (H, W): (N, C, H, W) → (N, C)      dy / (H W) broadcast over (H, W)
Flatten             axes start_dim … end_dim merged              reshape back
==================  ===========================================  ===================================

Ties in max pooling go to the first maximum in the window's row-major scan order — the
standard's ``argmax`` returns the first occurrence, and PyTorch's CPU kernel keeps the first
(it replaces only on a strictly larger value) — so gradients agree with
``torch.nn.functional.max_pool2d`` at ties too. Same defaults as PyTorch; no ``ceil_mode``
and no ``divisor_override``; inputs must be batched (N, C, H, W).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._array_api import xp_device, xp_from_host, xp_in_compute_dtype, xp_namespace
from .._typing import Array, Namespace
from ._window import (Window2d, check_cotangent, check_nchw, pad2d, pair, scatter_windows,
                      window_slices)
from .module import Module

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten"]


class _Pool2d(Module):
    """Window geometry and input checks shared by max and average pooling."""

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, dilation: Any) -> None:
        super().__init__()
        fname = type(self).__name__
        kernel = pair(fname, "kernel_size", kernel_size, 1)
        strides = kernel if stride is None else pair(fname, "stride", stride, 1)
        dil = pair(fname, "dilation", dilation, 1)
        pads = pair(fname, "padding", padding, 0)
        span = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
        # PyTorch's rule: no window may lie entirely in the padding
        if any(p > e // 2 for p, e in zip(pads, span)):
            raise ValueError(f"{fname}: padding must be at most half the (dilated) kernel size "
                             f"{tuple(span)}, got padding {pads}")
        self.win = Window2d(kernel, strides, dil, (pads[0], pads[0], pads[1], pads[1]))

    def _check(self, fname: str, x: Array) -> tuple[Any, tuple[int, int]]:
        xp = xp_namespace(fname, x=x)
        check_nchw(fname, xp, x)
        return xp, self.win.output_size(fname, x.shape[2], x.shape[3])

    def extra_repr(self) -> str:
        w = self.win
        return f"kernel_size={w.kernel}, stride={w.stride}, padding={(w.padding[0], w.padding[2])}"


class MaxPool2d(_Pool2d):
    """Max pooling, as ``torch.nn.MaxPool2d`` (−∞ padding, ``stride`` defaults to the kernel).

    Parameters: ``kernel_size``, ``stride`` (default ``kernel_size``), ``padding`` (at most
    half the dilated kernel), ``dilation`` — each an int or a pair. ∂L/∂x sends dy to the
    first maximum of each window (see the module docstring); an input that is −∞ across a
    window has no finite maximum, and its gradient may go to a padding position (lost).

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import MaxPool2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> pool = MaxPool2d(2)
    >>> pool(x)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool.backward(np.ones((1, 1, 2, 2)))[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 0., 1.],
           [0., 0., 0., 0.],
           [0., 1., 0., 1.]])
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1) -> None:
        super().__init__(kernel_size, stride, padding, dilation)

    def _offsets(self, xp: Namespace, like: Array) -> Array:
        k = self.win.offsets
        return xp.reshape(xp.arange(k, device=xp_device(like)), (1, 1, k, 1, 1))

    def forward(self, x: Array) -> Array:
        """y = max over each window of x (N, C, H, W); caches the arg-max positions."""
        xp, out_hw = self._check("MaxPool2d.forward", x)
        windows = xp.stack(window_slices(xp, pad2d(xp, x, self.win.padding, -math.inf),
                                         self.win, out_hw), axis=2)
        argmax = xp.argmax(windows, axis=2)
        self._save(xp=xp, argmax=argmax, in_shape=tuple(x.shape))
        return xp.max(windows, axis=2)

    def _winner(self, c: dict[str, Any]) -> Array:
        """Boolean (N, C, k_h k_w, H_out, W_out): the offset each window's maximum came from."""
        xp = c["xp"]
        return xp.expand_dims(c["argmax"], axis=2) == self._offsets(xp, c["argmax"])

    def backward(self, dy: Array) -> Array:
        """dx: each window's dy routed to the position of its maximum (summed where windows overlap)."""
        c = self._saved()
        xp = c["xp"]
        check_cotangent("MaxPool2d.backward", dy, tuple(c["argmax"].shape))
        g = xp.expand_dims(dy, axis=2)
        dcols = xp.where(self._winner(c), g, xp.zeros_like(g))
        return scatter_windows(xp, dcols, self.win, c["in_shape"][2:])

    def jvp(self, dx: Array) -> Array:
        """The tangent at each window's argmax (the forward point's; one non-zero term per sum)."""
        c = self._saved()
        xp = c["xp"]
        check_cotangent("MaxPool2d.jvp", dx, c["in_shape"], name="dx", of="input")
        out_hw = tuple(c["argmax"].shape[2:])
        windows = xp.stack(window_slices(xp, pad2d(xp, dx, self.win.padding), self.win, out_hw),
                           axis=2)
        return xp.sum(xp.where(self._winner(c), windows, xp.zeros_like(windows)), axis=2)

    def extra_repr(self) -> str:
        d = self.win.dilation
        return super().extra_repr() + ("" if d == (1, 1) else f", dilation={d}")


class AvgPool2d(_Pool2d):
    """Average pooling, as ``torch.nn.AvgPool2d``: zero padding; the divisor is k_h k_w with
    ``count_include_pad=True`` (default) or the number of non-padding entries of each window.

    Computed in float32 at least (float16/bfloat16 promoted, cast back).

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import AvgPool2d
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> AvgPool2d(2)(x)[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, count_include_pad: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, 1)
        self.count_include_pad = bool(count_include_pad)

    def _divisor(self, xp: Namespace, like: Array, in_hw: tuple[int, int],
                 out_hw: tuple[int, int]) -> float | Array:
        """k_h k_w, or the (H_out, W_out) counts of real entries per window (from shapes only)."""
        w = self.win
        if self.count_include_pad or not any(w.padding):
            return float(w.offsets)
        counts = []
        for n, k, s, p, o in zip(in_hw, w.kernel, w.stride, w.padding[::2], out_hw):
            start = np.arange(o) * s - p
            counts.append(np.minimum(start + k, n) - np.maximum(start, 0))
        host = np.outer(counts[0], counts[1]).astype(np.float64)
        return xp_from_host(host, xp, xp_device(like), like.dtype)

    def _pool(self, xp: Namespace, x: Array, out_hw: tuple[int, int]) -> Array:
        xu = xp_in_compute_dtype(xp, x)
        slices = window_slices(xp, pad2d(xp, xu, self.win.padding), self.win, out_hw)
        total = slices[0]
        for s in slices[1:]:
            total = total + s
        y = total / self._divisor(xp, xu, tuple(x.shape[2:]), out_hw)
        return xp.astype(y, x.dtype, copy=False)

    def forward(self, x: Array) -> Array:
        """y = mean over each window of x (N, C, H, W), the divisor per ``count_include_pad``."""
        xp, out_hw = self._check("AvgPool2d.forward", x)
        self._save(xp=xp, in_hw=tuple(x.shape[2:]), out_shape=tuple(x.shape[:2]) + out_hw)
        return self._pool(xp, x, out_hw)

    def backward(self, dy: Array) -> Array:
        """dx: each window's dy spread evenly over the window's positions."""
        c = self._saved()
        xp = c["xp"]
        check_cotangent("AvgPool2d.backward", dy, c["out_shape"])
        g = xp_in_compute_dtype(xp, dy)
        g = g / self._divisor(xp, g, c["in_hw"], tuple(dy.shape[2:]))
        return xp.astype(scatter_windows(xp, [g] * self.win.offsets, self.win, c["in_hw"]), dy.dtype, copy=False)

    def jvp(self, dx: Array) -> Array:
        """The pooling of the tangent (the layer is linear; no forward point needed)."""
        xp, out_hw = self._check("AvgPool2d.jvp", dx)
        return self._pool(xp, dx, out_hw)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class GlobalAvgPool2d(Module):
    """Mean over the spatial axes: (N, C, H, W) → (N, C), as
    ``torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)``; in float32 at least.

    ∂L/∂x = dy / (H W) broadcast over (H, W); the JVP is the mean of the tangent.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import GlobalAvgPool2d
    >>> pool = GlobalAvgPool2d()
    >>> pool(np.arange(8.0).reshape(1, 2, 2, 2))
    array([[1.5, 5.5]])
    >>> pool.backward(np.array([[4.0, 8.0]]))[0]
    array([[[1., 1.],
            [1., 1.]],
    <BLANKLINE>
           [[2., 2.],
            [2., 2.]]])
    """

    def forward(self, x: Array) -> Array:
        """y = mean of x (N, C, H, W) over H and W, shape (N, C)."""
        fname = "GlobalAvgPool2d.forward"
        xp = xp_namespace(fname, x=x)
        check_nchw(fname, xp, x)
        self._save(xp=xp, shape=tuple(x.shape))
        return xp.astype(xp.mean(xp_in_compute_dtype(xp, x), axis=(2, 3)), x.dtype, copy=False)

    def backward(self, dy: Array) -> Array:
        """dx = dy / (H·W) broadcast over the spatial axes."""
        c = self._saved()
        xp, shape = c["xp"], c["shape"]
        check_cotangent("GlobalAvgPool2d.backward", dy, shape[:2])
        g = xp_in_compute_dtype(xp, dy) / float(shape[2] * shape[3])
        # a new array, not a broadcast view: later layers may keep or update it
        dx = xp.zeros(shape, dtype=g.dtype, device=xp_device(g)) + g[:, :, None, None]
        return xp.astype(dx, dy.dtype, copy=False)

    def jvp(self, dx: Array) -> Array:
        """The mean of the tangent over (H, W) (linear; no forward point needed)."""
        fname = "GlobalAvgPool2d.jvp"
        xp = xp_namespace(fname, x=dx)
        check_nchw(fname, xp, dx)
        return xp.astype(xp.mean(xp_in_compute_dtype(xp, dx), axis=(2, 3)), dx.dtype, copy=False)


class Flatten(Module):
    """Merge axes ``start_dim`` … ``end_dim`` (default 1 … −1: (N, C, H, W) → (N, C·H·W)),
    as ``torch.nn.Flatten``; backward and JVP reshape.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import Flatten
    >>> flat = Flatten()
    >>> flat(np.zeros((2, 3, 4, 5))).shape, flat.backward(np.zeros((2, 60))).shape
    ((2, 60), (2, 3, 4, 5))
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        for name, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"Flatten: {name} must be an int, got {v!r}")
        self.start_dim, self.end_dim = start_dim, end_dim

    def _flat_shape(self, fname: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        nd = len(shape)
        s, e = self.start_dim, self.end_dim
        if not (-nd <= s < nd and -nd <= e < nd) or (s % nd) > (e % nd):
            raise ValueError(f"{fname}: start_dim={s}, end_dim={e} do not name axes "
                             f"start <= end of an input of shape {shape}")
        s, e = s % nd, e % nd
        return shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:]

    def forward(self, x: Array) -> Array:
        """y = x with axes ``start_dim`` … ``end_dim`` merged into one ((N, C, H, W) → (N, C·H·W)
        by default)."""
        fname = "Flatten.forward"
        xp = xp_namespace(fname, x=x)
        shape = tuple(x.shape)
        self._save(xp=xp, shape=shape)
        return xp.reshape(x, self._flat_shape(fname, shape))

    def backward(self, dy: Array) -> Array:
        """dx = dy reshaped back to the input's shape."""
        c = self._saved()
        return c["xp"].reshape(dy, c["shape"])

    def jvp(self, dx: Array) -> Array:
        """dy = dx reshaped as the output (the map is linear)."""
        fname = "Flatten.jvp"
        xp = xp_namespace(fname, x=dx)
        return xp.reshape(dx, self._flat_shape(fname, tuple(dx.shape)))

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
