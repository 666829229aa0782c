"""Sliding windows over NCHW maps, shared by convolution and pooling.

A window geometry (kernel, stride, dilation, padding) maps an input of spatial size (H, W) to
an output of size

    H_out = ⌊(H + pad_top + pad_bottom − d_h (k_h − 1) − 1) / s_h⌋ + 1     (same for W)

and output position (o_h, o_w) reads the padded input at (o_h s_h + i d_h, o_w s_w + j d_w)
for the kernel offsets 0 ≤ i < k_h, 0 ≤ j < k_w. Three operations serve every layer:

* :func:`pad2d` — the padded input, built by concatenation (the standard has no ``pad``);
* :func:`window_slices` — for each kernel offset (i, j), row-major, the strided slice of the
  padded input that offset reads: k_h k_w arrays of shape (N, C, H_out, W_out). Stacked they
  are the im2col matrix of a convolution; reduced they are a pooling;
* :func:`scatter_windows` — the adjoint of ``window_slices`` followed by the crop of the
  padding: Σ over offsets of each cotangent placed back where its slice came from.

``scatter_windows`` has two formulations of the same sum, chosen by capability
(:func:`~arraynorm._array_api.xp_supports_inplace`), both standard array-API code:

* in place (NumPy, CuPy, PyTorch, array-api-strict): ``acc[offset slice] += cotangent`` into
  a zero padded array — per offset one read–modify–write of an output-sized slice;
* functional (Dask, JAX: no in-place updates): each offset's cotangent is spread to its
  strided positions by interleaving with zeros (stack + reshape), shifted into place by
  concatenating zero borders, and the placed arrays are summed — about twice the memory
  traffic (a placement along W per offset and along H per kernel row, each a new array and
  an add), which is why it is not used where writes into slices exist.

Both add the same terms, grouped differently (the functional one sums each kernel row
first), so they agree to rounding (tested).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .._array_api import xp_device, xp_supports_inplace, xp_whole_axes
from .._typing import Array, Namespace
from .module import check_float_input

__all__ = ["pair", "check_nchw", "check_cotangent", "Window2d", "pad2d",
           "window_slices", "scatter_windows"]


def check_nchw(fname: str, xp: Namespace, x: Array) -> None:
    """x must be a floating (N, C, H, W) array (batched; PyTorch also takes (C, H, W))."""
    check_float_input(fname, xp, x)
    if x.ndim != 4:
        raise ValueError(f"{fname}: x must have shape (N, C, H, W) (rank 4), got shape "
                         f"{tuple(x.shape)} (rank {x.ndim})")


def check_cotangent(fname: str, dy: Any, shape: tuple[int, ...], name: str = "dy",
                    of: str = "output") -> None:
    """A cotangent ``dy`` must have the forward output's shape (a tangent ``dx``: the input's)."""
    if tuple(getattr(dy, "shape", ())) != tuple(shape):
        raise ValueError(f"{fname}: {name} must have the {of}'s shape {tuple(shape)}, got "
                         f"{tuple(getattr(dy, 'shape', ())) or type(dy).__name__}")


def pair(fname: str, name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as ``(h, w)``, each >= ``minimum``, else a clear error."""
    items = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                              for v in items):
        raise TypeError(f"{fname}: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{fname}: {name} must be >= {minimum}, got {value!r}")
    return int(items[0]), int(items[1])


@dataclass(frozen=True)
class Window2d:
    """Kernel (k_h, k_w), stride, dilation and padding (top, bottom, left, right)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]

    @property
    def offsets(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def span(self) -> tuple[int, int]:
        """Extent of the dilated kernel, d (k − 1) + 1, per spatial axis."""
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        return dh * (kh - 1) + 1, dw * (kw - 1) + 1

    def output_size(self, fname: str, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) for an input of spatial size (h, w); ``ValueError`` when the
        dilated kernel does not fit in the padded input."""
        top, bottom, left, right = self.padding
        hp, wp = h + top + bottom, w + left + right
        eh, ew = self.span()
        if eh > hp or ew > wp:
            raise ValueError(
                f"{fname}: the kernel (dilated extent {eh}x{ew}) is larger than the padded "
                f"input ({hp}x{wp}: input {h}x{w} with padding {self.padding})")
        return (hp - eh) // self.stride[0] + 1, (wp - ew) // self.stride[1] + 1


def _full(xp: Namespace, like: Array, shape: tuple[int, ...], value: float) -> Array:
    return xp.full(shape, value, dtype=like.dtype, device=xp_device(like))


