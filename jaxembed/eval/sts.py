"""The STS evaluation protocol of SentEval as SimCSE and WhitenedCSE report it.

No regressor is trained: each pair is scored by the cosine similarity of its
two sentence embeddings and the task score is Spearman x 100 against the gold
scores.

* STS12-STS16, ``aggregation="all"`` (the papers' numbers): the pairs of every
  subset of a year are concatenated and one Spearman is computed.
* ``aggregation="wmean"``: Spearman per subset, averaged with weights equal to
  the subset sizes (SimCSE Table B.3 shows this gives different numbers).
* STS Benchmark and SICK-Relatedness: the test split (one subset, so both
  aggregations agree).
* ``Avg``: the plain mean of the evaluated tasks.
* A task whose Spearman is undefined (constant gold scores, or a model whose
  similarities are all equal) scores NaN, and so does ``Avg``;
  :func:`undefined_reason` says which of the two it was.

References:
    Gao, Yao & Chen, "SimCSE", EMNLP 2021 (``evaluation.py``, Appendix B).
    Conneau & Kiela, "SentEval", LREC 2018 (``senteval/sts.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxembed.eval.datasets import STS_TASKS, StsSubset, load_sts_task, read_stsb
from jaxembed.eval.stats import cosine_spearman, rowwise_cosine, spearman

__all__ = [
    "STS_TASKS",
    "TABLE_NAMES",
    "evaluate_sts",
    "score_task",
    "score_tasks",
    "undefined_reason",
    "format_table",
    "load_sts_task",
    "read_stsb",
    "cosine_spearman",
]

AGGREGATIONS = ("all", "wmean")
# column titles of the papers' tables
TABLE_NAMES = {
    "STS12": "STS12",
    "STS13": "STS13",
    "STS14": "STS14",
    "STS15": "STS15",
    "STS16": "STS16",
    "STSBenchmark": "STS-B",
    "SICKRelatedness": "SICK-R",
    "Avg": "Avg",
}


def _encode_unique(encode_fn: Callable, subsets: Sequence[StsSubset]) -> tuple[np.ndarray, dict]:
    """Encode every distinct sentence of ``subsets`` in one call; returns (embeddings, index)."""
    index: dict[str, int] = {}
    for sub in subsets:
        for s in (*sub.s1, *sub.s2):
            index.setdefault(s, len(index))
    sentences = list(index)
    emb = np.asarray(encode_fn(sentences))
    if emb.ndim != 2 or emb.shape[0] != len(sentences):
        raise ValueError(
            f"encode_fn returned shape {emb.shape} for {len(sentences)} sentences; "
            f"expected [{len(sentences)}, D]"
        )
    return emb, index


def score_task(
    encode_fn: Callable, subsets: Sequence[StsSubset], *, aggregation: str = "all"
) -> float:
    """Spearman x 100 of cosine similarity for one task given its subsets.

    Args:
        encode_fn: ``list[str] -> array [N, D]``; called once with the task's unique sentences.
        subsets: from :func:`load_sts_task`.
        aggregation: ``"all"`` (one Spearman over the concatenated subsets) or
            ``"wmean"`` (sum_s n_s rho_s / sum_s n_s).

    Returns:
        A float in [-100, 100].
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if not subsets:
        raise ValueError("score_task needs at least one subset")
    emb, index = _encode_unique(encode_fn, subsets)
    sims, golds = [], []
    for sub in subsets:
        e1 = emb[[index[s] for s in sub.s1]]
        e2 = emb[[index[s] for s in sub.s2]]
        sims.append(rowwise_cosine(e1, e2))
        golds.append(np.asarray(sub.gold, dtype=np.float64))
    if aggregation == "all":
        return 100.0 * spearman(np.concatenate(sims), np.concatenate(golds))
    rhos = np.array([spearman(s, g) for s, g in zip(sims, golds)])
    sizes = np.array([len(g) for g in golds], dtype=np.float64)
    return 100.0 * float(np.sum(rhos * sizes) / np.sum(sizes))


def score_tasks(
    encode_fn: Callable, task_subsets: dict, *, aggregation: str = "all"
) -> dict:
    """:func:`score_task` for each ``{task: subsets}`` item, plus ``"Avg"`` (their mean)."""
    results = {
        task: score_task(encode_fn, subsets, aggregation=aggregation)
        for task, subsets in task_subsets.items()
    }
    results["Avg"] = float(np.mean(list(results.values())))
    return results


def undefined_reason(subsets: Sequence[StsSubset], *, aggregation: str = "all") -> str:
    """Why a task's Spearman came out NaN: constant gold scores, else constant similarities.

    With ``"all"`` the pooled gold scores must vary; with ``"wmean"`` every subset's.
    """
    golds = [np.asarray(s.gold) for s in subsets]
    if aggregation == "all":
        golds = [np.concatenate(golds)]
    constant = [s.name for s, g in zip(subsets, golds) if np.ptp(g) == 0]
    if constant:
        where = "" if aggregation == "all" else f" (subset {', '.join(constant)})"
        return f"its gold scores are all equal{where}"
    return "the model gives every pair the same cosine similarity"


def evaluate_sts(
    encode_fn: Callable, data_dir, *, tasks: Sequence[str] | None = None, aggregation: str = "all"
) -> dict:
    """Evaluate an encoder on STS12-16, STS-B and SICK-R (Spearman x 100 of cosine).

    Args:
        encode_fn: ``list[str] -> np.ndarray [N, D]``; called once per task with
            its unique sentences.
        data_dir: folder holding SentEval's ``downstream/`` (or ``downstream`` itself).
        tasks: subset of ``STS12 STS13 STS14 STS15 STS16 STSBenchmark SICKRelatedness``
            (a list, or one comma-separated string); default all seven.
        aggregation: ``"all"`` (papers' setting) or ``"wmean"``, applies to STS12-16.

    Returns:
        ``{task: score, ..., "Avg": mean of the task scores}``, floats x 100, in
        the order of ``tasks``; NaN where the Spearman is undefined (see
        :func:`undefined_reason`).

    Example:
        >>> enc = jaxembed.Encoder.from_pretrained("path/to/model")  # doctest: +SKIP
        >>> evaluate_sts(enc.encode, "data/senteval", tasks=["STSBenchmark"])  # doctest: +SKIP
        {'STSBenchmark': 82.0, 'Avg': 82.0}
    """
    if isinstance(tasks, str):  # "STS12,STSBenchmark"
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    tasks = list(STS_TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in STS_TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"unknown or no tasks {unknown or tasks}; expected a subset of {list(STS_TASKS)}"
        )
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    data = {task: load_sts_task(data_dir, task) for task in tasks}
    return score_tasks(encode_fn, data, aggregation=aggregation)


def format_table(results: dict) -> str:
    """The paper-style two-line table, e.g. ``STS12 ... SICK-R Avg`` over ``68.40 ... 76.25``."""
    keys = [k for k in (*STS_TASKS, "Avg") if k in results]
    names = [TABLE_NAMES[k] for k in keys]
    width = max(7, *(len(n) for n in names))
    head = " ".join(n.rjust(width) for n in names)
    row = " ".join(f"{results[k]:.2f}".rjust(width) for k in keys)
    return head + "\n" + row
