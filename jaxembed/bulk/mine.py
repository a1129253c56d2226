"""Hard-negative mining: retrieve each query's top-k documents, guard against false
negatives, and write retrieval-training JSONL (``jaxembed mine``).

Input: a JSONL of ``{"query", "positive", "instruction"?}`` rows and an optional corpus
(one document per line; bad lines -- empty, not UTF-8 -- are skipped and counted). The
documents searched are the corpus lines then every positive not already among them,
deduplicated by exact text. Each row's query is embedded as the training reader will
see it, ``instructed(query, task)`` (:func:`jaxembed.data.sources.instructed`, task =
the row's ``"instruction"`` else ``instruction=``), through ``Encoder.encode_query``;
documents through ``Encoder.encode_document``; both data-parallel on all local devices.

For row i with query q, positive p and cosine scores s(q, d) (L2-normalised float32,
exact blocked top-k of :func:`jaxembed.align.retrieval.topk_scores`):

    C_i  = the top_k documents by s(q, .) that are not a positive of q (any row with the
           same query text), best first (ties: lower document index first)
    C_i' = C_i without its first skip_top entries
    keep d in C_i' with s(q, d) <= s(q, p) - margin            (``margin``, TopK-MarginPos)
                  or s(q, d) <= max_score_ratio * s(q, p)      (``max_score_ratio``, TopK-PercPos)
    negatives_i = the first num_negatives kept

A row left with fewer than ``num_negatives`` is counted as *short*; it is dropped (the
training reader would skip it) unless ``keep_short``. Output rows are
``{"query", "positive", "negatives": [...], "instruction"?}`` with the query as given
(not instructed; the instruction travels in its own field), which
:func:`jaxembed.data.sources.read_retrieval_jsonl` reads.

References: Moreira et al., "NV-Retriever: Improving text embedding models with effective
hard-negative mining", 2024 (TopK-MarginPos / TopK-PercPos); Zhang et al., "Qwen3
Embedding", 2025 (false-negative margin 0.1).

Example::

    stats = mine_file(Encoder.from_pretrained("model/"), "pairs.jsonl", "mined.jsonl",
                      corpus="corpus.txt", num_negatives=7, margin=0.05)
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from jaxembed.align.retrieval import l2_normalize, topk_scores
from jaxembed.bulk.inputs import stream_lines
from jaxembed.data.sources import instructed
from jaxembed.data.textfile import utf8_lines

__all__ = ["read_pairs", "read_corpus", "select_negatives", "mine_file"]


def read_pairs(path) -> list[dict]:
    """``[{"query", "positive", "instruction"?}, ...]`` of a JSONL file (empty lines
    skipped); ``ValueError`` naming ``FILE:LINE`` for any other bad line."""
    rows = []
    for lineno, line in utf8_lines(path):
        where = f"{path}:{lineno}"
        if line is None:
            raise ValueError(f"{where}: not UTF-8")
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise ValueError(f"{where}: not valid JSON") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: not a JSON object")
        for key in ("query", "positive", "instruction"):
            if key not in rec and key != "instruction":
                raise ValueError(f"{where}: no {key!r}")
            if key in rec and not isinstance(rec[key], str):
                raise ValueError(f"{where}: {key!r} is {type(rec[key]).__name__}, not a string")
        if not rec["query"].strip() or not rec["positive"].strip():
            raise ValueError(f"{where}: empty 'query' or 'positive'")
        rows.append({k: rec[k] for k in ("query", "positive", "instruction") if k in rec})
    if not rows:
        raise ValueError(f"{path}: no (query, positive) rows")
    return rows


def read_corpus(path) -> tuple[list[str], int]:
    """``(texts, bad_lines)``: one document per line, empty / non-UTF-8 lines skipped."""
    texts, bad = [], 0
    for rec in stream_lines(path):
        if rec.text is None:
            bad += 1
        else:
            texts.append(rec.text)
    return texts, bad


def select_negatives(scores: np.ndarray, ids: np.ndarray, positive_scores: np.ndarray,
                     excluded: Sequence[set], *, top_k: int, num_negatives: int,
                     skip_top: int = 0, margin: Optional[float] = None,
                     max_score_ratio: Optional[float] = None) -> list[list[int]]:
    """Negative document ids per query from its ranked candidates (module docstring).

    Args:
        scores, ids: [N, k] candidate scores and document ids, best first
            (k >= top_k + the most positives a query has, or every document).
        positive_scores: [N] s(q_i, p_i).
        excluded: N sets of document ids never to return (the query's positives).
        top_k, num_negatives, skip_top, margin, max_score_ratio: as the module docstring;
            at most one of ``margin`` and ``max_score_ratio``.

    Returns:
        N lists of at most ``num_negatives`` document ids, best first.
    """
    if margin is not None and max_score_ratio is not None:
        raise ValueError("give margin or max_score_ratio, not both")
    out = []
    for row_s, row_i, pos, skip in zip(scores, ids, positive_scores, excluded):
        cand = [(float(s), int(i)) for s, i in zip(row_s, row_i) if i >= 0 and int(i) not in skip]
        cand = cand[:top_k][skip_top:]
        if margin is not None:
            cand = [c for c in cand if c[0] <= pos - margin]
        elif max_score_ratio is not None:
            cand = [c for c in cand if c[0] <= max_score_ratio * pos]
        out.append([i for _, i in cand[:num_negatives]])
    return out


def _documents(rows, corpus_texts):
    """``(documents, index of each text)``: corpus texts then unseen positives, deduplicated."""
    index: dict[str, int] = {}
    for t in list(corpus_texts) + [r["positive"] for r in rows]:
        index.setdefault(t, len(index))
    return list(index), index


def mine_file(enc, queries, out, *, corpus=None, top_k: int = 50, num_negatives: int = 7,
              skip_top: int = 0, margin: Optional[float] = None,
              max_score_ratio: Optional[float] = None, instruction: str = "",
              keep_short: bool = False, batch_size: int = 64,
              devices: Optional[Sequence] = None,
              log: Callable[[str], None] = lambda msg: None) -> dict:
    """Mine ``queries`` (JSONL pairs) against ``corpus`` (+ the positives) into ``out``.

    Returns stats: ``rows``, ``documents``, ``corpus_bad_lines``, ``written``, ``short``
    (rows with fewer than ``num_negatives`` negatives), ``dropped`` (short rows not written).
    The output is written to ``out + ".tmp"`` and renamed, so a failed run leaves no
    half file.
    """
    if top_k < 1 or num_negatives < 1 or skip_top < 0:
        raise ValueError(f"need top_k >= 1, num_negatives >= 1, skip_top >= 0; got {top_k}, "
                         f"{num_negatives}, {skip_top}")
    rows = read_pairs(queries)
    corpus_texts, bad = read_corpus(corpus) if corpus is not None else ([], 0)
    docs, index = _documents(rows, corpus_texts)
    devices = list(jax.local_devices()) if devices is None else list(devices)
    log(f"mine: {len(rows)} rows, {len(docs)} documents ({bad} bad corpus lines skipped)")
    tasks = [instruction if r.get("instruction") is None else r["instruction"].strip()
             for r in rows]
    q_texts = [instructed(r["query"].strip(), t) for r, t in zip(rows, tasks)]
    unique_q = list(dict.fromkeys(q_texts))
    kw = dict(batch_size=batch_size, devices=devices)
    q_vec = enc.encode_query(unique_q, **kw)
    log(f"mine: embedded {len(unique_q)} queries")
    d_vec = enc.encode_document(docs, **kw)
    log(f"mine: embedded {len(docs)} documents")
    row_of = {t: i for i, t in enumerate(unique_q)}
    qn = np.asarray(l2_normalize(q_vec))[[row_of[t] for t in q_texts]]
    dn = np.asarray(l2_normalize(d_vec))
    positives: dict[str, set] = {}
    for r in rows:
        positives.setdefault(r["query"], set()).add(index[r["positive"]])
    excluded = [positives[r["query"]] for r in rows]
    k = min(len(docs), top_k + max(len(s) for s in excluded))
    mesh = jax.sharding.Mesh(np.asarray(devices), ("keys",)) if len(devices) > 1 else None
    scores, ids = topk_scores(qn, dn, k=k, mesh=mesh)
    pos_scores = np.einsum("nd,nd->n", qn, dn[[index[r["positive"]] for r in rows]])
    chosen = select_negatives(np.asarray(scores), np.asarray(ids), pos_scores, excluded,
                              top_k=top_k, num_negatives=num_negatives, skip_top=skip_top,
                              margin=margin, max_score_ratio=max_score_ratio)
    stats = dict(rows=len(rows), documents=len(docs), corpus_bad_lines=bad, written=0,
                 short=0, dropped=0)
    tmp = f"{out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r, neg in zip(rows, chosen):
            if len(neg) < num_negatives:
                stats["short"] += 1
                if not keep_short:
                    stats["dropped"] += 1
                    continue
            rec = {"query": r["query"], "positive": r["positive"],
                   "negatives": [docs[i] for i in neg]}
            if "instruction" in r or instruction:  # a row's own "" (no instruction) kept
                rec["instruction"] = r.get("instruction", instruction)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            stats["written"] += 1
    os.replace(tmp, out)
    log(f"mine: wrote {stats['written']} rows to {out}; {stats['short']} had fewer than "
        f"{num_negatives} negatives ({stats['dropped']} dropped)")
    return stats
