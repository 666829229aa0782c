"""arraynorm for PyTorch users: autograd functions, ``torch.nn`` layers, weight
parametrizations and gradient transforms, all running arraynorm's ops on torch tensors with
its closed-form backward passes. Optional: needs ``torch`` (``pip install arraynorm[torch]``);
``import arraynorm`` alone never imports it.

* :mod:`arraynorm.torch.functional` — every op with a backward, under its arraynorm name, as
  a ``torch.autograd.Function`` whose backward is :func:`arraynorm.vjp`'s pullback;
  :func:`autograd_function` wraps any op with a registered rule.
* Layers (:mod:`arraynorm.torch.modules`) for the normalizations ``torch.nn`` lacks:
  :class:`DecorrelatedBatchNorm`, :class:`IterNorm`, :class:`GroupWhitening`,
  :class:`PositionNorm`, :class:`BatchRenorm`, :class:`GhostBatchNorm`, :class:`AdaIN`.
* :mod:`arraynorm.torch.parametrizations` — centred weight normalization, weight
  standardization, OWN and ONI on any layer's weight (``torch.nn.utils.parametrize``).
* Gradient family (:mod:`arraynorm.torch.gradient`) on ``model.parameters()``:
  :func:`clip_grad_norm_`, :func:`clip_grad_value_`, :func:`adaptive_clip_grad_`,
  :func:`normalize_grad_`, :func:`block_normalize_grad_`, :func:`centralize_grad_`,
  :func:`lars_`, and the :class:`TrustRatio` optimizer wrapper (LAMB).

Examples
--------
>>> import torch
>>> import arraynorm.torch as ant
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), ant.DecorrelatedBatchNorm(8, 2),
...                             torch.nn.ReLU())
>>> y = model(torch.randn(4, 3, 6, 6))
>>> y.shape
torch.Size([4, 8, 4, 4])
"""

from . import functional, parametrizations
from ._function import autograd_function
from .gradient import (
    TrustRatio,
    adaptive_clip_grad_,
    block_normalize_grad_,
    centralize_grad_,
    clip_grad_norm_,
    clip_grad_value_,
    lars_,
    normalize_grad_,
)
from .modules import (
    AdaIN,
    BatchRenorm,
    DecorrelatedBatchNorm,
    GhostBatchNorm,
    GroupWhitening,
    IterNorm,
    PositionNorm,
)

__all__ = [
    "functional", "parametrizations", "autograd_function",
    "DecorrelatedBatchNorm", "IterNorm", "GroupWhitening", "PositionNorm", "BatchRenorm",
    "GhostBatchNorm", "AdaIN",
    "clip_grad_norm_", "clip_grad_value_", "adaptive_clip_grad_", "normalize_grad_",
    "block_normalize_grad_", "centralize_grad_", "lars_", "TrustRatio",
]
