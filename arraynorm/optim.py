"""Optimizers for :mod:`arraynorm.nn` models: SGD, the normalized-gradient step, LARS, LAMB
and Adam/AdamW, each with optional global-norm gradient clipping.

An optimizer reads the gradients the model's ``backward`` set and updates every parameter
that has one (parameters without a gradient are skipped, as in PyTorch). Updates happen in
each parameter's own dtype (a float64 parameter trained on float32 data keeps float64
"master" values: :mod:`arraynorm.nn`, *Dtypes*); a gradient set by hand in another floating
dtype is cast to the parameter's. The gradient
transforms of the survey's third family come from :mod:`arraynorm.gradient`
(:func:`~arraynorm.gradient.clip_by_global_norm`, :func:`~arraynorm.gradient.normalized_gradient`,
:func:`~arraynorm.gradient.block_normalized_gradient`, the LARS and LAMB trust ratios).

Parameters and optimizer state are updated *in place* where the library allows it (NumPy,
CuPy, PyTorch, array-api-strict: the arrays keep their identity, no new parameter array is
allocated) and *functionally* where it does not (JAX's immutable arrays, Dask's graph nodes):
the new array is written back into the model. :func:`supports_inplace`
(``_array_api.xp_supports_inplace``) decides, in one place.

On Dask a functional update is a graph node that depends on every earlier step: after 100
steps the parameters would carry the whole training history (its graph, and every input it
read). So ``step()`` ends by :func:`persist`-ing the model's parameters and buffers (running
statistics) and the optimizer's state in one ``dask.persist`` call: the step's graph is
computed once (on the cluster when a ``distributed.Client`` is active) and the next step
starts from arrays in memory, one task per chunk. ``opt.persist = False`` leaves that to the
caller.

Example
-------
>>> import numpy as np
>>> from arraynorm.nn import Linear, MSELoss
>>> from arraynorm.optim import SGD
>>> layer, loss = Linear(2, 1, rng=0), MSELoss()
>>> opt = SGD(layer, lr=0.1, momentum=0.9)
>>> x, t = np.ones((4, 2)), np.zeros((4, 1))
>>> before = float(loss(layer(x), t))
>>> _ = layer.backward(loss.backward()); opt.step()
>>> float(loss(layer(x), t)) < before
True
"""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace

from ._array_api import (xp_check_eps, xp_check_finite_scalar, xp_check_unit_interval, xp_move,
                         xp_resolve_namespace)
from ._array_api import xp_supports_inplace as supports_inplace
from ._kernels.dask_moments import is_dask
from ._typing import Array, Namespace
from .gradient import (block_normalized_gradient, clip_by_global_norm, lamb_trust_ratio,
                       lars_trust_ratio, normalized_gradient)
from .nn.module import Module

__all__ = ["supports_inplace", "persist", "Optimizer", "SGD", "NormalizedSGD", "LARS", "LAMB", "Adam", "AdamW"]


def _axpy(y: Array, a: Any, x: Array) -> Array:
    """y + a·x, written into ``y`` when possible (``a`` a Python float or a 0-d array)."""
    if supports_inplace(y):
        y += a * x
        return y
    return y + a * x


def _scale(y: Array, a: Any) -> Array:
    """a·y, written into ``y`` when possible."""
    if supports_inplace(y):
        y *= a
        return y
    return a * y


def persist(model: Module, *optimizers: Optimizer) -> int:
    """Persist every Dask array of a training state in one ``dask.persist`` call: the
    parameters and buffers of ``model`` and its submodules (running statistics,
    ``num_batches_tracked`` is an int) and the state of each optimizer (momentum buffers,
    moments, ``last_grad_norm``). Each persisted array's graph is then its chunks only, so a
    training loop's graphs (and memory) stay flat however many steps it runs. The arrays are
    computed by the active scheduler (the cluster's, under a ``distributed.Client``); other
    backends' arrays are left alone. Gradients and the forward caches are not persisted
    (``zero_grad`` and the next forward drop them). Returns the number of arrays persisted.

    :meth:`Optimizer.step` calls it on Dask (its ``persist=True``); call it yourself after
    updates an optimizer does not make (running statistics in eval loops, EMA weights)."""
    slots: list[tuple[dict[str, Any], str]] = []
    for _, m in model.named_modules():
        for store in (m.params, m.buffers):
            slots += [(store, k) for k, a in store.items() if is_dask(a)]
    for opt in optimizers:
        for st in opt.state.values():
            slots += [(st, k) for k, a in st.items() if is_dask(a)]
        if is_dask(opt.last_grad_norm):
            slots.append((opt.__dict__, "last_grad_norm"))
    if not slots:
        return 0
    import dask  # optional dependency: only Dask arrays reach this line

    done = dask.persist(*(store[k] for store, k in slots))
    for (store, k), a in zip(slots, done):
        store[k] = a
    return len(slots)


