"""Blockwise exact top-k retrieval: nearest neighbours and CSLS, never an N x M matrix.

Queries are processed in fixed-size blocks (the last one padded, so one
compilation serves every block); for each query block a ``lax.scan`` walks the
keys in fixed-size blocks, keeping a running top-k. Peak memory is
``query_block x key_block`` scores whatever N and M are (200k x 200k is fine).
With a ``mesh`` the keys are split across all its devices: every device scans
its own slice, then the per-device top-k lists are all-gathered and merged.
Ties resolve to the lower key index, as ``lax.top_k`` on the dense matrix does.

Cosine similarity throughout (rows are L2-normalised in float32 first); all
matmuls run at ``Precision.HIGHEST`` (no TF32 on GPUs).

CSLS (Conneau et al. 2018), for a mapped source x and a target y::

    CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y)
    r_T(x) = mean of the k largest cos(x, y') over targets y'     (k = 10)
    r_S(y) = mean of the k largest cos(y, x') over mapped sources x'

r_S(y) needs the whole mapped source space (``sources``), not only the queries.

References: Conneau et al., "Word translation without parallel data", ICLR
2018 (MUSE ``src/evaluation/word_translation.py``, ``src/dico_builder.py``);
Johnson et al., "Billion-scale similarity search with GPUs" (blockwise k-selection).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["topk_scores", "nn_topk", "csls_topk", "mean_topk_similarity", "l2_normalize"]

_AXIS = "keys"
_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x) -> jax.Array:
    """Rows divided by their L2 norm, in float32 (zero rows stay zero). [n, d] -> [n, d]."""
    x = jnp.asarray(x, jnp.float32)
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x / jnp.where(norms > 0, norms, 1.0)


def _flat_mesh(mesh) -> Mesh | None:
    if mesh is None:
        return None
    return Mesh(np.asarray(mesh.devices).reshape(-1), (_AXIS,))


@functools.lru_cache(maxsize=None)
def _program(k: int, key_block: int, mesh: Mesh | None):
    """Jitted ``(q [Bq, d], keys [nb, Bk, d], bias [nb, Bk]) -> (values [Bq, k], ids [Bq, k])``."""
    block_k = min(k, key_block)

    def local(q, keys, bias):
        n_blocks = keys.shape[0]
        base = 0 if mesh is None else jax.lax.axis_index(_AXIS) * (n_blocks * key_block)

        def step(carry, xs):
            best_v, best_i = carry
            kblock, bblock, j = xs
            s = jnp.matmul(q, kblock.T, precision=_HIGHEST) - bblock[None, :]
            v, i = jax.lax.top_k(s, block_k)
            i = i + (base + j * key_block)
            # running top-k first: on ties the lower key index wins
            v, sel = jax.lax.top_k(jnp.concatenate([best_v, v], axis=1), k)
            i = jnp.take_along_axis(jnp.concatenate([best_i, i], axis=1), sel, axis=1)
            return (v, i), None

        init = (jnp.full((q.shape[0], k), -jnp.inf, jnp.float32), jnp.full((q.shape[0], k), -1, jnp.int32))
        (v, i), _ = jax.lax.scan(step, init, (keys, bias, jnp.arange(n_blocks, dtype=jnp.int32)))
        if mesh is not None:  # merge the per-device lists; device order = key order
            v = jax.lax.all_gather(v, _AXIS, axis=1, tiled=True)
            i = jax.lax.all_gather(i, _AXIS, axis=1, tiled=True)
            v, sel = jax.lax.top_k(v, k)
            i = jnp.take_along_axis(i, sel, axis=1)
        return v, i

    if mesh is None:
        return jax.jit(local)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(_AXIS), P(_AXIS)),
                                 out_specs=(P(), P()), check_vma=False))


def topk_scores(queries, keys, *, k: int, key_bias=None, query_block: int = 1024,
                key_block: int = 8192, mesh=None) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of ``s_ij = <q_i, key_j> - key_bias_j`` over j, blockwise.

    Args:
        queries: [N, d] (used as given: normalise first for cosine).
        keys: [M, d].
        k: neighbours per query, 1 <= k <= M.
        key_bias: optional [M] subtracted from every score of key j (CSLS's r_S / 2).
        query_block, key_block: largest block sizes; N and M are split into the fewest
            blocks of at most these sizes, of equal size (the last one padded), so the
            score tile is at most query_block x key_block and one compilation serves all.
        mesh: optional ``jax.sharding.Mesh``; keys are split across all its devices.

    Returns:
        ``(values [N, k] float32, indices [N, k] int32)``, best first.

    Example:
        >>> v, i = topk_scores(l2_normalize(x), l2_normalize(y), k=10)  # doctest: +SKIP
    """
    q = jnp.asarray(queries, jnp.float32)
    kv = jnp.asarray(keys, jnp.float32)
    if q.ndim != 2 or kv.ndim != 2 or q.shape[1] != kv.shape[1]:
        raise ValueError(f"queries [N, d] and keys [M, d] must share d, got {q.shape} and {kv.shape}")
    n, m = q.shape[0], kv.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the number of keys), got {k}")
    if query_block < 1 or key_block < 1:
        raise ValueError(f"block sizes must be positive, got {query_block} and {key_block}")
    bias = jnp.zeros((m,), jnp.float32) if key_bias is None else jnp.asarray(key_bias, jnp.float32)
    if bias.shape != (m,):
        raise ValueError(f"key_bias must have shape ({m},), got {bias.shape}")
    flat = _flat_mesh(mesh)
    shards = 1 if flat is None else flat.size
    # balanced blocks: as few as the block size allows, padding below one row per block
    per_shard = math.ceil(m / shards)
    n_blocks = math.ceil(per_shard / key_block)
    bk = math.ceil(per_shard / n_blocks)
    total = shards * n_blocks * bk
    # padded keys score -inf (bias +inf) and are never selected since k <= m
    kv = jnp.pad(kv, ((0, total - m), (0, 0))).reshape(shards * n_blocks, bk, kv.shape[1])
    bias = jnp.pad(bias, (0, total - m), constant_values=jnp.inf).reshape(shards * n_blocks, bk)
    n_qblocks = max(1, math.ceil(n / query_block))
    bq = max(1, math.ceil(n / n_qblocks))
    n_padded = n_qblocks * bq
    q = jnp.pad(q, ((0, n_padded - n), (0, 0)))
    if flat is not None:
        kv = jax.device_put(kv, NamedSharding(flat, P(_AXIS)))
        bias = jax.device_put(bias, NamedSharding(flat, P(_AXIS)))
        q = jax.device_put(q, NamedSharding(flat, P()))
    fn = _program(k, bk, flat)
    outs = [fn(q[s:s + bq], kv, bias) for s in range(0, n_padded, bq)]
    if not outs:
        return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
    values = jnp.concatenate([o[0] for o in outs])[:n]
    indices = jnp.concatenate([o[1] for o in outs])[:n]
    return values, indices


