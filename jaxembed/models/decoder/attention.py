"""Grouped-query self-attention with windows, padding masks and soft-capping.

Shapes: ``x`` [B, T, H]; queries [B, T, N, D]; keys/values [B, S, K, D] with ``N = K G``
(GQA: query head ``n = k G + g`` reads key/value head ``k``, as transformers'
``repeat_kv``). Keys and values are never repeated in memory: both paths contract over a
grouped query ``[B, T, K, G, D]``.

Mask (``window_mask``): query ``t`` may attend key ``s`` iff ``s`` is a real token and
``-right <= t - s <= left`` for the layer's ``(left, right)`` window (``None`` =
unbounded), with ``t, s`` array indices -- transformers' ``masking_utils`` uses index
distances too. A query with no allowed key (a left-pad row under causal attention) gets
``finfo(float32).min`` on every score, i.e. a uniform average of all values, exactly as
transformers' eager attention (the row is padding and never pooled).

Scores ``s = (q . k) * scale`` in float32, optionally soft-capped ``c tanh(s / c)`` (Gemma 2),
masked, softmax in float32, cast to the activation dtype before the value product.

Implementations: ``"xla"`` (the einsum path above, any options), ``"dot_product"``
(``jax.nn.dot_product_attention`` with a boolean mask, GQA without repeating K/V; no
soft-capping) and ``"cudnn"`` (the same call with ``implementation="cudnn"``: cuDNN's fused
flash attention, GPU only, bf16/fp16, the mask turned into an additive bias). ``"auto"``
picks ``xla`` when the layer soft-caps (Gemma 2), ``cudnn`` on a GPU for bf16/fp16
activations -- falling back to ``dot_product`` when cuDNN refuses the shapes at trace time
-- and ``dot_product`` otherwise. ``jax.nn.dot_product_attention``'s own default
(``implementation=None``) is its XLA path on every backend (jax 0.10), so cuDNN has to be
asked for by name. The cuDNN branch is selected by a test on the CPU but has not been run
on a GPU in this repository's tests.

Example::

    keep = window_mask(attention_mask, (None, 0))               # causal, [B, 1, T, T]
    ctx = attend(q, k, v, keep, scale=D ** -0.5, softcap=None, implementation="auto")

Reference: Ainslie et al. 2023 (GQA, arXiv 2305.13245); Gemma Team 2024 (Gemma 2,
arXiv 2408.00118); ``transformers/models/gemma2/modeling_gemma2.py`` (``eager_attention_forward``).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.decoder.config import DecoderConfig
from jaxembed.models.decoder.layers import Projection, RMSNorm
from jaxembed.models.decoder.rope import apply_rope

Dtype = Any
IMPLEMENTATIONS = ("auto", "xla", "dot_product", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def window_mask(attention_mask: jax.Array, window: tuple) -> jax.Array:
    """``attention_mask`` [B, S] (1 = real token), ``window = (left, right)`` (ints, traced
    scalars or None) -> ``keep`` [B, 1, S, S] bool:
    ``keep[b, 0, t, s] = mask[b, s] and -right <= t - s <= left``."""
    S = attention_mask.shape[1]
    idx = jnp.arange(S)
    distance = idx[:, None] - idx[None, :]  # t - s
    allowed = jnp.ones((S, S), bool)
    left, right = window
    if left is not None:
        allowed &= distance <= left
    if right is not None:
        allowed &= -distance <= right
    return attention_mask.astype(bool)[:, None, None, :] & allowed[None, None]


def _grouped_xla(q, k, v, keep, *, scale: float, softcap: Optional[float]):
    B, T, N, D = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, N // K, D)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        s = jnp.tanh(s / softcap) * softcap
    s = jnp.where(keep[:, :, None], s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", p, v).reshape(B, T, N, D)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    keep: jax.Array,
    *,
    scale: float,
    softcap: Optional[float] = None,
    implementation: str = "auto",
) -> jax.Array:
    """``q`` [B, T, N, D], ``k, v`` [B, S, K, D], ``keep`` [B, 1, T, S] -> [B, T, N, D]."""
    implementation = choose_implementation(implementation, q.dtype, softcap=softcap)
    if implementation == "xla":
        return _grouped_xla(q, k, v, keep, scale=scale, softcap=softcap)
    if softcap is not None:
        raise ValueError(f"{implementation} attention cannot soft-cap scores; use 'xla'")
    if implementation.startswith("cudnn"):
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=scale,
                                                implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError):
            if implementation == "cudnn":  # asked for by name: say why not
                raise
    return jax.nn.dot_product_attention(q, k, v, mask=keep, scale=scale, implementation="xla")


def choose_implementation(implementation: str, dtype, *, softcap: Optional[float]) -> str:
    """Resolve ``"auto"`` (see the module docstring) to ``"xla"``, ``"dot_product"`` or
    ``"cudnn_or_dot_product"`` (cuDNN, falling back); other names pass through checked."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; {IMPLEMENTATIONS}")
    if implementation != "auto":
        return implementation
    if softcap is not None:
        return "xla"
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in _CUDNN_DTYPES:
        return "cudnn_or_dot_product"
    return "dot_product"


class Attention(nn.Module):
    """Projections (+ q/k norm) + RoPE + :func:`attend` + output projection. The mask is
    built here from the padding mask and the layer's window, so under ``jit`` it is fused
    into the score computation instead of living in memory as [B, 1, T, T] per layer."""

    config: DecoderConfig
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, window, cos, sin):
        cfg = self.config
        H, N, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def project(name, heads, axis):
            bias = (axis, "kv") if cfg.qkv_bias else None
            y = Projection("blh,hnd->blnd", (H, heads, D), ("embed", axis, "kv"), bias, **kw,
                           name=name)(x)
            return nn.with_logical_constraint(y, ("batch", "seq", axis, "kv"))

        q, k, v = project("q_proj", N, "heads"), project("k_proj", K, "kv_heads"), project(
            "v_proj", K, "kv_heads"
        )
        if cfg.qk_norm:
            q = RMSNorm.of(cfg, name="q_norm", axis_name="kv", **kw)(q)
            k = RMSNorm.of(cfg, name="k_norm", axis_name="kv", **kw)(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keep = window_mask(attention_mask, window)
        ctx = attend(q, k, v, keep, scale=cfg.attention_scale,
                     softcap=cfg.attn_logit_softcapping, implementation=self.implementation)
        ctx = nn.with_logical_constraint(ctx, ("batch", "seq", "heads", "kv"))
        out = Projection("blnd,ndh->blh", (N, D, H), ("heads", "kv", "embed"),
                         ("embed",) if cfg.o_bias else None, **kw, name="o_proj")(ctx)
        return nn.with_logical_constraint(out, ("batch", "seq", "embed"))
