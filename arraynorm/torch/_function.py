"""The one ``torch.autograd.Function`` behind every op of :mod:`arraynorm.torch.functional`.

Its forward runs the arraynorm op on the tensors (array-api-compat makes them a native
backend) and keeps the op's closed-form pullback from :func:`arraynorm.vjp`; its backward
calls that pullback. ``Function.forward`` runs with gradient recording off, so the op's
intermediate tensors carry no autograd history: the graph holds one node per op.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .. import _bridge
from .._vjp import vjp

__all__ = ["autograd_function", "apply_rule"]


class _PullbackFunction(torch.autograd.Function):
    """forward(rule, keywords, state_outputs, *positional) -> y, where
    ``rule(*positional, **keywords)`` returns ``(y, pullback)``; backward -> the pullback's
    cotangents, one per positional argument."""

    @staticmethod
    def forward(ctx: Any, rule: Callable[..., Any], keywords: dict[str, Any],
                state_outputs: tuple[int, ...], *positional: Any) -> Any:
        y, pullback = rule(*positional, **keywords)
        # saved only for autograd's version check: backward then raises if an input was
        # modified in place after the forward, instead of using a stale pullback
        ctx.save_for_backward(*(a for a in positional if isinstance(a, torch.Tensor)))
        ctx.pullback, ctx.state_outputs = pullback, state_outputs
        ctx.several = isinstance(y, tuple)
        if ctx.several:
            state = [y[i] for i in state_outputs if isinstance(y[i], torch.Tensor)]
            ctx.mark_non_differentiable(*state)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *dys: Any) -> tuple[Any, ...]:
        ctx.saved_tensors  # noqa: B018 - the version check
        if ctx.several:
            dy = tuple(None if i in ctx.state_outputs else d for i, d in enumerate(dys))
        else:
            dy = dys[0]
        return (None, None, None, *ctx.pullback(dy))


def apply_rule(rule: Callable[..., Any], *positional: Any, state_outputs: tuple[int, ...] = (),
               **keywords: Any) -> Any:
    """``y`` of ``rule(*positional, **keywords) -> (y, pullback)`` as one autograd node whose
    backward is ``pullback``: the tensors among ``positional`` get its cotangents. For layers
    that need more of the forward pass than its output (the batch statistics in the
    normalizer's state) without computing it twice."""
    return _PullbackFunction.apply(rule, keywords, state_outputs, *positional)


def _check_constants(op_name: str, call: _bridge.BoundCall) -> None:
    """The pullback gives no cotangent for keyword-only arrays; refuse a tensor there that
    wants one rather than silently dropping its gradient (PyTorch refuses a running mean
    that requires grad in ``F.batch_norm`` the same way)."""
    if not torch.is_grad_enabled():
        return
    for name, a in _bridge.held_arrays(call).items():
        if isinstance(a, torch.Tensor) and a.requires_grad:
            raise ValueError(
                f"{op_name}: {name} is treated as a constant (arraynorm's backward gives no "
                f"gradient for it), but it requires grad; pass {name.split('.')[-1]}.detach()"
            )


def autograd_function(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` on torch tensors, differentiated by its closed-form pullback.

    ``op`` is an arraynorm op, or any function with a rule registered by
    :func:`arraynorm.defvjp`. The result takes ``op``'s arguments; tensors passed for its
    positional parameters (by position or keyword) receive gradients, keyword-only tensors
    (given statistics) are constants and must not require grad. Double backward is not
    supported (the pullback is not itself recorded), as for ``once_differentiable``.

    Examples
    --------
    >>> import torch, arraynorm as an
    >>> from arraynorm.torch import autograd_function
    >>> gn = autograd_function(an.group_norm)
    >>> x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    >>> gn(x, 3).pow(3).sum().backward()
    >>> x.grad.shape
    torch.Size([4, 6, 5])
    """
    name = op.__name__
    state_outputs = _bridge.STATE_OUTPUTS.get(name, ())

    @functools.wraps(op)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        call = _bridge.bind(op, args, kwargs)
        _check_constants(name, call)
        return apply_rule(functools.partial(vjp, op), *call.positional,
                          state_outputs=state_outputs, **call.keywords)

    wrapped.__doc__ = _bridge.bridge_doc(op, "PyTorch", "a ``torch.autograd.Function`` whose "
                                         "backward is ``arraynorm.vjp``")
    return wrapped
