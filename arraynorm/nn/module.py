"""The layer protocol: parameters, gradients, buffers, modes, state and moving between libraries.

A :class:`Module` holds its parameters, their gradients and its buffers (running statistics)
as arrays of any array-API namespace, in three dicts. ``forward(x)`` computes the output and,
when gradients are enabled, caches what ``backward`` needs; ``backward(dy)`` returns
``dx = (∂y/∂x)ᵀ dy`` and sets the parameters' gradients. The backward passes are closed-form
(DESIGN.md §3.5): no tape, no autodiff framework.

Differences from ``torch.nn.Module``, on purpose:

* ``backward`` *sets* gradients (it does not accumulate them), and the forward cache is kept
  until the next ``forward``: several ``backward`` calls after one ``forward`` give several
  vector–Jacobian products of the same point, which is how Jacobians are built row by row.
* ``jvp(dx)`` is the forward-mode product J·dx at the point of the last ``forward`` (input
  tangent, parameters held fixed), from the same cache and without changing it: ``jvp`` and
  ``backward`` are a linear map and its adjoint, so the input–output Jacobian is a
  ``scipy.sparse.linalg.LinearOperator`` (matvec = ``jvp``, rmatvec = ``backward``) that is
  never formed. Batch-coupled layers (BatchNorm, whitening) take the whole batch's tangent.
* gradients are cached only while ``requires_grad`` is on (``requires_grad_(False)`` for
  inference); ``train()``/``eval()`` only choose batch vs running statistics.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from array_api_compat import array_namespace

from .._array_api import xp_capabilities, xp_check_floating, xp_check_tangent, xp_device
from .._array_api import xp_move, xp_resolve_namespace
from .._typing import Array, Namespace

__all__ = ["Module"]


class Module:
    """Base class of layers: parameters, gradients and buffers as arrays of any namespace.

    Subclasses register arrays with :meth:`register_parameter` / :meth:`register_buffer`
    (then readable as attributes, ``layer.weight``), assign sub-layers as attributes, and
    implement :meth:`forward`, :meth:`backward` and :meth:`jvp`, storing what backward needs
    with :meth:`_save` and reading it back with :meth:`_saved`.
    """

    #: buffers that must be >= 0 everywhere (running variances); load_state_dict checks them
    _nonnegative_state: tuple[str, ...] = ()

    def __init__(self) -> None:
        if "params" in self.__dict__:  # already initialised (attributes set before super().__init__)
            return
        object.__setattr__(self, "params", {})
        object.__setattr__(self, "grads", {})
        object.__setattr__(self, "buffers", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "requires_grad", True)
        object.__setattr__(self, "_cache", None)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "params" not in d:  # a subclass setting attributes before Module.__init__
            Module.__init__(self)
        if isinstance(value, Module):
            self._children[name] = value
        elif name in self.params:
            self.params[name] = value
            return
        elif name in self.buffers:
            self.buffers[name] = value
            return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only reached when ordinary lookup fails: parameters and buffers read as attributes
        for store in ("params", "buffers"):
            d = self.__dict__.get(store)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_parameter(self, name: str, value: Array | None) -> None:
        """Add a trainable array (``None`` registers an absent parameter, e.g. no bias)."""
        if value is None:
            object.__setattr__(self, name, None)
            return
        self.params[name] = value
        self.grads[name] = None

    def register_buffer(self, name: str, value: Any) -> None:
        """Add a non-trainable state array (running statistics) or Python number."""
        self.buffers[name] = value

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, child)`` for each direct sub-module, in registration order."""
        yield from self._children.items()

    def children(self) -> list[Module]:
        """The direct sub-modules, in registration order."""
        return list(self._children.values())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, with dotted names (``"0.norm"``)."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def parameter_slots(self) -> list[tuple[str, Module, str]]:
        """``(qualified name, owning module, key)`` of every parameter, in registration order.

        Optimizers update ``owner.params[key]`` through these slots, in place where the
        library allows it and by reassignment where it does not (JAX, Dask).
        """
        return [(f"{p}.{k}" if p else k, m, k)
                for p, m in self.named_modules() for k in m.params]

    def named_parameters(self) -> Iterator[tuple[str, Array]]:
        """``(qualified name, array)`` of every parameter of this module and its descendants."""
        for name, m, k in self.parameter_slots():
            yield name, m.params[k]

    def parameters(self) -> list[Array]:
        """Every parameter array of this module and its descendants, in registration order."""
        return [a for _, a in self.named_parameters()]

    def gradients(self) -> dict[str, Array | None]:
        """Gradient of every parameter by qualified name (``None`` before a backward pass)."""
        return {name: m.grads.get(k) for name, m, k in self.parameter_slots()}

    def zero_grad(self) -> None:
        """Forget every gradient (``backward`` overwrites them anyway)."""
        for _, m in self.named_modules():
            for k in m.grads:
                m.grads[k] = None

    # ----------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        """Training mode (batch statistics, running statistics updated), recursively."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Inference mode (running statistics used as they are), recursively."""
        return self.train(False)

    def requires_grad_(self, mode: bool = True) -> Module:
        """Turn caching for ``backward`` on or off, recursively (off: forward keeps nothing)."""
        for _, m in self.named_modules():
            object.__setattr__(m, "requires_grad", bool(mode))
            object.__setattr__(m, "_cache", None)
        return self

    # ----------------------------------------------------------------- forward/backward
    # the layer's inputs: one array for layers, (output, target) for losses, (content, style)
    # for AdaIN; subclasses narrow the signature
    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """y = f(x): the layer's output for its input(s), in the input's dtype; caches what
        :meth:`backward` and :meth:`jvp` need while gradients are enabled (``requires_grad``).

        Calling the module is the same (``layer(x)``). Inputs: one array for layers,
        ``(output, target)`` for losses, ``(content, style)`` for AdaIN.
        """
        raise NotImplementedError

    def backward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """dx = (∂y/∂x)ᵀ·dy at the input of the last :meth:`forward`; *sets* (does not
        accumulate) the gradients of this module's parameters in ``grads``, each in its
        parameter's dtype. ``dy`` has the output's shape; a loss takes the scalar cotangent
        ``dl`` (default 1).
        """
        raise NotImplementedError

    def jvp(self, dx: Array) -> Array:
        """Forward-mode product: dy = (∂y/∂x)·dx at the input of the last ``forward``, with the
        parameters held fixed; ``dx`` has the input's shape (the whole batch's).

        Needs the forward cache (gradients enabled) and leaves it as it is, so ``backward``
        and further ``jvp`` calls may follow: ⟨jvp(v), u⟩ = ⟨v, backward(u)⟩.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no forward-mode product: jvp is not implemented for "
            f"this layer"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def _save(self, **saved: Any) -> None:
        """Keep what backward needs, only when gradients are enabled."""
        object.__setattr__(self, "_cache", saved if self.requires_grad else None)

    def _saved(self, caller: str = "backward") -> dict[str, Any]:
        if self._cache is None:
            why = ("gradients are disabled (requires_grad_(False))" if not self.requires_grad
                   else "forward has not been called")
            raise RuntimeError(f"{type(self).__name__}.{caller}: nothing cached, {why}")
        cache: dict[str, Any] = self._cache
        return cache

    def _check_tangent(self, dx: Array, xp: Namespace, shape: tuple[int, ...]) -> None:
        """``dx`` must be a floating array of the forward's namespace and input ``shape``."""
        xp_check_tangent(f"{type(self).__name__}.jvp", "dx", dx, xp, shape, "the input")

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Copies of every parameter and buffer by qualified name (PyTorch's naming:
        ``"0.weight"``, ``"1.running_mean"``, ``"1.num_batches_tracked"``)."""
        out: dict[str, Any] = {}
        for prefix, m in self.named_modules():
            for store in (m.params, m.buffers):
                for k, a in store.items():
                    name = f"{prefix}.{k}" if prefix else k
                    out[name] = _copy(a)
        return out

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Module:
        """Set parameters and buffers from ``state`` (arrays of any namespace: each value is
        converted to the namespace, device and dtype of the array it replaces).

        All or nothing: every value is checked and converted first, and only then are they
        assigned, so an error leaves the module as it was. With ``strict`` (default), missing
        or unexpected keys raise ``KeyError`` naming them. A value for an array must be an
        array (``TypeError`` otherwise: a list, ``None``, a string array) of the same kind —
        real floating for floating parameters; an integer, bool or complex array is not cast
        silently (``TypeError``) — and the same shape (``ValueError``). Counters
        (``num_batches_tracked``) take a non-negative int or 0-d integer array. Running
        variances must be >= 0 and not NaN (``ValueError``): checking that reads their
        values, so it synchronizes a GPU and computes a Dask array, once, at load time.
        """
        fname = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{fname}: state must be a mapping of names to arrays, got "
                            f"{type(state).__name__}")
        slots = {}
        for prefix, m in self.named_modules():
            for store in (m.params, m.buffers):
                for k in store:
                    slots[f"{prefix}.{k}" if prefix else k] = (m, store, k)
        if strict:
            missing = sorted(set(slots) - set(state))
            unexpected = sorted(set(state) - set(slots))
            if missing or unexpected:
                raise KeyError(f"{fname}: missing keys {missing}, unexpected keys {unexpected}")
        staged = {name: _loaded(fname, name, value, slots[name])
                  for name, value in state.items() if name in slots}
        for name, value in staged.items():
            _, store, k = slots[name]
            store[k] = value
        for _, m in self.named_modules():
            object.__setattr__(m, "_cache", None)
        return self

    def to(self, xp: Namespace, device: Any = None, dtype: Any = None) -> Module:
        """Move every parameter, gradient and buffer to namespace ``xp`` (a namespace such as
        ``numpy``, ``cupy``, ``array_api_strict``, ``torch``, ``dask.array``, or its name) on
        ``device``, optionally casting floating arrays to ``dtype`` (a dtype of ``xp`` or its
        name, ``"float32"``). Returns ``self``; forward caches are dropped.

        Examples
        --------
        >>> import numpy as np, array_api_strict as xps
        >>> from arraynorm.nn import Linear
        >>> layer = Linear(3, 2, rng=0).to(xps)
        >>> type(layer.weight).__module__.split(".")[0]
        'array_api_strict'
        """
        ns = xp_resolve_namespace(xp)
        if isinstance(dtype, str):
            dtype = getattr(ns, dtype)
        for _, m in self.named_modules():
            for store in (m.params, m.grads, m.buffers):
                for k, a in store.items():
                    if a is not None and hasattr(a, "shape"):
                        store[k] = xp_move(a, ns, device, dtype)
            object.__setattr__(m, "_cache", None)
        return self

    @property
    def namespace(self) -> Any:
        """The array namespace of this module's parameters (``None`` when it has none)."""
        for _, a in self.named_parameters():
            return array_namespace(a)
        for _, m in self.named_modules():
            for a in m.buffers.values():
                if hasattr(a, "shape"):
                    return array_namespace(a)
        return None

    def extra_repr(self) -> str:
        """The arguments shown inside the module's ``repr`` (PyTorch's ``extra_repr``)."""
        return ""

    def __repr__(self) -> str:
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not self._children:
            return head + ")"
        lines = [head]
        for name, child in self._children.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _loaded(fname: str, name: str, value: Any, slot: tuple[Module, dict[str, Any], str]) -> Any:
    """``value`` checked and converted for the slot it is loaded into (see
    :meth:`Module.load_state_dict`); raises without touching the module."""
    owner, store, k = slot
    old = store[k]
    if not hasattr(old, "shape"):  # a Python counter (num_batches_tracked)
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            vxp = array_namespace(value)
            if tuple(value.shape) != () or not vxp.isdtype(value.dtype, "integral"):
                raise TypeError(f"{fname}: {name} must be an int or a 0-d integer array, got "
                                f"an array of shape {tuple(value.shape)} and dtype {value.dtype}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{fname}: {name} must be an int, got {value!r}")
        if value < 0:
            raise ValueError(f"{fname}: {name} must be >= 0, got {value}")
        return int(value)
    try:
        vxp = array_namespace(value)
    except TypeError:
        raise TypeError(f"{fname}: {name} must be an array (any library), got "
                        f"{type(value).__name__}") from None
    xp = array_namespace(old)
    kind = next(kd for kd in ("bool", "integral", "real floating", "complex floating")
                if xp.isdtype(old.dtype, kd))
    if not vxp.isdtype(value.dtype, kind):
        raise TypeError(f"{fname}: {name} must have a {kind} dtype like the {old.dtype} it "
                        f"replaces (it is not cast silently), got {value.dtype}")
    if tuple(value.shape) != tuple(old.shape):
        raise ValueError(f"{fname}: {name} must have shape {tuple(old.shape)}, "
                         f"got {tuple(value.shape)}")
    new = _copy(xp_move(value, xp, xp_device(old), old.dtype))
    if k in owner._nonnegative_state and not bool(xp.all(new >= 0)):
        raise ValueError(f"{fname}: {name} must be >= 0 everywhere (a variance), got negative "
                         f"or NaN values")
    return new


def check_float_input(fname: str, xp: Namespace, x: Any) -> None:
    """A layer's input must be a real floating array: layers compute in the input's floating
    dtype (parameters are cast per call), so an integer or bool input is a ``TypeError`` that
    says to cast it."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        xp_check_floating(fname, "x", x, xp)  # the "must be an array" error
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{fname}: x must have a real floating dtype (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}; layers compute in the input's floating dtype, so cast the input "
            f"first (e.g. x.astype(numpy.float32) or xp.astype(x, xp.float32))")


def _copy(a: Any) -> Any:
    if not hasattr(a, "shape"):
        return a
    xp = array_namespace(a)
    if xp_capabilities(xp).lazy:  # immutable graph nodes (Dask): sharing is already a copy
        return a
    return xp.asarray(a, copy=True)
