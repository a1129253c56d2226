"""Retrieval JSONL rows ``{query, positive, negatives, instruction?}``: K hard negatives per
row, query-only instructions, bad rows by FILE:LINE, and batches [B, 2 + K, L] that are
deterministic and resume where they stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed.data.pipeline import BatchLoader
from jaxembed.data.sources import instructed, read_retrieval_jsonl, read_source


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def test_rows_keep_k_negatives_and_instruct_only_queries(tmp_path):
    path = _write(tmp_path / "r.jsonl", [
        {"query": " what is jax ", "positive": "JAX is a library", "instruction": "find docs",
         "negatives": ["a cat", "a dog", "unused third"]},
        {"query": "q2", "positive": "p2", "negatives": ["n1", "n2"]},
        {"query": "q3", "positive": "p3", "negatives": ["m1", "m2"], "instruction": ""},
    ])
    corpus = read_retrieval_jsonl(path, num_negatives=2, query_instruction="default task")
    assert corpus.columns == ("query", "positive", "negative_0", "negative_1")
    assert corpus.num_text_columns == 4
    assert corpus.rows == [
        ("Instruct: find docs\nQuery:what is jax", "JAX is a library", "a cat", "a dog"),
        ("Instruct: default task\nQuery:q2", "p2", "n1", "n2"),   # the dataset's task
        ("q3", "p3", "m1", "m2"),                                 # "" turns it off
    ]
    # another template, and K = 0 (pairs: negatives not needed)
    pairs = read_source(str(path), num_negatives=0, query_template="<instruct>{task}\n<query>")
    assert pairs.columns == ("query", "positive")
    assert pairs.rows[0] == ("<instruct>find docs\n<query>what is jax", "JAX is a library")
    assert instructed("q", "") == "q"


def test_document_ids_number_distinct_document_texts(tmp_path):
    path = _write(tmp_path / "ids.jsonl", [
        {"query": "q0", "positive": "shared", "negatives": ["a", "b"]},
        {"query": "shared", "positive": "c", "negatives": ["shared", "a"]},   # queries get none
        {"query": "q2", "positive": " a ", "negatives": ["d", "c"]},          # stripped first
    ])
    corpus = read_retrieval_jsonl(path, num_negatives=2, document_ids=True)
    assert corpus.columns[4:] == ("doc_id_0", "doc_id_1", "doc_id_2")
    assert corpus.num_text_columns == 4
    assert [r[4:] for r in corpus.rows] == [(0.0, 1.0, 2.0), (3.0, 0.0, 1.0), (1.0, 4.0, 3.0)]
    texts = {t: i for r in corpus.rows for t, i in zip(r[1:4], r[4:])}
    assert len(set(texts.values())) == len(texts)     # one id per distinct text, exactly


def test_bad_rows_are_counted_by_file_and_line(tmp_path):
    good = {"query": "q", "positive": "p", "negatives": ["n"]}
    path = _write(tmp_path / "bad.jsonl", [good] * 6 + [
        {"query": "q", "positive": "p", "negatives": []},          # line 7: too few
        {"query": "q", "positive": "p", "negatives": ["n", 3]},    # line 8: not a string
        {"query": "q", "negatives": ["n"]},                        # line 9: no positive
        "not json",                                                # line 10
        {"query": "q", "positive": "  ", "negatives": ["n"]},      # line 11: empty text
        {"query": "q", "positive": "p", "negatives": "n"},         # line 12: not a list
    ])
    with pytest.warns(UserWarning, match="skipped 5 invalid records"):
        corpus = read_retrieval_jsonl(path, num_negatives=1)
    assert corpus.stats == dict(read=12, kept=6, skipped_empty=1, skipped_invalid=5, truncated=0)
    assert corpus.problems[0] == f"{path}:7: 0 negatives, fewer than num_negatives=1"
    where = [p.split(": ", 1)[0] for p in corpus.problems]
    assert where == [f"{path}:{n}" for n in (7, 8, 9, 10, 12)]
    assert "'negatives' holds int 3" in corpus.problems[1] and "no 'positive'" in corpus.problems[2]
    with pytest.raises(ValueError, match=r"records are invalid.*wrong file or format"):
        read_retrieval_jsonl(path, num_negatives=2)   # 11 of 12 rows have one negative


def test_auto_format_tells_retrieval_rows_from_dse_pairs(tmp_path):
    rows = _write(tmp_path / "r.jsonl", ["", {"query": "q", "positive": "p", "negatives": ["n"]}])
    pairs = _write(tmp_path / "p.jsonl", [{"sent0": "a", "sent1": "b", "teacher": 1.0}])
    assert read_source(str(rows)).columns == ("query", "positive", "negative_0")
    assert read_source(str(pairs)).columns == ("sent0", "sent1", "teacher_0")


def _tokenize(texts):
    """Characters as ids, padded to 8: enough to tell texts apart without a tokenizer."""
    ids = np.zeros((len(texts), 8), np.int32)
    for i, t in enumerate(texts):
        codes = [ord(c) % 1000 for c in t[-8:]]
        ids[i, :len(codes)] = codes
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def test_batches_are_deterministic_and_resume(tmp_path, rng):
    records = [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}a", f"n{i}b", f"n{i}c"]}
               for i in range(40)]
    corpus = read_retrieval_jsonl(_write(tmp_path / "r.jsonl", records), num_negatives=3)
    seed = int(rng.integers(1 << 30))
    with BatchLoader(corpus, _tokenize, batch_size=8, seed=seed) as loader:
        run = [next(loader) for _ in range(7)]   # crosses the epoch boundary (5 per epoch)
    assert run[0]["input_ids"].shape == (8, 5, 8)
    # each row's columns stay together: query i, positive i, negatives i
    q = run[0]["input_ids"][:, 0, :]
    row = [int("".join(chr(c) for c in r if c)[1:]) for r in q]
    negs = ["".join(chr(c) for c in r if c) for r in run[0]["input_ids"][:, 4, :]]
    assert negs == [f"n{i}c" for i in row]
    with BatchLoader(corpus, _tokenize, batch_size=8, seed=seed, start=4) as resumed:
        for b in range(4, 7):
            np.testing.assert_array_equal(next(resumed)["input_ids"], run[b]["input_ids"])
        assert resumed.position == 7
