"""Blockwise exact top-k retrieval: nearest neighbours and CSLS, never an N x M matrix.

Queries are processed in fixed-size blocks (the last one padded) by
``lax.map``; for each query block a ``lax.scan`` walks the keys in fixed-size
blocks, keeping a running top-k. Each public function is one jit-compiled
program per (shapes, k, block sizes, mesh), so repeated calls (refinement
rounds) never recompile. Peak memory is
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["topk_scores", "nn_topk", "csls_topk", "mean_topk_similarity", "l2_normalize"]

_AXIS = "keys"
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_2d(name, x):
    if x.ndim != 2:
        raise ValueError(f"{name} must be [n, d], got shape {x.shape}")


def _normalize(x):
    x = x.astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
    return x / jnp.where(norms > 0, norms, 1.0)


@jax.jit
def l2_normalize(x) -> jax.Array:
    """Rows divided by their L2 norm, in float32 (zero rows stay zero). [n, d] -> [n, d]."""
    return _normalize(jnp.asarray(x))


def _flat_mesh(mesh) -> Mesh | None:
    if mesh is None:
        return None
    return Mesh(np.asarray(mesh.devices).reshape(-1), (_AXIS,))


def _block_topk_fn(k: int, key_block: int, mesh: Mesh | None):
    """``(q [Bq, d], keys [nb, Bk, d], bias [nb, Bk]) -> (values [Bq, k], ids [Bq, k])``."""
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

        init = (
            jnp.full((q.shape[0], k), -jnp.inf, jnp.float32),
            jnp.full((q.shape[0], k), -1, jnp.int32),
        )
        (v, i), _ = jax.lax.scan(step, init, (keys, bias, jnp.arange(n_blocks, dtype=jnp.int32)))
        if mesh is not None:  # merge the per-device lists; device order = key order
            v = jax.lax.all_gather(v, _AXIS, axis=1, tiled=True)
            i = jax.lax.all_gather(i, _AXIS, axis=1, tiled=True)
            v, sel = jax.lax.top_k(v, k)
            i = jnp.take_along_axis(i, sel, axis=1)
        return v, i

    if mesh is None:
        return local
    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(_AXIS), P(_AXIS)), out_specs=(P(), P()), check_vma=False
    )


def _topk(q, keys, bias, *, k, query_block, key_block, mesh):
    """Traced core of :func:`topk_scores` (``mesh`` already flattened to one axis)."""
    n, d = q.shape
    m = keys.shape[0]
    shards = 1 if mesh is None else mesh.size
    # balanced blocks: the fewest blocks of at most the block size, padding < 1 row per block
    per_shard = math.ceil(m / shards)
    n_blocks = math.ceil(per_shard / key_block)
    bk = math.ceil(per_shard / n_blocks)
    total = shards * n_blocks * bk
    bias = jnp.zeros((m,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    # padded keys score -inf (bias +inf) and are never selected since k <= m
    keys = jnp.pad(keys.astype(jnp.float32), ((0, total - m), (0, 0))).reshape(
        shards * n_blocks, bk, d
    )
    bias = jnp.pad(bias, (0, total - m), constant_values=jnp.inf).reshape(shards * n_blocks, bk)
    if mesh is not None:
        keys = jax.lax.with_sharding_constraint(keys, NamedSharding(mesh, P(_AXIS)))
        bias = jax.lax.with_sharding_constraint(bias, NamedSharding(mesh, P(_AXIS)))
    n_qblocks = max(1, math.ceil(n / query_block))
    bq = max(1, math.ceil(n / n_qblocks))
    q = jnp.pad(q.astype(jnp.float32), ((0, n_qblocks * bq - n), (0, 0))).reshape(n_qblocks, bq, d)
    fn = _block_topk_fn(k, bk, mesh)
    values, ids = jax.lax.map(lambda qb: fn(qb, keys, bias), q)
    return values.reshape(-1, k)[:n], ids.reshape(-1, k)[:n]


_STATIC = ("k", "query_block", "key_block", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _topk_jit(q, keys, bias, *, k, query_block, key_block, mesh):
    return _topk(q, keys, bias, k=k, query_block=query_block, key_block=key_block, mesh=mesh)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _nn_jit(q, keys, *, k, query_block, key_block, mesh):
    return _topk(
        _normalize(q),
        _normalize(keys),
        None,
        k=k,
        query_block=query_block,
        key_block=key_block,
        mesh=mesh,
    )


@functools.partial(jax.jit, static_argnames=_STATIC)
def _density_jit(q, keys, *, k, query_block, key_block, mesh):
    return jnp.mean(
        _nn_jit(q, keys, k=k, query_block=query_block, key_block=key_block, mesh=mesh)[0], axis=1
    )


@functools.partial(jax.jit, static_argnames=("knn", *_STATIC))
def _csls_jit(q, keys, sources, query_r, key_r, *, k, knn, query_block, key_block, mesh):
    blocking = dict(query_block=query_block, key_block=key_block, mesh=mesh)
    qn = _normalize(q)
    kn = _normalize(keys)
    if query_r is None:  # r_T(q): density of each query among the keys
        query_r = jnp.mean(_topk(qn, kn, None, k=knn, **blocking)[0], axis=1)
    if key_r is None:  # r_S(y): density of each key among the sources
        sn = qn if sources is None else _normalize(sources)
        key_r = jnp.mean(_topk(kn, sn, None, k=knn, **blocking)[0], axis=1)
    # rank by 2cos - r_S = 2 (cos - r_S / 2); halving and doubling are exact in binary floats
    values, ids = _topk(qn, kn, key_r.astype(jnp.float32) / 2, k=k, **blocking)
    return 2 * values - query_r.astype(jnp.float32)[:, None], ids


def _validate(queries, keys, k, query_block, key_block):
    q = jnp.asarray(queries)
    kv = jnp.asarray(keys)
    _check_2d("queries", q)
    _check_2d("keys", kv)
    if q.shape[1] != kv.shape[1]:
        raise ValueError(
            f"queries [N, d] and keys [M, d] must share d, got {q.shape} and {kv.shape}"
        )
    if not 1 <= k <= kv.shape[0]:
        raise ValueError(f"k must be in [1, {kv.shape[0]}] (the number of keys), got {k}")
    if query_block < 1 or key_block < 1:
        raise ValueError(f"block sizes must be positive, got {query_block} and {key_block}")
    return q, kv


def _check_vector(name, x, n):
    if x is None:
        return None
    x = jnp.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {x.shape}")
    return x


def topk_scores(
    queries,
    keys,
    *,
    k: int,
    key_bias=None,
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> tuple[jax.Array, jax.Array]:
    """Exact top-k of ``s_ij = <q_i, key_j> - key_bias_j`` over j, blockwise.

    Args:
        queries: [N, d] (used as given: normalise first for cosine).
        keys: [M, d].
        k: neighbours per query, 1 <= k <= M.
        key_bias: optional [M] subtracted from every score of key j (CSLS's r_S / 2).
        query_block, key_block: largest block sizes; N and M are split into the fewest
            blocks of at most these sizes, of equal size (the last one padded), so the
            score tile is at most query_block x key_block.
        mesh: optional ``jax.sharding.Mesh``; keys are split across all its devices.

    Returns:
        ``(values [N, k] float32, indices [N, k] int32)``, best first.

    Example:
        >>> v, i = topk_scores(l2_normalize(x), l2_normalize(y), k=10)  # doctest: +SKIP
    """
    q, kv = _validate(queries, keys, k, query_block, key_block)
    bias = _check_vector("key_bias", key_bias, kv.shape[0])
    return _topk_jit(
        q, kv, bias, k=k, query_block=query_block, key_block=key_block, mesh=_flat_mesh(mesh)
    )


def nn_topk(
    queries, keys, *, k: int = 10, query_block: int = 1024, key_block: int = 8192, mesh=None
) -> tuple[jax.Array, jax.Array]:
    """Cosine nearest neighbours: top-k of cos(q_i, key_j) -> ``(cosines [N, k], ids [N, k])``."""
    q, kv = _validate(queries, keys, k, query_block, key_block)
    return _nn_jit(q, kv, k=k, query_block=query_block, key_block=key_block, mesh=_flat_mesh(mesh))


def mean_topk_similarity(
    queries, keys, *, k: int = 10, query_block: int = 1024, key_block: int = 8192, mesh=None
) -> jax.Array:
    """CSLS's neighbourhood density r(q_i) = mean of the k largest cos(q_i, key_j); [N] float32."""
    q, kv = _validate(queries, keys, k, query_block, key_block)
    return _density_jit(
        q, kv, k=k, query_block=query_block, key_block=key_block, mesh=_flat_mesh(mesh)
    )


def csls_topk(
    queries,
    keys,
    *,
    k: int = 10,
    knn: int = 10,
    sources=None,
    query_r=None,
    key_r=None,
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> tuple[jax.Array, jax.Array]:
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
        >>> mapped = src_emb @ w  # doctest: +SKIP
        >>> scores, ids = csls_topk(mapped[queries], tgt_emb, sources=mapped)  # doctest: +SKIP
    """
    q, kv = _validate(queries, keys, k, query_block, key_block)
    if query_r is None and not 1 <= knn <= kv.shape[0]:
        raise ValueError(f"knn must be in [1, {kv.shape[0]}] (the number of keys), got {knn}")
    if sources is not None:
        sources = jnp.asarray(sources)
        _check_2d("sources", sources)
        if sources.shape[1] != q.shape[1]:
            raise ValueError(f"sources must be [S, {q.shape[1]}], got {sources.shape}")
    n_src = q.shape[0] if sources is None else sources.shape[0]
    if key_r is None and not 1 <= knn <= n_src:
        raise ValueError(f"knn must be in [1, {n_src}] (the number of sources), got {knn}")
    query_r = _check_vector("query_r", query_r, q.shape[0])
    key_r = _check_vector("key_r", key_r, kv.shape[0])
    return _csls_jit(
        q,
        kv,
        sources,
        query_r,
        key_r,
        k=k,
        knn=knn,
        query_block=query_block,
        key_block=key_block,
        mesh=_flat_mesh(mesh),
    )
