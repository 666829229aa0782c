"""Fully connected layers: ``Linear`` and its weight-normalized and spectral-normalized forms.

y = x Wᵀ + b, W of shape (out_features, in_features) as in ``torch.nn.Linear``; ``x`` has any
leading shape (..., in_features). With dy = ∂L/∂y flattened to (M, out) and x to (M, in):

    ∂L/∂x = dy W,   ∂L/∂W = dyᵀ x,   ∂L/∂b = Σ_rows dy;

forward mode (input tangent, parameters fixed): dy = dx Wᵀ.

The reparameterized layers compute W from their own parameters with the weight-normalization
ops of :mod:`arraynorm.weight` and pull ∂L/∂W back through those ops' VJPs.
"""

from __future__ import annotations

from typing import Any

from .._typing import Array, Namespace
from .._array_api import xp_check_eps, xp_check_floating, xp_check_int, xp_from_host, xp_namespace
from .._vjp import vjp
from .init import init_bias, init_weight, make_rng
from .module import Module

__all__ = ["Linear", "WeightNormLinear", "SpectralNormLinear", "ReparamLinear", "linear",
           "linear_backward"]


def _check_input(fname: str, xp: Namespace, x: Array, w: Array) -> None:
    xp_check_floating(fname, "x", x, xp)
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{fname}: x must have shape (..., {w.shape[1]}) (in_features), "
                         f"got {tuple(x.shape)}")
    if x.dtype != w.dtype:
        raise TypeError(f"{fname}: x has dtype {x.dtype} but the weight has dtype {w.dtype}; "
                        f"cast one (or move the model with .to(xp, dtype=...))")


def linear(xp: Namespace, x: Array, w: Array, b: Array | None) -> Array:
    """y = x Wᵀ + b for x of shape (..., in)."""
    y = xp.matmul(x, xp.matrix_transpose(w))
    return y if b is None else y + b


def linear_backward(xp: Namespace, dy: Array, x: Array, w: Array, has_bias: bool
                    ) -> tuple[Array, Array, Array | None]:
    """(∂L/∂x, ∂L/∂W, ∂L/∂b) of y = x Wᵀ + b."""
    dx = xp.matmul(dy, w)
    dy2 = xp.reshape(dy, (-1, dy.shape[-1]))
    x2 = xp.reshape(x, (-1, x.shape[-1]))
    dw = xp.matmul(xp.matrix_transpose(dy2), x2)
    db = xp.sum(dy2, axis=0) if has_bias else None
    return dx, dw, db


def _init_arrays(in_features: int, out_features: int, bias: bool, init: str,
                 sigma_w: float | None, sigma_b: float | None, rng: Any, xp: Namespace,
                 dtype: Any, device: Any) -> tuple[Array, Array | None]:
    for name, n in (("in_features", in_features), ("out_features", out_features)):
        xp_check_int("Linear", name, n)
    g = make_rng(rng)
    w = xp_from_host(init_weight(init, (out_features, in_features), g, sigma_w), xp, device, dtype)
    b = (xp_from_host(init_bias(init, in_features, out_features, g, sigma_b), xp, device, w.dtype)
         if bias else None)
    return w, b


class _LinearLayer(Module):
    """What the fully connected layers share: the JVP dy = dx Wᵀ with the weight the last
    forward multiplied by (the reparameterized layers cache it as ``w``)."""

    def _weight_used(self, c: dict[str, Any]) -> Array:
        return c["w"]

    def jvp(self, dx: Array) -> Array:
        c = self._saved("jvp")
        self._check_tangent(dx, c["xp"], tuple(c["x"].shape))
        return linear(c["xp"], dx, self._weight_used(c), None)


class Linear(_LinearLayer):
    """Fully connected layer y = x Wᵀ + b.

    Parameters
    ----------
    in_features, out_features : sizes; ``weight`` is (out, in), ``bias`` (out,).
    bias : whether to add a bias (default True).
    init : ``"he"`` (default), ``"gaussian"`` (N(0, σ_w²/fan_in), bias N(0, σ_b²)),
        ``"xavier"``, ``"xavier_uniform"``, ``"orthogonal"`` or ``"uniform"`` (PyTorch's
        default); see :mod:`arraynorm.nn.init`.
    sigma_w, sigma_b : gain of the weight and standard deviation of the bias.
    rng : seed or ``numpy.random.Generator`` (weights are drawn on the host in float64).
    xp, device, dtype : where the parameters live (default NumPy, the namespace's default
        floating dtype).

    Differs from ``torch.nn.Linear``: the default initialization is He (the theory's), not
    PyTorch's uniform one (``init="uniform"``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, rng, xp,
                            dtype, device)
        self.in_features, self.out_features, self.init = in_features, out_features, init
        self.register_parameter("weight", w)
        self.register_parameter("bias", b)

    def forward(self, x: Array) -> Array:
        fname = "Linear.forward"
        w, b = self.params["weight"], self.params.get("bias")
        xp = xp_namespace(fname, x=x, weight=w)
        _check_input(fname, xp, x, w)
        self._save(x=x, xp=xp)
        return linear(xp, x, w, b)

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by (here the parameter itself)."""
        return self.params["weight"]

    def _weight_used(self, c: dict[str, Any]) -> Array:
        return self.params["weight"]  # as backward: the parameter itself

    def backward(self, dy: Array) -> Array:
        c = self._saved()
        w = self.params["weight"]
        dx, dw, db = linear_backward(c["xp"], dy, c["x"], w, "bias" in self.params)
        self.grads["weight"] = dw
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}, "
                f"init={self.init!r}")


