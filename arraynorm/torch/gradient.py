"""The gradient normalization family on a torch model's ``.grad`` tensors.

Like ``torch.nn.utils.clip_grad_norm_``, each function takes ``parameters`` (an iterable of
tensors, e.g. ``model.parameters()``, or one tensor), skips those whose ``.grad`` is ``None``
and rewrites the gradients in place, between ``loss.backward()`` and ``optimizer.step()``.
The math is :mod:`arraynorm.gradient`'s, run on the tensors: norms accumulated in float32 at
least and scaled so that a finite gradient never has an overflowing norm. All gradients must
be on one device (PyTorch's ``clip_grad_norm_`` groups by device; arraynorm raises
``ValueError`` naming the two devices).

======================  ======================================================  =============
function                .grad ← …                                               arraynorm op
======================  ======================================================  =============
clip_grad_norm_         g · min(1, c/(‖g‖_p + 1e-6)), returns ‖g‖_p              clip_by_global_norm
clip_grad_value_        clip(g, −c, c)                                          clip_by_value
adaptive_clip_grad_     unit-wise g · min(1, λ·max(‖W_i‖, eps)/‖g_i‖) (AGC)      adaptive_gradient_clipping
normalize_grad_         g / (‖g‖ + eps), ‖g‖ over all parameters                normalized_gradient
block_normalize_grad_   g_i / (‖g_i‖ + eps) per parameter                       block_normalized_gradient
centralize_grad_        g − mean over all axes but 0 (rank > 1)                 gradient_centralization
lars_                   ratio · (g + β·w), ratio = η‖w‖/(‖g‖ + β‖w‖ + eps)       lars_trust_ratio
======================  ======================================================  =============

:class:`TrustRatio` wraps any optimizer and scales each parameter's step by LAMB's
layer-wise trust ratio ‖w‖/‖u‖: ``TrustRatio(torch.optim.AdamW(...))`` is LAMB.

Examples
--------
>>> import torch
>>> from arraynorm.torch import clip_grad_norm_, centralize_grad_
>>> model = torch.nn.Linear(4, 3)
>>> model(torch.randn(8, 4)).square().sum().backward()
>>> total = clip_grad_norm_(model.parameters(), 0.5)
>>> grads = torch.cat([p.grad.flatten() for p in model.parameters()])
>>> bool(torch.linalg.vector_norm(grads) <= 0.5 + 1e-6)
True
>>> centralize_grad_(model.parameters())
>>> bool(torch.allclose(model.weight.grad.mean(dim=1), torch.zeros(3), atol=1e-7))
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import torch
from torch import Tensor

from .. import gradient as _g
from .._array_api import xp_check_eps

__all__ = ["clip_grad_norm_", "clip_grad_value_", "adaptive_clip_grad_", "normalize_grad_",
           "block_normalize_grad_", "centralize_grad_", "lars_", "TrustRatio"]

#: one tensor or an iterable of them, as ``torch.nn.utils.clip_grad_norm_`` takes
Parameters: TypeAlias = "Tensor | Iterable[Tensor]"


def _with_grads(fname: str, parameters: Parameters) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = list(parameters)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{fname}: parameters[{i}] must be a torch.Tensor, got {type(p).__name__}")
    return [p for p in params if p.grad is not None]


@torch.no_grad()
def _rewrite(fname: str, parameters: Parameters,
             transform: Callable[[list[Tensor], list[Tensor]], list[Tensor]]) -> None:
    """.grad ← transform(grads, params) for the parameters that have a gradient."""
    params = _with_grads(fname, parameters)
    if not params:
        return
    for p, g in zip(params, transform([p.grad for p in params], params)):
        p.grad.copy_(g)


@torch.no_grad()
def clip_grad_norm_(parameters: Parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Clip the gradients' global norm in place: g ← g · min(1, max_norm/(‖g‖_p + 1e-6)).

    ``torch.nn.utils.clip_grad_norm_``'s semantics and return value (the total norm before
    clipping, a 0-d tensor; ``tensor(0.)`` when no parameter has a gradient), with
    :func:`arraynorm.clip_by_global_norm`'s overflow-free norm: a finite float32 gradient
    whose squares overflow gets its finite norm, where PyTorch's is inf.
    """
    params = _with_grads("clip_grad_norm_", parameters)
    if not params:
        return torch.tensor(0.0)
    clipped, total = _g.clip_by_global_norm([p.grad for p in params], max_norm,
                                            norm_type=norm_type,
                                            error_if_nonfinite=error_if_nonfinite)
    for p, g in zip(params, clipped):
        p.grad.copy_(g)
    return total


def clip_grad_value_(parameters: Parameters, clip_value: float) -> None:
    """Clip every gradient entry into [−clip_value, clip_value] in place
    (``torch.nn.utils.clip_grad_value_``; ``clip_value`` must be >= 0 here)."""
    _rewrite("clip_grad_value_", parameters, lambda gs, _: _g.clip_by_value(gs, clip_value))


