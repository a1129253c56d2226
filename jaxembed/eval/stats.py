"""Rank correlation and row-wise cosine similarity in NumPy float64.

The STS protocol (SentEval, as SimCSE and WhitenedCSE run it) scores a model
by the Spearman correlation between the cosine similarity of each sentence
pair and the human gold score. These helpers hold that arithmetic, with no
scipy at run time.

References:
    Spearman, "The proof and measurement of association between two things", 1904.
    Conneau & Kiela, "SentEval", LREC 2018 (``senteval/sts.py``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_ranks", "spearman", "pearson", "rowwise_cosine", "cosine_spearman"]


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing the mean of their ranks.

    Args:
        x: array-like of shape [n], finite values.

    Returns:
        float64 array [n]; ``average_ranks([10, 20, 20, 5]) -> [2, 3.5, 3.5, 1]``.

    Same convention as ``scipy.stats.rankdata(method="average")``.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"average_ranks expects a 1-D array, got shape {x.shape}")
    n = x.shape[0]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # start of each run of equal values in the sorted array
    new_run = np.empty(n, dtype=bool)
    new_run[:1] = True
    new_run[1:] = xs[1:] != xs[:-1]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)  # exclusive
    # ranks starts+1 .. ends, mean = (starts + 1 + ends) / 2
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = run_rank[run_id]
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation of two 1-D arrays, computed in float64.

    r = sum((x - mean x)(y - mean y)) / sqrt(sum((x - mean x)^2) sum((y - mean y)^2)).
    Returns NaN when either input is constant (as scipy does, without the warning).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"pearson expects two 1-D arrays of equal length, got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"pearson needs at least 2 points, got {x.shape[0]}")
    xc = x - x.mean()
    yc = y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman rank correlation rho in [-1, 1] (ties get average ranks).

    rho = pearson(rank(x), rank(y)); equals ``scipy.stats.spearmanr(x, y)[0]``.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 20, 40])  # doctest: +ELLIPSIS
        0.948...
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"spearman expects two 1-D arrays of equal length, got {x.shape} and {y.shape}"
        )
    return pearson(average_ranks(x), average_ranks(y))


def rowwise_cosine(a, b) -> np.ndarray:
    """Cosine similarity of matching rows, float64: cos_i = <a_i, b_i> / (|a_i| |b_i|).

    Args:
        a, b: arrays [n, d].

    Returns:
        float64 array [n]. A zero row gives similarity 0 (SentEval applies
        ``nan_to_num`` to the same effect).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"rowwise_cosine expects two [n, d] arrays of equal shape, got {a.shape} and {b.shape}"
        )
    dots = np.einsum("nd,nd->n", a, b)
    # sqrt(|a|^2 |b|^2) rather than |a| |b|: identical rows then give exactly 1.0,
    # so duplicate pairs tie exactly in the ranking
    norms = np.sqrt(np.einsum("nd,nd->n", a, a) * np.einsum("nd,nd->n", b, b))
    out = np.zeros_like(dots)
    np.divide(dots, norms, out=out, where=norms > 0)
    return out


def cosine_spearman(emb1, emb2, gold) -> float:
    """Spearman x 100 between row-wise cosine(emb1, emb2) and the gold scores.

    Args:
        emb1, emb2: embeddings [n, d] of the first and second sentences of n pairs.
        gold: [n] human similarity scores.

    Returns:
        100 * spearman(cos(emb1_i, emb2_i), gold_i), a Python float.

    Example:
        >>> cosine_spearman(model(s1), model(s2), scores)  # doctest: +SKIP
        82.5
    """
    sims = rowwise_cosine(emb1, emb2)
    gold = np.asarray(gold, dtype=np.float64)
    if gold.shape != sims.shape:
        raise ValueError(
            f"gold has shape {gold.shape}, expected ({sims.shape[0]},) to match the embeddings"
        )
    return 100.0 * spearman(sims, gold)
