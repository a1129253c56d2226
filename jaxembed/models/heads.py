"""Small heads on top of sentence embeddings.

* ``ProjectionHead(features)``: ``tanh(x W + b)`` -- the SimCSE / WhitenedCSE MLP
  (``Linear(H, H) -> tanh``), used in training only for unsupervised SimCSE.
* ``PairScoreHead(hidden=512, out=1)``: DSE's pair classifier,
  ``[u, v, u*v, |u-v|] -> Dense(hidden) -> ReLU -> Dense(out)``; logits [B, out].

Example::

    head = PairScoreHead(hidden=512, out=3)
    variables = head.init(key, u, v)
    logits = head.apply(variables, u, v)     # [B, 3]

References: Gao et al. 2021 (SimCSE, arXiv 2104.08821); Barkan et al. 2020 (DSE,
arXiv 1908.05161); Conneau et al. 2017 (InferSent pair features).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_init = nn.initializers.normal(0.02)


class ProjectionHead(nn.Module):
    """``[B, D_in] -> [B, features]``: ``tanh(x W + b)``."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(
            self.features,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_init, ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            name="dense",
        )(x)
        return jnp.tanh(y)


class PairScoreHead(nn.Module):
    """``u, v [B, D] -> logits [B, out]`` via ``pair_features(u, v)`` [B, 4D] and a 2-layer MLP."""

    hidden: int = 512
    out: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u, v):
        from jaxembed.losses import pair_features

        if u.shape != v.shape or u.ndim != 2:
            raise ValueError(f"u and v must both be [B, D], got {u.shape} and {v.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Dense(
            self.hidden,
            kernel_init=nn.with_logical_partitioning(_init, ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",)),
            **kw,
            name="hidden",
        )(pair_features(u, v))
        h = nn.relu(h)
        return nn.Dense(
            self.out,
            kernel_init=nn.with_logical_partitioning(_init, ("mlp", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            **kw,
            name="out",
        )(h).astype(jnp.float32)
