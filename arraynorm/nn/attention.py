"""Multi-head self-attention (Vaswani et al. 2017) with its closed-form backward pass.

For x of shape (N, T, D), H heads of size d = D/H:

    [Q K V] = x W_inᵀ + b_in,  split into heads (N, H, T, d)
    S = Q Kᵀ / √d  (positions j > i set to −∞ when causal),  P = softmax(S)
    O = P V,  heads merged back to (N, T, D),  y = O W_outᵀ + b_out

Backward, with dO from the output projection's backward:

    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ⊙ (dP − Σ_j dP ⊙ P) / √d,
    dQ = dS K,    dK = dSᵀ Q,   dx = in-projection backward of [dQ dK dV].

Forward mode (input tangent, parameters fixed), with [dQ dK dV] = dx W_inᵀ:

    dS = (dQ Kᵀ + Q dKᵀ) / √d,   dP = P ⊙ (dS − Σ_j P ⊙ dS),   dO = dP V + P dV,
    dy = merged dO W_outᵀ.

The softmax Jacobian diag(p) − ppᵀ is symmetric, so dP is the softmax backward formula applied
to the tangent; masked scores are the constant −∞ and have P = 0, so they contribute nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_array

from .._array_api import xp_check_floating, xp_check_int, xp_device, xp_namespace
from .._typing import Array, Namespace
from .functional import softmax, softmax_backward
from .init import make_rng
from .linear import Linear
from .module import Module

__all__ = ["MultiHeadSelfAttention"]


class MultiHeadSelfAttention(Module):
    """Multi-head self-attention: softmax(QKᵀ/√d_k) V with H heads, optional causal mask.

    Parameters
    ----------
    embed_dim : D, the model width; ``num_heads`` must divide it.
    num_heads : H.
    bias : biases in the input and output projections (default True).
    causal : mask positions j > i (each position attends only to itself and the past).
    init : initialization of both projections (default ``"xavier_uniform"`` as
        ``torch.nn.MultiheadAttention``'s ``in_proj_weight``; biases start at zero);
        ``sigma_w`` its gain (``init="gaussian", sigma_w=1`` is N(0, 1/D)).
    zero_query_key : start W_Q = W_K = 0 (uniform attention at initialization, the setting
        of Xiong et al. 2020's analysis); the weights are still drawn first, so a seed gives
        the same W_V either way.
    identity_output : start W_out = I (Xiong et al. 2020).
    rng, xp, dtype, device : as :class:`~arraynorm.nn.Linear`.

    Shapes: x (N, T, D) → y (N, T, D). Sub-layers ``in_proj`` (Linear D → 3D, rows ordered
    Q, K, V as PyTorch's ``in_proj_weight``) and ``out_proj`` (Linear D → D). The attention
    probabilities are computed in float32 at least. Same computation as
    ``torch.nn.MultiheadAttention(D, H, batch_first=True, dropout=0)`` with
    ``attn_mask`` the causal mask; there is no dropout and no key padding mask here.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, *,
                 causal: bool = False, init: str = "xavier_uniform", sigma_w: float | None = None,
                 zero_query_key: bool = False, identity_output: bool = False, rng: Any = None,
                 xp: Namespace = None, dtype: Any = None, device: Any = None) -> None:
        super().__init__()
        fname = "MultiHeadSelfAttention"
        for name, n in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            xp_check_int(fname, name, n)
        if embed_dim % num_heads:
            raise ValueError(f"{fname}: num_heads={num_heads} must divide embed_dim={embed_dim}")
        g = make_rng(rng)
        self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, bool(causal)
        self.head_dim = embed_dim // num_heads
        kw = dict(init=init, sigma_w=sigma_w, sigma_b=0.0, rng=g, xp=xp, dtype=dtype, device=device)
        self.in_proj = Linear(embed_dim, 3 * embed_dim, bias, **kw)
        self.out_proj = Linear(embed_dim, embed_dim, bias, **kw)
        if zero_query_key:
            w = self.in_proj.params["weight"]
            wxp = array_namespace(w)
            self.in_proj.weight = wxp.concat(
                [wxp.zeros_like(w[:2 * embed_dim, :]), w[2 * embed_dim:, :]], axis=0)
        if identity_output:
            w = self.out_proj.params["weight"]
            self.out_proj.weight = array_namespace(w).eye(embed_dim, dtype=w.dtype,
                                                          device=xp_device(w))

    def _heads(self, xp: Namespace, t: Array, n: int, steps: int) -> Array:
        return xp.permute_dims(xp.reshape(t, (n, steps, self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def _merge(self, xp: Namespace, t: Array, n: int, steps: int) -> Array:
        return xp.reshape(xp.permute_dims(t, (0, 2, 1, 3)), (n, steps, self.embed_dim))

    def forward(self, x: Array) -> Array:
        """y = W_O · concat_h softmax(Q_h K_hᵀ/√d_k [+ causal mask]) V_h for x (N, T, D), Q, K, V the
        input projections; caches what backward needs.
        """
        fname = "MultiHeadSelfAttention.forward"
        xp = xp_namespace(fname, x=x, weight=self.in_proj.params["weight"])
        xp_check_floating(fname, "x", x, xp)
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"{fname}: x must have shape (N, T, {self.embed_dim}), got {tuple(x.shape)}")
        n, steps, d = x.shape
        qkv = self.in_proj.forward(x)
        q = self._heads(xp, qkv[..., :d], n, steps)
        k = self._heads(xp, qkv[..., d:2 * d], n, steps)
        v = self._heads(xp, qkv[..., 2 * d:], n, steps)
        scale = 1.0 / math.sqrt(self.head_dim)
        s = xp.matmul(q, xp.matrix_transpose(k))
        if self.causal:
            i = xp.arange(steps, device=xp_device(x))
            keep = xp.reshape(i, (steps, 1)) >= xp.reshape(i, (1, steps))
            s = xp.where(keep, s, xp.full_like(s, -math.inf))
        # the scale inside the softmax: one sweep with it on NumPy (float32, [jit]), not two
        p = softmax(xp, s, axis=-1, scale=scale)
        o = xp.matmul(p, v)
        self._save(xp=xp, q=q, k=k, v=v, p=p, n=n, steps=steps, scale=scale)
        return self.out_proj.forward(self._merge(xp, o, n, steps))

    def backward(self, dy: Array) -> Array:
        """dx through the output projection, the softmax and the three input projections; sets the
        projections' gradients.
        """
        c = self._saved()
        xp, q, k, v, p, n, steps = c["xp"], c["q"], c["k"], c["v"], c["p"], c["n"], c["steps"]
        do = self._heads(xp, self.out_proj.backward(dy), n, steps)
        dv = xp.matmul(xp.matrix_transpose(p), do)
        dp = xp.matmul(do, xp.matrix_transpose(v))
        ds = softmax_backward(xp, dp, p, axis=-1, scale=c["scale"])
        dq = xp.matmul(ds, k)
        dk = xp.matmul(xp.matrix_transpose(ds), q)
        if is_numpy_array(dq):
            # each head's rows written once into their place (concat of merged copies: twice)
            dqkv = np.empty((n, steps, 3, self.num_heads, self.head_dim),
                            np.result_type(dq, dk, dv))
            for i, t in enumerate((dq, dk, dv)):
                dqkv[:, :, i] = np.swapaxes(t, 1, 2)
            dqkv = dqkv.reshape(n, steps, 3 * self.embed_dim)
        else:
            dqkv = xp.concat([self._merge(xp, t, n, steps) for t in (dq, dk, dv)], axis=-1)
        return self.in_proj.backward(dqkv)

    def jvp(self, dx: Array) -> Array:
        c = self._saved("jvp")
        xp, q, k, v, p, n, steps = c["xp"], c["q"], c["k"], c["v"], c["p"], c["n"], c["steps"]
        dqkv = self.in_proj.jvp(dx)
        d = self.embed_dim
        dq, dk, dv = (self._heads(xp, dqkv[..., i * d:(i + 1) * d], n, steps) for i in range(3))
        ds = (xp.matmul(dq, xp.matrix_transpose(k)) + xp.matmul(q, xp.matrix_transpose(dk))) * c["scale"]
        dp = softmax_backward(xp, ds, p, axis=-1)  # symmetric Jacobian: JVP = VJP formula
        do = xp.matmul(dp, v) + xp.matmul(p, dv)
        return self.out_proj.jvp(self._merge(xp, do, n, steps))

    @property
    def attention_weights(self) -> Array | None:
        """P = softmax(QKᵀ/√d) of the last forward, (N, H, T, T), or None if not cached."""
        return None if self._cache is None else self._cache["p"]

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, causal={self.causal}"
