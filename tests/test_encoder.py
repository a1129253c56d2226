"""``Encoder`` API: tokenisation, bucketed ``encode`` vs PyTorch, bad input, export to
transformers / sentence-transformers, and all-MiniLM-L6-v2 vs ``SentenceTransformer``."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _optional import needs_torch, torch
import transformers

from jaxembed.models import buckets
from jaxembed.models.encoder import Encoder

WORDS = (
    "the a man woman dog plays guitar slices onion river bank quickly under over red "
    "blue jumps runs happily zebra quantum xylophone tokenisation 42 , . !"
).split()


def random_texts(rng, n, *, max_words=20):
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words + 1)))) for _ in range(n)]


def torch_embed(folder, texts, *, pooling, normalize, max_length=128):
    """Reference: HF tokenizer (pad to longest) + transformers BertModel, float64 pooling."""
    needs_torch()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    b = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**b)
    h = out.last_hidden_state.numpy().astype(np.float64)
    m = b["attention_mask"].numpy().astype(np.float64)[..., None]
    z = {
        "mean": lambda: (h * m).sum(1) / m.sum(1),
        "max": lambda: np.where(m > 0, h, -np.inf).max(1),
        "cls_before_pooler": lambda: h[:, 0],
        "cls": lambda: out.pooler_output.numpy().astype(np.float64),
    }[pooling]()
    return z / np.linalg.norm(z, axis=1, keepdims=True) if normalize else z


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


def test_defaults_for_plain_hf_folder(tiny):
    assert tiny.pooling == "mean" and tiny.normalize is False
    assert tiny.max_length == 128 and tiny.hidden_size == tiny.dim == 32
    assert tiny.config.add_pooling_layer


def test_tokenize_buckets_and_matches_hf(tiny, tiny_bert_dir, rng):
    texts = random_texts(rng, 7)
    ref = transformers.AutoTokenizer.from_pretrained(str(tiny_bert_dir))(texts, padding=True)
    longest = len(ref["input_ids"][0])
    b = tiny.tokenize(texts)
    L = b["input_ids"].shape[1]
    assert L == buckets.bucket_for(longest, buckets.length_buckets(128)) and L >= 8
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert b[k].dtype == np.int32 and b[k].shape == (7, L)
        np.testing.assert_array_equal(b[k][:, :longest], ref[k])
        np.testing.assert_array_equal(b[k][:, longest:], 0)
    assert tiny.tokenize(texts, pad_to=longest + 3)["input_ids"].shape == (7, longest + 3)
    with pytest.raises(ValueError, match="pad_to"):
        tiny.tokenize(texts, pad_to=longest - 1)


@pytest.mark.parametrize("pooling,normalize", [("mean", False), ("cls", True)])
def test_encode_matches_torch_and_restores_order(tiny, tiny_bert_dir, rng, pooling, normalize):
    enc = tiny.replace(pooling=pooling, normalize=normalize)
    texts = random_texts(rng, 21)
    got = enc.encode(texts, batch_size=8)
    assert got.dtype == np.float32 and got.shape == (21, 32)
    want = torch_embed(tiny_bert_dir, texts, pooling=pooling, normalize=normalize)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_encode_compiles_once_per_bucket(tiny, rng):
    enc = tiny.replace(params=jax.tree.map(lambda a: a * 1.0, tiny.params), pooling="max")
    texts = random_texts(rng, 29, max_words=40)
    before = enc._trace_count
    first = enc.encode(texts, batch_size=8)
    lengths = enc.tokenize(texts)["attention_mask"].sum(1)
    shapes = {
        (rows, length)
        for _, rows, length in buckets.plan_batches(lengths, batch_size=8, max_length=128)
    }
    assert {rows for rows, _ in shapes} == {8}  # 3 full batches of 8, one of 5 padded to 8
    assert enc._trace_count - before == len(shapes)
    again = enc.encode(list(reversed(texts)), batch_size=8)
    assert enc._trace_count - before == len(shapes)  # nothing new to compile
    np.testing.assert_allclose(again[::-1], first, atol=1e-6, rtol=0)
    # chunked pipeline (several tokenisation chunks) gives the same result
    np.testing.assert_allclose(
        enc.encode(texts, batch_size=8, chunk_batches=2), first, atol=1e-6, rtol=0
    )


def test_bucket_plan(rng):
    table = buckets.length_buckets(256)
    assert table == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
    assert buckets.length_buckets(100)[-2:] == (96, 100) and buckets.length_buckets(5) == (5,)
    lengths = rng.integers(1, 257, size=100)
    plan = buckets.plan_batches(lengths, batch_size=16, max_length=256)
    seen = np.concatenate([idx for idx, _, _ in plan])
    np.testing.assert_array_equal(np.sort(seen), np.arange(100))
    for idx, rows, length in plan:
        longest = lengths[idx].max()
        assert (
            length in table and length >= longest and (length == 8 or length < longest * 1.25 + 8)
        )
        assert rows == (16 if len(idx) == 16 else 4)  # 100 = 6 * 16 + 4
    assert [lengths[idx].max() for idx, _, _ in plan] == sorted(
        (lengths[idx].max() for idx, _, _ in plan), reverse=True
    )
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        buckets.bucket_for(257, table)


def test_bad_inputs(tiny, tiny_bert_dir):
    assert tiny.encode([]).shape == (0, 32)
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        tiny.encode(["a", "b", 3])
    with pytest.raises(TypeError, match="single string"):
        tiny.encode("a dog")
    empty = tiny.encode(["", "a dog runs"], batch_size=4)
    assert np.isfinite(empty).all() and np.abs(empty[0]).max() > 0
    np.testing.assert_allclose(
        empty,
        torch_embed(tiny_bert_dir, ["", "a dog runs"], pooling="mean", normalize=False),
        atol=1e-5,
        rtol=0,
    )
    long = " ".join(["river"] * 5000)
    with pytest.warns(UserWarning, match=r"1 text\(s\) longer than max_length=128"):
        got = tiny.encode([long, "short one"], batch_size=4)
    want = torch_embed(tiny_bert_dir, [long, "short one"], pooling="mean", normalize=False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="truncated"):
        assert tiny.tokenize([long])["input_ids"].shape == (1, 128)
    for make in (
        lambda: tiny.replace(pooling="last4_mean"),
        lambda: Encoder.from_pretrained(tiny_bert_dir, pooling="last4_mean"),
    ):
        with pytest.raises(ValueError, match="last4_mean needs >= 4 layers"):
            make()
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        tiny.replace(pooling="avg")


def test_progress_bar(tiny, capsys, rng):
    tiny.encode(random_texts(rng, 3), progress=True)
    assert "encode" in capsys.readouterr().err


@pytest.mark.parametrize(
    "pooling,normalize",
    [("mean", True), ("cls", False), ("cls_before_pooler", True), ("max", False)],
)
def test_export_reloads_in_jaxembed_transformers_and_sentence_transformers(
    tiny, tiny_bert_dir, tmp_path, rng, pooling, normalize
):
    needs_torch()  # sentence-transformers and transformers' models require torch
    from sentence_transformers import SentenceTransformer

    # perturb the weights so the export must write our params, not copy the source files
    params = jax.tree.map(
        lambda a: a + 0.02 * rng.standard_normal(a.shape).astype(np.float32), tiny.params
    )
    enc = tiny.replace(params=params, pooling=pooling, normalize=normalize, max_length=64)
    enc.save_pretrained(tmp_path)
    texts = random_texts(rng, 6)
    ours = enc.encode(texts)

    back = Encoder.from_pretrained(tmp_path)
    assert (back.pooling, back.normalize, back.max_length) == (pooling, normalize, 64)
    np.testing.assert_allclose(back.encode(texts), ours, atol=1e-6, rtol=0)

    b = enc.tokenize(texts)
    hf = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        h = hf(
            **{k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}
        ).last_hidden_state.numpy()
    out = enc.apply(params, b["input_ids"], b["attention_mask"], b["token_type_ids"])
    np.testing.assert_allclose(out.last_hidden_state, h, atol=1e-5, rtol=0)

    st = SentenceTransformer(str(tmp_path), device="cpu")
    assert st.max_seq_length == 64
    np.testing.assert_allclose(st.encode(texts, batch_size=4), ours, atol=1e-5, rtol=0)
    modules = [
        m["type"].rsplit(".", 1)[-1] for m in json.loads((tmp_path / "modules.json").read_text())
    ]
    assert modules[:2] == ["Transformer", "Pooling"] and ("Normalize" in modules) == normalize
    assert ("Dense" in modules) == (pooling == "cls")


def test_minilm_matches_sentence_transformers(minilm_path, shared_data):
    """all-MiniLM-L6-v2, no extra arguments, == SentenceTransformer.encode on 250 STS-B sentences."""
    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    sents = []
    with open(shared_data / "sts_raw" / "STSBenchmark" / "sts-dev.csv", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            sents.extend(cols[5:7])
            if len(sents) >= 250:
                break
    enc = Encoder.from_pretrained(minilm_path)
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 256)
    ours = enc.encode(sents, batch_size=128)
    st = SentenceTransformer(str(minilm_path), device="cpu").encode(sents, batch_size=128)
    assert ours.shape == st.shape == (250, 384)
    np.testing.assert_allclose(ours, st, atol=1e-5, rtol=0)


def test_precompile_covers_encode(tiny, rng):
    enc = tiny.replace(pooling="cls_before_pooler")
    texts = random_texts(rng, 19, max_words=30)
    before = enc._trace_count
    n = enc.precompile(texts, batch_size=8)
    assert enc._trace_count - before == n >= 1
    enc.encode(texts, batch_size=8)
    assert enc._trace_count - before == n  # encode compiled nothing new


class _CountingTokenizer:
    """Forwards to a tokenizer and records every text it is asked to tokenise."""

    def __init__(self, tok):
        self.tok, self.seen = tok, []

    def __call__(self, texts, **kwargs):
        self.seen.extend(texts)
        return self.tok(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_encode_tokenises_each_text_once_and_counts_truncation_exactly(tiny, tiny_bert_dir, rng):
    """A text of exactly max_length tokens is not truncated, one of max_length + 1 is; the
    count comes from the tokenizer's overflow, with no second tokenisation."""
    counting = _CountingTokenizer(tiny.tokenizer)
    enc = tiny.replace(tokenizer=counting)
    assert len(tiny.tokenizer("river", add_special_tokens=False)["input_ids"]) == 1
    # 128 and 129 tokens with [CLS] and [SEP]
    at_limit, over = " ".join(["river"] * 126), " ".join(["river"] * 127)
    texts = random_texts(rng, 5) + [at_limit, over, " ".join(["bank"] * 3000)]
    with pytest.warns(UserWarning, match=r"2 text\(s\) longer than max_length=128") as record:
        got = enc.encode(texts, batch_size=4, chunk_batches=1)
    assert len(record) == 1
    assert sorted(counting.seen) == sorted(texts)  # every text exactly once
    want = torch_embed(tiny_bert_dir, texts, pooling="mean", normalize=False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_ids_equal_hf_truncation(tiny_bert_dir, rng, side):
    from jaxembed.models.tokenization import token_ids

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_bert_dir), truncation_side=side)
    m = 16
    texts = random_texts(rng, 40, max_words=30) + [" ".join(["river"] * (m - 2)), ""]
    ids, types, n_cut = token_ids(tok, texts, max_length=m)
    ref = tok(texts, truncation=True, max_length=m)
    full = tok(texts, truncation=False)["input_ids"]
    assert ids == ref["input_ids"] and types == ref["token_type_ids"]
    assert n_cut == sum(len(x) > m for x in full) >= 1
    assert sum(len(x) == m for x in full) >= 1  # the exact-length case is exercised


