"""Weight normalizations as ``torch.nn.utils.parametrize`` parametrizations.

Mirrors ``torch.nn.utils.parametrizations.weight_norm(module)``: each function here registers
a parametrization on ``module.<name>`` (default ``"weight"``) of any layer — ``Linear``,
``Conv1d/2d/3d``, ``ConvTranspose`` or your own — and returns the module. The stored tensor
becomes ``module.parametrizations.<name>.original`` (the proxy V of the papers) and every
access to ``module.<name>`` computes the normalized weight through an op of
:mod:`arraynorm.torch.functional`, so the backward is arraynorm's closed-form one. Remove it
with ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``; cache it for a
forward pass with ``parametrize.cached()``.

==============================  =========================================  =======================
function                        module.weight = …                          reference
==============================  =========================================  =======================
:func:`centered_weight_norm`    g · (v − μ)/sqrt(‖v − μ‖² + eps) per unit  Huang et al. 2017
:func:`weight_standardization`  (v − μ)/sqrt(σ² + eps) per unit            Qiao et al. 2019
:func:`orthogonal_weight_norm`  (V_c V_cᵀ + eps·I)^{-1/2} V_c              Huang et al. 2018 (OWN)
:func:`oni`                     Newton-iteration orthogonalization of V_c  Huang et al. 2020 (ONI)
==============================  =========================================  =======================

An output unit is one index along axis 0 (PyTorch's (out, in, *kernel) layout; ``dim``
chooses another for centred WN). Why parametrizations rather than new ``Linear``/``Conv2d``
classes: one function serves every layer type, and ``state_dict``, ``.to()`` and optimizers
see ordinary parameters. OWN and ONI need out <= in·∏kernel − 1 (rows are centred), checked
at registration.

Examples
--------
>>> import torch
>>> from arraynorm.torch import parametrizations as P
>>> _ = torch.manual_seed(0)  # the layer's initial weights: T=7 Newton steps reach 1e-3 for these
>>> conv = P.oni(torch.nn.Conv2d(3, 8, 3), T=7)
>>> w = conv.weight.reshape(8, -1)
>>> bool(torch.allclose(w @ w.T, torch.eye(8), atol=1e-3))
True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from .._array_api import xp_check_eps, xp_normalize_axis
from . import functional as AF

__all__ = ["CenteredWeightNorm", "WeightStandardization", "OrthogonalWeightNorm", "ONI",
           "centered_weight_norm", "weight_standardization", "orthogonal_weight_norm", "oni"]



class CenteredWeightNorm(torch.nn.Module):
    """w = g · (v − μ)/sqrt(‖v − μ‖² + eps) per output unit along ``dim``, with a learnable
    per-unit scale ``g`` of PyTorch's keep-dims shape, initialized to ‖v − μ‖ of the
    ``weight`` given, so that at registration the layer's weight is the centred original.
    See :func:`arraynorm.centered_weight_norm`."""

    def __init__(self, weight: Tensor, dim: int | None = 0, eps: float = 0.0) -> None:
        super().__init__()
        self.dim, self.eps = dim, xp_check_eps("centered_weight_norm", eps)
        v = weight.detach()
        keep = None if dim is None else xp_normalize_axis("centered_weight_norm", dim, v.ndim, "dim")
        fan_in = tuple(a for a in range(v.ndim) if a != keep)
        # torch's mean over dim=() would reduce every axis; a unit without fan-in is its own mean
        centred = v - v.mean(dim=fan_in, keepdim=True) if fan_in else torch.zeros_like(v)
        g = centred.square().sum(dim=fan_in, keepdim=True) if fan_in else centred
        self.g = torch.nn.Parameter((g + eps).sqrt())

    def forward(self, v: Tensor) -> Tensor:
        """The normalized weight from the proxy ``v``."""
        return AF.centered_weight_norm(v, self.g, self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class WeightStandardization(torch.nn.Module):
    """ŵ = (w − μ)/sqrt(σ² + eps) per output unit (axis 0), biased σ² over the fan-in
    (eps inside the root, as timm's ``StdConv2d``; the paper's code divides by the unbiased
    std plus eps). See :func:`arraynorm.weight_standardization`."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = xp_check_eps("weight_standardization", eps)

    def forward(self, w: Tensor) -> Tensor:
        """The standardized weight."""
        return AF.weight_standardization(w, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class OrthogonalWeightNorm(torch.nn.Module):
    """W = (V_c V_cᵀ + eps·I)^{-1/2} V_c, the weight flattened to (out, in·∏kernel), rows
    centred with ``center=True``: orthonormal rows by eigendecomposition. See
    :func:`arraynorm.orthogonal_weight_norm`."""

    def __init__(self, eps: float = 1e-5, center: bool = True) -> None:
        super().__init__()
        self.eps, self.center = xp_check_eps("orthogonal_weight_norm", eps), center

    def forward(self, v: Tensor) -> Tensor:
        """The orthogonalized weight."""
        return AF.orthogonal_weight_norm(v, eps=self.eps, center=self.center)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, center={self.center}"


class ONI(torch.nn.Module):
    """Orthogonalization by T Newton iterations (matmul only): W = p_T(S_N) V_c/sqrt(tr S),
    S = V_c V_cᵀ + eps·I. T sets the degree of orthogonality (default 5). See
    :func:`arraynorm.oni`."""

    def __init__(self, T: int = 5, eps: float = 1e-5, center: bool = True) -> None:
        super().__init__()
        self.T, self.eps, self.center = T, xp_check_eps("oni", eps), center

    def forward(self, v: Tensor) -> Tensor:
        """The orthogonalized weight."""
        return AF.oni(v, T=self.T, eps=self.eps, center=self.center)

    def extra_repr(self) -> str:
        return f"T={self.T}, eps={self.eps}, center={self.center}"


def _register(module: torch.nn.Module, name: str, make: Any) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"module {type(module).__name__} has no tensor named {name!r}")
    # registration evaluates the parametrization once, so bad shapes (OWN/ONI with
    # out > in − 1) fail here with the op's ValueError rather than at the first forward
    parametrize.register_parametrization(module, name, make(weight))
    return module


