"""2-D convolution (NCHW) with its exact backward pass and forward-mode product.

y[n, o] = b[o] + Σ_{c ∈ group(o)} Σ_{i,j} W[o, c, i, j] · x_pad[n, c, h s_h + i d_h, w s_w + j d_w]

(cross-correlation, as ``torch.nn.functional.conv2d``). Written as im2col + one matmul per
group: the k_h k_w strided slices of the zero-padded input are stacked into the window matrix
X_col (N, G, C/G · k_h k_w, H_out W_out), the kernel is read as W_mat (G, O/G, C/G · k_h k_w),
and

    Y = W_mat X_col                                   (one batched matmul)
    ∂L/∂W_mat = Σ_n dY X_colᵀ,   ∂L/∂b = Σ_{n,h,w} dY,   ∂L/∂X_col = W_matᵀ dY,

∂L/∂x being ∂L/∂X_col scattered back onto the input windows (col2im,
:func:`~arraynorm.nn._window.scatter_windows`). The JVP in x is the convolution of the
tangent without the bias.

Why this decomposition: a sum over the k_h k_w offsets of per-offset matmuls does the same
multiplications but in k_h k_w matmuls k_h k_w times thinner (contraction length C/G instead
of C/G · k_h k_w), plus k_h k_w read–modify–writes of the whole output; stacking the slices
costs the copies the per-offset matmuls would make of their strided operands anyway. A NumPy
``sliding_window_view`` im2col would build the same matrix with the same copy (matmul needs it
contiguous), so there is no NumPy fast path: the portable path already does one big matmul.
The window matrix is cached for ∂L/∂W (k_h k_w times the input's size, as PyTorch's
``unfold``-based CPU path would hold).
"""

from __future__ import annotations

import math
from typing import Any

from .._array_api import xp_check_int, xp_from_host, xp_in_compute_dtype, xp_namespace, xp_whole_axes
from .._typing import Array, Namespace
from ._window import (Window2d, check_cotangent, check_nchw, pad2d, pair, scatter_windows,
                      window_slices)
from .init import init_bias, init_weight, make_rng
from .module import Module, check_float_input

__all__ = ["Conv2d"]


def _padding(fname: str, padding: Any, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair, ``"valid"`` or ``"same"``."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{fname}: padding must be an int, a pair of ints, 'valid' or "
                             f"'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{fname}: padding='same' needs stride 1 (as PyTorch), got "
                             f"stride {stride}")
        # total d (k − 1); an odd total puts the extra row/column at the bottom/right, as PyTorch
        tot = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return (tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2)
    ph, pw = pair(fname, "padding", padding, 0)
    return (ph, ph, pw, pw)


def _reshape(xp: Namespace, a: Array, *shapes: tuple[int, ...]) -> Array:
    """``a`` reshaped through ``shapes`` in turn: each step only splits or only merges axes,
    which is what Dask's chunked reshape supports (a view on the other backends)."""
    for shape in shapes:
        a = xp.reshape(a, shape)
    return a


