"""Orthogonal Procrustes: the rotation that best maps one embedding space onto another.

    W* = argmin_{W^T W = I} || X W - Y ||_F = U V^T,   where  X^T Y = U S V^T

for dictionary pairs stacked as rows of X (source) and Y (target). The map is
applied on the right, ``mapped = src @ W``. (MUSE writes the same solution as
W' = U' V'^T from Y^T X and applies it as W' x; W' = W^T.)

Computed in a float32 island (inputs cast up, matmul at highest precision so
GPUs do not fall back to TF32) whatever the caller's dtype.

References: Schonemann, "A generalized solution of the orthogonal Procrustes
problem", Psychometrika 1966; Xing et al., NAACL 2015; Conneau et al. (MUSE),
ICLR 2018, ``src/trainer.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["procrustes"]


@jax.jit
def _procrustes(src, tgt):
    m = jnp.matmul(src.T, tgt, precision=jax.lax.Precision.HIGHEST)
    u, _, vt = jnp.linalg.svd(m, full_matrices=False)
    return jnp.matmul(u, vt, precision=jax.lax.Precision.HIGHEST)


def procrustes(src, tgt) -> jax.Array:
    """Orthogonal map W [d, d] minimising ||src @ W - tgt||_F.

    Args:
        src: [P, d] source vectors of the P dictionary pairs.
        tgt: [P, d] their translations' vectors (row i translates row i). When
            the two dimensions differ, W [d_src, d_tgt] has orthonormal rows or
            columns (the semi-orthogonal solution).

    Returns:
        float32 W; apply as ``src_all @ W``.

    Example:
        >>> w = procrustes(x[pairs[:, 0]], y[pairs[:, 1]])  # doctest: +SKIP
        >>> mapped = x @ w  # doctest: +SKIP
    """
    src = jnp.asarray(src)
    tgt = jnp.asarray(tgt)
    if src.ndim != 2 or tgt.ndim != 2 or src.shape[0] != tgt.shape[0]:
        raise ValueError(
            "procrustes expects src [P, d] and tgt [P, d'] with equal P, "
            f"got {src.shape} and {tgt.shape}"
        )
    if src.shape[0] == 0:
        raise ValueError("procrustes needs at least one dictionary pair")
    return _procrustes(src.astype(jnp.float32), tgt.astype(jnp.float32))