def centered_weight_norm(module: torch.nn.Module, name: str = "weight", *, dim: int | None = 0,
                         eps: float = 0.0) -> torch.nn.Module:
    """Register centred weight normalization (Huang et al. 2017) on ``module.<name>``.

    module.<name> = g · (v − μ)/sqrt(‖v − μ‖² + eps) per output unit along ``dim`` (default 0;
    ``None``: the whole tensor), with v the stored original and g a learnable per-unit scale
    (``module.parametrizations.<name>[0].g``) initialized so that the weight starts as the
    centred original. PyTorch has no counterpart (its ``weight_norm`` does not centre).

    Examples
    --------
    >>> import torch
    >>> from arraynorm.torch import parametrizations as P
    >>> lin = P.centered_weight_norm(torch.nn.Linear(5, 3))
    >>> bool(torch.allclose(lin.weight.sum(dim=1), torch.zeros(3), atol=1e-6))
    True
    """
    return _register(module, name, lambda w: CenteredWeightNorm(w, dim, eps))


def weight_standardization(module: torch.nn.Module, name: str = "weight", *,
                           eps: float = 1e-5) -> torch.nn.Module:
    """Register weight standardization (Qiao et al. 2019) on ``module.<name>``:
    module.<name> = (v − μ)/sqrt(σ² + eps) per output unit over the fan-in (rank >= 2).

    Examples
    --------
    >>> import torch
    >>> from arraynorm.torch import parametrizations as P
    >>> conv = P.weight_standardization(torch.nn.Conv2d(3, 4, 3), eps=0.0)
    >>> w = conv.weight.reshape(4, -1)
    >>> bool(torch.allclose(w.var(dim=1, unbiased=False), torch.ones(4), atol=1e-5))
    True
    """
    return _register(module, name, lambda w: WeightStandardization(eps))


def orthogonal_weight_norm(module: torch.nn.Module, name: str = "weight", *,
                           eps: float = 1e-5, center: bool = True) -> torch.nn.Module:
    """Register orthogonal weight normalization (OWN, Huang et al. 2018) on
    ``module.<name>``: rows of the (out, in·∏kernel) weight orthonormal, by
    eigendecomposition. Needs out <= in·∏kernel − 1 (``center=True``).

    Examples
    --------
    >>> import torch
    >>> from arraynorm.torch import parametrizations as P
    >>> lin = P.orthogonal_weight_norm(torch.nn.Linear(8, 3), eps=0.0)
    >>> bool(torch.allclose(lin.weight @ lin.weight.T, torch.eye(3), atol=1e-5))
    True
    """
    return _register(module, name, lambda w: OrthogonalWeightNorm(eps, center))


def oni(module: torch.nn.Module, name: str = "weight", *, T: int = 5, eps: float = 1e-5,
        center: bool = True) -> torch.nn.Module:
    """Register orthogonalization by Newton's iteration (ONI, Huang et al. 2020) on
    ``module.<name>``: T iterations (default 5) towards orthonormal rows, matmul only.
    Needs out <= in·∏kernel − 1 (``center=True``). Example in the module docstring."""
    return _register(module, name, lambda w: ONI(T, eps, center))
