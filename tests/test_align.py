"""Alignment: Procrustes against float64 NumPy, blockwise/sharded retrieval against
dense references, BLI on synthetic spaces over the real en-si dictionary words,
CSLS vs NN under hubness, refinement from a 5% seed, readers and the CLI."""

from __future__ import annotations

import argparse
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxembed.align import (
    apply_map,
    bli_precision,
    csls_topk,
    dictionary_ids,
    evaluate_bli,
    gold_sets,
    induce_dictionary,
    mean_topk_similarity,
    nn_topk,
    normalize_embeddings,
    procrustes,
    read_dictionary,
    read_vec,
    refine,
    topk_scores,
    write_vec,
)

BLI = "bli/en-si"
TRAIN = "wiki_en-si_trainset_1500_5000_200k.txt"
TEST = "wiki_en-si_testset_1500_5000_200k.txt"


def random_rotation(rng, d):
    return scipy.stats.special_ortho_group.rvs(d, random_state=int(rng.integers(2**31))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def en_si(shared_data):
    """Real en-si dictionaries and a one-to-one matching of their words (greedy, file order)."""
    train = read_dictionary(shared_data / BLI / TRAIN)
    test = read_dictionary(shared_data / BLI / TEST)
    used_s, used_t, match = set(), set(), {}
    for s, t in train + test:
        if s not in used_s and t not in used_t:
            used_s.add(s)
            used_t.add(t)
            match[s] = t
    return train, test, match


def synthetic_spaces(rng, match, *, d, sigma):
    """Source vectors per English word; target = rotation of the translation's source + noise.

    Returns (en_words, X, si_words, Y, R); both vocabularies in random ("frequency") order.
    """
    en = list(match)
    rng.shuffle(en)
    x = rng.normal(size=(len(en), d)).astype(np.float32)
    r = random_rotation(rng, d)
    y_aligned = x @ r + sigma * rng.normal(size=x.shape).astype(np.float32)
    perm = rng.permutation(len(en))  # target row of en[i] is perm[i]
    y = np.empty_like(y_aligned)
    y[perm] = y_aligned
    si = [None] * len(en)
    for i, p in enumerate(perm):
        si[p] = match[en[i]]
    return en, x, si, y, r


# ----------------------------------------------------------------- Procrustes


def test_procrustes_equals_float64_svd_and_is_orthogonal(rng):
    d, p = 24, 300
    x = rng.normal(size=(p, d)).astype(np.float32)
    r = random_rotation(rng, d)
    y = x @ r + 0.3 * rng.normal(size=(p, d)).astype(np.float32)
    w = np.asarray(procrustes(x, y))
    assert w.dtype == np.float32 and w.shape == (d, d)
    u, _, vt = np.linalg.svd(x.astype(np.float64).T @ y.astype(np.float64))
    np.testing.assert_allclose(w, u @ vt, rtol=0, atol=1e-5)
    np.testing.assert_allclose(w.T @ w, np.eye(d), rtol=0, atol=1e-5)
    # optimal among orthogonal maps: beats the true rotation on the training pairs
    assert np.linalg.norm(x @ w - y) <= np.linalg.norm(x @ r - y) + 1e-3
    # bf16 inputs: the SVD still runs in float32
    wb = procrustes(jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
    assert wb.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(wb).T @ np.asarray(wb), np.eye(d), atol=1e-5)
    with pytest.raises(ValueError, match="equal P"):
        procrustes(x, y[:-1])


# ------------------------------------------------------------------ retrieval


@pytest.mark.parametrize("blocks", [(8, 7), (5, 13), (1000, 1000)])
def test_blockwise_topk_equals_dense_exactly(rng, blocks):
    """Integer-valued vectors make every score exact: ids (ties: lower index first) must match."""
    n, m, d, k = 37, 101, 6, 7
    q = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    keys = rng.integers(-3, 4, size=(m, d)).astype(np.float32)
    bias = rng.integers(-4, 5, size=m).astype(np.float32) / 2
    dense = q.astype(np.float64) @ keys.T.astype(np.float64) - bias[None, :]
    order = np.argsort(-dense, axis=1, kind="stable")[:, :k]  # stable: lower index first on ties
    v, i = topk_scores(q, keys, k=k, key_bias=bias, query_block=blocks[0], key_block=blocks[1])
    np.testing.assert_array_equal(np.asarray(i), order)
    np.testing.assert_array_equal(np.asarray(v), np.take_along_axis(dense, order, 1))
    if blocks != (8, 7):
        return
    mesh = jax.make_mesh((8,), ("x",))
    v8, i8 = topk_scores(
        q, keys, k=k, key_bias=bias, query_block=blocks[0], key_block=blocks[1], mesh=mesh
    )
    np.testing.assert_array_equal(np.asarray(i8), order)
    np.testing.assert_array_equal(np.asarray(v8), np.asarray(v))


def _dense_csls(q, y, src, knn):
    """float64 reference: CSLS matrix [N, M] = 2 cos - r_T(q) - r_S(y)."""

    def unit(a):
        a = a.astype(np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    q, y, src = unit(q), unit(y), unit(src)
    cos = q @ y.T
    r_t = np.sort(cos, axis=1)[:, -knn:].mean(axis=1)
    r_s = np.sort(y @ src.T, axis=1)[:, -knn:].mean(axis=1)
    return 2 * cos - r_t[:, None] - r_s[None, :], cos


def test_nn_and_csls_equal_dense_reference(rng):
    n, s, m, d, k = 29, 83, 97, 12, 5
    src = rng.normal(size=(s, d)).astype(np.float32)
    q = src[:n]
    y = rng.normal(size=(m, d)).astype(np.float32)
    ref_csls, ref_cos = _dense_csls(q, y, src, knn=4)
    for fn, ref, kw in ((nn_topk, ref_cos, {}), (csls_topk, ref_csls, dict(knn=4, sources=src))):
        v, i = fn(q, y, k=k, query_block=8, key_block=11, **kw)
        v, i = np.asarray(v), np.asarray(i)
        top = -np.sort(-ref, axis=1)[:, :k]
        np.testing.assert_allclose(v, top, rtol=0, atol=2e-6)
        # the returned ids carry the reference's top-k scores (robust to float32 near-ties)
        np.testing.assert_allclose(np.take_along_axis(ref, i, 1), top, rtol=0, atol=2e-6)
    r = np.asarray(mean_topk_similarity(q, y, k=4, query_block=7, key_block=10))
    np.testing.assert_allclose(r, np.sort(ref_cos, axis=1)[:, -4:].mean(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        nn_topk(q, y[:3], k=5)


def test_csls_sharded_over_8_devices_equals_one_device(rng):
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((4, 2), ("a", "b"))  # any mesh: keys are split over all of its devices
    src = rng.normal(size=(70, 16)).astype(np.float32)
    y = rng.normal(size=(101, 16)).astype(np.float32)  # 101 does not divide by 8
    blocking = dict(query_block=16, key_block=5)
    v1, i1 = csls_topk(src[:40], y, k=10, sources=src, **blocking)
    v8, i8 = csls_topk(src[:40], y, k=10, sources=src, mesh=mesh, **blocking)
    np.testing.assert_array_equal(np.asarray(i8), np.asarray(i1))
    np.testing.assert_array_equal(np.asarray(v8), np.asarray(v1))


def test_csls_beats_nn_under_hubness(rng):
    """Targets near the centre of an anisotropic cloud are near every query (hubs):
    NN retrieves them often, CSLS's r_S term penalises them."""
    n, d, n_hubs = 1000, 32, 20
    mu = rng.normal(size=d)
    mu *= 8.0 / np.linalg.norm(mu)
    x = (mu + rng.normal(size=(n, d))).astype(np.float32)
    y = (x + rng.normal(size=(n, d))).astype(np.float32)
    hubs = (mu + 0.5 * rng.normal(size=(n_hubs, d))).astype(np.float32)
    tgt = np.concatenate([hubs, y])
    pairs = np.stack([np.arange(n), np.arange(n) + n_hubs], 1)
    p_nn = evaluate_bli(x, tgt, pairs, retrieval="nn")["precision_at_1"]
    p_csls = evaluate_bli(x, tgt, pairs, retrieval="csls")["precision_at_1"]
    hub_nn = (np.asarray(nn_topk(x, tgt, k=1)[1])[:, 0] < n_hubs).mean()
    hub_csls = (np.asarray(csls_topk(x, tgt, k=1)[1])[:, 0] < n_hubs).mean()
    assert p_csls > p_nn + 10
    assert hub_nn > 0.08 and hub_csls < hub_nn / 3


# ------------------------------------------------------------------------ BLI


def test_bli_precision_and_gold_sets():
    queries, gold = gold_sets(np.array([[5, 1], [2, 7], [5, 3], [2, 7]]))
    assert queries.tolist() == [2, 5] and gold == [{7}, {1, 3}]
    top = np.array([[7, 0, 1], [0, 3, 9]])
    assert bli_precision(top, gold, ks=(1, 2, 3)) == {1: 50.0, 2: 100.0, 3: 100.0}
    with pytest.raises(ValueError, match="exceeds"):
        bli_precision(top, gold, ks=(1, 5))


def test_bli_on_real_dictionary_words_falls_with_noise(rng, en_si):
    train, test, match = en_si
    p_at_1 = []
    for sigma in (0.1, 1.2, 2.0):
        en, x, si, y, _ = synthetic_spaces(rng, match, d=32, sigma=sigma)
        s2i = {w: i for i, w in enumerate(en)}
        t2i = {w: i for i, w in enumerate(si)}
        tr, te = dictionary_ids(train, s2i, t2i), dictionary_ids(test, s2i, t2i)
        assert te.n_src_total == 1500 and 1000 < te.n_src_found < 1500
        w = procrustes(x[tr.pairs[:, 0]], y[tr.pairs[:, 1]])
        res = evaluate_bli(
            np.asarray(apply_map(x, w)), y, te.pairs, retrieval="csls", key_block=2048
        )
        assert res["n_queries"] == te.n_src_found
        assert res["precision_at_1"] <= res["precision_at_5"] <= res["precision_at_10"]
        p_at_1.append(res["precision_at_1"])
    assert p_at_1[0] >= 99.5  # ceiling: every found query's matched translation is a gold one
    assert p_at_1[0] > p_at_1[1] + 5 > p_at_1[2] + 10


def test_refinement_recovers_rotation_from_5pct_seed(rng):
    n, d, max_rank = 2000, 64, 1500
    x = rng.normal(size=(n, d)).astype(np.float32)
    r = random_rotation(rng, d)
    perm = rng.permutation(n)
    y = np.empty_like(x)
    y[perm] = x @ r + 0.1 * rng.normal(size=x.shape).astype(np.float32)
    truth = np.stack([np.arange(n), perm], 1)
    seed = truth[rng.permutation(n)[: n // 20]]
    w0, _ = refine(x, y, seed, n_iter=0)
    w2, dico = refine(x, y, seed, n_iter=2, max_rank=max_rank, key_block=512)
    # the induced dictionary is exactly the true pairs inside the rank window (mutual NN, CSLS)
    inside = truth[(truth[:, 0] < max_rank) & (truth[:, 1] < max_rank)]
    np.testing.assert_array_equal(dico, inside[np.argsort(inside[:, 0])])
    np.testing.assert_allclose(
        np.asarray(w2), np.asarray(procrustes(x[inside[:, 0]], y[inside[:, 1]])), atol=1e-6
    )
    err0, err2 = np.linalg.norm(np.asarray(w0) - r), np.linalg.norm(np.asarray(w2) - r)
    assert err2 < 0.5 * err0 and err2 < 0.3
    # one direction only gives a superset of the mutual dictionary
    s2t = induce_dictionary(apply_map(x, w2), y, max_rank=max_rank, mode="S2T", key_block=512)
    assert {tuple(p) for p in dico.tolist()} <= {tuple(p) for p in s2t.tolist()}


@pytest.mark.parametrize("mode", ["S2T", "T2S", "S2T&T2S", "S2T|T2S"])
def test_induce_dictionary_modes_match_numpy(rng, mode):
    """NN retrieval, rank window smaller than both sides: every mode against a float64 brute force."""
    x = rng.normal(size=(40, 6))
    y = rng.normal(size=(35, 6))
    # plant 8 near-translations inside the rank window, so that the mutual (&) mode
    # is never vacuous (with purely random spaces it was empty for some seeds)
    src, tgt = rng.permutation(15)[:8], rng.permutation(15)[:8]
    y[tgt] = x[src] + 0.05 * rng.normal(size=(8, 6))
    rank = int(rng.integers(15, 30))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = xn @ yn.T
    s2t = {(i, int(np.argmax(sim[i]))) for i in range(rank)}
    s2t = {(i, j) for i, j in s2t if j < rank}
    t2s = {(int(np.argmax(sim[:, j])), j) for j in range(rank)}
    t2s = {(i, j) for i, j in t2s if i < rank}
    want = {"S2T": s2t, "T2S": t2s, "S2T&T2S": s2t & t2s, "S2T|T2S": s2t | t2s}[mode]
    got = induce_dictionary(x.astype(np.float32), y.astype(np.float32), max_rank=rank,
                            retrieval="nn", mode=mode, key_block=16)
    assert {tuple(p) for p in got.tolist()} == want
    assert len(want) > 0


# -------------------------------------------------------------- files and CLI


def test_read_vec_malformed_duplicates_utf8(tmp_path, rng):
    vecs = rng.normal(size=(4, 3)).astype(np.float32)
    fmt = lambda v: " ".join(repr(float(a)) for a in v)  # noqa: E731
    lines = [
        b"6 3",
        f"ශ්\u200dරී {fmt(vecs[0])} ".encode(),  # Sinhala with ZWJ, trailing space (fastText)
        f"the {fmt(vecs[1])}".encode(),
        "bad 1.0 2.0".encode(),  # too few values
        "nan? 1.0 x 2.0".encode(),  # not a float
        b"\xff\xfeword 1 2 3",  # invalid UTF-8
        f"the {fmt(vecs[2])}".encode(),  # duplicate: first wins
        f"a\u2028b {fmt(vecs[3])}".encode(),  # U+2028 inside a word is not a line break
        b"",
    ]
    path = tmp_path / "e.vec"
    path.write_bytes(b"\n".join(lines))
    wv = read_vec(path)
    assert wv.words == ["ශ්\u200dරී", "the", "a\u2028b"]
    assert wv.n_malformed == 3 and wv.n_duplicates == 1
    np.testing.assert_array_equal(wv.vectors, vecs[[0, 1, 3]])
    assert wv.word2id["a\u2028b"] == 2
    assert read_vec(path, max_vocab=2).words == ["ශ්\u200dරී", "the"]
    out = tmp_path / "w.vec"
    write_vec(out, wv.words, wv.vectors)
    back = read_vec(out)
    assert back.words == wv.words and back.n_malformed == 0
    np.testing.assert_array_equal(back.vectors, wv.vectors)


def test_read_dictionary_space_or_tab(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("dog\tබල්ලා\nCat පූසා\n\nbroken\ndog බල්ලා\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"d\.txt:4: one field 'broken'"):
        pairs = read_dictionary(p)
    assert pairs == [("dog", "බල්ලා"), ("cat", "පූසා"), ("dog", "බල්ලා")]
    with pytest.warns(UserWarning, match="one field"):
        assert read_dictionary(p, lowercase=False)[1] == ("Cat", "පූසා")
    ids = dictionary_ids(
        pairs + [("cow", "x"), ("cat", "y")], {"dog": 1, "cat": 0}, {"බල්ලා": 5, "පූසා": 2}
    )
    # as MUSE: sorted by source frequency rank (stable), pairs with an unknown word counted
    assert ids.pairs.tolist() == [[0, 2], [1, 5], [1, 5]]
    assert (ids.n_src_found, ids.n_src_total) == (2, 3)
    assert (ids.n_missing, ids.n_missing_src, ids.n_missing_tgt) == (2, 1, 2)


def test_read_dictionary_bad_lines_name_file_and_line(tmp_path):
    from jaxembed.data.textfile import NotUtf8Error

    (tmp_path / "three.txt").write_text("a b\nthree fields here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"three\.txt:2: 3 fields 'three fields here'"):
        read_dictionary(tmp_path / "three.txt")
    (tmp_path / "latin.txt").write_bytes("dog chien\ncafé kaffee\n".encode("latin-1"))
    with pytest.raises(NotUtf8Error, match=r"latin\.txt:2 is not UTF-8.*iconv"):
        read_dictionary(tmp_path / "latin.txt")
    (tmp_path / "u16.txt").write_bytes("dog chien\n".encode("utf-16"))
    with pytest.raises(NotUtf8Error, match="UTF-16LE byte-order mark"):
        read_dictionary(tmp_path / "u16.txt")


def test_normalize_chain(rng):
    x = (rng.normal(size=(50, 8)) + 3).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    ref = ref - ref.mean(axis=0)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    got = normalize_embeddings(x, "renorm,center,renorm")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_array_equal(normalize_embeddings(x, "unit, center ,unit"), got)
    np.testing.assert_array_equal(normalize_embeddings(x, ""), x)
    np.testing.assert_allclose(normalize_embeddings(x, "centeremb").mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(normalize_embeddings(x, "unitdim"), axis=0), 1, atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_embeddings(x, "renorm,whiten")


def test_cli_end_to_end_json(tmp_path, rng, en_si, shared_data, capsys):
    from jaxembed.align import cli

    train, test, match = en_si
    en, x, si, y, _ = synthetic_spaces(rng, match, d=16, sigma=0.1)
    write_vec(tmp_path / "en.vec", en, x)
    write_vec(tmp_path / "si.vec", si, y)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--src-emb",
            str(tmp_path / "en.vec"),
            "--tgt-emb",
            str(tmp_path / "si.vec"),
            "--train-dict",
            str(shared_data / BLI / TRAIN),
            "--test-dict",
            str(shared_data / BLI / TEST),
            "--refine",
            "1",
            "--max-rank",
            "3000",
            "--normalize",
            "renorm,center,renorm",
            "--retrieval",
            "csls",
            "--max-vocab",
            "100000",
            "--key-block",
            "2048",
            "--out",
            str(tmp_path / "mapped.vec"),
            "--json",
        ]
    )
    assert cli.run(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    assert set(res) == {
        "precision_at_1",
        "precision_at_5",
        "precision_at_10",
        "n_queries",
        "n_queries_total",
    }
    assert res["n_queries_total"] == 1500 and 1000 < res["n_queries"] < 1500
    assert res["precision_at_1"] >= 99.0
    mapped = read_vec(tmp_path / "mapped.vec")
    assert mapped.words == en and mapped.vectors.shape == x.shape
    # the mapped space is the normalised source rotated: norms preserved (= 1 after renorm)
    np.testing.assert_allclose(np.linalg.norm(mapped.vectors, axis=1), 1, atol=1e-5)


# ------------------------------------------------- MUSE's .vec rules and bad input


def _vec_line(word, vec):
    return word + " " + " ".join(repr(float(a)) for a in vec)


def test_read_vec_follows_muse_casing_zero_and_max_vocab_rules(tmp_path, rng):
    v = rng.normal(size=(6, 3))
    lines = ["7 3", _vec_line("London", v[0]), _vec_line("the", v[1]), _vec_line("london", v[2]),
             _vec_line("The", v[3]), _vec_line("NULL", np.zeros(3)), _vec_line("paris", v[5]),
             _vec_line("LONDON", v[4])]
    path = tmp_path / "cased.vec"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    wv = read_vec(path)
    # lower-cased, the first occurrence of each lower-cased word kept
    assert wv.words == ["london", "the", "null", "paris"] and wv.n_duplicates == 3
    np.testing.assert_array_equal(wv.vectors[[0, 1, 3]], v[[0, 1, 5]].astype(np.float32))
    # MUSE: an all-zero vector gets 0.01 as its first value
    np.testing.assert_array_equal(wv.vectors[2], np.float32([0.01, 0, 0]))
    assert wv.n_zero == 1 and wv.n_malformed == 0
    # max_vocab counts distinct lower-cased words (MUSE stops at len(word2id) >= max_vocab)
    assert read_vec(path, max_vocab=2).words == ["london", "the"]
    kept = read_vec(path, lowercase=False)
    assert kept.words == ["London", "the", "london", "The", "NULL", "paris", "LONDON"]
    assert kept.n_duplicates == 0 and kept.word2id["london"] == 2


def test_read_vec_header_dimension_that_misparses_every_line_is_refused(tmp_path, rng):
    rows = [_vec_line(f"w{i}", rng.normal(size=5)) for i in range(4)]
    (tmp_path / "small.vec").write_text("\n".join(["4 3", *rows]) + "\n")
    with pytest.raises(ValueError, match=r"4 of 4 lines are malformed.*small\.vec:2: 5 values, "
                                         r"expected 3 \(the header's dimension\)"):
        read_vec(tmp_path / "small.vec")
    (tmp_path / "big.vec").write_text("\n".join(["4 8", *rows]) + "\n")
    with pytest.raises(ValueError, match=r"big\.vec:2: 5 values, expected 8"):
        read_vec(tmp_path / "big.vec")
    (tmp_path / "u16.vec").write_bytes("\n".join(["4 5", *rows]).encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16LE byte-order mark"):
        read_vec(tmp_path / "u16.vec")


def test_read_vec_values_that_overflow_float32_arithmetic(tmp_path, rng):
    """Norms ~1e38 used to pass as finite float32 and turn into inf/NaN later (P@1 0.00)."""
    good = [_vec_line(f"w{i}", rng.normal(size=4)) for i in range(5)]
    huge = _vec_line("huge", np.full(4, 1e38))
    (tmp_path / "one.vec").write_text("\n".join(good[:2] + [huge] + good[2:]) + "\n")
    wv = read_vec(tmp_path / "one.vec")
    assert "huge" not in wv.word2id and wv.n_malformed == 1 and len(wv) == 5
    assert wv.problems[0].startswith(f"{tmp_path / 'one.vec'}:3: vector norm 2e+38 is above")
    assert np.isfinite(np.sum(wv.vectors.astype(np.float32) ** 2))
    (tmp_path / "all.vec").write_text(
        "\n".join(_vec_line(f"w{i}", 1e38 * rng.normal(size=4)) for i in range(5)) + "\n")
    with pytest.raises(ValueError, match=r"5 of 5 lines are malformed.*all\.vec:1: vector norm"):
        read_vec(tmp_path / "all.vec")


def _align_cli(argv):
    from jaxembed.align import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_muse_casing_on_cased_vec_with_lowercase_dictionary(tmp_path, rng, capsys):
    """Hand-made cased source .vec and lower-case dictionaries; the expected P@1 follows from
    MUSE's rules by construction (lower-case, first occurrence wins), not from jaxembed.

    Every test word w{i} has a correct vector a_i (its translation's vector before the
    rotation) and possibly a decoy a_{i+1}, which retrieves the next word's translation:
      G1: only "wI" (correct)                 MUSE hit   keep-case hit
      G2: "WI" (correct) before "wI" (decoy)  MUSE hit   keep-case miss
      G3: "wI" (decoy) before "WI" (correct)  MUSE miss  keep-case miss
      G4: only "WI" (correct)                 MUSE hit   keep-case: not a query
    """
    d, n, per = 32, 20, 5
    r = random_rotation(rng, d)
    a = rng.normal(size=(n, d))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    train_src = [f"s{k}" for k in range(d)]
    tgt_lines = [_vec_line(f"t{k}", r[k]) for k in range(d)]  # e_k @ R: Procrustes gives R
    tgt_lines += [_vec_line(f"x{i}", a[i] @ r) for i in range(n)]
    src_lines = [_vec_line(w, np.eye(d)[k]) for k, w in enumerate(train_src)]
    groups = {"G1": [], "G2": [], "G3": [], "G4": []}
    for i in range(n):
        group = f"G{i // per + 1}"
        groups[group].append(i)
        right, decoy = _vec_line(f"W{i}", a[i]), _vec_line(f"w{i}", a[(i + 1) % n])
        src_lines += {"G1": [_vec_line(f"w{i}", a[i])], "G2": [right, decoy],
                      "G3": [decoy, right], "G4": [right]}[group]
    for name, lines in (("src.vec", src_lines), ("tgt.vec", tgt_lines)):
        (tmp_path / name).write_text(f"{len(lines)} {d}\n" + "\n".join(lines) + "\n")
    (tmp_path / "train.txt").write_text("".join(f"s{k} t{k}\n" for k in range(d)))
    (tmp_path / "test.txt").write_text("".join(f"w{i} x{i}\n" for i in range(n)))
    argv = ["--src-emb", str(tmp_path / "src.vec"), "--tgt-emb", str(tmp_path / "tgt.vec"),
            "--train-dict", str(tmp_path / "train.txt"), "--test-dict", str(tmp_path / "test.txt"),
            "--retrieval", "nn", "--max-vocab", "0", "--json"]

    assert _align_cli(argv) == 0
    out = capsys.readouterr().out.splitlines()
    muse = json.loads(out[-1])
    hits = len(groups["G1"]) + len(groups["G2"]) + len(groups["G4"])
    assert muse["n_queries"] == n and muse["precision_at_1"] == pytest.approx(100 * hits / n)
    assert "source: 52 words" in out[0] and "10 duplicate words skipped" in out[0]

    assert _align_cli(argv + ["--keep-case"]) == 0
    kept = json.loads(capsys.readouterr().out.splitlines()[-1])
    queries = n - len(groups["G4"])
    assert kept["n_queries"] == queries
    assert kept["precision_at_1"] == pytest.approx(100 * len(groups["G1"]) / queries)



def test_identical_char_ids_pairs_shared_words_by_source_rank():
    from jaxembed.align import identical_char_ids

    ids = identical_char_ids({"the": 0, "paris": 1, "x": 2, "london": 3},
                             {"london": 0, "y": 1, "paris": 5})
    assert ids.pairs.tolist() == [[1, 5], [3, 0]] and ids.n_src_found == ids.n_src_total == 2
    with pytest.raises(ValueError, match="no word is spelled the same"):
        identical_char_ids({"a": 0}, {"b": 0})


def test_cli_bad_inputs_exit_2_naming_file_and_line(tmp_path, rng, capsys):
    rows = [_vec_line(f"w{i}", rng.normal(size=4)) for i in range(12)]
    (tmp_path / "e.vec").write_text("\n".join(["12 4", *rows]) + "\n")
    (tmp_path / "small.vec").write_text("\n".join(["12 2", *rows]) + "\n")
    (tmp_path / "huge.vec").write_text(
        "\n".join(_vec_line(f"w{i}", np.full(4, 1e38)) for i in range(12)) + "\n")
    (tmp_path / "few.vec").write_text("\n".join(rows[:6]) + "\n")
    (tmp_path / "d.txt").write_text("w0 w0\nw1 w1\n")
    (tmp_path / "three.txt").write_text("w0 w0\nw1 w1 extra\n")
    (tmp_path / "latin.txt").write_bytes("w0 w0\nw1 caf\xe9\n".encode("latin-1"))

    def run(src="e.vec", train="d.txt", test="d.txt"):
        train = train if train == "identical_char" else str(tmp_path / train)
        rc = _align_cli(["--src-emb", str(tmp_path / src), "--tgt-emb", str(tmp_path / "e.vec"),
                         "--train-dict", train, "--test-dict",
                         str(tmp_path / test), "--retrieval", "nn"])
        return rc, capsys.readouterr().err

    assert run()[0] == 0 and run(train="identical_char")[0] == 0
    for kwargs, message in (
        (dict(test="latin.txt"), r"latin\.txt:2 is not UTF-8"),
        (dict(train="three.txt"), r"three\.txt:2: 3 fields"),
        (dict(src="small.vec"), r"small\.vec:2: 4 values, expected 2"),
        (dict(src="huge.vec"), r"huge\.vec:1: vector norm 2e\+38 is above"),
        (dict(src="few.vec"), r"too few words \(source 6\); P@10 and --knn 10 need at least 10"),
    ):
        rc, err = run(**kwargs)
        assert rc == 2 and err.startswith("error: "), err
        assert re.search(message, err), err


@pytest.mark.parametrize("flag, value", [("--knn", "0"), ("--max-vocab", "-1"), ("--refine", "-1"),
                                         ("--max-rank", "-5"), ("--key-block", "0")])
def test_cli_rejects_bad_numbers_with_argparse_messages(flag, value, capsys):
    from jaxembed.align import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--src-emb", "a", "--tgt-emb", "b", "--train-dict", "c",
                           "--test-dict", "d", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be an integer >=" in capsys.readouterr().err
