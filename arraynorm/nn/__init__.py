"""Layers with exact closed-form backward passes, deep stacks, CNNs and Transformer blocks.

Every layer is a :class:`Module`: parameters, gradients and buffers are arrays of any
array-API namespace; ``forward(x)`` caches what ``backward(dy) -> dx`` needs, and ``backward``
sets the parameters' gradients. Normalization layers are the core's
:class:`~arraynorm.Normalizer` compositions with state added; nothing is re-implemented.
"""

from .activation import ACTIVATIONS, GELU, HardTanh, Identity, ReLU, Tanh, make_activation
from .attention import MultiHeadSelfAttention
from .cnn import CNN_NORMS, cnn_stack
from .container import Residual, Sequential
from .conv import Conv2d
from .linear import Linear, ReparamLinear, SpectralNormLinear, WeightNormLinear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module
from .norm import (
    BatchNorm,
    BatchRenorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LocalResponseNorm,
    Normalization,
    PositionNorm,
    RMSNorm,
    UncenteredBatchNorm,
)
from .pool import AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .probe import Probe
from .stack import NORMS, deep_stack
from .style import AdaIN
from .transformer import TransformerEncoderBlock, transformer_stack
from .whiten import DecorrelatedBatchNorm, IterNorm

__all__ = [
    "Module", "Sequential", "Residual",
    "Linear", "WeightNormLinear", "SpectralNormLinear", "ReparamLinear",
    "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten",
    "Identity", "ReLU", "Tanh", "GELU", "HardTanh", "ACTIVATIONS", "make_activation",
    "Normalization", "BatchNorm", "BatchRenorm", "LayerNorm", "GroupNorm", "InstanceNorm",
    "RMSNorm", "UncenteredBatchNorm", "PositionNorm", "LocalResponseNorm", "DecorrelatedBatchNorm", "IterNorm", "AdaIN",
    "MultiHeadSelfAttention", "TransformerEncoderBlock", "transformer_stack",
    "MSELoss", "CrossEntropyLoss", "deep_stack", "NORMS", "Probe", "cnn_stack", "CNN_NORMS",
]
