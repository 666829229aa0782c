"""Transformer encoder block in the Post-LN and Pre-LN arrangements (Xiong et al. 2020).

Post-LN (Vaswani et al. 2017; ``norm_first=False``):
    h = LN₁(x + MHSA(x)),        y = LN₂(h + FFN(h))
Pre-LN (``norm_first=True``):
    h = x + MHSA(LN₁(x)),        y = h + FFN(LN₂(h))
with FFN(z) = W₂ φ(W₁ z + b₁) + b₂. The survey (§6) discusses why the arrangement matters:
Pre-LN keeps an identity path from input to output, so its gradients at initialization are
well-scaled without learning-rate warm-up. Backward is the chain rule over the sub-layers'
closed-form backward passes, the residual cotangents added.
"""

from __future__ import annotations

from typing import Any

from .activation import make_activation
from .attention import MultiHeadSelfAttention
from .init import make_rng
from .linear import Linear
from .module import Module
from .norm import LayerNorm, RMSNorm

__all__ = ["TransformerEncoderBlock"]

Array = Any


class TransformerEncoderBlock(Module):
    """One Transformer encoder layer: self-attention and a feed-forward network, each in a
    residual branch with a normalization, Post-LN or Pre-LN.

    Parameters
    ----------
    d_model, num_heads : width D and number of heads H (H divides D).
    dim_feedforward : hidden width of the FFN (default 4·D).
    activation : ``"relu"`` (default, as PyTorch), ``"gelu"`` (tanh form), ``"tanh"`` … or a layer.
    norm_first : False for Post-LN (default, as PyTorch), True for Pre-LN.
    causal : causal self-attention mask.
    norm : ``"layer"`` (default) or ``"rms"`` for both normalizations.
    eps : the normalizations' eps (default 1e-5).
    rng, xp, dtype, device : as :class:`~arraynorm.nn.Linear`.

    Sub-layers carry PyTorch's names (``self_attn``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2``): the block computes what ``torch.nn.TransformerEncoderLayer(d_model, nhead,
    dim_feedforward, dropout=0.0, batch_first=True, norm_first=...)`` computes, on (N, T, D).
    Differences: no dropout; the FFN's linears use He initialization.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int | None = None, *,
                 activation: Any = "relu", norm_first: bool = False, causal: bool = False,
                 norm: str = "layer", eps: float = 1e-5, rng: Any = None, xp: Any = None,
                 dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        g = make_rng(rng)
        ff = 4 * d_model if dim_feedforward is None else dim_feedforward
        where = dict(xp=xp, dtype=dtype, device=device)
        self.norm_first, self.d_model = bool(norm_first), d_model
        self.self_attn = MultiHeadSelfAttention(d_model, num_heads, causal=causal, rng=g, **where)
        self.linear1 = Linear(d_model, ff, rng=g, **where)
        self.activation = make_activation(activation)
        self.linear2 = Linear(ff, d_model, rng=g, **where)
        if norm == "layer":
            self.norm1, self.norm2 = LayerNorm(d_model, eps, **where), LayerNorm(d_model, eps, **where)
        elif norm == "rms":
            self.norm1, self.norm2 = RMSNorm(d_model, eps, **where), RMSNorm(d_model, eps, **where)
        else:
            raise ValueError(f"TransformerEncoderBlock: norm must be 'layer' or 'rms', got {norm!r}")

    def _ffn(self, h: Array) -> Array:
        return self.linear2.forward(self.activation.forward(self.linear1.forward(h)))

    def _ffn_backward(self, dy: Array) -> Array:
        return self.linear1.backward(self.activation.backward(self.linear2.backward(dy)))

    def forward(self, x: Array) -> Array:
        if self.norm_first:
            h = x + self.self_attn.forward(self.norm1.forward(x))
            return h + self._ffn(self.norm2.forward(h))
        h = self.norm1.forward(x + self.self_attn.forward(x))
        return self.norm2.forward(h + self._ffn(h))

    def _ffn_jvp(self, dh: Array) -> Array:
        return self.linear2.jvp(self.activation.jvp(self.linear1.jvp(dh)))

    def backward(self, dy: Array) -> Array:
        if self.norm_first:
            dh = dy + self.norm2.backward(self._ffn_backward(dy))
            return dh + self.norm1.backward(self.self_attn.backward(dh))
        da = self.norm2.backward(dy)            # cotangent of h + FFN(h)
        dh = da + self._ffn_backward(da)
        db = self.norm1.backward(dh)            # cotangent of x + MHSA(x)
        return db + self.self_attn.backward(db)

    def jvp(self, dx: Array) -> Array:
        """J·dx through the block in forward order: the sub-layers' JVPs, the residual
        tangents added."""
        if self.norm_first:
            dh = dx + self.self_attn.jvp(self.norm1.jvp(dx))
            return dh + self._ffn_jvp(self.norm2.jvp(dh))
        dh = self.norm1.jvp(dx + self.self_attn.jvp(dx))
        return self.norm2.jvp(dh + self._ffn_jvp(dh))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, {'Pre-LN' if self.norm_first else 'Post-LN'}"
