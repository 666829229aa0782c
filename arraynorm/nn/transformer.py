"""Transformer encoder block in the Post-LN and Pre-LN arrangements (Xiong et al. 2020).

Post-LN (Vaswani et al. 2017; ``norm_first=False``):
    h = LN₁(x + MHSA(x)),        y = LN₂(h + FFN(h))
Pre-LN (``norm_first=True``):
    h = x + MHSA(LN₁(x)),        y = h + FFN(LN₂(h))
with FFN(z) = W₂ φ(W₁ z + b₁) + b₂. The survey (§6) discusses why the arrangement matters:
Pre-LN keeps an identity path from input to output, so its gradients at initialization are
well-scaled without learning-rate warm-up. Backward is the chain rule over the sub-layers'
closed-form backward passes, the residual cotangents added; ``jvp`` the same chain forwards.
:func:`transformer_stack` builds a stack of blocks with an optional final normalization and
read-out, for the depth studies of Xiong et al. (2020).
"""

from __future__ import annotations

from typing import Any

from .._array_api import xp_check_int
from .._typing import Array, Namespace
from .activation import make_activation
from .attention import MultiHeadSelfAttention
from .container import Sequential
from .init import SCHEMES, make_rng
from .linear import Linear
from .module import Module
from .registry import make_norm

__all__ = ["TransformerEncoderBlock", "transformer_stack", "INIT_PRESETS"]

#: initialization presets of :class:`TransformerEncoderBlock` beyond the weight schemes:
#: ``"xiong2020"`` = every weight N(0, 1/fan_in) (``init="gaussian", sigma_w=1``), W_Q = W_K = 0,
#: W_out = I, biases 0 — the setting of Xiong et al. (2020), "On layer normalization in the
#: transformer architecture", §3, in which Post-LN's last-layer gradient grows with depth
#: and Pre-LN's shrinks as 1/√L.
INIT_PRESETS = ("xiong2020",)


def _init_options(fname: str, init: str | None, sigma_w: float | None, zero_query_key: bool,
                  identity_output: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the attention and of the FFN's linears for one block."""
    if init is None:
        if sigma_w is not None:
            raise ValueError(f"{fname}: sigma_w needs an init scheme (init=...)")
        attn: dict[str, Any] = {}
        ffn: dict[str, Any] = {}
    elif init == "xiong2020":
        sw = 1.0 if sigma_w is None else sigma_w
        attn = dict(init="gaussian", sigma_w=sw)
        ffn = dict(init="gaussian", sigma_w=sw)
        zero_query_key = identity_output = True
    elif init in SCHEMES:
        attn = dict(init=init, sigma_w=sigma_w)
        ffn = dict(init=init, sigma_w=sigma_w)
    else:
        raise ValueError(f"{fname}: init must be None, one of {SCHEMES} or a preset "
                         f"{INIT_PRESETS}, got {init!r}")
    attn.update(zero_query_key=bool(zero_query_key), identity_output=bool(identity_output))
    return attn, ffn


#: the registry's normalizations a Transformer block offers (per token, over D)
BLOCK_NORMS = ("layer", "rms")


def _check_norm(fname: str, norm: Any) -> None:
    if norm not in BLOCK_NORMS:
        raise ValueError(f"{fname}: norm must be 'layer' or 'rms', got {norm!r}")


def _block_norm(norm: str, d_model: int, eps: float, where: dict[str, Any]) -> Module:
    layer = make_norm(norm, d_model, {"eps": eps}, where)
    assert layer is not None  # BLOCK_NORMS are registry layers
    return layer


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
    init : ``None`` (default: Xavier-uniform attention projections as PyTorch, He for the
        FFN), a weight scheme of :mod:`arraynorm.nn.init` for every linear map (with gain
        ``sigma_w``; ``"gaussian"`` with σ_w = 1 is N(0, 1/fan_in)), or ``"xiong2020"``:
        N(0, 1/fan_in) weights, W_Q = W_K = 0 and W_out = I (Xiong et al. 2020, §3).
    zero_query_key, identity_output : W_Q = W_K = 0, resp. W_out = I, at initialization,
        with any ``init`` (see :class:`MultiHeadSelfAttention`).
    rng, xp, dtype, device : as :class:`~arraynorm.nn.Linear`.

    Sub-layers carry PyTorch's names (``self_attn``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2``): the block computes what ``torch.nn.TransformerEncoderLayer(d_model, nhead,
    dim_feedforward, dropout=0.0, batch_first=True, norm_first=...)`` computes, on (N, T, D).
    Differences: no dropout; the FFN's linears use He initialization.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int | None = None, *,
                 activation: Any = "relu", norm_first: bool = False, causal: bool = False,
                 norm: str = "layer", eps: float = 1e-5, init: str | None = None,
                 sigma_w: float | None = None, zero_query_key: bool = False,
                 identity_output: bool = False, rng: Any = None, xp: Namespace = None,
                 dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        attn_kw, ffn_kw = _init_options("TransformerEncoderBlock", init, sigma_w, zero_query_key,
                                        identity_output)
        g = make_rng(rng)
        ff = 4 * d_model if dim_feedforward is None else dim_feedforward
        where = dict(xp=xp, dtype=dtype, device=device)
        self.norm_first, self.d_model = bool(norm_first), d_model
        self.self_attn = MultiHeadSelfAttention(d_model, num_heads, causal=causal, rng=g,
                                                **attn_kw, **where)
        self.linear1 = Linear(d_model, ff, rng=g, **ffn_kw, **where)
        self.activation = make_activation(activation)
        self.linear2 = Linear(ff, d_model, rng=g, **ffn_kw, **where)
        _check_norm("TransformerEncoderBlock", norm)
        self.norm1 = _block_norm(norm, d_model, eps, where)
        self.norm2 = _block_norm(norm, d_model, eps, where)

    def _ffn(self, h: Array) -> Array:
        return self.linear2.forward(self.activation.forward(self.linear1.forward(h)))

    def _ffn_backward(self, dy: Array) -> Array:
        return self.linear1.backward(self.activation.backward(self.linear2.backward(dy)))

    def forward(self, x: Array) -> Array:
        """Post-LN: h = N₁(x + Attn(x)), y = N₂(h + FFN(h)); Pre-LN: h = x + Attn(N₁(x)),
        y = h + FFN(N₂(h)); x of shape (N, T, D).
        """
        if self.norm_first:
            h = x + self.self_attn.forward(self.norm1.forward(x))
            return h + self._ffn(self.norm2.forward(h))
        h = self.norm1.forward(x + self.self_attn.forward(x))
        return self.norm2.forward(h + self._ffn(h))

    def _ffn_jvp(self, dh: Array) -> Array:
        return self.linear2.jvp(self.activation.jvp(self.linear1.jvp(dh)))

    def backward(self, dy: Array) -> Array:
        """dx through both residual branches in reverse; sets the gradients of every sub-layer."""
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


