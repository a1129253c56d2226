"""Evaluation of sentence embeddings: the SentEval STS protocol (NumPy only).

``evaluate_sts(encode_fn, data_dir, *, tasks=None, aggregation="all")`` scores
STS12-16, STS-B and SICK-R as Spearman x 100 of cosine similarity;
``make_stsb_evaluator`` (STS-B dev Spearman of any ``encode_fn``) serves
evaluation during training.
"""

from jaxembed.eval.datasets import (
    STS_SUBSETS,
    STS_TASKS,
    StsSubset,
    load_sts_task,
    read_sick,
    read_stsb,
)
from jaxembed.eval.dev import make_stsb_evaluator
from jaxembed.eval.stats import average_ranks, cosine_spearman, rowwise_cosine, spearman
from jaxembed.eval.sts import (
    evaluate_sts,
    format_table,
    score_task,
    score_tasks,
    undefined_reason,
)

__all__ = [
    "STS_SUBSETS",
    "STS_TASKS",
    "StsSubset",
    "average_ranks",
    "cosine_spearman",
    "evaluate_sts",
    "format_table",
    "load_sts_task",
    "make_stsb_evaluator",
    "read_sick",
    "read_stsb",
    "rowwise_cosine",
    "score_task",
    "score_tasks",
    "spearman",
    "undefined_reason",
]
