"""What the framework bridges (:mod:`arraynorm.torch`, :mod:`arraynorm.jax`) share.

Both wrap the ops that have a closed-form pullback (:func:`arraynorm.vjp`) so that the
framework's own autodiff (``torch.autograd``, ``jax.grad``) calls that pullback instead of
tracing the forward pass. They need the same three things, kept here so that neither bridge
rewrites them: the list of ops, how one call's arguments split into the positional slots the
pullback answers for and the keyword-only constants it does not, and which outputs of a
multi-output op are state rather than values.

This module imports neither torch nor JAX: ``import arraynorm`` never loads them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import arraynorm

from ._vjp import has_vjp, positional_parameters

__all__ = ["bridged_ops", "bind", "BoundCall", "STATE_OUTPUTS", "held_arrays", "bridge_doc"]

#: outputs that are state carried between calls, not values to differentiate: they get no
#: cotangent (PyTorch computes spectral norm's ``u`` under ``no_grad`` too)
STATE_OUTPUTS: dict[str, tuple[int, ...]] = {"spectral_norm": (1,)}


def bridged_ops() -> dict[str, Callable[..., Any]]:
    """The public ops of :mod:`arraynorm` with a registered pullback, by name, in the order
    of ``arraynorm.__all__``: the activation normalizations, the whitening family, the weight
    family. The gradient family is left out even where it has a pullback
    (``clip_by_global_norm``): it maps containers of arrays, which neither an
    ``autograd.Function`` nor a ``custom_vjp`` of array arguments can take, and the bridges
    serve it with their own helpers on ``model.parameters()``."""
    ops = {}
    for name in arraynorm.__all__:
        f = getattr(arraynorm, name)
        if name in arraynorm.gradient.__all__:
            continue
        if callable(f) and has_vjp(f):
            ops[name] = f
    return ops


@dataclass(frozen=True)
class BoundCall:
    """One call of an op: ``positional`` holds a value for every positional parameter in
    signature order (defaults filled in, whether the caller passed it by position or by
    keyword), so it lines up with the pullback's cotangents; ``keywords`` holds the
    keyword-only arguments the caller gave (eps, axis, given statistics)."""

    positional: tuple[Any, ...]
    keywords: dict[str, Any]


def bind(op: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BoundCall:
    """Split ``op(*args, **kwargs)`` into a :class:`BoundCall`; ``TypeError`` naming the op
    for arguments its signature does not accept."""
    sig = inspect.signature(op)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{op.__name__}: {e}") from None
    names = positional_parameters(op)
    positional = tuple(bound.arguments[n] if n in bound.arguments else sig.parameters[n].default
                       for n in names)
    keywords = {k: v for k, v in bound.arguments.items() if k not in names}
    return BoundCall(positional, keywords)


def held_arrays(call: BoundCall) -> dict[str, Any]:
    """Arrays the pullback treats as constants, by name: keyword-only array arguments (given
    statistics, running statistics, whitening matrices) and the arrays an operation object
    passed by position holds (``normalize(x, Batch(), GivenStatistics(mean, var))``)."""
    held = {k: v for k, v in call.keywords.items() if hasattr(v, "shape") and hasattr(v, "dtype")}
    for value in call.positional:
        arrays = getattr(value, "arrays", None)
        if callable(arrays):
            held.update({f"{type(value).__name__}.{k}": a for k, a in arrays().items()
                         if a is not None})
    return held


def bridge_doc(op: Callable[..., Any], framework: str, how: str) -> str:
    """Docstring of a bridged op: what the bridge adds, then the op's own docstring (its
    formula, shapes and defaults) without its NumPy examples."""
    own = inspect.getdoc(op) or ""
    own = re.split(r"\n\s*Examples\n\s*-{3,}\n", own)[0].rstrip()
    head = (f"``arraynorm.{op.__name__}`` on {framework} arrays, differentiated by its "
            f"closed-form pullback ({how}).")
    return f"{head}\n\nFrom ``arraynorm.{op.__name__}``:\n\n{own}\n"