def adaptive_clip_grad_(parameters: Parameters, clipping: float = 0.01,
                        eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (AGC, Brock et al. 2021) in place, per output unit (row
    along axis 0, PyTorch's layout; whole tensor for rank <= 1): where
    ‖g_i‖ > λ·max(‖W_i‖, eps), g_i ← g_i·λ·max(‖W_i‖, eps)/‖g_i‖, λ = ``clipping``.
    timm's ``adaptive_clip_grad`` convention. See :func:`arraynorm.adaptive_gradient_clipping`."""
    _rewrite("adaptive_clip_grad_", parameters,
             lambda gs, ps: _g.adaptive_gradient_clipping(gs, [p.detach() for p in ps],
                                                          clipping=clipping, eps=eps))


def normalize_grad_(parameters: Parameters, eps: float = 1e-8) -> None:
    """Normalized gradient in place: g ← g/(‖g‖₂ + eps), ‖g‖₂ over all the parameters, so
    the step length is the learning rate. See :func:`arraynorm.normalized_gradient`."""
    _rewrite("normalize_grad_", parameters, lambda gs, _: _g.normalized_gradient(gs, eps=eps))


def block_normalize_grad_(parameters: Parameters, eps: float = 1e-8) -> None:
    """Block-normalized gradient (Yu et al. 2017) in place: each parameter's
    g_i ← g_i/(‖g_i‖₂ + eps). See :func:`arraynorm.block_normalized_gradient`."""
    _rewrite("block_normalize_grad_", parameters,
             lambda gs, _: _g.block_normalized_gradient(gs, eps=eps))


def centralize_grad_(parameters: Parameters) -> None:
    """Gradient centralization (Yong et al. 2020) in place: g ← g − mean(g) over all axes
    but 0, for parameters of rank > 1 (biases and gains unchanged). See
    :func:`arraynorm.gradient_centralization`."""
    _rewrite("centralize_grad_", parameters, lambda gs, _: _g.gradient_centralization(gs))


def lars_(parameters: Parameters, trust_coefficient: float = 0.001, weight_decay: float = 0.0,
          eps: float = 0.0) -> None:
    """LARS (You, Gitman & Ginsburg 2017) in place: g ← ratio · (g + β·w) per parameter,
    ratio = η‖w‖/(‖g‖ + β‖w‖ + eps), η = ``trust_coefficient``, β = ``weight_decay``
    (ratio 1 where ‖w‖ or ‖g‖ is 0). A following ``torch.optim.SGD(momentum=…)`` step (with
    its own ``weight_decay=0``) is then the paper's Algorithm 1 — NVIDIA apex's ``LARC``
    (clip=False) recipe, except that apex leaves a zero-norm parameter's gradient without
    weight decay. See :func:`arraynorm.lars_trust_ratio`."""

    def transform(gs: list[Tensor], ps: list[Tensor]) -> list[Tensor]:
        out = []
        for g, p in zip(gs, ps):
            ratio = _g.lars_trust_ratio(p.detach(), g, trust_coefficient=trust_coefficient,
                                        weight_decay=weight_decay, eps=eps)
            out.append(ratio * (g + weight_decay * p.detach()))
        return out

    _rewrite("lars_", parameters, transform)


class TrustRatio:
    """LAMB's layer-wise trust ratio around any ``torch.optim`` optimizer.

    ``step()`` runs the wrapped optimizer, reads each parameter's update
    u = (w_old − w_new)/lr and replaces the step by ratio · lr · u with
    ratio = ‖w_old‖/(‖u‖ + eps) (1 where a norm is 0; :func:`arraynorm.lamb_trust_ratio`).
    ``TrustRatio(torch.optim.AdamW(params, lr, weight_decay=λ))`` is LAMB (You et al. 2019,
    Algorithm 2, with AdamW's bias correction): AdamW's step is lr·(m̂/(√v̂ + ε) + λ·w_old).
    Costs one copy of the parameters per step. ``zero_grad``, ``param_groups``,
    ``state_dict`` and ``load_state_dict`` are the wrapped optimizer's.

    Examples
    --------
    >>> import torch
    >>> from arraynorm.torch import TrustRatio
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = TrustRatio(torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01))
    >>> model(torch.randn(8, 4)).square().mean().backward()
    >>> opt.step()
    >>> opt.zero_grad()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, eps: float = 0.0) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"TrustRatio: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.eps = xp_check_eps("TrustRatio", eps)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step of the wrapped optimizer, rescaled per parameter by the trust ratio."""
        before = [[p.detach().clone() for p in g["params"]] for g in self.optimizer.param_groups]
        loss = self.optimizer.step(closure)
        for group, olds in zip(self.optimizer.param_groups, before):
            lr = group["lr"]
            if float(lr) == 0.0:
                continue
            for p, old in zip(group["params"], olds):
                delta = old - p
                ratio = _g.lamb_trust_ratio(old, delta / lr, eps=self.eps)
                p.copy_(old - ratio * delta)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the wrapped optimizer's state."""
        self.optimizer.load_state_dict(state_dict)
