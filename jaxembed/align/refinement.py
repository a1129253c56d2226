"""MUSE-style Procrustes refinement: induce a dictionary, re-fit, repeat.

    W_0 = procrustes(seed dictionary)
    for t in 1..n_iter:
        D_t = mutual nearest neighbours of (src W_{t-1}, tgt) under CSLS,
              among the max_rank most frequent words of each side
        W_t = procrustes(D_t)

Dictionary induction follows MUSE's ``dico_builder.py``: the first ``max_rank``
rows of each vocabulary are the queries, each retrieves its best match in the
*whole* other vocabulary (CSLS densities r_S, r_T over the whole vocabularies),
and a pair is kept only when the match is also within the first ``max_rank``
rows (MUSE keeps ranks <= max_rank; here exactly the first max_rank rows).
``"S2T&T2S"`` keeps pairs found in both directions (mutual NN), ``"S2T|T2S"``
either, ``"S2T"`` / ``"T2S"`` one direction.

Reference: Conneau et al., "Word translation without parallel data", ICLR
2018, Section 2.2/3.2 (``supervised.py``: n_refinement 5, csls_knn_10,
S2T&T2S, dico_max_rank 10000).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.align.orthogonal import procrustes
from jaxembed.align.retrieval import csls_topk, l2_normalize, mean_topk_similarity, nn_topk

__all__ = ["MODES", "apply_map", "induce_dictionary", "refine"]

MODES = ("S2T", "T2S", "S2T&T2S", "S2T|T2S")


def apply_map(x, w) -> jax.Array:
    """``x @ w`` in float32 at highest precision. [n, d] x [d, d'] -> [n, d']."""
    return jnp.matmul(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(w, jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )


def _best_match(queries, keys, *, retrieval, knn, query_r, key_r, blocking) -> np.ndarray:
    if retrieval == "nn":
        _, ids = nn_topk(queries, keys, k=1, **blocking)
    else:
        _, ids = csls_topk(queries, keys, k=1, knn=knn, query_r=query_r, key_r=key_r, **blocking)
    return np.asarray(ids)[:, 0].astype(np.int64)


def induce_dictionary(
    mapped_src,
    tgt,
    *,
    max_rank: int | None = 10000,
    knn: int = 10,
    retrieval: str = "csls",
    mode: str = "S2T&T2S",
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> np.ndarray:
    """Build a dictionary [P, 2] of (source row, target row) from aligned spaces.

    Args:
        mapped_src: [S, d] source embeddings after the map.
        tgt: [T, d] target embeddings.
        max_rank: only the first ``max_rank`` rows of each side take part (None or 0: all).
        knn: CSLS neighbourhood size.
        retrieval: ``"csls"`` or ``"nn"``.
        mode: one of ``S2T``, ``T2S``, ``S2T&T2S`` (mutual), ``S2T|T2S``.

    Returns:
        int64 array [P, 2], sorted by source then target row.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if retrieval not in ("nn", "csls"):
        raise ValueError(f"retrieval must be 'nn' or 'csls', got {retrieval!r}")
    blocking = dict(query_block=query_block, key_block=key_block, mesh=mesh)
    s = l2_normalize(mapped_src)
    t = l2_normalize(tgt)
    n_s = s.shape[0] if not max_rank else min(max_rank, s.shape[0])
    n_t = t.shape[0] if not max_rank else min(max_rank, t.shape[0])
    r_t = r_s = None
    if retrieval == "csls":
        r_t = mean_topk_similarity(s, t, k=knn, **blocking)  # density of each source among targets
        r_s = mean_topk_similarity(t, s, k=knn, **blocking)  # density of each target among sources
    def matches(queries, keys, n_q, n_k, q_r, k_r):
        """``{(q, k)}``: each of the first ``n_q`` queries with its best key, kept
        when that key is among the first ``n_k``."""
        best = _best_match(queries[:n_q], keys, retrieval=retrieval, knn=knn,
                           query_r=None if q_r is None else q_r[:n_q], key_r=k_r,
                           blocking=blocking)
        return {(q, k) for q, k in enumerate(best.tolist()) if k < n_k}

    found = []
    if mode != "T2S":
        found.append(matches(s, t, n_s, n_t, r_t, r_s))
    if mode != "S2T":
        found.append({(i, j) for j, i in matches(t, s, n_t, n_s, r_s, r_t)})
    pairs = (
        found[0]
        if len(found) == 1
        else (found[0] & found[1] if mode == "S2T&T2S" else found[0] | found[1])
    )
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def refine(
    src,
    tgt,
    seed_pairs,
    *,
    n_iter: int = 5,
    max_rank: int | None = 10000,
    knn: int = 10,
    retrieval: str = "csls",
    mode: str = "S2T&T2S",
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> tuple[jax.Array, np.ndarray]:
    """Procrustes on ``seed_pairs``, then ``n_iter`` rounds of induction + Procrustes.

    Args:
        src: [S, d] source embeddings (after any normalisation chain).
        tgt: [T, d] target embeddings.
        seed_pairs: [P, 2] (source row, target row) seed dictionary.
        n_iter: refinement rounds (MUSE default 5; 0 = plain Procrustes).
        max_rank, knn, retrieval, mode: as :func:`induce_dictionary`.

    Returns:
        ``(W [d, d] float32, dictionary [P', 2])``: the final map (apply as
        ``src @ W``) and the dictionary it was fitted on.

    Example:
        >>> w, dico = refine(x, y, seed, n_iter=5, max_rank=10_000)  # doctest: +SKIP
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    src = jnp.asarray(src, jnp.float32)
    tgt = jnp.asarray(tgt, jnp.float32)
    pairs = np.asarray(seed_pairs, dtype=np.int64).reshape(-1, 2)
    w = procrustes(src[pairs[:, 0]], tgt[pairs[:, 1]])
    for it in range(n_iter):
        pairs = induce_dictionary(
            apply_map(src, w),
            tgt,
            max_rank=max_rank,
            knn=knn,
            retrieval=retrieval,
            mode=mode,
            query_block=query_block,
            key_block=key_block,
            mesh=mesh,
        )
        if pairs.shape[0] == 0:
            raise ValueError(f"refinement round {it + 1} induced an empty dictionary")
        w = procrustes(src[pairs[:, 0]], tgt[pairs[:, 1]])
    return w, pairs
