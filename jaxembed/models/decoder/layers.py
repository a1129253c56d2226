"""Building blocks of the decoder: RMSNorm, multi-axis projections, the gated MLP and the
token embedding.

* :class:`RMSNorm` ``y = x / sqrt(mean(x^2) + eps) * (offset + w)`` with the statistics in
  float32. Llama/Qwen/Mistral (``offset = 0``, ``w`` initialised to 1) cast the normalised
  ``x`` to the activation dtype and then multiply by ``w``; Gemma (``offset = 1``, ``w``
  initialised to 0, ``scale_in_float32``) multiplies by ``1 + w`` in float32 and then casts.
* :class:`Projection` ``y = einsum(equation, x, kernel) (+ bias)`` with kernels that keep
  the head axes apart, e.g. ``[H, N, D]`` for queries, so every axis has a logical name.
* :class:`GatedMLP` ``down(act(gate(x)) * up(x))``, ``[B, L, H] -> [B, L, F] -> [B, L, H]``.
* :class:`Embedding` token rows gathered in ``param_dtype``, then cast (and scaled).

Example::

    y = RMSNorm(epsilon=1e-6, offset=1.0, scale_in_float32=True)   # a Gemma norm
    q = Projection("blh,hnd->blnd", (H, N, D), ("embed", "heads", "kv"), ("heads", "kv"))(x)

Reference: Zhang & Sennrich 2019 (RMSNorm, arXiv 1910.07467); Shazeer 2020 (GLU variants,
arXiv 2002.05202); ``transformers/models/{llama,gemma2}/modeling_*.py``.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.transformer import _activation

Dtype = Any
_INIT_STD = 0.02


def _normal(axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis (float32 statistics); ``axis_name`` is the logical name of
    the normalised axis (``embed`` for hidden states, ``kv`` for per-head q/k norms)."""

    epsilon: float = 1e-6
    offset: float = 0.0
    scale_in_float32: bool = False
    axis_name: str = "embed"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param(
            "scale",
            nn.with_logical_partitioning(
                nn.initializers.constant(1.0 - self.offset), (self.axis_name,)
            ),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        if self.scale_in_float32:
            return (y * (self.offset + w.astype(jnp.float32))).astype(self.dtype)
        return y.astype(self.dtype) * (self.offset + w).astype(self.dtype)

    @classmethod
    def of(cls, config, *, name: str, axis_name: str = "embed", **kw) -> "RMSNorm":
        """The norm a :class:`DecoderConfig` asks for (eps, offset, float32 multiply)."""
        return cls(config.rms_norm_eps, config.norm_offset, config.norm_scale_in_float32,
                   axis_name, **kw, name=name)


class Projection(nn.Module):
    """``y = einsum(equation, x, kernel) + bias``; ``bias_axes=None`` means no bias, else the
    bias has the kernel's trailing ``len(bias_axes)`` dims. Compute in ``dtype``."""

    equation: str
    kernel_shape: tuple
    kernel_axes: tuple
    bias_axes: Optional[tuple] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            _normal(self.kernel_axes),
            self.kernel_shape,
            self.param_dtype,
        )
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias_axes is None:
            return y
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), self.bias_axes),
            self.kernel_shape[-len(self.bias_axes):],
            self.param_dtype,
        )
        return y + bias.astype(self.dtype)


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` with optional biases (Llama ``mlp_bias``)."""

    hidden_size: int
    intermediate_size: int
    activation: str = "silu"
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        H, F = self.hidden_size, self.intermediate_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def up(name):
            y = Projection(
                "blh,hf->blf", (H, F), ("embed", "mlp"), ("mlp",) if self.use_bias else None,
                **kw, name=name,
            )(x)
            return nn.with_logical_constraint(y, ("batch", "seq", "mlp"))

        h = _activation(self.activation)(up("gate_proj")) * up("up_proj")
        y = Projection(
            "blf,fh->blh", (F, H), ("mlp", "embed"), ("embed",) if self.use_bias else None,
            **kw, name="down_proj",
        )(h)
        return nn.with_logical_constraint(y, ("batch", "seq", "embed"))


class Embedding(nn.Module):
    """Token embedding ``[V, H]``: the row gather runs in ``param_dtype`` and the rows are then
    cast to ``dtype`` (so the gradient is a ``param_dtype`` scatter-add, not a bf16 one);
    ``scale`` multiplies in ``dtype`` (Gemma's ``sqrt(H)``, as transformers)."""

    num_embeddings: int
    features: int
    scale: Optional[float] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param(
            "embedding",
            _normal(("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )
        x = jnp.take(table, ids, axis=0).astype(self.dtype)
        if self.scale is not None:
            x = x * jnp.asarray(self.scale, self.dtype)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))
