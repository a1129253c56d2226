"""Bilingual lexicon induction (BLI) evaluation: precision at k.

Protocol of MUSE (``src/evaluation/word_translation.py``): the queries are
the distinct source words of the test dictionary whose pairs have both words
in the vocabularies; each is translated by retrieving its top-k targets (NN or
CSLS) and counts as a hit at k when **any** of its gold translations is among
them. P@k = 100 x hits / queries.

Reference: Conneau et al., "Word translation without parallel data", ICLR 2018.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxembed.align.retrieval import csls_topk, nn_topk

__all__ = ["RETRIEVALS", "gold_sets", "bli_precision", "translate", "evaluate_bli"]

RETRIEVALS = ("nn", "csls")


def gold_sets(pairs) -> tuple[np.ndarray, list[set]]:
    """Group id pairs [P, 2] by source: ``(sorted query ids [Q], [gold target ids per query])``."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    gold: dict[int, set] = {}
    for s, t in pairs.tolist():
        gold.setdefault(s, set()).add(t)
    queries = np.array(sorted(gold), dtype=np.int64)
    return queries, [gold[q] for q in queries.tolist()]


def bli_precision(topk_ids, gold, *, ks=(1, 5, 10)) -> dict:
    """Precision at k in percent.

    Args:
        topk_ids: [Q, K] retrieved target ids per query, best first (K >= max(ks)).
        gold: Q sets of correct target ids.
        ks: cut-offs.

    Returns:
        ``{k: 100 * mean_q [gold_q intersects topk_ids[q, :k]]}``.

    Example:
        >>> bli_precision(np.array([[3, 1], [0, 2]]), [{1}, {5}], ks=(1, 2))
        {1: 0.0, 2: 50.0}
    """
    topk_ids = np.asarray(topk_ids)
    if topk_ids.ndim != 2 or topk_ids.shape[0] != len(gold):
        raise ValueError(
            f"topk_ids must be [Q, K] with Q = {len(gold)} gold sets, got shape {topk_ids.shape}"
        )
    if topk_ids.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    if max(ks) > topk_ids.shape[1]:
        raise ValueError(f"k = {max(ks)} exceeds the {topk_ids.shape[1]} retrieved candidates")
    # rank of the first correct candidate per query (K if none)
    hit = np.array([[t in g for t in row] for row, g in zip(topk_ids.tolist(), gold)], dtype=bool)
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), topk_ids.shape[1])
    return {k: 100.0 * float(np.mean(first < k)) for k in ks}


def translate(
    mapped_src,
    tgt,
    query_ids,
    *,
    retrieval: str = "csls",
    k: int = 10,
    knn: int = 10,
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> np.ndarray:
    """Top-k target ids [Q, k] for source rows ``query_ids`` of the mapped source space.

    CSLS uses the whole ``mapped_src`` for r_S (as MUSE does).
    """
    if retrieval not in RETRIEVALS:
        raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
    blocking = dict(query_block=query_block, key_block=key_block, mesh=mesh)
    mapped_src = jnp.asarray(mapped_src)
    queries = jnp.take(mapped_src, jnp.asarray(query_ids), axis=0)
    if retrieval == "nn":
        _, ids = nn_topk(queries, tgt, k=k, **blocking)
    else:
        _, ids = csls_topk(queries, tgt, k=k, knn=knn, sources=mapped_src, **blocking)
    return np.asarray(ids)


def evaluate_bli(
    mapped_src,
    tgt,
    pairs,
    *,
    retrieval: str = "csls",
    knn: int = 10,
    ks=(1, 5, 10),
    query_block: int = 1024,
    key_block: int = 8192,
    mesh=None,
) -> dict:
    """P@k of translating the test pairs' source words.

    Args:
        mapped_src: [S, d] source embeddings after the map.
        tgt: [T, d] target embeddings.
        pairs: [P, 2] (source row, target row) test pairs, both words found.
        retrieval: ``"nn"`` (cosine) or ``"csls"``.

    Returns:
        ``{"precision_at_1": ..., "precision_at_5": ..., "precision_at_10": ..., "n_queries": Q}``.
    """
    queries, gold = gold_sets(pairs)
    ids = translate(
        mapped_src,
        tgt,
        queries,
        retrieval=retrieval,
        k=max(ks),
        knn=knn,
        query_block=query_block,
        key_block=key_block,
        mesh=mesh,
    )
    out = {f"precision_at_{k}": p for k, p in bli_precision(ids, gold, ks=ks).items()}
    out["n_queries"] = int(len(queries))
    return out
