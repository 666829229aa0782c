"""arraynorm — normalization techniques for deep networks on any Python array-API backend.

The survey *Normalization Techniques in Training DNNs* (Huang et al., arXiv 2009.12836)
decomposes an activation normalization into area partitioning × operation × representation
recovery; so does this package (:mod:`arraynorm.partition`, :mod:`arraynorm.operation`,
:mod:`arraynorm.recovery`, composed by :class:`Normalizer` and run by the implementation one
selector chooses; docs/architecture.md). The named methods are thin
compositions, each with its exact closed-form backward pass, reached through :func:`vjp`, and
its forward-mode product, reached through :func:`jvp` / :func:`linearize`.
"""

from . import nn, operation, optim, partition, recovery, rl
from ._jvp import defjvp, jvp, linearize
from ._kernels import (buffer_pool_info, fast_paths_enabled, free_buffer_pool, get_num_threads,
                       persist_statistics, set_buffer_pool, set_fast_paths, set_num_threads,
                       use_fast_paths)
from ._vjp import defvjp, vjp
from .adain import adain
from .compose import NormContext, Normalizer, normalize
from .gradient import (adaptive_gradient_clipping, block_normalized_gradient, clip_by_global_norm,
                       clip_by_value, gradient_centralization, lamb_trust_ratio, lars_trust_ratio,
                       normalized_gradient)
from .local_response import local_response_norm
from .methods import (batch_norm, batch_renorm, ghost_batch_norm, group_norm, instance_norm,
                      l2_normalize, layer_norm, position_norm, rms_norm)
from .orthogonal import oni, orthogonal_weight_norm
from .running_stats import batch_moments, update_running_stats
from .weight import (centered_weight_norm, spectral_norm, spectral_norm_exact, spectral_norm_init_u,
                     weight_norm, weight_standardization)
from .whitening import decorrelated_batch_norm, group_whitening, iter_norm, whitening_moments

__version__ = "0.1.0"

__all__ = [
    "vjp", "defvjp", "jvp", "linearize", "defjvp", "Normalizer", "NormContext", "normalize",
    "partition", "operation", "recovery",
    "batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm", "position_norm",
    "ghost_batch_norm", "batch_renorm", "local_response_norm", "l2_normalize", "adain",
    "batch_moments", "update_running_stats",
    "decorrelated_batch_norm", "iter_norm", "group_whitening", "whitening_moments",
    "orthogonal_weight_norm", "oni",
    "weight_norm", "centered_weight_norm", "weight_standardization", "spectral_norm",
    "spectral_norm_exact", "spectral_norm_init_u",
    "normalized_gradient", "block_normalized_gradient", "clip_by_global_norm", "clip_by_value",
    "adaptive_gradient_clipping", "lars_trust_ratio", "lamb_trust_ratio", "gradient_centralization",
    "nn", "optim", "rl",
    "set_fast_paths", "fast_paths_enabled", "use_fast_paths", "set_num_threads", "get_num_threads",
    "persist_statistics", "set_buffer_pool", "free_buffer_pool", "buffer_pool_info",
]
