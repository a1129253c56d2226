"""STS-B dev Spearman during training: read the csv once, score any encoder.

``make_stsb_evaluator(path)`` reads the pairs of an STS Benchmark csv
(:func:`~jaxembed.eval.datasets.read_stsb`) and returns ``evaluate(encode_fn)``:
every first and second sentence is embedded in one ``encode_fn`` call and the
score is Spearman x 100 of the row-wise cosine against the gold scores
(:func:`~jaxembed.eval.stats.cosine_spearman`), the number SimCSE and
WhitenedCSE select checkpoints by. The trainer calls it every ``eval_every``
steps with the current encoder's ``encode``.

Example::

    evaluate = make_stsb_evaluator("sts-dev.csv")
    score = evaluate(lambda texts: enc.encode(texts, batch_size=128))   # e.g. 86.6
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxembed.eval.datasets import read_stsb
from jaxembed.eval.stats import cosine_spearman

EncodeFn = Callable[[Sequence[str]], np.ndarray]


def make_stsb_evaluator(path) -> Callable[[EncodeFn], float]:
    """``evaluate(encode_fn) -> Spearman x 100`` of cosine on the STS-B csv at ``path``.

    ``encode_fn(texts) -> [len(texts), D]`` embeds the ``n`` first sentences
    followed by the ``n`` second sentences (``2n`` texts, one call).
    """
    s1, s2, gold = read_stsb(path)
    n = len(s1)
    texts = list(s1) + list(s2)

    def evaluate(encode_fn: EncodeFn) -> float:
        emb = np.asarray(encode_fn(texts))
        if emb.ndim != 2 or emb.shape[0] != 2 * n:
            raise ValueError(f"encode_fn returned shape {emb.shape} for {2 * n} texts of {path}; "
                             f"expected [{2 * n}, D]")
        return float(cosine_spearman(emb[:n], emb[n:], gold))

    return evaluate
