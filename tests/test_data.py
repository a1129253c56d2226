"""Corpus readers (bad lines counted, never fatal) and the deterministic, resumable loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxembed.data.pipeline import BatchLoader, batch_rows, epoch_permutation
from jaxembed.data.sources import read_lines, read_pairs_jsonl, read_source, read_triplets, snli_triplets


def _words(rng, n):
    vocab = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    return [" ".join(rng.choice(vocab, size=rng.integers(1, 6))) for _ in range(n)]


def test_read_lines_skips_empty_and_invalid_and_truncates(tmp_path, rng):
    good = _words(rng, 20)
    long_line = "x" * 50
    raw = b""
    expected = []
    n_empty = n_bad = 0
    for i, s in enumerate(good):
        raw += s.encode() + b"\n"
        expected.append(s)
        if i % 5 == 1:
            raw += b"   \n"
            n_empty += 1
        if i % 7 == 2:
            raw += b"caf\xe9 \xff\xfe broken\n"  # latin-1 bytes: not UTF-8
            n_bad += 1
    raw += (long_line + "\n").encode()
    raw += "naïve café\n".encode()  # valid UTF-8 with non-ASCII stays
    path = tmp_path / "c.txt"
    path.write_bytes(raw)
    c = read_lines(path, max_chars=30)
    assert [r[0] for r in c.rows] == expected + ["x" * 30, "naïve café"]
    assert c.stats == {"read": len(good) + n_empty + n_bad + 2, "kept": len(expected) + 2,
                       "skipped_empty": n_empty, "skipped_invalid": n_bad, "truncated": 1}


def test_read_triplets_csv_and_tsv(tmp_path, rng):
    rows = [tuple(_words(rng, 3)) for _ in range(6)]
    csv_text = "sent0,sent1,hard_neg\n" + "".join(f'"{a}","{b}","{c}"\n' for a, b, c in rows)
    csv_text += '"only one",\n'          # too few fields
    csv_text += '"a","","c"\n'            # empty positive
    (tmp_path / "t.csv").write_text(csv_text)
    c = read_source(str(tmp_path / "t.csv"))
    assert c.columns == ("sent0", "sent1", "hard_neg") and c.rows == rows
    assert c.stats["skipped_invalid"] == 1 and c.stats["skipped_empty"] == 1
    (tmp_path / "t.tsv").write_text("sent1\tsent0\n" + "".join(f"{b}\t{a}\n" for a, b, _ in rows))
    t = read_triplets(tmp_path / "t.tsv")
    assert t.columns == ("sent0", "sent1") and t.rows == [(a, b) for a, b, _ in rows]


def test_read_pairs_jsonl(tmp_path, rng):
    recs = [{"sent0": a, "sent1": b, "teacher": float(rng.normal()), "label": float(rng.integers(0, 2))}
            for a, b in zip(_words(rng, 5), _words(rng, 5))]
    lines = [json.dumps(r) for r in recs] + ["{not json", json.dumps({"sent0": "a", "sent1": "b"}), ""]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    c = read_pairs_jsonl(tmp_path / "p.jsonl")
    assert c.columns == ("sent0", "sent1", "teacher_0", "label")
    assert c.rows == [(r["sent0"], r["sent1"], r["teacher"], r["label"]) for r in recs]
    assert c.stats["skipped_invalid"] == 2 and c.stats["skipped_empty"] == 1


def test_snli_triplets_pair_entailment_with_contradiction(tmp_path):
    s1 = ["p1", "p1", "p1", "p2", "p2", "p3", "p3", "p3"]
    s2 = ["e1", "n1", "c1", "e2", "n2", "c3", "e3", "c3b"]
    lab = ["entailment", "neutral", "contradiction", "entailment", "neutral",
           "contradiction", "entailment", "contradiction"]
    for name, col in (("s1", s1), ("s2", s2), ("labels", lab)):
        (tmp_path / f"{name}.dev").write_text("\n".join(col) + "\n")
    c = snli_triplets(tmp_path, "dev")
    assert c.rows == [("p1", "e1", "c1"), ("p3", "e3", "c3")]  # p2 has no contradiction
    assert read_source(f"snli:{tmp_path}:dev").rows == c.rows


def test_snli_real_data(shared_data):
    c = snli_triplets(shared_data / "corpora" / "snli_senteval", "dev")
    assert c.num_text_columns == 3 and 2500 < len(c) < 9842
    labels = (shared_data / "corpora" / "snli_senteval" / "labels.dev").read_text().split("\n")
    s2 = (shared_data / "corpora" / "snli_senteval" / "s2.dev").read_text().split("\n")
    gold = {h.strip() for h, lab in zip(s2, labels) if lab == "entailment"}
    assert all(r[1] in gold for r in c.rows[:200])


def test_epoch_permutation_and_process_shards(rng):
    n, bs = int(rng.integers(50, 90)), 8
    seed = int(rng.integers(1 << 30))
    per_epoch = n // bs
    whole = [batch_rows(n, b, batch_size=bs, seed=seed) for b in range(per_epoch)]
    flat = np.concatenate(whole)
    assert len(set(flat.tolist())) == len(flat)  # no row twice within an epoch
    assert np.array_equal(flat, epoch_permutation(n, seed=seed, epoch=0)[:per_epoch * bs])
    assert not np.array_equal(batch_rows(n, per_epoch, batch_size=bs, seed=seed), whole[0])  # new epoch order
    halves = [batch_rows(n, 3, batch_size=bs, seed=seed, process_index=p, process_count=2) for p in (0, 1)]
    assert np.array_equal(np.concatenate(halves), whole[3])


def test_loader_resumes_at_exact_batch(tmp_path, rng):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(f"s{i} " + w for i, w in enumerate(_words(rng, 37))) + "\n")
    corpus = read_lines(path)

    def tokenize(texts):  # a stand-in tokenizer: ids = hash of words, fixed length 4
        ids = np.array([[1 + (hash(t) % 97), len(t), 0, 0] for t in texts], np.int32)
        return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}

    seed = int(rng.integers(1000))
    with BatchLoader(corpus, tokenize, batch_size=6, seed=seed, prefetch=2) as full:
        ref = [next(full)["input_ids"] for _ in range(14)]  # crosses two epoch boundaries
        assert full.position == 14
    with BatchLoader(corpus, tokenize, batch_size=6, seed=seed, start=9) as resumed:
        again = [next(resumed)["input_ids"] for _ in range(5)]
    for a, b in zip(ref[9:], again):
        assert np.array_equal(a, b)
    assert ref[0].shape == (6, 1, 4)
    assert not all(np.array_equal(ref[i], ref[i + 1]) for i in range(13))


def test_loader_surfaces_tokenizer_errors(tmp_path):
    (tmp_path / "c.txt").write_text("a\nb\nc\nd\n")

    def broken(texts):
        raise RuntimeError("tokenizer exploded")

    with BatchLoader(read_lines(tmp_path / "c.txt"), broken, batch_size=2, seed=0) as loader:
        with pytest.raises(RuntimeError, match="exploded"):
            next(loader)


def test_tfds_source_does_not_import_sources():
    """No import cycle: both readers build on ``corpus``, neither on the other."""
    import subprocess
    import sys

    code = ("import sys, jaxembed.data.tfds_source; "
            "assert 'jaxembed.data.sources' not in sys.modules, 'tfds_source imports sources'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clean_texts_returns_what_it_did():
    from jaxembed.data.corpus import clean_texts

    assert clean_texts(["  ab ", "xyz"], max_chars=2) == (["ab", "xy"], True)
    assert clean_texts(["ab", "c"], max_chars=2) == (["ab", "c"], False)
    # an empty text skips the record, which is then not counted as truncated
    assert clean_texts(["a" * 9, "  "], max_chars=2) == (None, False)


def test_skipped_record_is_never_also_truncated(tmp_path):
    """A record with an over-long text and an empty one is skipped as empty only."""
    long = "x" * 40
    (tmp_path / "t.csv").write_text(f"sent0,sent1\n{long},\n{long},ok\n")
    for name, col in (("s1", [long, long, "p"]), ("s2", ["  ", "e", "c"]),
                      ("labels", ["entailment", "entailment", "contradiction"])):
        (tmp_path / f"{name}.dev").write_text("\n".join(col) + "\n")
    for c in (read_triplets(tmp_path / "t.csv", max_chars=10),
              snli_triplets(tmp_path, "dev", max_chars=10)):
        assert set(c.stats) == {"read", "kept", "skipped_empty", "skipped_invalid", "truncated"}
        assert c.stats["skipped_empty"] == 1 and c.stats["truncated"] == 1, c.stats
