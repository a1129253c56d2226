"""STS protocol: loaders against the real SentEval data, Spearman against scipy,
"all" vs "wmean" aggregation, and the ``eval-sts`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np
import pytest
import scipy.stats

from jaxembed.eval import (
    STS_TASKS,
    StsSubset,
    average_ranks,
    cosine_spearman,
    evaluate_sts,
    format_table,
    load_sts_task,
    make_stsb_evaluator,
    read_stsb,
    rowwise_cosine,
    score_task,
    spearman,
)

EXPECTED_PAIRS = {
    "STS12": 3108,
    "STS13": 1500,
    "STS14": 3750,
    "STS15": 3000,
    "STS16": 1186,
    "STSBenchmark": 1379,
    "SICKRelatedness": 4927,
}


class BagOfWords:
    """A random bag-of-words embedder: sum of per-word Gaussian vectors; records its calls."""

    def __init__(self, rng, dim=16):
        self.rng, self.dim, self.table, self.calls = rng, dim, {}, []

    def vector(self, word):
        if word not in self.table:
            self.table[word] = self.rng.normal(size=self.dim)
        return self.table[word]

    def __call__(self, sentences):
        self.calls.append(list(sentences))
        # sorted words: equal bags give bit-identical vectors, so their ties are exact
        return np.stack(
            [
                sum((self.vector(w) for w in sorted(s.split())), np.zeros(self.dim))
                for s in sentences
            ]
        )


@pytest.mark.parametrize("sub", ["", "downstream"])
def test_loader_counts_real_data(shared_data, sub):
    root = shared_data / "senteval" / sub
    for task, n in EXPECTED_PAIRS.items():
        subsets = load_sts_task(root, task)
        assert sum(len(s.gold) for s in subsets) == n, task
        for s in subsets:
            assert len(s.s1) == len(s.s2) == len(s.gold)
            assert np.isfinite(s.gold).all() and s.gold.min() >= 0.0 and s.gold.max() <= 5.0
            assert all(x == " ".join(x.split()) for x in s.s1[:50])


def test_loader_subsets_and_blank_gold_lines(shared_data):
    names = [s.name for s in load_sts_task(shared_data / "senteval", "STS13")]
    assert names == ["FNWN", "headlines", "OnWN"]  # no SMT
    # STS16 answer-answer: 1572 lines, blank gold lines dropped
    folder = shared_data / "senteval/downstream/STS/STS16-en-test"
    lines = (folder / "STS.gs.answer-answer.txt").read_text(encoding="utf-8").splitlines()
    scored = sum(1 for line in lines if line.strip())
    assert len(lines) == 1572 and scored < len(lines)
    aa = load_sts_task(shared_data / "senteval", "STS16")[0]
    assert aa.name == "answer-answer" and len(aa.gold) == scored


def test_raw_releases_match_senteval_gold(shared_data):
    """The original cased releases (STS2016.* names, extra STS-B columns) give the same gold."""
    for task in ("STS12", "STS15", "STS16"):
        raw = load_sts_task(shared_data / "sts_raw", task)
        proc = load_sts_task(shared_data / "senteval", task)
        for a, b in zip(raw, proc):
            np.testing.assert_array_equal(a.gold, b.gold)
    s1r, s2r, yr = read_stsb(shared_data / "sts_raw/STSBenchmark/sts-test.csv")
    s1p, s2p, yp = read_stsb(shared_data / "senteval/downstream/STS/STSBenchmark/sts-test.csv")
    assert len(s1r) == len(s2r) == 1379
    np.testing.assert_array_equal(yr, yp)
    assert s1r[0] == "A girl is styling her hair." and s1p[0] == "a girl is styling her hair ."


def test_spearman_matches_scipy_with_ties(rng):
    for n in (2, 7, 300):
        x = rng.integers(0, 5, size=n).astype(np.float64)  # heavy ties
        y = rng.normal(size=n).round(1)
        if np.ptp(x) == 0:
            x[0] += 1.0
        np.testing.assert_array_equal(average_ranks(x), scipy.stats.rankdata(x))
        np.testing.assert_allclose(
            spearman(x, y), scipy.stats.spearmanr(x, y)[0], rtol=0, atol=1e-12
        )
    assert spearman(np.arange(5.0), -(np.arange(5.0) ** 3)) == pytest.approx(-1.0, abs=1e-15)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))


def test_cosine_spearman_matches_scipy(rng):
    e1 = rng.normal(size=(200, 8)).astype(np.float32)
    e2 = (e1 + rng.normal(size=(200, 8))).astype(np.float32)
    gold = rng.integers(0, 6, size=200).astype(np.float64)
    cos = np.array(
        [
            1 - scipy.spatial.distance.cosine(a, b)
            for a, b in zip(e1.astype(np.float64), e2.astype(np.float64))
        ]
    )
    np.testing.assert_allclose(rowwise_cosine(e1, e2), cos, rtol=0, atol=1e-12)
    expected = 100 * scipy.stats.spearmanr(cos, gold)[0]
    assert cosine_spearman(e1, e2, gold) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="gold has shape"):
        cosine_spearman(e1, e2, gold[:-1])


def _synthetic_task(rng):
    """Two subsets whose gold scales differ: 'all' and 'wmean' then disagree."""
    subsets = []
    for name, n, offset in (("a", 40, 0.0), ("b", 25, 3.0)):
        s1 = [f"w{rng.integers(0, 30)} w{rng.integers(0, 30)} {name}" for _ in range(n)]
        s2 = [f"w{rng.integers(0, 30)} w{rng.integers(0, 30)} {name}" for _ in range(n)]
        subsets.append(StsSubset(name, s1, s2, rng.uniform(0, 2, size=n) + offset))
    return subsets


def test_all_vs_wmean_semantics(rng):
    subsets = _synthetic_task(rng)
    enc = BagOfWords(rng)
    got_all = score_task(enc, subsets, aggregation="all")
    got_wmean = score_task(enc, subsets, aggregation="wmean")
    # one encode call per task, on the unique sentences
    assert len(enc.calls) == 2
    unique = {s for sub in subsets for s in (*sub.s1, *sub.s2)}
    assert sorted(enc.calls[0]) == sorted(unique) and len(enc.calls[0]) == len(unique)

    def cos(sub):
        e1, e2 = enc(sub.s1), enc(sub.s2)
        return [1 - scipy.spatial.distance.cosine(a, b) for a, b in zip(e1, e2)]

    sims = [cos(s) for s in subsets]
    ref_all = (
        100
        * scipy.stats.spearmanr(np.concatenate(sims), np.concatenate([s.gold for s in subsets]))[0]
    )
    rhos = [scipy.stats.spearmanr(c, s.gold)[0] for c, s in zip(sims, subsets)]
    ref_wmean = 100 * (40 * rhos[0] + 25 * rhos[1]) / 65
    assert got_all == pytest.approx(ref_all, abs=1e-9)
    assert got_wmean == pytest.approx(ref_wmean, abs=1e-9)
    assert abs(got_all - got_wmean) > 1e-3
    with pytest.raises(ValueError, match="aggregation"):
        score_task(enc, subsets, aggregation="mean")


def test_evaluate_sts_real_data(shared_data, rng):
    enc = BagOfWords(rng, dim=32)
    res = evaluate_sts(enc, shared_data / "senteval", tasks=["STS13", "STSBenchmark"])
    assert list(res) == ["STS13", "STSBenchmark", "Avg"]
    assert len(enc.calls) == 2  # one call per task
    # independent reference for STS-B: scipy on per-pair cosines
    s1, s2, gold = read_stsb(shared_data / "senteval/downstream/STS/STSBenchmark/sts-test.csv")
    e1, e2 = enc(s1), enc(s2)
    # pairs with the same bag of words must tie exactly at cos = 1
    assert sum(sorted(a.split()) == sorted(b.split()) for a, b in zip(s1, s2)) > 0
    cos = [np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)) for a, b in zip(e1, e2)]
    assert res["STSBenchmark"] == pytest.approx(100 * scipy.stats.spearmanr(cos, gold)[0], abs=1e-9)
    assert res["Avg"] == pytest.approx((res["STS13"] + res["STSBenchmark"]) / 2)
    assert 10 < res["STSBenchmark"] < 90  # bag of words correlates, but not perfectly
    table = format_table(res)
    assert table.splitlines()[0].split() == ["STS13", "STS-B", "Avg"]
    assert (
        evaluate_sts(enc, shared_data / "senteval", tasks="STSBenchmark")["STSBenchmark"]
        == res["STSBenchmark"]
    )
    with pytest.raises(ValueError, match="unknown"):
        evaluate_sts(enc, shared_data / "senteval", tasks=["STS17"])


def test_subset_file_errors(tmp_path):
    (tmp_path / "in.txt").write_text("a b\tc d\ne f\tg h\n", encoding="utf-8")
    (tmp_path / "gs.txt").write_text("1.0\n", encoding="utf-8")
    from jaxembed.eval.datasets import read_sts_subset

    with pytest.raises(ValueError, match="must align"):
        read_sts_subset(tmp_path / "in.txt", tmp_path / "gs.txt")
    (tmp_path / "gs.txt").write_text("\n2.5\n", encoding="utf-8")
    s1, s2, gold = read_sts_subset(tmp_path / "in.txt", tmp_path / "gs.txt")
    assert s1 == ["e f"] and s2 == ["g h"] and gold.tolist() == [2.5]
    with pytest.raises(FileNotFoundError):
        load_sts_task(tmp_path, "STS12")


def test_cli_json_with_stub_encoder(shared_data, rng, monkeypatch, capsys):
    """The CLI against the Encoder contract (a stub module standing in for the real encoder)."""
    from jaxembed.eval import cli

    enc = BagOfWords(rng)
    seen = {}

    class StubEncoder:
        @classmethod
        def from_pretrained(cls, path, *, pooling=None, **kw):
            seen.update(path=path, pooling=pooling)
            return cls()

        def encode(self, texts, *, batch_size=64, max_length=None, progress=False):
            seen["batch_size"] = batch_size
            return enc(texts).astype(np.float32)

    stub = types.ModuleType("jaxembed.models.encoder")
    stub.Encoder = StubEncoder
    monkeypatch.setitem(sys.modules, "jaxembed.models.encoder", stub)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    rc = cli.run(
        parser.parse_args(
            [
                "--model",
                "some/model",
                "--data-dir",
                str(shared_data / "senteval"),
                "--pooling",
                "mean",
                "--tasks",
                "STSBenchmark,SICKRelatedness",
                "--batch-size",
                "7",
                "--json",
            ]
        )
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert seen == {"path": "some/model", "pooling": "mean", "batch_size": 7}
    payload = json.loads(out[-1])
    assert set(payload) == {"STSBenchmark", "SICKRelatedness", "Avg"}
    assert out[0].split() == ["STS-B", "SICK-R", "Avg"]
    assert payload["Avg"] == pytest.approx(
        (payload["STSBenchmark"] + payload["SICKRelatedness"]) / 2
    )
    assert set(STS_TASKS) >= set(payload) - {"Avg"}


def test_cli_json_with_tiny_bert_matches_torch(shared_data, tiny_bert_dir, capsys):
    """``eval-sts`` on a real (random tiny) BERT folder; reference: PyTorch mean pooling + scipy."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxembed.eval import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    rc = cli.run(
        parser.parse_args(
            [
                "--model",
                str(tiny_bert_dir),
                "--data-dir",
                str(shared_data / "senteval"),
                "--pooling",
                "mean",
                "--tasks",
                "STSBenchmark",
                "--batch-size",
                "256",
                "--json",
            ]
        )
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    payload = json.loads(out[-1])
    assert set(payload) == {"STSBenchmark", "Avg"} and payload["Avg"] == payload["STSBenchmark"]

    s1, s2, gold = read_stsb(shared_data / "senteval/downstream/STS/STSBenchmark/sts-test.csv")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = transformers.BertModel.from_pretrained(tiny_bert_dir).eval()

    def encode(texts):
        with torch.no_grad():
            b = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**b).last_hidden_state.double()
            m = b["attention_mask"].unsqueeze(-1).double()
            return ((h * m).sum(1) / m.sum(1)).numpy()

    e1, e2 = encode(s1), encode(s2)
    cos = np.einsum("nd,nd->n", e1, e2) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    # float32 (jax) vs float64-pooled (torch) embeddings: a near-tied pair of cosines may
    # swap ranks, moving 100 rho by ~1e-4; observed difference ~6e-6
    assert payload["STSBenchmark"] == pytest.approx(
        100 * scipy.stats.spearmanr(cos, gold)[0], abs=1e-3
    )


