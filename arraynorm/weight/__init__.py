"""Weight normalization family: reparameterizations of a layer's weight, each with its exact VJP.

The survey (Huang et al., arXiv 2009.12836, §4) lists these as the second family: instead of
the activations, the *weight* is normalized before the layer uses it. Two concepts, one
module each:

=======================  ==========================================  ===========================
function                 w = …                                       reference
=======================  ==========================================  ===========================
*per output unit* (:mod:`.per_unit`)
weight_norm              g · v / ‖v‖                                 Salimans & Kingma 2016
centered_weight_norm     g · (v − μ) / ‖v − μ‖                       Huang et al. 2017
weight_standardization   (w − μ) / sqrt(σ² + eps)                    Qiao et al. 2019
*the whole matrix's largest singular value* (:mod:`.spectral`)
spectral_norm            W / σ̃, σ̃ from power iteration              Miyato et al. 2018
spectral_norm_exact      W / σ_max(W), σ_max from an SVD             —
=======================  ==========================================  ===========================

Orthogonalization (OWN, ONI), the family's third concept, shares the whitening machinery and
lives in :mod:`arraynorm.orthogonal`.

Every function keeps the weight's namespace, device and dtype (float16/bfloat16 computed in
float32), never branches on values, and registers its pullback with :func:`~arraynorm.defvjp`.
Norms and variances are computed scaled (:mod:`arraynorm._statistics`), so finite weights of
any magnitude — float32 values of 1e20 or 1e-23, where PyTorch's norm overflows or
underflows — give the right result. Empty weights (a size-0 axis) give empty results.
"""

from .per_unit import centered_weight_norm, weight_norm, weight_standardization
from .spectral import spectral_norm, spectral_norm_exact, spectral_norm_init_u

__all__ = [
    "weight_norm", "centered_weight_norm", "weight_standardization",
    "spectral_norm", "spectral_norm_exact", "spectral_norm_init_u",
]