def _check_lr(fname: str, lr: Any) -> float:
    return xp_check_finite_scalar(fname, "lr", lr, minimum=0.0)



class Optimizer:
    """Base class: collects (parameter, gradient) pairs, clips, applies :meth:`_update`.

    Parameters
    ----------
    model : an :class:`arraynorm.nn.Module`; its parameters are found through
        ``model.parameter_slots()``, so the optimizer sees parameters replaced by
        ``load_state_dict`` or ``to``.
    lr : learning rate (Python float >= 0).
    max_grad_norm : if given, gradients are first clipped to this global L2 norm
        (``clip_by_global_norm``, PyTorch's ``clip_grad_norm_`` formula); the norm before
        clipping is kept in ``last_grad_norm`` (a 0-d array, not synchronized).
    """

    _name = "Optimizer"

    #: on Dask, persist the model and the optimizer's state after every step (:func:`persist`)
    persist: bool = True

    def __init__(self, model: Module, lr: float, *, max_grad_norm: float | None = None) -> None:
        fname = self._name
        if not isinstance(model, Module):
            raise TypeError(f"{fname}: model must be an arraynorm.nn Module, got {type(model).__name__}")
        self.model = model
        self.lr = _check_lr(fname, lr)
        self.max_grad_norm = (None if max_grad_norm is None else
                              xp_check_finite_scalar(fname, "max_grad_norm", max_grad_norm, minimum=0.0))
        self.state: dict[str, dict[str, Any]] = {}
        self.steps = 0
        self.last_grad_norm: Array | None = None

    def zero_grad(self) -> None:
        """Forget every gradient of the model (its ``backward`` overwrites them anyway)."""
        self.model.zero_grad()

    def _collect(self) -> tuple[list[str], list[tuple[Module, str]], list[Array], list[Array]]:
        names: list[str] = []
        slots: list[tuple[Module, str]] = []
        params: list[Array] = []
        grads: list[Array] = []
        for name, m, k in self.model.parameter_slots():
            g = m.grads.get(k)
            if g is None:
                continue
            p = m.params[k]
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(f"{self._name}.step: gradient of {name} has shape "
                                 f"{tuple(g.shape)}, the parameter {tuple(p.shape)}")
            if g.dtype != p.dtype:
                # layers return gradients in their parameter's dtype (arraynorm.nn: "Dtypes");
                # one set by hand in another floating dtype is cast, as the update would be
                gxp = array_namespace(g)
                if not gxp.isdtype(g.dtype, "real floating"):
                    raise TypeError(f"{self._name}.step: gradient of {name} must have a real "
                                    f"floating dtype, got {g.dtype}; set it as "
                                    f"xp.astype(grad, param.dtype)")
                g = gxp.astype(g, p.dtype)
            names.append(name)
            slots.append((m, k))
            params.append(p)
            grads.append(g)
        return names, slots, params, grads

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        names, slots, params, grads = self._collect()
        if not names:
            return
        if self.max_grad_norm is not None:
            grads, self.last_grad_norm = clip_by_global_norm(grads, self.max_grad_norm)
        self.steps += 1
        new = self._update(names, params, grads)
        for (m, k), p in zip(slots, new):
            m.params[k] = p
        if self.persist and any(is_dask(p) for p in new):
            persist(self.model, self)

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:  # pragma: no cover
        raise NotImplementedError

    def to(self, xp: Namespace, device: Any = None) -> Optimizer:
        """Move the optimizer's state (momentum buffers, moments) along with a moved model."""
        ns = xp_resolve_namespace(xp)
        for st in self.state.values():
            for k, a in st.items():
                if hasattr(a, "shape"):
                    st[k] = xp_move(a, ns, device)
        return self


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay, as ``torch.optim.SGD``:

        g ← g + λ·p;  b ← g (first step), b ← μ·b + (1 − τ)·g;  g ← g + μ·b (Nesterov) or b;
        p ← p − lr·g

    with λ = ``weight_decay``, μ = ``momentum``, τ = ``dampening`` (defaults 0).
    """

    _name = "SGD"

    def __init__(self, model: Module, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, max_grad_norm=max_grad_norm)
        fname = self._name
        self.momentum = xp_check_unit_interval(fname, "momentum", momentum, closed=False)
        self.dampening = xp_check_unit_interval(fname, "dampening", dampening)
        self.weight_decay = xp_check_finite_scalar(fname, "weight_decay", weight_decay, minimum=0.0)
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"{fname}: nesterov needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def _direction(self, name: str, p: Array, g: Array) -> Array:
        """The momentum-averaged direction (PyTorch's SGD recursion) for one parameter."""
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            return g
        st = self.state.setdefault(name, {})
        buf = st.get("momentum_buffer")
        if buf is None:
            xp = array_namespace(g)
            buf = xp.asarray(g, copy=True)
        else:
            buf = _axpy(_scale(buf, self.momentum), 1.0 - self.dampening, g)
        st["momentum_buffer"] = buf
        return g + self.momentum * buf if self.nesterov else buf

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:
        return [_axpy(p, -self.lr, self._direction(n, p, g))
                for n, p, g in zip(names, params, grads)]


class NormalizedSGD(SGD):
    """The normalized-gradient step: SGD (with momentum, weight decay) on the gradient's
    direction only, g / (‖g‖ + eps) — over all parameters together (``block=False``, the
    survey's normalized gradient) or per parameter array (``block=True``, default: the
    block-normalized gradient of Yu et al. 2017). Weight decay, if any, is added after the
    normalization. Uses :func:`arraynorm.gradient.normalized_gradient` /
    :func:`~arraynorm.gradient.block_normalized_gradient`.
    """

    _name = "NormalizedSGD"

    def __init__(self, model: Module, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, *, block: bool = True, eps: float = 1e-8,
                 max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, momentum, 0.0, weight_decay, max_grad_norm=max_grad_norm)
        self.block, self.eps = bool(block), xp_check_eps(self._name, eps)

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:
        f = block_normalized_gradient if self.block else normalized_gradient
        return super()._update(names, params, f(grads, eps=self.eps))


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, Algorithm 1):

        ρ = η‖p‖ / (‖g‖ + λ‖p‖ + eps)  (1 where ‖p‖ or ‖g‖ is 0),
        v ← μ·v + lr·ρ·(g + λ·p),   p ← p − v

    per parameter array (a "layer"), η = ``trust_coefficient`` (default 0.001), λ =
    ``weight_decay``, μ = ``momentum`` (default 0.9). ρ is
    :func:`arraynorm.gradient.lars_trust_ratio`. Every array is adapted, biases and norm
    gains included, as in the paper.
    """

    _name = "LARS"

    def __init__(self, model: Module, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001, eps: float = 0.0,
                 *, max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, max_grad_norm=max_grad_norm)
        fname = self._name
        self.momentum = xp_check_unit_interval(fname, "momentum", momentum, closed=False)
        self.weight_decay = xp_check_finite_scalar(fname, "weight_decay", weight_decay, minimum=0.0)
        self.trust_coefficient = xp_check_finite_scalar(fname, "trust_coefficient",
                                                        trust_coefficient, minimum=0.0)
        self.eps = xp_check_eps(fname, eps)

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:
        out = []
        for n, p, g in zip(names, params, grads):
            xp = array_namespace(p)
            rho = lars_trust_ratio(p, g, trust_coefficient=self.trust_coefficient,
                                   weight_decay=self.weight_decay, eps=self.eps)
            step = self.lr * xp.astype(rho, p.dtype)
            d = g + self.weight_decay * p if self.weight_decay else g
            st = self.state.setdefault(n, {})
            v = st.get("momentum_buffer")
            v = step * d if v is None else _axpy(_scale(v, self.momentum), step, d)
            st["momentum_buffer"] = v
            out.append(_axpy(p, -1.0, v))
        return out


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam`` (``decoupled_weight_decay=False``)
    or ``torch.optim.AdamW`` (True):

        g ← g + λ·p (L2) or p ← (1 − lr·λ)·p (decoupled);
        m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
        p ← p − lr/(1 − β₁ᵗ) · m / (sqrt(v)/sqrt(1 − β₂ᵗ) + eps)

    Defaults betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (PyTorch's).
    """

    _name = "Adam"

    def __init__(self, model: Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *,
                 decoupled_weight_decay: bool = False, max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, max_grad_norm=max_grad_norm)
        fname = self._name
        b1, b2 = betas
        self.betas = (xp_check_unit_interval(fname, "betas[0]", b1, closed=False),
                      xp_check_unit_interval(fname, "betas[1]", b2, closed=False))
        self.eps = xp_check_eps(fname, eps)
        self.weight_decay = xp_check_finite_scalar(fname, "weight_decay", weight_decay, minimum=0.0)
        self.decoupled = bool(decoupled_weight_decay)

    def _moments(self, name: str, g: Array) -> tuple[Array, Array]:
        b1, b2 = self.betas
        st = self.state.setdefault(name, {})
        m, v = st.get("exp_avg"), st.get("exp_avg_sq")
        if m is None:
            m, v = (1.0 - b1) * g, (1.0 - b2) * (g * g)
        else:
            m = _axpy(_scale(m, b1), 1.0 - b1, g)
            v = _axpy(_scale(v, b2), 1.0 - b2, g * g)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        return m, v

    def _bias_corrections(self) -> tuple[float, float]:
        """(1 − β₁ᵗ, 1 − β₂ᵗ) at the current step."""
        b1, b2 = self.betas
        return 1.0 - b1 ** self.steps, 1.0 - b2 ** self.steps

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:
        bc1, bc2 = self._bias_corrections()
        out = []
        for n, p, g in zip(names, params, grads):
            xp = array_namespace(p)
            if self.weight_decay and self.decoupled:
                p = _scale(p, 1.0 - self.lr * self.weight_decay)
            elif self.weight_decay:
                g = g + self.weight_decay * p
            m, v = self._moments(n, g)
            denom = xp.sqrt(v) / (bc2 ** 0.5) + self.eps
            out.append(_axpy(p, -self.lr / bc1, m / denom))
        return out


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``
    (default weight_decay=0.01)."""

    _name = "AdamW"

    def __init__(self, model: Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, *,
                 max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, decoupled_weight_decay=True,
                         max_grad_norm=max_grad_norm)


class LAMB(Adam):
    """Layer-wise adaptive moments (You et al. 2020, Algorithm 2), φ the identity:

        m, v as Adam;  r = m̂ / (sqrt(v̂) + eps) + λ·p;  p ← p − lr · (‖p‖/‖r‖) · r

    with m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ), the trust ratio ‖p‖/‖r‖ from
    :func:`arraynorm.gradient.lamb_trust_ratio` (1 where either norm is 0). Defaults
    betas=(0.9, 0.999), eps=1e-6, weight_decay=0.
    """

    _name = "LAMB"

    def __init__(self, model: Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *,
                 max_grad_norm: float | None = None) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, max_grad_norm=max_grad_norm)

    def _update(self, names: list[str], params: list[Array], grads: list[Array]) -> list[Array]:
        bc1, bc2 = self._bias_corrections()
        out = []
        for n, p, g in zip(names, params, grads):
            xp = array_namespace(p)
            m, v = self._moments(n, g)
            r = (m / bc1) / (xp.sqrt(v / bc2) + self.eps)
            if self.weight_decay:
                r = r + self.weight_decay * p
            ratio = xp.astype(lamb_trust_ratio(p, r), p.dtype)
            out.append(_axpy(p, -self.lr * ratio, r))
        return out
