"""Style transfer's normalization layer: adaptive instance normalization (the survey's IN
application, §7)."""

from __future__ import annotations


from array_api_compat import array_namespace

from .._array_api import xp_check_channel_axis, xp_check_eps, xp_check_tangent
from .._typing import Array
from ..adain import adain, adain_linearized
from .module import Module

__all__ = ["AdaIN"]


class AdaIN(Module):
    """AdaIN as a layer (Huang & Belongie 2017): y = σ(s) · (c − μ(c))/σ(c) + μ(s), μ and σ
    per sample and channel over the spatial axes (biased variance, eps inside the root).

    ``axis`` is the *channel* axis, kept: statistics per sample and channel (default 1; one
    int).

    ``forward(content, style)`` takes two inputs — content (N, C, *S) and style (N, C, *S'),
    spatial sizes may differ — and ``backward(dy)`` returns ``(dcontent, dstyle)``: in a
    style-transfer network the style cotangent flows into the style encoder. No parameters.
    Forward and backward are :func:`arraynorm.adain` and its closed-form VJP.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import AdaIN
    >>> rng = np.random.default_rng(0)
    >>> c, s = rng.standard_normal((2, 3, 4, 4)), 5 + 2 * rng.standard_normal((2, 3, 6, 6))
    >>> layer = AdaIN()
    >>> y = layer(c, s)
    >>> bool(np.allclose(y.mean(axis=(2, 3)), s.mean(axis=(2, 3))))
    True
    >>> dc, ds = layer.backward(np.ones_like(y))
    >>> dc.shape, ds.shape
    ((2, 3, 4, 4), (2, 3, 6, 6))
    """

    def __init__(self, eps: float = 1e-5, *, axis: int = 1) -> None:
        super().__init__()
        self.eps, self.axis = xp_check_eps("AdaIN", eps), xp_check_channel_axis("AdaIN", axis, None)

    def forward(self, content: Array, style: Array) -> Array:
        """y = σ(style) · (content − μ(content))/σ(content) + μ(style), per sample and channel."""
        if self.requires_grad:
            y, pullback, pushforward = adain_linearized(content, style, self.eps, self.axis)
            self._save(pullback=pullback, pushforward=pushforward, xp=array_namespace(y),
                       shapes=(tuple(content.shape), tuple(style.shape)))
            return y
        self._save()
        return adain(content, style, eps=self.eps, axis=self.axis)

    def backward(self, dy: Array) -> tuple[Array, Array]:
        """``(dcontent, dstyle)``: the cotangents of both inputs (closed-form VJP of :func:`arraynorm.adain`)."""
        dcontent, dstyle = self._saved()["pullback"](dy)
        return dcontent, dstyle

    def jvp(self, dcontent: Array, dstyle: Array | None = None) -> Array:
        """J·(dcontent, dstyle) at the last forward's inputs; ``dstyle=None`` holds the style
        fixed (the Jacobian with respect to the content input).

            dy = σ(s) · dĉ + ĉ · mean(ŝ · ds) + mean(ds),

        with dĉ the instance-standardization JVP and the means per sample and channel over
        the style's spatial axes.
        """
        c = self._saved("jvp")
        self._check_tangent(dcontent, c["xp"], c["shapes"][0])
        if dstyle is not None:
            xp_check_tangent("AdaIN.jvp", "dstyle", dstyle, c["xp"], c["shapes"][1], "style")
        return c["pushforward"](dcontent, dstyle)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