class WeightNormLinear(_LinearLayer):
    """Weight-normalized linear layer (Salimans & Kingma 2016): W = g · v / ‖v‖, norms of
    the rows of v (one per output unit, PyTorch's ``weight_norm(dim=0)``), then y = x Wᵀ + b.

    Parameters ``weight_v`` (out, in) and ``weight_g`` (out, 1) (PyTorch's names and shapes) start at
    v = W₀ and g = ‖W₀‖ of an initial weight W₀ drawn by ``init`` (so the layer starts as the
    plain ``Linear`` with the same seed). W is computed by :func:`arraynorm.weight_norm`
    and ∂L/∂v, ∂L/∂g come from its closed-form VJP. Other arguments as :class:`Linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        from ..weight import weight_norm  # noqa: F401  (fail early if the module is missing)
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, rng, xp,
                            dtype, device)
        xpn = xp_namespace("WeightNormLinear", weight=w)
        g = xpn.sqrt(xpn.sum(w * w, axis=1, keepdims=True))
        self.in_features, self.out_features, self.init = in_features, out_features, init
        self.register_parameter("weight_g", g)
        self.register_parameter("weight_v", w)
        self.register_parameter("bias", b)

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by, g · v / ‖v‖ (computed, not stored)."""
        from ..weight import weight_norm
        return weight_norm(self.params["weight_v"], self.params["weight_g"], dim=0)

    def forward(self, x: Array) -> Array:
        from ..weight import weight_norm
        fname = "WeightNormLinear.forward"
        v, g, b = self.params["weight_v"], self.params["weight_g"], self.params.get("bias")
        xp = xp_namespace(fname, x=x, weight_v=v)
        _check_input(fname, xp, x, v)
        if self.requires_grad:
            w, pullback = vjp(weight_norm, v, g, dim=0)
        else:
            w, pullback = weight_norm(v, g, dim=0), None
        self._save(x=x, xp=xp, w=w, pullback=pullback)
        return linear(xp, x, w, b)

    def backward(self, dy: Array) -> Array:
        c = self._saved()
        dx, dw, db = linear_backward(c["xp"], dy, c["x"], c["w"], "bias" in self.params)
        dv, dg = c["pullback"](dw)[:2]
        self.grads["weight_v"], self.grads["weight_g"] = dv, dg
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}"


class SpectralNormLinear(_LinearLayer):
    """Spectrally normalized linear layer (Miyato et al. 2018): W = W_orig / σ(W_orig),
    σ estimated by ``n_power_iterations`` steps of power iteration from the buffer ``u``
    (out,), which each training forward updates (as ``torch.nn.utils.spectral_norm``).

    ∂L/∂W_orig comes from the VJP of :func:`arraynorm.spectral_norm`, which treats ``u`` (and
    the power-iteration vectors) as constants, as PyTorch does. ``u`` starts as a random unit
    vector refined by 15 power iterations (as PyTorch's parametrization at creation). In eval
    mode no iteration runs and ``u`` is kept (σ̃ = ‖Wᵀu‖, PyTorch's eval mode).
    Parameters ``weight_orig`` (out, in) and ``bias``; other arguments as :class:`Linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 n_power_iterations: int = 1, eps: float = 1e-12, init: str = "he",
                 sigma_w: float | None = None, sigma_b: float | None = None, rng: Any = None,
                 xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        from ..weight import spectral_norm  # noqa: F401
        from ..weight import spectral_norm_init_u
        g = make_rng(rng)
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, g, xp,
                            dtype, device)
        # 15 warm-up iterations, as torch.nn.utils.parametrizations.spectral_norm at creation
        u = spectral_norm_init_u(w, g, dim=0, eps=eps, n_power_iterations=15)
        self.in_features, self.out_features, self.init = in_features, out_features, init
        self.n_power_iterations = xp_check_int("SpectralNormLinear", "n_power_iterations",
                                               n_power_iterations, minimum=0, strict_type=True)
        self.eps = xp_check_eps("SpectralNormLinear", eps)
        self.register_parameter("weight_orig", w)
        self.register_parameter("bias", b)
        self.register_buffer("weight_u", u)

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by in eval mode, W / ‖Wᵀu‖ (u not updated)."""
        from ..weight import spectral_norm
        return spectral_norm(self.params["weight_orig"], self.buffers["weight_u"],
                             n_power_iterations=0, eps=self.eps, dim=0)[0]

    def forward(self, x: Array) -> Array:
        from ..weight import spectral_norm
        fname = "SpectralNormLinear.forward"
        w0, b, u = self.params["weight_orig"], self.params.get("bias"), self.buffers["weight_u"]
        xp = xp_namespace(fname, x=x, weight_orig=w0, weight_u=u)
        _check_input(fname, xp, x, w0)
        # eval: no power iteration and u kept (PyTorch's eval mode)
        n_it = self.n_power_iterations if self.training else 0
        kw = dict(n_power_iterations=n_it, eps=self.eps, dim=0)
        if self.requires_grad:
            (w, u_new), pullback = vjp(spectral_norm, w0, u, **kw)
        else:
            (w, u_new), pullback = spectral_norm(w0, u, **kw), None
        if self.training:
            self.buffers["weight_u"] = u_new
        self._save(x=x, xp=xp, w=w, pullback=pullback)
        return linear(xp, x, w, b)

    def backward(self, dy: Array) -> Array:
        c = self._saved()
        dx, dw, db = linear_backward(c["xp"], dy, c["x"], c["w"], "bias" in self.params)
        self.grads["weight_orig"] = c["pullback"]((dw, None))[0]
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}, "
                f"n_power_iterations={self.n_power_iterations}")