# ------------------------------------------------- bad input: FILE:LINE errors, valid JSON


def _write_stsb(folder, scores, sentences=None):
    """A minimal STS-B test split (tab-separated, score in column 5) under folder/STSBenchmark."""
    d = folder / "STSBenchmark"
    d.mkdir(parents=True, exist_ok=True)
    sentences = sentences or [(f"a cat number {i}", f"the dog {i % 3}") for i in range(len(scores))]
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{y}\t{a}\t{b}"
             for i, (y, (a, b)) in enumerate(zip(scores, sentences))]
    (d / "sts-test.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d / "sts-test.csv"


def test_gold_scores_must_be_finite_numbers_named_by_file_and_line(tmp_path):
    from jaxembed.eval.datasets import read_sick, read_sts_subset

    (tmp_path / "in.txt").write_text("a b\tc d\ne f\tg h\ni\tj\n", encoding="utf-8")
    for bad, what in (("nan", "not a finite number"), ("inf", "not a finite number"),
                      ("4,5", "not a number"), ("high", "not a number")):
        (tmp_path / "gs.txt").write_text(f"1.0\n{bad}\n2\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"gs\.txt:2: gold score '{bad}' is {what}"):
            read_sts_subset(tmp_path / "in.txt", tmp_path / "gs.txt")
        path = _write_stsb(tmp_path, ["1.0", "2.0", bad])
        with pytest.raises(ValueError, match=rf"sts-test\.csv:3: gold score '{bad}' is {what}"):
            read_stsb(path)
        (tmp_path / "sick.txt").write_text(
            f"pair_ID\tsentence_A\tsentence_B\trelatedness_score\n1\ta\tb\t{bad}\n")
        with pytest.raises(ValueError, match=rf"sick\.txt:2: gold score '{bad}' is {what}"):
            read_sick(tmp_path / "sick.txt")


def test_non_utf8_sts_files_named_by_file_and_line(tmp_path):
    from jaxembed.data.textfile import NotUtf8Error
    from jaxembed.eval.datasets import read_sts_subset

    (tmp_path / "in.txt").write_bytes("a b\tc d\ncaf\xe9\tg h\n".encode("latin-1"))
    (tmp_path / "gs.txt").write_text("1.0\n2.0\n", encoding="utf-8")
    with pytest.raises(NotUtf8Error, match=r"in\.txt:2 is not UTF-8 .*byte 0xe9.*iconv"):
        read_sts_subset(tmp_path / "in.txt", tmp_path / "gs.txt")
    path = _write_stsb(tmp_path, ["1.0", "2.0"])
    path.write_bytes(path.read_text().encode("utf-16"))
    with pytest.raises(NotUtf8Error, match="UTF-16LE byte-order mark"):
        read_stsb(path)


def _stub_encoder(monkeypatch, rng, *, constant=False):
    enc, loaded = BagOfWords(rng), []

    class StubEncoder:
        @classmethod
        def from_pretrained(cls, path, *, pooling=None, **kw):
            loaded.append(path)
            return cls()

        def encode(self, texts, *, batch_size=64, max_length=None, progress=False):
            out = enc(texts).astype(np.float32)
            return np.ones_like(out) if constant else out

    stub = types.ModuleType("jaxembed.models.encoder")
    stub.Encoder = StubEncoder
    monkeypatch.setitem(sys.modules, "jaxembed.models.encoder", stub)
    return loaded


def _run_cli(argv):
    from jaxembed.eval import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_undefined_spearman_is_null_in_json_and_fails(tmp_path, rng, monkeypatch, capsys):
    """Constant gold (or constant similarities): valid JSON with null, a reason, exit status 1."""
    _stub_encoder(monkeypatch, rng)
    _write_stsb(tmp_path, ["2.5"] * 12)
    argv = ["--model", "m", "--data-dir", str(tmp_path), "--tasks", "STSBenchmark", "--json"]
    assert _run_cli(argv) == 1
    out, err = capsys.readouterr()
    payload = json.loads(out.strip().splitlines()[-1])  # the standard library parses it ...
    assert payload == {"STSBenchmark": None, "Avg": None}
    assert "NaN" not in out.splitlines()[-1]  # ... and so does any strict JSON parser
    assert "STSBenchmark Spearman is undefined: its gold scores are all equal" in err

    _stub_encoder(monkeypatch, rng, constant=True)
    _write_stsb(tmp_path, [str(i % 5) for i in range(12)])
    assert _run_cli(argv) == 1
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"STSBenchmark": None, "Avg": None}
    assert "the model gives every pair the same cosine similarity" in err


def test_cli_bad_data_fails_before_loading_the_model(tmp_path, rng, monkeypatch, capsys):
    loaded = _stub_encoder(monkeypatch, rng)
    _write_stsb(tmp_path, ["1", "2", "x3", "4"])
    argv = ["--model", "m", "--data-dir", str(tmp_path), "--tasks", "STSBenchmark", "--json"]
    assert _run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "sts-test.csv:3: gold score 'x3' is not a number" in err and loaded == []
    assert _run_cli(["--model", "m", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "none of these folders exists" in capsys.readouterr().err and loaded == []


@pytest.mark.parametrize("flag, value", [("--max-length", "-3"), ("--max-length", "0"),
                                         ("--batch-size", "0"), ("--batch-size", "two")])
def test_cli_rejects_bad_numbers_with_argparse_messages(flag, value, capsys):
    from jaxembed.eval import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--model", "m", "--data-dir", "d", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be an integer" in capsys.readouterr().err


def test_stsb_dev_evaluator_scores_any_encode_fn(tmp_path, rng):
    """``make_stsb_evaluator``: one ``encode_fn`` call on the 2n texts, Spearman x 100 of the
    row-wise cosine against the gold scores (scipy on float64 cosines)."""
    n = 12
    gold = np.round(rng.uniform(0, 5, size=n), 2)
    lines = [f"genre\tfile\tyear\t{i:04d}\t{g}\tfirst {i}\tsecond {i}" for i, g in enumerate(gold)]
    path = tmp_path / "sts-dev.csv"
    path.write_text("\n".join(lines) + "\n")
    table = {f"{side} {i}": rng.normal(size=8) for i in range(n) for side in ("first", "second")}
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.stack([table[t] for t in texts]).astype(np.float32)

    evaluate = make_stsb_evaluator(path)
    score = evaluate(encode)
    a, b = (np.stack([table[f"{s} {i}"] for i in range(n)]) for s in ("first", "second"))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(score, 100 * scipy.stats.spearmanr(cos, gold)[0], atol=1e-4)
    assert calls == [[f"first {i}" for i in range(n)] + [f"second {i}" for i in range(n)]]
    with pytest.raises(ValueError, match=r"sts-dev.csv.*expected \[24, D\]"):
        evaluate(lambda texts: np.zeros((len(texts) - 1, 8)))
