"""arraynorm's ops on torch tensors, each one ``torch.autograd.Function`` whose backward is
the op's closed-form pullback (:func:`arraynorm.vjp`), under the op's own name.

``arraynorm.torch.functional.iter_norm(x, weight, bias, num_groups=2)`` takes the arguments
of :func:`arraynorm.iter_norm`; tensors passed for positional parameters get gradients.
Generated from the registry of pullbacks (:func:`arraynorm._bridge.bridged_ops`), so every
op with a backward is here: the activation normalizations (``batch_norm``, ``layer_norm``,
``instance_norm``, ``group_norm``, ``rms_norm``, ``position_norm``, ``ghost_batch_norm``,
``batch_renorm``, ``local_response_norm``, ``l2_normalize``, ``adain``, the generic
``normalize``), the whitening family (``decorrelated_batch_norm``, ``iter_norm``,
``group_whitening``) and the weight family (``weight_norm``, ``centered_weight_norm``,
``weight_standardization``, ``orthogonal_weight_norm``, ``oni``, ``spectral_norm``,
``spectral_norm_exact``).

Differences from calling ``arraynorm.<op>`` on tensors directly: there torch's autograd
traces the portable forward pass and differentiates it op by op; here the graph has one node
per call and its backward is the fused closed-form one, which for batch renormalization is
the paper's stop-gradient rule and for ``spectral_norm`` PyTorch's (u, v constant). The second
output of ``spectral_norm`` (the new ``u``) is marked non-differentiable.

Examples
--------
>>> import torch
>>> from arraynorm.torch import functional as AF
>>> x = torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
>>> w = torch.ones(8, dtype=torch.float64, requires_grad=True)
>>> y = AF.iter_norm(x, w, None, num_groups=2, T=7)
>>> y.sum().backward()
>>> x.grad.shape, w.grad.shape
(torch.Size([32, 8]), torch.Size([8]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _bridge
from ._function import autograd_function

_OPS = _bridge.bridged_ops()
globals().update({name: autograd_function(op) for name, op in _OPS.items()})

__all__ = list(_OPS)  # noqa: PLE0605 - generated names


def __getattr__(name: str) -> Callable[..., Any]:
    # the ops above are generated (``globals().update``); this hook only runs for names that
    # do not exist, so it changes nothing at run time and tells the type checker what the
    # generated names are
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
