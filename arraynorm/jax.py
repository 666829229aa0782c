"""arraynorm for JAX users: every op with a backward as a ``jax.custom_vjp`` function, so that
``jax.grad``, ``jax.vjp`` and ``jax.jit`` use arraynorm's closed-form pullback instead of
differentiating the traced forward pass. Optional: needs ``jax``
(``pip install arraynorm[jax]``); ``import arraynorm`` alone never imports it.

``arraynorm.jax.iter_norm(x, weight, bias, num_groups=2)`` takes the arguments of
:func:`arraynorm.iter_norm`. Generated from the registry of pullbacks, like
:mod:`arraynorm.torch.functional`: the activation normalizations (``batch_norm``,
``layer_norm``, ``instance_norm``, ``group_norm``, ``rms_norm``, ``position_norm``,
``ghost_batch_norm``, ``batch_renorm``, ``local_response_norm``, ``l2_normalize``, ``adain``,
``normalize``), the whitening family (``decorrelated_batch_norm``, ``iter_norm``,
``group_whitening``) and the weight family (``weight_norm``, ``centered_weight_norm``,
``weight_standardization``, ``orthogonal_weight_norm``, ``oni``, ``spectral_norm``,
``spectral_norm_exact``). :func:`custom_vjp` wraps any op with a registered rule.

How: arrays passed for the op's positional parameters are the differentiable inputs of the
``custom_vjp`` function; everything else (``num_groups``, ``eps``, ``axis``, ``method``,
partition and operation objects) is closed over as a Python constant, so it must be static
under ``jit`` (pass it with ``static_argnames`` or fix it with ``functools.partial``).
Keyword-only arrays (given or running statistics, a whitening matrix) are treated as
constants, as ``arraynorm.vjp`` does: the op sees ``jax.lax.stop_gradient`` of them. The
second output of ``spectral_norm`` (the new ``u``) is a state and gets no gradient. Under
``jit``, traced arrays and arrays the caller closes over mix freely (a tracer has no device
yet, and arraynorm's argument check takes it as compatible with any).

The residuals are the op's array inputs, and the backward recomputes the statistics before
running the pullback (rematerialization, as ``jax.checkpoint`` does): the pullback is a
Python closure over the forward's intermediates, which cannot cross the ``custom_vjp``
boundary. Outside ``jit`` this costs a second forward pass of the op in the backward; under
``jit`` XLA's common-subexpression elimination can merge the two (not guaranteed: measure).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import arraynorm.jax as anj
>>> x = jax.random.normal(jax.random.key(0), (32, 8))
>>> loss = lambda x: jnp.sum(anj.iter_norm(x, num_groups=2) ** 3)
>>> jax.jit(jax.grad(loss))(x).shape
(32, 8)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _bridge
from ._vjp import vjp

__all__ = ["custom_vjp"]


def _is_array(a: Any) -> bool:
    return isinstance(a, (jax.Array, np.ndarray))


def custom_vjp(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` on JAX arrays as a ``jax.custom_vjp`` function whose backward is its
    closed-form pullback (:func:`arraynorm.vjp`).

    ``op`` is an arraynorm op or any function with a rule registered by
    :func:`arraynorm.defvjp`. Arrays given for positional parameters (by position or by
    keyword) are differentiable; keyword-only arrays are constants (stop_gradient); other
    arguments are Python constants. NumPy arrays are converted with ``jnp.asarray``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, arraynorm as an
    >>> from arraynorm.jax import custom_vjp
    >>> gn = custom_vjp(an.group_norm)
    >>> x = jax.random.normal(jax.random.key(1), (4, 6, 5))
    >>> jax.grad(lambda x: jnp.sum(gn(x, 3) ** 3))(x).shape
    (4, 6, 5)
    """
    name = op.__name__
    state_outputs = _bridge.STATE_OUTPUTS.get(name, ())

    @functools.wraps(op)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        call = _bridge.bind(op, args, kwargs)
        slots = tuple(i for i, a in enumerate(call.positional) if _is_array(a))
        const_names = tuple(k for k, v in call.keywords.items() if _is_array(v))

        def assemble(arrays: tuple[Any, ...], consts: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
            positional = list(call.positional)
            for i, a in zip(slots, arrays):
                positional[i] = a
            return positional, {**call.keywords, **dict(zip(const_names, consts))}

        @jax.custom_vjp
        def f(arrays: tuple[Any, ...], consts: tuple[Any, ...]) -> Any:
            positional, keywords = assemble(arrays, consts)
            return op(*positional, **keywords)

        def fwd(arrays: tuple[Any, ...], consts: tuple[Any, ...]) -> tuple[Any, Any]:
            positional, keywords = assemble(arrays, consts)
            return op(*positional, **keywords), (arrays, consts)

        def bwd(residuals: Any, dy: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
            arrays, consts = residuals
            positional, keywords = assemble(arrays, consts)
            _, pullback = vjp(op, *positional, **keywords)
            if isinstance(dy, tuple):
                dy = tuple(None if i in state_outputs else d for i, d in enumerate(dy))
            cotangents = pullback(dy)
            d_arrays = tuple(jnp.zeros_like(a) if cotangents[i] is None
                             else jnp.asarray(cotangents[i], dtype=a.dtype)
                             for i, a in zip(slots, arrays))
            return d_arrays, tuple(jnp.zeros_like(c) for c in consts)

        f.defvjp(fwd, bwd)
        arrays = tuple(jnp.asarray(call.positional[i]) for i in slots)
        consts = tuple(jax.lax.stop_gradient(jnp.asarray(call.keywords[k])) for k in const_names)
        return f(arrays, consts)

    wrapped.__doc__ = _bridge.bridge_doc(op, "JAX", "a ``jax.custom_vjp`` whose backward is "
                                         "``arraynorm.vjp``")
    return wrapped


_OPS = _bridge.bridged_ops()
globals().update({name: custom_vjp(op) for name, op in _OPS.items()})
__all__ += list(_OPS)


def __getattr__(name: str) -> Callable[..., Any]:
    # the ops above are generated (``globals().update``); this hook only runs for names that
    # do not exist, so it changes nothing at run time and tells the type checker what the
    # generated names are
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
