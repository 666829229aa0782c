"""Fully connected layers: ``Linear`` and its weight-normalized and spectral-normalized forms.

y = x Wᵀ + b, W of shape (out_features, in_features) as in ``torch.nn.Linear``; ``x`` has any
leading shape (..., in_features). With dy = ∂L/∂y flattened to (M, out) and x to (M, in):

    ∂L/∂x = dy W,   ∂L/∂W = dyᵀ x,   ∂L/∂b = Σ_rows dy;

forward mode (input tangent, parameters fixed): dy = dx Wᵀ.

The reparameterized layers compute W from their own parameters with the weight-normalization
ops of :mod:`arraynorm.weight` and :mod:`arraynorm.orthogonal` and pull ∂L/∂W back through
those ops' VJPs; every layer here is the one skeleton :class:`_LinearLayer` with its own
weight map (:meth:`_LinearLayer._weight`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from array_api_compat import is_numpy_array

from .._array_api import (_NUMPY_XP, xp_check_eps, xp_check_int, xp_from_host,
                          xp_in_compute_dtype, xp_namespace)
from .._typing import Array, Namespace
from .._vjp import vjp
from ..orthogonal import oni, orthogonal_weight_norm
from ..weight import (centered_weight_norm, spectral_norm, spectral_norm_init_u, weight_norm,
                      weight_standardization)
from .init import init_bias, init_weight, make_rng
from .module import Module, check_float_input

__all__ = ["Linear", "WeightNormLinear", "SpectralNormLinear", "ReparamLinear", "linear",
           "linear_backward"]


def _check_input(fname: str, xp: Namespace, x: Array, w: Array) -> None:
    check_float_input(fname, xp, x)
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"{fname}: x must have shape (..., {w.shape[1]}) (in_features), "
                         f"got {tuple(x.shape)}")


def _rows_matmul(xp: Namespace, a: Array, b: Array) -> Array:
    """``a @ b`` for ``a`` of shape (..., k) and a matrix ``b``. A NumPy ``a`` with more than
    two axes is multiplied as one (rows, k) matrix: NumPy's matmul runs one BLAS call per
    leading index otherwise (measured: (32, 128, 256) @ (256, 1024) float32 10.5 ms, as one
    (4096, 256) matrix 7.0 ms, on 2 cores)."""
    if a.ndim > 2 and is_numpy_array(a):
        lead = tuple(a.shape[:-1])
        y = xp.matmul(xp.reshape(a, (-1, a.shape[-1])), b)
        return xp.reshape(y, (*lead, y.shape[-1]))
    return xp.matmul(a, b)


def linear(xp: Namespace, x: Array, w: Array, b: Array | None) -> Array:
    """y = x Wᵀ + b for x of shape (..., in)."""
    y = _rows_matmul(xp, x, xp.matrix_transpose(w))
    if b is None:
        return y
    if is_numpy_array(y) and is_numpy_array(b) and b.dtype == y.dtype and y.ndim >= b.ndim:
        return np.add(y, b, out=y)  # y is the product's own new array: no second one
    return y + b


def linear_backward(xp: Namespace, dy: Array, x: Array, w: Array, has_bias: bool
                    ) -> tuple[Array, Array, Array | None]:
    """(∂L/∂x, ∂L/∂W, ∂L/∂b) of y = x Wᵀ + b."""
    if type(dy) is np.ndarray and type(x) is np.ndarray and type(w) is np.ndarray:
        # the same products and sum without the namespace's wrappers (4 µs a layer)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
        return (_rows_matmul(xp, dy, w), np.matmul(dy2.T, x2),
                np.add.reduce(dy2, axis=0) if has_bias else None)
    dx = _rows_matmul(xp, dy, w)
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


#: ``dW ↦ {parameter name: gradient}``: the reparameterization's pullback, by parameter
WeightPullback = Callable[[Array], dict[str, Array]]


class _LinearLayer(Module):
    """What every fully connected layer is: y = x Wᵀ + b with W = the layer's weight map of its
    parameters (:meth:`_weight`). Forward, backward and JVP are written once here; a layer
    gives its weight map, the arrays its input must share a namespace and device with
    (:attr:`_checked`, the first one W-shaped) and :meth:`effective_weight`."""

    _checked: tuple[str, ...] = ("weight",)

    def _weight(self) -> tuple[Array, WeightPullback | None]:  # pragma: no cover - abstract
        """``(W, pullback)``; the pullback only while gradients are on."""
        raise NotImplementedError

    def effective_weight(self) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def _with_vjp(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """``f(*args, **kwargs)`` and its pullback (``None`` when gradients are off)."""
        if self.requires_grad:
            return vjp(f, *args, **kwargs)
        return f(*args, **kwargs), None

    def _multiplier(self, saved: dict[str, Any]) -> Array:
        """The W that backward and JVP multiply by: the one the forward computed."""
        return saved["w"]

    def forward(self, x: Array) -> Array:
        """y = x Wᵀ + b in the input's dtype (W, b cast per call; float16/bfloat16 inputs are
        multiplied in float32 and rounded once), caching what :meth:`backward` needs."""
        params = self.params
        checked = {name: params[name] if name in params else getattr(self, name)
                   for name in self._checked}
        w0 = checked[self._checked[0]]
        if (type(x) is np.ndarray and x.dtype.char in "efd" and x.ndim >= 1 and type(w0) is np.ndarray
                and x.shape[-1] == w0.shape[1]
                and all(type(a) is np.ndarray or a is None for a in checked.values())):
            xp = _NUMPY_XP  # what the checks below find for these (a deep stack's every layer)
        else:
            fname = f"{type(self).__name__}.forward"
            xp = xp_namespace(fname, x=x, **checked)
            _check_input(fname, xp, x, w0)
        w, pullback = self._weight()
        xc = xp_in_compute_dtype(xp, x)
        b = self.params.get("bias")
        self._save(x=xc, xp=xp, w=w, pullback=pullback, dtype=x.dtype)
        y = linear(xp, xc, xp.astype(w, xc.dtype, copy=False),
                   None if b is None else xp.astype(b, xc.dtype, copy=False))
        return xp.astype(y, x.dtype, copy=False)

    def backward(self, dy: Array) -> Array:
        """∂L/∂x = dy W (in the input's dtype); sets ∂L/∂W = dyᵀ x pulled back to the layer's
        parameters and ∂L/∂b = Σ dy, each in its parameter's dtype."""
        c = self._saved()
        xp, x, w = c["xp"], c["x"], self._multiplier(c)
        dyc = xp.astype(dy, x.dtype, copy=False)
        dx, dw, db = linear_backward(xp, dyc, x, xp.astype(w, x.dtype, copy=False),
                                     "bias" in self.params)
        self.grads.update(c["pullback"](xp.astype(dw, w.dtype, copy=False)))
        if db is not None:
            self.grads["bias"] = xp.astype(db, self.params["bias"].dtype, copy=False)
        return xp.astype(dx, c["dtype"], copy=False)

    def jvp(self, dx: Array) -> Array:
        """Forward-mode product with the parameters fixed: dx Wᵀ, in ``dx``'s dtype."""
        c = self._saved("jvp")
        xp = c["xp"]
        self._check_tangent(dx, xp, tuple(c["x"].shape))
        dxc = xp_in_compute_dtype(xp, dx)
        dy = linear(xp, dxc, xp.astype(self._multiplier(c), dxc.dtype, copy=False), None)
        return xp.astype(dy, dx.dtype, copy=False)


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
        floating dtype: float64 for NumPy). The layer computes in its input's floating dtype
        whatever the parameters' (cast per call; gradients in the parameters' dtype; see
        :mod:`arraynorm.nn`, *Dtypes*).

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

    def _weight(self) -> tuple[Array, WeightPullback | None]:
        return self.params["weight"], lambda dw: {"weight": dw}

    def _multiplier(self, saved: dict[str, Any]) -> Array:
        return self.params["weight"]  # the parameter itself, as it is now

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by (here the parameter itself)."""
        return self.params["weight"]

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

    _checked = ("weight_v",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, rng, xp,
                            dtype, device)
        xpn = xp_namespace("WeightNormLinear", weight=w)
        g = xpn.sqrt(xpn.sum(w * w, axis=1, keepdims=True))
        self.in_features, self.out_features, self.init = in_features, out_features, init
        self.register_parameter("weight_g", g)
        self.register_parameter("weight_v", w)
        self.register_parameter("bias", b)

    def _weight(self) -> tuple[Array, WeightPullback | None]:
        w, pb = self._with_vjp(weight_norm, self.params["weight_v"], self.params["weight_g"], dim=0)
        if pb is None:
            return w, None
        return w, lambda dw: dict(zip(("weight_v", "weight_g"), pb(dw)[:2]))

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by, g · v / ‖v‖ (computed, not stored)."""
        return weight_norm(self.params["weight_v"], self.params["weight_g"], dim=0)

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

    _checked = ("weight_orig", "weight_u")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 n_power_iterations: int = 1, eps: float = 1e-12, init: str = "he",
                 sigma_w: float | None = None, sigma_b: float | None = None, rng: Any = None,
                 xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
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

    def _weight(self) -> tuple[Array, WeightPullback | None]:
        # eval: no power iteration and u kept (PyTorch's eval mode)
        n_it = self.n_power_iterations if self.training else 0
        (w, u_new), pb = self._with_vjp(spectral_norm, self.params["weight_orig"],
                                        self.buffers["weight_u"], n_power_iterations=n_it,
                                        eps=self.eps, dim=0)
        if self.training:
            self.buffers["weight_u"] = u_new
        if pb is None:
            return w, None
        return w, lambda dw: {"weight_orig": pb((dw, None))[0]}

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by in eval mode, W / ‖Wᵀu‖ (u not updated)."""
        return spectral_norm(self.params["weight_orig"], self.buffers["weight_u"],
                             n_power_iterations=0, eps=self.eps, dim=0)[0]

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={'bias' in self.params}, "
                f"n_power_iterations={self.n_power_iterations}")


#: the weight normalizations :class:`ReparamLinear` applies, by name
REPARAMETERIZATIONS: dict[str, Callable[..., Array]] = {
    "weight_standardization": weight_standardization,
    "centered_weight_norm": centered_weight_norm,
    "orthogonal": orthogonal_weight_norm,
    "oni": oni,
}


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

    _checked = ("weight_v",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 reparam: str = "weight_standardization", reparam_kwargs: dict[str, Any] | None = None,
                 init: str = "he", sigma_w: float | None = None, sigma_b: float | None = None,
                 rng: Any = None, xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        if reparam not in REPARAMETERIZATIONS:
            raise ValueError(f"ReparamLinear: reparam must be one of "
                             f"{sorted(REPARAMETERIZATIONS)}, got {reparam!r}")
        w, b = _init_arrays(in_features, out_features, bias, init, sigma_w, sigma_b, rng, xp,
                            dtype, device)
        self.in_features, self.out_features, self.reparam = in_features, out_features, reparam
        self.reparam_kwargs = dict(reparam_kwargs or {})
        self._f = REPARAMETERIZATIONS[reparam]
        self.register_parameter("weight_v", w)
        self.register_parameter("bias", b)
        self.effective_weight()  # fail at construction for shapes the reparameterization refuses

    def _weight(self) -> tuple[Array, WeightPullback | None]:
        w, pb = self._with_vjp(self._f, self.params["weight_v"], **self.reparam_kwargs)
        if pb is None:
            return w, None
        return w, lambda dw: {"weight_v": pb(dw)[0]}

    def effective_weight(self) -> Array:
        """The weight the layer multiplies by, f(V) (computed, not stored)."""
        return self._f(self.params["weight_v"], **self.reparam_kwargs)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, reparam={self.reparam!r}"
