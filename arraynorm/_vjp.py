"""Vector–Jacobian products by explicit, closed-form pullbacks.

There is no autodiff framework underneath (DESIGN.md §3.5): every forward op registers a rule
that returns its output and a pullback. Deep stacks compose these pullbacks by hand.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ._array_api import xp_check_cotangent

__all__ = ["vjp", "defvjp", "has_vjp", "positional_parameters"]

_RULE_ATTR = "__arraynorm_vjp__"


def defvjp(f: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``rule`` as the VJP rule of ``f`` (decorator).

    ``rule(*args, **kwargs)`` takes exactly ``f``'s arguments and returns
    ``(y, pullback)`` where ``pullback(dy)`` returns one cotangent per positional parameter of
    ``f`` (see :func:`vjp`).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> def square(x):
    ...     return x * x
    >>> @an.defvjp(square)
    ... def _square_vjp(x):
    ...     return x * x, lambda dy: (2 * x * dy,)
    >>> y, pullback = an.vjp(square, np.array([1.0, 3.0]))
    >>> pullback(np.ones(2))
    (array([2., 6.]),)
    """

    def register(rule: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _RULE_ATTR, rule)
        return rule

    return register


def has_vjp(f: Callable[..., Any]) -> bool:
    """Whether ``f`` has a VJP rule registered by :func:`defvjp`."""
    return getattr(f, _RULE_ATTR, None) is not None


def positional_parameters(f: Callable[..., Any]) -> tuple[str, ...]:
    """Names of ``f``'s parameters that can be passed by position, in order."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in inspect.signature(f).parameters.values() if p.kind in kinds)


def vjp(f: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], tuple[Any, ...]]]:
    """Evaluate ``f(*args, **kwargs)`` and return ``(y, pullback)``.

    ``pullback(dy)`` returns the tuple of cotangents ∂⟨dy, y⟩/∂a, one per *positional
    parameter* of ``f`` in signature order, whether that argument was passed by position or by
    keyword; ``None`` for non-array parameters (``num_groups``) and for arrays passed as
    ``None``. Keyword-only arguments (``eps``, ``axis``, given statistics) get no cotangent.
    For an op with several outputs (``y`` a tuple), ``dy`` is a tuple with one cotangent per
    output (``None`` where an output does not reach the loss). Each cotangent must be an
    array of its output's library, device and shape, with a real floating dtype (an integer,
    bool or complex cotangent is a ``TypeError``, as are lists and arrays of another
    library; a wrong shape or device a ``ValueError``).

    The NumPy fast path (:func:`arraynorm.set_fast_paths`) keeps a reference to ``x``, not a
    copy, between the forward and the pullback, as PyTorch's autograd does: modifying ``x``
    in place before calling ``pullback`` changes the cotangents (the portable path keeps what
    it needs). Pass a copy if you will write into ``x``.

    Unlike ``jax.vjp``, ``f`` must be an arraynorm op (or have a rule registered with
    :func:`defvjp`): the pullbacks are the closed-form backward passes, not traced.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.linspace(-1.0, 1.0, 12).reshape(2, 6)
    >>> y, pullback = an.vjp(an.layer_norm, x)
    >>> dx, dw, db = pullback(np.ones_like(y))
    >>> bool(np.allclose(dx, 0.0))   # LN's output is invariant to a shift, so Σ-cotangent gives 0
    True
    """
    rule = getattr(f, _RULE_ATTR, None)
    if rule is None:
        name = getattr(f, "__name__", repr(f))
        raise TypeError(f"vjp: {name} has no registered backward pass; pass an arraynorm op")
    y, pullback = rule(*args, **kwargs)
    pullback_: Callable[[Any], tuple[Any, ...]] = pullback
    fname = f"{getattr(f, '__name__', 'op')} pullback"

    def check(out: Any, d: Any, what: str) -> None:
        """``d`` is None (no cotangent) or matches ``out``: an array of its library, device
        and shape with a real floating dtype; a container output (clip_by_global_norm's
        gradients) takes a container of the same structure."""
        if d is None:
            return
        if isinstance(out, Mapping):
            if not isinstance(d, Mapping) or list(d) != list(out):
                raise TypeError(f"{fname}: {what} must be a mapping with the keys {list(out)}, "
                                f"got {type(d).__name__}")
            for k in out:
                check(out[k], d[k], f"{what}[{k!r}]")
        elif isinstance(out, (list, tuple)):
            if not isinstance(d, (list, tuple)) or len(d) != len(out):
                raise TypeError(f"{fname}: {what} must be a sequence of {len(out)} cotangents, "
                                f"got {type(d).__name__}")
            for i, (o, di) in enumerate(zip(out, d)):
                check(o, di, f"{what}[{i}]")
        elif out is None:
            raise TypeError(f"{fname}: {what} must be None (that output is None), "
                            f"got {type(d).__name__}")
        else:
            xp_check_cotangent(fname, what, d, out)

    def checked_pullback(dy: Any) -> tuple[Any, ...]:
        # ops with several outputs (e.g. an array and a state) take one cotangent per
        # output, None for outputs that do not influence the loss
        if isinstance(y, tuple):
            if not isinstance(dy, tuple) or len(dy) != len(y):
                raise ValueError(f"{fname}: dy must be a tuple of {len(y)} cotangents")
            for i, (out, d) in enumerate(zip(y, dy)):
                check(out, d, f"dy[{i}]")
        else:
            if dy is None:
                raise ValueError(f"{fname}: dy must be an array, got None")
            check(y, dy, "dy")
        return pullback_(dy)

    return y, checked_pullback