def transformer_stack(depth: int, d_model: int, n_heads: int, *,
                      dim_feedforward: int | None = None, norm_position: str = "post",
                      final_norm: bool | None = None, out_features: int | None = None,
                      activation: Any = "relu", causal: bool = False, norm: str = "layer",
                      eps: float = 1e-5, init: str | None = None, sigma_w: float | None = None,
                      zero_query_key: bool = False, identity_output: bool = False,
                      rng: Any = None, xp: Namespace = None, dtype: Any = None,
                      device: Any = None) -> Sequential:
    """A stack of ``depth`` Transformer encoder blocks, as a :class:`Sequential`.

    Layers ``"0"`` … ``str(depth - 1)`` are :class:`TransformerEncoderBlock` (Post-LN with
    ``norm_position="post"``, Pre-LN with ``"pre"``); then, when ``final_norm``, a final
    normalization (``LayerNorm(d_model)``, or RMSNorm with ``norm="rms"``); then, when
    ``out_features`` is given, a read-out ``Linear(d_model, out_features)`` (logits over a
    vocabulary: pair it with :class:`CrossEntropyLoss` on (N, T, V) logits).
    ``final_norm=None`` (default) is the usual arrangement: a final norm for Pre-LN (whose
    residual stream is never normalized otherwise), none for Post-LN (whose last block
    already ends with one) — the two models Xiong et al. (2020) compare.

    Other arguments are those of :class:`TransformerEncoderBlock`, shared by every block
    (``init="xiong2020"`` for the paper's initialization; the read-out then is N(0, 1/d)
    too); each block draws its own weights from ``rng``.

    Examples
    --------
    >>> import numpy as np
    >>> from arraynorm.nn import transformer_stack, CrossEntropyLoss
    >>> model = transformer_stack(6, 16, 4, norm_position="pre", out_features=10,
    ...                           init="xiong2020", rng=0)
    >>> x = np.random.default_rng(1).standard_normal((2, 5, 16))
    >>> logits = model(x)
    >>> loss = CrossEntropyLoss()
    >>> value = loss(logits, np.zeros((2, 5), dtype=np.int64))
    >>> dx = model.backward(loss.backward())
    >>> len(model), logits.shape, dx.shape
    (8, (2, 5, 10), (2, 5, 16))
    """
    fname = "transformer_stack"
    xp_check_int(fname, "depth", depth)
    if norm_position not in ("post", "pre"):
        raise ValueError(f"{fname}: norm_position must be 'post' or 'pre', got {norm_position!r}")
    _check_norm(fname, norm)
    _init_options(fname, init, sigma_w, zero_query_key, identity_output)  # fail before building
    g = make_rng(rng)
    where = dict(xp=xp, dtype=dtype, device=device)
    pre = norm_position == "pre"
    layers: list[Module] = [
        TransformerEncoderBlock(d_model, n_heads, dim_feedforward, activation=activation,
                                norm_first=pre, causal=causal, norm=norm, eps=eps, init=init,
                                sigma_w=sigma_w, zero_query_key=zero_query_key,
                                identity_output=identity_output, rng=g, **where)
        for _ in range(int(depth))]
    if pre if final_norm is None else final_norm:
        layers.append(_block_norm(norm, d_model, eps, where))
    if out_features is not None:
        _, lin_kw = _init_options(fname, init, sigma_w, False, False)
        layers.append(Linear(d_model, out_features, rng=g, **lin_kw, **where))
    return Sequential(*layers)
