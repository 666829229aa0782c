"""Layers with exact closed-form backward passes, deep stacks, CNNs and Transformer blocks.

Every layer is a :class:`Module`: parameters, gradients and buffers are arrays of any
array-API namespace; ``forward(x)`` caches what ``backward(dy) -> dx`` needs, and ``backward``
sets the parameters' gradients. Normalization layers are the core's
:class:`~arraynorm.Normalizer` compositions with state added; nothing is re-implemented.

Dtypes
------
*Layers compute in their input's floating dtype.* Parameters keep their own dtype — chosen
with ``dtype=`` at construction or ``.to(xp, dtype=...)``; default the namespace's default
floating dtype: float64 for NumPy, float32 for PyTorch — and are cast to the input's dtype on
each call; gradients come back in each parameter's dtype, and optimizers update in it. So a
default NumPy model trains on float32 (or float16) data with float64 "master" parameters, and
``dtype="float32"`` makes the parameters float32 too (no cast per call). Inside a layer,
float16/bfloat16 inputs are computed in float32 and rounded once to the input's dtype
(matrix products, convolutions, softmax), and statistics accumulate in float32 at least
(float64 for float32 data on NumPy); running statistics stay in their buffer's dtype.
The output, ``dx`` and a JVP have the input's (tangent's) dtype. An input that is not real
floating (integers, bool) is a ``TypeError`` that says to cast it.

Differs from PyTorch, where a float64 input to a float32 module raises: there the module's
dtype rules and the input must be cast (``model.double()``); here the input's dtype rules.
The analysis studies pass ``dtype`` explicitly (float64).

Axes
----
``axis`` follows Keras: in the batch, instance and group norms, batch renorm, the whitening
layers, LRN and AdaIN it is the *channel* axis, kept (one statistic, γ and β per channel;
default 1, NCHW; ``axis=-1`` for NHWC; one int, a tuple is a ``ValueError``); position norm
reduces over that channel axis. In :class:`LayerNorm` and :class:`RMSNorm` ``axis`` is the
*reduced* axes (default the trailing ``normalized_shape`` axes, as PyTorch; an int or an
increasing tuple such as ``(-2, -1)`` or ``(1, 3)``). Negative values count from the end.
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