def _concat_borders(xp: Namespace, a: Array, axis: int, before: int, after: int,
                    value: float = 0.0) -> Array:
    """``a`` with ``before``/``after`` entries of ``value`` added along ``axis``."""
    if before == 0 and after == 0:
        return a
    parts = []
    for n in (before, after):
        shape = list(a.shape)
        shape[axis] = n
        parts.append(_full(xp, a, tuple(shape), value) if n else None)
    return xp.concat([p for p in (parts[0], a, parts[1]) if p is not None], axis=axis)


def pad2d(xp: Namespace, x: Array, padding: tuple[int, int, int, int], value: float = 0.0) -> Array:
    """(N, C, H, W) → (N, C, H + top + bottom, W + left + right), borders filled with ``value``
    (on Dask, channel and spatial axes in one chunk: every window slice would cut them)."""
    top, bottom, left, right = padding
    xpad = _concat_borders(xp, _concat_borders(xp, x, 2, top, bottom, value), 3, left, right, value)
    return xp_whole_axes(xpad, (1, 2, 3))


def _offset_index(win: Window2d, out_hw: tuple[int, int]) -> list[tuple[slice, ...]]:
    """Index of the padded input read by each kernel offset (i, j), row-major."""
    (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.stride, win.dilation
    ho, wo = out_hw
    return [(slice(None), slice(None), slice(i * dh, i * dh + sh * (ho - 1) + 1, sh),
             slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)) for i in range(kh) for j in range(kw)]


def window_slices(xp: Namespace, xpad: Array, win: Window2d, out_hw: tuple[int, int]) -> list[Array]:
    """The k_h k_w strided slices (N, C, H_out, W_out) of the padded input, offset (i, j) at
    position i k_w + j (row-major: the scan order of PyTorch's pooling kernels)."""
    return [xpad[idx] for idx in _offset_index(win, out_hw)]


def _place(xp: Namespace, a: Array, axis: int, offset: int, step: int, total: int) -> Array:
    """An array of length ``total`` along ``axis`` holding a[k] at offset + k·step and
    zeros elsewhere (the adjoint of the strided slice ``[offset::step]``)."""
    n = a.shape[axis]
    if step > 1 and n > 1:
        # interleave with step − 1 zero copies: (…, n, step, …) read as (…, n·step, …)
        z = xp.zeros_like(a)
        a = xp.stack([a] + [z] * (step - 1), axis=axis + 1)
        shape = list(z.shape)
        shape[axis] = n * step
        a = xp.reshape(a, tuple(shape))
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(0, (n - 1) * step + 1)
        a = a[tuple(idx)]
    placed = _concat_borders(xp, a, axis, offset, total - offset - a.shape[axis])
    # Dask: one chunk per map again, or each sum of placements refines every chunk boundary
    return xp_whole_axes(placed, (1, 2, 3))


def scatter_windows(xp: Namespace, cols: list[Array] | Array, win: Window2d,
                    in_hw: tuple[int, int], *, inplace: bool | None = None) -> Array:
    """Adjoint of ``window_slices ∘ pad2d``: Σ_(i,j) cols[i k_w + j] placed at its strided
    positions of the padded input, padding cropped → (N, C, H, W).

    ``cols`` is the list of k_h k_w arrays (N, C, H_out, W_out) or one array
    (N, C, k_h k_w, H_out, W_out). ``inplace``: ``None`` (default) chooses by the backend's
    capability; ``True``/``False`` force a formulation (tests compare the two).
    """
    (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.stride, win.dilation
    top, bottom, left, right = win.padding
    h, w = in_hw

    def col(k: int) -> Array:
        return cols[k] if isinstance(cols, list) else cols[:, :, k, :, :]

    first = col(0)
    n, c, ho, wo = first.shape
    hp, wp = h + top + bottom, w + left + right
    if inplace is None:
        inplace = xp_supports_inplace(first)
    if inplace:
        total = xp.zeros((n, c, hp, wp), dtype=first.dtype, device=xp_device(first))
        for k, idx in enumerate(_offset_index(win, (ho, wo))):
            total[idx] += col(k)
    else:
        total = None
        for i in range(kh):
            # place along W first: the H placement then moves k_h arrays, not k_h k_w
            row = None
            for j in range(kw):
                placed = _place(xp, col(i * kw + j), 3, j * dw, sw, wp)
                row = placed if row is None else row + placed
            placed = _place(xp, row, 2, i * dh, sh, hp)
            total = placed if total is None else total + placed
    if top or bottom or left or right:
        total = total[:, :, top:top + h, left:left + w]
    return total
