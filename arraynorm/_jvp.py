"""Jacobian–vector products by explicit, closed-form pushforwards (forward mode).

The counterpart of :mod:`arraynorm._vjp`: an op registers a rule that returns its output and
a *pushforward*, the linear map from input tangents to the output tangent at that point. With
both, a Jacobian is a linear operator (matvec = JVP, rmatvec = VJP) that is never formed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from array_api_compat import array_namespace

from ._array_api import xp_check_tangent
from ._vjp import positional_parameters

__all__ = ["jvp", "linearize", "defjvp"]

_RULE_ATTR = "__arraynorm_jvp__"


def defjvp(f: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``rule`` as the JVP rule of ``f`` (decorator).

    ``rule(*args, **kwargs)`` takes exactly ``f``'s arguments and returns ``(y, pushforward)``
    where ``pushforward(*tangents)`` takes one tangent per positional argument of the call
    (``None`` for a zero tangent or a non-array argument) and returns the output's tangent.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> def cube(x):
    ...     return x ** 3
    >>> @an.defjvp(cube)
    ... def _cube_jvp(x):
    ...     return x ** 3, lambda t: 3 * x ** 2 * t
    >>> y, pushforward = an.linearize(cube, np.array([1.0, 2.0]))
    >>> pushforward(np.ones(2))
    array([ 3., 12.])
    """

    def register(rule: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _RULE_ATTR, rule)
        return rule

    return register


def linearize(f: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[..., Any]]:
    """Evaluate ``f(*args, **kwargs)`` and return ``(y, pushforward)``.

    ``pushforward(*tangents)`` returns the directional derivative of ``f`` at ``args`` along
    ``tangents``, one per positional argument (``None`` means a zero tangent and is the only
    value allowed for non-array arguments such as ``num_groups``); keyword arguments (``eps``,
    ``axis``, given statistics) are held fixed. The forward work is done once: call
    ``pushforward`` as often as needed (``jax.linearize`` does the same by tracing; here the
    rule is the closed form).

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> x = np.random.default_rng(0).standard_normal((3, 4))
    >>> y, push = an.linearize(an.layer_norm, x)
    >>> bool(np.allclose(push(np.ones_like(x)), 0.0))   # LN ignores a shift of each row
    True
    >>> t = np.random.default_rng(1).standard_normal((3, 4))
    >>> fd = (an.layer_norm(x + 1e-6 * t) - an.layer_norm(x - 1e-6 * t)) / 2e-6
    >>> bool(np.allclose(push(t), fd, atol=1e-8))
    True
    """
    rule = getattr(f, _RULE_ATTR, None)
    fname = getattr(f, "__name__", repr(f))
    if rule is None:
        raise TypeError(f"jvp: {fname} has no registered forward-mode rule; pass an arraynorm op")
    names = positional_parameters(f)
    if len(args) > len(names):
        raise TypeError(f"{fname}: takes {len(names)} positional arguments, got {len(args)}")
    y, pushforward = rule(*args, **kwargs)

    def checked(*tangents: Any) -> Any:
        if len(tangents) != len(args):
            raise ValueError(f"{fname} pushforward: expected {len(args)} tangents (one per "
                             f"positional argument, None for zero), got {len(tangents)}")
        for name, a, t in zip(names, args, tangents):
            if t is None:
                continue
            if not hasattr(a, "shape"):
                raise TypeError(f"{fname} pushforward: {name} is not an array, its tangent must "
                                f"be None, got {type(t).__name__}")
            xp_check_tangent(f"{fname} pushforward", f"the tangent of {name}", t,
                             array_namespace(a), tuple(a.shape), name)
        return pushforward(*tangents)

    return y, checked


def jvp(f: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any],
        **kwargs: Any) -> tuple[Any, Any]:
    """``(f(*primals, **kwargs), J·tangents)``: the output and its directional derivative.

    ``primals`` are ``f``'s positional arguments, ``tangents`` one per primal (``None`` for a
    zero tangent or a non-array argument); keyword arguments are held fixed. Mirrors
    ``jax.jvp(f, primals, tangents)``; as with :func:`vjp`, ``f`` must be an arraynorm op
    (the named activation normalizations, :func:`normalize`, :func:`adain`,
    :func:`local_response_norm`) whose closed-form JVP is registered.

    For a batch-coupled op (batch norm, decorrelated BN, IterNorm) the tangent is the whole
    batch's, and the product couples the samples.

    Examples
    --------
    >>> import numpy as np, arraynorm as an
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.standard_normal((4, 3)), np.ones(3), np.zeros(3)
    >>> y, dy = an.jvp(an.batch_norm, (x, w, b), (None, np.ones(3), None))
    >>> bool(np.allclose(dy, y))          # ∂y/∂γ along γ = 1 is ŷ, here y itself
    True
    """
    primals, tangents = tuple(primals), tuple(tangents)
    if len(tangents) != len(primals):
        raise ValueError(f"jvp: expected one tangent per primal ({len(primals)}), got "
                         f"{len(tangents)}")
    y, pushforward = linearize(f, *primals, **kwargs)
    return y, pushforward(*tangents)