def test_micro_batching_only_on_cpu_by_default(tiny, rng, monkeypatch):
    from jaxembed.models import inference

    assert inference.micro_rows(128, 256, 1024) == 4
    assert inference.micro_rows(128, 64, 1024) == 16
    assert inference.micro_rows(8, 64, 1024) == 8  # fits in one micro-batch: no split
    assert inference.micro_rows(128, 256, 0) == 128
    assert inference.default_micro_batch_tokens() == inference.MICRO_BATCH_TOKENS  # CPU here
    for backend, want in (("gpu", 0), ("tpu", 0), ("cpu", inference.MICRO_BATCH_TOKENS)):
        monkeypatch.setattr(inference.jax, "default_backend", lambda b=backend: b)
        assert inference.default_micro_batch_tokens() == want
        assert inference.encode_step(tiny).micro_batch_tokens == want
    monkeypatch.undo()

    ids = np.ones((16, 128), np.int32)
    for tokens, loops in ((1024, True), (0, False)):
        step = inference.EncodeStep(tiny.module, tiny.spec, tokens)
        batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": np.zeros_like(ids)}
        jaxpr = str(jax.make_jaxpr(step.fn)(tiny.params, batch))
        assert ("scan" in jaxpr or "while" in jaxpr) == loops
    texts = random_texts(rng, 19, max_words=30)
    np.testing.assert_allclose(
        tiny.encode(texts, batch_size=16, micro_batch_tokens=0),
        tiny.encode(texts, batch_size=16),
        atol=1e-6,
        rtol=0,
    )