def _reparam_functions() -> dict[str, Any]:
    from ..orthogonal import oni, orthogonal_weight_norm
    from ..weight import centered_weight_norm, weight_standardization
    return {"weight_standardization": weight_standardization,
            "centered_weight_norm": centered_weight_norm,
            "orthogonal": orthogonal_weight_norm, "oni": oni}


class ReparamLinear(_LinearLayer):
    """Linear layer whose weight is a normalized function of a proxy weight V:
    y = x f(V)ᵀ + b, with f one of the survey's weight normalizations (§3.4):

    ==========================  =============================================  =====================
    ``reparam``                 f(V)                                           reference
    ==========================  =============================================  =====================
    ``"weight_standardization"`` (V − μ)/sqrt(σ² + eps) per output unit         Qiao et al. 2019
    ``"centered_weight_norm"``  (V − μ)/‖V − μ‖ per output unit                 Huang et al. 2017
    ``"orthogonal"``            (V_c V_cᵀ + eps I)^{−1/2} V_c (OWN)             Huang et al. 2018
    ``"oni"``                   Newton-iteration orthogonalization (ONI)       Huang et al. 2020
    ==========================  =============================================  =====================

    ``reparam_kwargs`` go to the function (``eps``, ``T``, ``center``). ∂L/∂V comes from
    its closed-form VJP. OWN/ONI with centring need out_features < in_features. Parameters
    ``weight_v`` (out, in), initialized by ``init`` as :class:`Linear`, and ``bias``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 reparam: str = "weight_standardization", reparam_kwargs: dict[str, Any] | None = None,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        funcs = _reparam_functions()
        if reparam not in funcs:
            raise ValueError(f"ReparamLinear: reparam must be one of {sorted(funcs)}, got {reparam!r}")
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, rng, xp,
                            dtype, device)
        self.in_features, self.out_features, self.reparam = in_features, out_features, reparam
        self.reparam_kwargs = dict(reparam_kwargs or {})
        self._f = funcs[reparam]
        self.register_parameter("weight_v", w)
        self.register_parameter("bias", b)
        self.effective_weight()  # fail at construction for shapes the reparameterization refuses

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by, f(V) (computed, not stored)."""
        return self._f(self.params["weight_v"], **self.reparam_kwargs)

    def forward(self, x: Array) -> Array:
        fname = "ReparamLinear.forward"
        v, b = self.params["weight_v"], self.params.get("bias")
        xp = xp_namespace(fname, x=x, weight_v=v)
        _check_input(fname, xp, x, v)
        if self.requires_grad:
            w, pullback = vjp(self._f, v, **self.reparam_kwargs)
        else:
            w, pullback = self._f(v, **self.reparam_kwargs), None
        self._save(x=x, xp=xp, w=w, pullback=pullback)
        return linear(xp, x, w, b)

    def backward(self, dy: Array) -> Array:
        c = self._saved()
        dx, dw, db = linear_backward(c["xp"], dy, c["x"], c["w"], "bias" in self.params)
        self.grads["weight_v"] = c["pullback"](dw)[0]
        if db is not None:
            self.grads["bias"] = db
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, reparam={self.reparam!r}"