def nn_topk(queries, keys, *, k: int = 10, query_block: int = 1024, key_block: int = 8192,
            mesh=None) -> tuple[jax.Array, jax.Array]:
    """Cosine nearest neighbours: top-k of cos(q_i, key_j). Returns ``(cosines [N, k], ids [N, k])``."""
    return topk_scores(l2_normalize(queries), l2_normalize(keys), k=k, query_block=query_block,
                       key_block=key_block, mesh=mesh)


def mean_topk_similarity(queries, keys, *, k: int = 10, query_block: int = 1024, key_block: int = 8192,
                         mesh=None) -> jax.Array:
    """CSLS's neighbourhood density r(q_i) = mean of the k largest cos(q_i, key_j). Returns [N] float32."""
    values, _ = nn_topk(queries, keys, k=k, query_block=query_block, key_block=key_block, mesh=mesh)
    return jnp.mean(values, axis=1)


def csls_topk(queries, keys, *, k: int = 10, knn: int = 10, sources=None, query_r=None, key_r=None,
              query_block: int = 1024, key_block: int = 8192, mesh=None) -> tuple[jax.Array, jax.Array]:
    """Top-k keys by CSLS(q, y) = 2 cos(q, y) - r_T(q) - r_S(y).

    Args:
        queries: [N, d] mapped source vectors to translate.
        keys: [M, d] target vectors.
        k: candidates returned per query.
        knn: neighbourhood size of r_T and r_S (MUSE: 10).
        sources: [S, d] the mapped source space that defines r_S (default ``queries``;
            pass the full vocabulary for MUSE's numbers).
        query_r: precomputed r_T(queries) [N], else computed against ``keys``.
        key_r: precomputed r_S(keys) [M], else computed against ``sources``.
        query_block, key_block, mesh: as :func:`topk_scores`.

    Returns:
        ``(csls [N, k] float32, ids [N, k] int32)``, best first.

    Example:
        >>> scores, ids = csls_topk(src_emb[queries] @ w, tgt_emb, sources=src_emb @ w)  # doctest: +SKIP
    """
    blocking = dict(query_block=query_block, key_block=key_block, mesh=mesh)
    qn = l2_normalize(queries)
    kn = l2_normalize(keys)
    if query_r is None:
        query_r = mean_topk_similarity(qn, kn, k=knn, **blocking)
    if key_r is None:
        key_r = mean_topk_similarity(kn, qn if sources is None else l2_normalize(sources), k=knn, **blocking)
    query_r = jnp.asarray(query_r, jnp.float32)
    key_r = jnp.asarray(key_r, jnp.float32)
    if query_r.shape != (qn.shape[0],) or key_r.shape != (kn.shape[0],):
        raise ValueError(f"query_r {query_r.shape} / key_r {key_r.shape} must be [{qn.shape[0]}] / [{kn.shape[0]}]")
    # rank by 2cos - r_S = 2 (cos - r_S / 2); halving and doubling are exact in binary floats
    values, ids = topk_scores(qn, kn, k=k, key_bias=key_r / 2, **blocking)
    return 2 * values - query_r[:, None], ids
