"""``jaxembed mine``: the negatives equal a NumPy float64 brute-force reference (positives
excluded, ranks skipped, the margin / ratio guard respected), and the file reads back with
the retrieval reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed.cli import main
from jaxembed.data.sources import instructed, read_retrieval_jsonl
from jaxembed.models.encoder import Encoder

WORDS = ("river bank money loan fish boat stone bread music light cloud train city "
         "garden paper window storm winter apple engine").split()
TASK = "find the passage"


def _texts(rng, n, lo=3, hi=9):
    return [" ".join(rng.choice(WORDS, size=rng.integers(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def mining_inputs(tmp_path_factory, module_rng):
    """Pairs (query 0 twice, with two positives; row 2 with its own instruction) and a
    corpus holding one positive and an empty line."""
    tmp = tmp_path_factory.mktemp("mine")
    queries, positives, corpus = _texts(module_rng, 5), _texts(module_rng, 6), \
        _texts(module_rng, 14)
    rows = [{"query": q, "positive": p} for q, p in zip(queries + [queries[0]], positives)]
    rows[2]["instruction"] = "other task"
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "corpus.txt").write_text("\n".join(corpus[:7] + ["", positives[1]] + corpus[7:])
                                    + "\n")
    docs = list(dict.fromkeys(corpus[:7] + [positives[1]] + corpus[7:] + positives))
    return tmp, rows, docs


def _reference(enc, rows, docs, *, top_k, num_negatives, skip_top, guard):
    """float64 brute force: every score, stable sort, then the rules of the docstring."""
    q = enc.encode([instructed(r["query"], r.get("instruction", TASK)) for r in rows])
    d = enc.encode(docs)
    q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    d = d.astype(np.float64) / np.linalg.norm(d, axis=1, keepdims=True)
    s = q @ d.T
    out, gaps = [], []
    for i, r in enumerate(rows):
        pos_ids = {docs.index(x["positive"]) for x in rows if x["query"] == r["query"]}
        pos = s[i, docs.index(r["positive"])]
        order = [j for j in np.argsort(-s[i], kind="stable") if j not in pos_ids][:top_k]
        order = order[skip_top:]
        gaps.append(pos - s[i, order])
        out.append([docs[j] for j in order if guard(s[i, j], pos)][:num_negatives])
    return out, np.concatenate(gaps)


def _mine(tmp, model, *extra):
    return main(["mine", "--model", str(model), "--queries", str(tmp / "pairs.jsonl"),
                 "--corpus", str(tmp / "corpus.txt"), "--out", str(tmp / "out.jsonl"),
                 "--instruction", TASK, "--batch-size", "4", *extra])


def test_negatives_equal_float64_reference_and_read_back(tiny_bert_dir, mining_inputs, capsys):
    tmp, rows, docs = mining_inputs
    enc = Encoder.from_pretrained(tiny_bert_dir)
    top_k, k_neg, skip = 8, 3, 1
    _, gaps = _reference(enc, rows, docs, top_k=top_k, num_negatives=k_neg, skip_top=skip,
                         guard=lambda s, p: True)
    # a margin halfway between two gaps (far from any float32 rounding) that drops some
    gaps = np.sort(gaps)
    mid = len(gaps) // 3
    margin = float(gaps[mid] + gaps[mid + 1]) / 2
    assert gaps[mid + 1] - gaps[mid] > 1e-4
    want, _ = _reference(enc, rows, docs, top_k=top_k, num_negatives=k_neg, skip_top=skip,
                         guard=lambda s, p: s <= p - margin)
    assert _mine(tmp, tiny_bert_dir, "--top-k", str(top_k), "--num-negatives", str(k_neg),
                 "--skip-top", str(skip), "--margin", repr(margin), "--keep-short") == 0
    err = capsys.readouterr().err
    got = [json.loads(line) for line in (tmp / "out.jsonl").read_text().splitlines()]
    assert [g["negatives"] for g in got] == want
    short = sum(len(w) < k_neg for w in want)
    assert 0 < short < len(rows)  # the guard bit, but not everywhere
    assert f"{short} had fewer than {k_neg} negatives (0 dropped)" in err
    for g, r in zip(got, rows):
        assert g["positive"] == r["positive"] and g["query"] == r["query"]
        assert g["instruction"] == r.get("instruction", TASK)
        assert not {x["positive"] for x in rows if x["query"] == r["query"]} & set(g["negatives"])

    # --max-score-ratio, short rows dropped; the reader reads every written row back
    ratio = 0.999  # a random BERT scores every pair of texts near 1: 0.999 splits them
    want, _ = _reference(enc, rows, docs, top_k=top_k, num_negatives=2, skip_top=0,
                         guard=lambda s, p: s <= ratio * p)
    assert _mine(tmp, tiny_bert_dir, "--top-k", str(top_k), "--num-negatives", "2",
                 "--max-score-ratio", str(ratio)) == 0
    kept = [(r, w) for r, w in zip(rows, want) if len(w) == 2]
    assert 0 < len(kept) < len(rows)  # some rows dropped as short, some written
    corpus = read_retrieval_jsonl(tmp / "out.jsonl", num_negatives=2)
    assert corpus.stats["skipped_invalid"] == 0
    assert corpus.rows == [(instructed(r["query"], r.get("instruction", TASK)), r["positive"],
                            *w) for r, w in kept]


def test_usage_errors_exit_2(tiny_bert_dir, mining_inputs, tmp_path, capsys):
    tmp, _, _ = mining_inputs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q"}\n')
    assert main(["mine", "--model", str(tiny_bert_dir), "--queries", str(bad),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}:2: no 'positive'"]
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(SystemExit) as e:  # the two guards exclude each other
        _mine(tmp, tiny_bert_dir, "--margin", "0.1", "--max-score-ratio", "0.9")
    assert e.value.code == 2