def _kernel_matrix(xp: Namespace, w: Array, groups: int) -> Array:
    """W (O, C/G, k_h, k_w) as W_mat (G, O/G, C/G·k_h k_w)."""
    o, cg, kh, kw = w.shape
    return _reshape(xp, w, (groups, o // groups, cg, kh, kw), (groups, o // groups, cg * kh * kw))


def _weight_grad(xp: Namespace, dyg: Array, cols: Array) -> Array:
    """∂L/∂W_mat = Σ_n dY_n X_col,nᵀ, shape (G, O/G, C/G·k_h k_w).

    When O/G <= H_out W_out: N per-sample matmuls and a sum over N (their (N, G, O/G,
    C/G·k_h k_w) products are no larger than the window matrix). Otherwise — many channels on
    a small map, where those products would be up to O/(G H_out W_out) times the window
    matrix — one matmul over N·H_out W_out after moving N beside the spatial axis (a copy of
    the window matrix, nothing N-fold).
    """
    n, g, og, hw = dyg.shape
    if og <= hw:
        return xp.sum(xp.matmul(dyg, xp.matrix_transpose(cols)), axis=0)
    dyt = xp.reshape(xp.permute_dims(dyg, (1, 2, 0, 3)), (g, og, n * hw))
    colt = xp.reshape(xp.permute_dims(cols, (1, 0, 3, 2)), (g, n * hw, cols.shape[2]))
    return xp.matmul(dyt, colt)


def _conv(xp: Namespace, x: Array, w: Array, win: Window2d, groups: int) -> tuple[Array, Array]:
    """(y without bias (N, O, H_out, W_out), window matrix (N, G, C/G·k_h k_w, H_out W_out))."""
    n, c, h, wd = x.shape
    o, cg, k = w.shape[0], c // groups, win.offsets
    ho, wo = win.output_size("Conv2d.forward", h, wd)
    slices = window_slices(xp, pad2d(xp, x, win.padding), win, (ho, wo))
    cols = slices[0][:, :, None, :, :] if k == 1 else xp.stack(slices, axis=2)
    cols = _reshape(xp, cols, (n, groups, cg, k, ho, wo), (n, groups, cg * k, ho * wo))
    y = xp.matmul(_kernel_matrix(xp, w, groups), cols)  # (N, G, O/G, H_out W_out)
    return _reshape(xp, y, (n, o, ho * wo), (n, o, ho, wo)), cols


class Conv2d(Module):
    """2-D convolution over (N, C, H, W) maps, as ``torch.nn.Conv2d`` (zero padding).

    y = conv(x, W) + b with W of shape (out_channels, in_channels/groups, k_h, k_w) and b of
    shape (out_channels,): the formula, backward and JVP are in the module docstring.

    Parameters
    ----------
    in_channels, out_channels : channel counts, both divisible by ``groups``.
    kernel_size, stride, dilation : an int or a pair (h, w); stride and dilation default 1.
    padding : an int or a pair of zero-padding sizes (default 0), ``"valid"`` (no padding) or
        ``"same"`` (output size = input size; stride 1 only; an odd total padding puts the
        extra row/column at the bottom/right, as PyTorch).
    groups : channel groups (default 1; ``in_channels`` gives a depthwise convolution).
    bias : whether to add a bias (default True).
    init : ``"he"`` (default: N(0, 2/fan_in), fan_in = in/groups · k_h k_w), ``"uniform"``
        (PyTorch's default: kaiming-uniform with a = √5, i.e. U(±1/√fan_in) for the weight
        and the bias), ``"gaussian"``, ``"xavier"``, ``"xavier_uniform"``, ``"orthogonal"``:
        :mod:`arraynorm.nn.init` with PyTorch's convolution fans.
    sigma_w, sigma_b : gain of the weight and standard deviation of the bias.
    rng : seed or ``numpy.random.Generator``; xp, device, dtype: where the parameters live.

    Computation is in float32 at least (float16/bfloat16 inputs are promoted and the result
    cast back). Differs from ``torch.nn.Conv2d``: input must be batched (rank 4); only zero
    padding (no ``padding_mode``); the default initialization is He (``init="uniform"`` is
    PyTorch's), as :class:`~arraynorm.nn.Linear`.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import Conv2d
    >>> conv = Conv2d(3, 8, 3, padding="same", rng=0)
    >>> x = np.random.default_rng(1).standard_normal((2, 3, 5, 7))
    >>> y = conv(x)
    >>> dx = conv.backward(np.ones_like(y))
    >>> y.shape, dx.shape, conv.grads["weight"].shape
    ((2, 8, 5, 7), (2, 3, 5, 7), (8, 3, 3, 3))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, *,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        fname = "Conv2d"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            xp_check_int(fname, name, v)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if v % groups:
                raise ValueError(f"{fname}: {name}={v} must be divisible by groups={groups}")
        kernel = pair(fname, "kernel_size", kernel_size, 1)
        strides = pair(fname, "stride", stride, 1)
        dil = pair(fname, "dilation", dilation, 1)
        self.win = Window2d(kernel, strides, dil, _padding(fname, padding, kernel, strides, dil))
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.padding, self.init = padding, init
        g = make_rng(rng)
        shape = (out_channels, in_channels // groups) + kernel
        fan_in = math.prod(shape[1:])
        w = xp_from_host(init_weight(init, shape, g, sigma_w), xp, device, dtype)
        b = (xp_from_host(init_bias(init, fan_in, out_channels, g, sigma_b), xp, device, w.dtype)
             if bias else None)
        self.register_parameter("weight", w)
        self.register_parameter("bias", b)

    @property
    def kernel_size(self) -> tuple[int, int]:
        """(k_h, k_w), the kernel's spatial size."""
        return self.win.kernel

    @property
    def stride(self) -> tuple[int, int]:
        """(s_h, s_w), the step between windows."""
        return self.win.stride

    @property
    def dilation(self) -> tuple[int, int]:
        """(d_h, d_w), the spacing between kernel taps."""
        return self.win.dilation

    def _check(self, fname: str, x: Array) -> Any:
        w = self.params["weight"]
        xp = xp_namespace(fname, x=x, weight=w)
        check_nchw(fname, xp, x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{fname}: x must have in_channels={self.in_channels} channels "
                             f"(axis 1), got shape {tuple(x.shape)}")
        check_float_input(fname, xp, x)
        return xp

    def _conv(self, xp: Namespace, x: Array) -> tuple[Array, Array]:
        # the input's dtype rules (arraynorm.nn: parameters are cast per call)
        xc = xp_in_compute_dtype(xp, x)
        return _conv(xp, xc, xp.astype(self.params["weight"], xc.dtype, copy=False), self.win,
                     self.groups)

    def forward(self, x: Array) -> Array:
        """y = W ⋆ x + b (cross-correlation, PyTorch's ``conv2d``) for x (N, C_in, H, W), computed
        in the input's dtype (float16/bfloat16 in float32, rounded once).
        """
        xp = self._check("Conv2d.forward", x)
        y, cols = self._conv(xp, x)
        b = self.params.get("bias")
        if b is not None:
            y = y + xp.reshape(xp.astype(b, y.dtype, copy=False), (1, -1, 1, 1))
        self._save(xp=xp, cols=cols, in_shape=tuple(x.shape), out_shape=tuple(y.shape),
                   in_dtype=x.dtype)
        return xp.astype(y, x.dtype, copy=False)

    def backward(self, dy: Array) -> Array:
        """dx = W ⋆ᵀ dy (in the input's dtype); sets ∂L/∂W and ∂L/∂b in the parameters' dtype."""
        c = self._saved()
        xp, cols = c["xp"], c["cols"]
        check_cotangent("Conv2d.backward", dy, c["out_shape"])
        n, ch, h, w = c["in_shape"]
        wt = self.params["weight"]
        g, o, k = self.groups, self.out_channels, self.win.offsets
        ho, wo = dy.shape[2], dy.shape[3]
        dy = xp_whole_axes(xp.astype(dy, cols.dtype, copy=False), (1, 2, 3))
        dyg = _reshape(xp, dy, (n, o, ho * wo), (n, g, o // g, ho * wo))
        dw = _reshape(xp, _weight_grad(xp, dyg, cols), (g, o // g, ch // g, k), tuple(wt.shape))
        self.grads["weight"] = xp.astype(dw, wt.dtype, copy=False)
        if "bias" in self.params:
            db = xp.sum(dy, axis=(0, 2, 3))
            self.grads["bias"] = xp.astype(db, self.params["bias"].dtype, copy=False)
        wmat = _kernel_matrix(xp, xp.astype(wt, cols.dtype, copy=False), g)
        dcols = xp.matmul(xp.matrix_transpose(wmat), dyg)  # (N, G, C/G·k_h k_w, H_out W_out)
        dcols = _reshape(xp, dcols, (n, g, ch // g, k, ho, wo), (n, ch, k, ho, wo))
        dx = scatter_windows(xp, dcols, self.win, (h, w))
        return xp.astype(dx, c["in_dtype"], copy=False)

    def jvp(self, dx: Array) -> Array:
        """∂y/∂x · dx = conv(dx, W) (no bias: the parameters are held fixed). Linear in x, so
        it needs no forward point and leaves the forward cache alone."""
        xp = self._check("Conv2d.jvp", dx)
        dy = self._conv(xp, dx)[0]
        return xp.astype(dy, dx.dtype, copy=False)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding!r}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={'bias' in self.params}, init={self.init!r}"
