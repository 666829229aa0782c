"""Probes: every selected layer's input, output, cotangents and tangents from one pass.

Signal-propagation and gradient-flow studies need, per layer, the activation h_l, the
cotangent ∂L/∂h_l arriving at it, and the parameter gradients — from one forward and one
backward of the whole model, without walking its sub-layers by hand. A :class:`Probe` is a
context manager: inside the block, the selected modules record what passes through their
``forward``, ``backward`` and ``jvp``; after it, the model is exactly as before.

Mechanism: on entry each selected module gets *instance* attributes ``forward``,
``backward`` and ``jvp`` that call the class's method and record; on exit they are removed
(or the previous instance attributes restored, so probes nest). Nothing is changed on any
class, and a module outside the selection is never touched.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

from array_api_compat import array_namespace

from .._typing import Array
from .module import Module

__all__ = ["Probe"]

_ABSENT = object()
_KINDS = ("inputs", "activations", "output_grads", "input_grads", "param_grads", "tangents")


class Probe:
    """Record per-layer activations and gradients of ``model`` inside a ``with`` block.

    Parameters
    ----------
    model : the :class:`Module` to probe.
    depth : record only modules at this nesting depth of ``model.named_modules()`` (0: the
        model itself, 1: its children — the blocks of a ``deep_stack`` or
        ``transformer_stack`` —, 2: their children …); ``None`` (default): any depth.
    names : further restrict by name: a glob pattern (``"*.norm1"``), an iterable of exact
        names, or a predicate ``name -> bool``. Names are those of ``named_modules()``
        (``""`` for the model itself).
    types : further restrict to instances of a class or a tuple of classes.
    transform : applied to every recorded array before it is kept (e.g. a norm, or a copy
        to the host), to keep less than the arrays themselves; default: keep the arrays
        (references, no copy — the layers' caches hold them anyway).

    Records (dicts keyed by module name, the last call wins when a module runs twice):

    * ``inputs[name]``, ``activations[name]`` — the input and the output of ``forward``
      (for a layer with several inputs, ``inputs`` keeps the tuple);
    * ``output_grads[name]`` — the cotangent ∂L/∂h arriving at the module's output in
      ``backward``; ``input_grads[name]`` — the cotangent it returns;
    * ``param_grads[qualified parameter name]`` — the gradient of every parameter of a
      recorded module's subtree after its ``backward``, keyed as ``model.gradients()``;
    * ``tangents[name]`` — the output of ``jvp`` (a tangent pushed forward through the
      module), for Jacobian studies.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import Probe, deep_stack
    >>> model = deep_stack(4, 8, norm="batch", rng=0)
    >>> x = np.random.default_rng(1).standard_normal((16, 8))
    >>> with Probe(model, depth=1) as p:
    ...     y = model(x)
    ...     dx = model.backward(np.ones_like(y))
    >>> p.names
    ['0', '1', '2', '3']
    >>> bool(np.array_equal(p.activations["3"], y)), bool(np.array_equal(p.input_grads["0"], dx))
    (True, True)
    >>> sorted(p.param_grads)[:2]
    ['0.0.bias', '0.0.weight']
    >>> "forward" in vars(model[0])      # nothing left on the model after the block
    False
    """

    #: what the probe records, by kind and then by module name (see the class docstring)
    inputs: dict[str, Any]
    activations: dict[str, Any]
    output_grads: dict[str, Any]
    input_grads: dict[str, Any]
    param_grads: dict[str, Any]
    tangents: dict[str, Any]

    def __init__(self, model: Module, *, depth: int | None = None,
                 names: str | Iterable[str] | Callable[[str], bool] | None = None,
                 types: type | tuple[type, ...] | None = None,
                 transform: Callable[[Array], Any] | None = None) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"Probe: model must be an arraynorm.nn Module, got {type(model).__name__}")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
            raise ValueError(f"Probe: depth must be a non-negative int or None, got {depth!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"Probe: transform must be callable, got {type(transform).__name__}")
        match = _name_filter(names)
        self.model, self.transform = model, transform
        self._selected = [(name, m) for name, m in model.named_modules()
                          if (depth is None or _depth(name) == depth) and match(name)
                          and (types is None or isinstance(m, types))]
        if not self._selected:
            raise ValueError(f"Probe: no module of {type(model).__name__} matches depth={depth!r}, "
                             f"names={names!r}, types={types!r}")
        self._patched: list[tuple[Module, str, Any]] = []
        self.clear()

    @property
    def names(self) -> list[str]:
        """Names of the recorded modules, in ``named_modules()`` order."""
        return [name for name, _ in self._selected]

    @property
    def active(self) -> bool:
        """Whether the probe is attached (its layers' methods are wrapped and recording)."""
        return bool(self._patched)

    def clear(self) -> None:
        """Forget every record."""
        for kind in _KINDS:
            setattr(self, kind, {})

    def norms(self, kind: str = "activations") -> dict[str, float]:
        """Frobenius norm of every record of ``kind`` (``"activations"``, ``"output_grads"``,
        ``"param_grads"`` …) as Python floats (this synchronizes a lazy or GPU backend)."""
        if kind not in _KINDS:
            raise ValueError(f"Probe.norms: kind must be one of {_KINDS}, got {kind!r}")

        out = {}
        for name, a in getattr(self, kind).items():
            if isinstance(a, tuple):
                a = a[0]
            xp = array_namespace(a)
            out[name] = float(xp.sqrt(xp.sum(a * a)))
        return out

    # --------------------------------------------------------------------- attach / detach
    def attach(self) -> "Probe":
        """Start recording (what ``with`` does on entry)."""
        if self._patched:
            raise RuntimeError("Probe: already attached")
        try:
            for name, m in self._selected:
                self._wrap(name, m)
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Stop recording and remove every trace from the model (what ``with`` does on exit).
        Records are kept."""
        while self._patched:
            m, attr, previous = self._patched.pop()
            if previous is _ABSENT:
                m.__dict__.pop(attr, None)
            else:
                object.__setattr__(m, attr, previous)

    def __enter__(self) -> "Probe":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # --------------------------------------------------------------------- recording
    def _keep(self, a: Any) -> Any:
        if self.transform is None or a is None:
            return a
        if isinstance(a, tuple):
            return tuple(self._keep(t) for t in a)
        return self.transform(a)

    def _install(self, m: Module, attr: str, fn: Callable[..., Any]) -> None:
        self._patched.append((m, attr, m.__dict__.get(attr, _ABSENT)))
        object.__setattr__(m, attr, fn)

    def _wrap(self, name: str, m: Module) -> None:
        # the callables in effect now: the class's bound methods, or an enclosing probe's
        forward, backward, jvp = m.forward, m.backward, m.jvp

        def probed_forward(*args: Any, **kwargs: Any) -> Any:
            y = forward(*args, **kwargs)
            self.inputs[name] = self._keep(args[0] if len(args) == 1 else args)
            self.activations[name] = self._keep(y)
            return y

        def probed_backward(*args: Any, **kwargs: Any) -> Any:
            dx = backward(*args, **kwargs)
            # the cotangent at the output (a loss's backward may take none: dl = 1)
            self.output_grads[name] = self._keep(args[0] if args else next(iter(kwargs.values()), None))
            self.input_grads[name] = self._keep(dx)
            for pname, g in m.gradients().items():
                self.param_grads[f"{name}.{pname}" if name else pname] = self._keep(g)
            return dx

        def probed_jvp(*args: Any, **kwargs: Any) -> Any:
            dy = jvp(*args, **kwargs)
            self.tangents[name] = self._keep(dy)
            return dy

        self._install(m, "forward", probed_forward)
        self._install(m, "backward", probed_backward)
        self._install(m, "jvp", probed_jvp)


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


def _name_filter(names: Any) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: fnmatch.fnmatchcase(name, names)
    if callable(names):
        return lambda name: bool(names(name))
    try:
        wanted = {str(n) for n in names}
    except TypeError:
        raise TypeError(f"Probe: names must be a glob pattern, an iterable of names or a "
                        f"predicate, got {type(names).__name__}") from None
    return lambda name: name in wanted
