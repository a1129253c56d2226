"""Decoders through ``Encoder``: sentence-transformers folders (last-token pooling, prompts,
left padding) and exports that ``transformers`` and ``sentence-transformers`` load with the
same embeddings, left vs right padding, prompts for encoders and decoders, Token Prepending
through the whole ``encode`` path against the official algorithm, and bad input."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import transformers
from _decoder_refs import (
    TOKENIZER_WORDS,
    assert_close,
    build,
    hf_pooled,
    official_tp_texts,
    padded_batch,
    save_tokenizer,
    torch_token_prepending,
)
from _optional import needs_torch

from jaxembed.models.decoder import PROMPTS, add_placeholder_row, presets
from jaxembed.models.decoder.attention import choose_implementation
from jaxembed.models.encoder import Encoder
from jaxembed.models.tokenization import load_tokenizer

# float32 forward vs float64-pooled transformers; worst seen over 20 seeds of every test
# here (JAXEMBED_TEST_SEED=random JAXEMBED_TEST_REPEAT=20): 2.1e-6
TOL = 1e-5
QUERY = "Instruct: find the passage\nQuery:"
B = 16  # every text of a test in one batch: one shape, one compilation per pooling spec


def random_texts(rng, n, *, max_words=8):
    return [" ".join(rng.choice(TOKENIZER_WORDS, size=int(rng.integers(1, max_words + 1))))
            for _ in range(n)]


def _normalised(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _perturbed(enc, rng):
    """``enc`` with every weight moved, so an export must write our params."""
    return enc.replace(params=jax.tree.map(
        lambda a: a + 0.02 * rng.standard_normal(a.shape).astype(np.float32), enc.params))


def _write_st_folder(folder, *, pooling_flag: str, normalize: bool, prompts: dict,
                     include_prompt: bool = True):
    """The sentence-transformers files of a Qwen3-Embedding-style folder, in the legacy
    ``pooling_mode_*`` spelling its release uses."""
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    flags = {f"pooling_mode_{k}": k == pooling_flag for k in (
        "cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
        "lasttoken")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **flags, "include_prompt": include_prompt}))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": 128, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, module_rng):
    """A tiny random Qwen3 with a Qwen-style tokenizer (EOS appended, left padding)."""
    folder = tmp_path_factory.mktemp("qwen3")
    build("qwen3", folder, int(module_rng.integers(2**31)), vocab_size=320)
    save_tokenizer(folder, "qwen", padding_side="left")
    return folder


@pytest.fixture(scope="module")
def qwen_st(tmp_path_factory, qwen_dir):
    """``qwen_dir`` as a sentence-transformers folder: last token, normalised, query prompt."""
    folder = tmp_path_factory.mktemp("qwen3_st") / "m"
    shutil.copytree(qwen_dir, folder)
    _write_st_folder(folder, pooling_flag="lasttoken", normalize=True,
                     prompts={"query": QUERY, "document": ""})
    return folder


def test_st_folder_last_token_with_query_prompt_and_its_export(qwen_st, tmp_path, rng):
    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    enc = Encoder.from_pretrained(qwen_st)
    assert (enc.pooling, enc.normalize, enc.padding_side, enc.max_length) == (
        "last_token", True, "left", 128)
    assert enc.prompts == {"query": QUERY, "document": ""} and enc.module.attention == "auto"
    texts = random_texts(rng, 9)
    st = SentenceTransformer(str(qwen_st), device="cpu")
    # one batch shape (B = 16) for every encode here: one compilation per spec
    np.testing.assert_allclose(enc.encode_query(texts, batch_size=B), st.encode_query(texts),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(enc.encode_document(texts, batch_size=B), st.encode_document(texts),
                               atol=TOL, rtol=0)

    mine = _perturbed(enc, rng)
    out = mine.save_pretrained(tmp_path / "out")
    ours = mine.encode_query(texts, batch_size=B)
    np.testing.assert_allclose(SentenceTransformer(str(out), device="cpu").encode_query(texts),
                               ours, atol=TOL, rtol=0)
    back = Encoder.from_pretrained(out)
    assert (back.pooling, back.normalize, back.padding_side, back.prompts) == (
        "last_token", True, "left", enc.prompts)
    np.testing.assert_allclose(back.encode_query(texts, batch_size=B), ours, atol=1e-6, rtol=0)
    # transformers: the bare model, each prompted text alone, EOS included by the tokenizer
    hf = transformers.AutoModel.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok(texts[0])["input_ids"][-1] == tok.eos_token_id
    want = _normalised(hf_pooled(hf, tok, [QUERY + t for t in texts], pooling="last_token"))
    np.testing.assert_allclose(ours, want, atol=TOL, rtol=0)


def test_gemma3_bidirectional_mean_without_the_prompt_exports(tmp_path, rng):
    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    build("gemma3_bidirectional", tmp_path / "hf", int(rng.integers(2**31)), vocab_size=320)
    save_tokenizer(tmp_path / "hf", "gemma", padding_side="right")
    enc = _perturbed(Encoder.from_pretrained(
        tmp_path / "hf", pooling="mean", include_prompt=False, prompts={"query": "query: "},
        max_length=64), rng)
    texts = random_texts(rng, 7)
    ours = enc.encode_query(texts, batch_size=8)
    out = enc.save_pretrained(tmp_path / "out")
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode_query(texts, batch_size=4), ours, atol=TOL, rtol=0)

    hf = transformers.AutoModel.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    prompt_ids = tok("query: ")["input_ids"]  # <bos> + the prompt; no trailing special token
    assert prompt_ids[0] == tok.bos_token_id and prompt_ids[-1] not in tok.all_special_ids
    want = hf_pooled(hf, tok, ["query: " + t for t in texts], pooling="mean",
                     prompt_tokens=len(prompt_ids))
    assert_close(ours, want, rtol=TOL, what="mean without the prompt")
    with_prompt = enc.replace(include_prompt=True).encode_query(texts, batch_size=8)
    assert np.abs(with_prompt - ours).max() > 1e-3  # the exclusion mattered


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_left_and_right_padding_give_the_unpadded_embeddings(qwen_dir, rng, pooling):
    left = Encoder.from_pretrained(qwen_dir, pooling=pooling)
    assert left.padding_side == "left"  # from the tokenizer
    right = left.replace(padding_side="right")
    texts = random_texts(rng, 11, max_words=12) + [""]
    b_left, b_right = left.tokenize(texts), right.tokenize(texts)
    assert (b_left["attention_mask"][:, -1] == 1).all() and (b_right["attention_mask"][:, 0]
                                                              == 1).all()
    z_left, z_right = left.encode(texts, batch_size=B), right.encode(texts, batch_size=B)
    hf = transformers.AutoModel.from_pretrained(qwen_dir).eval()
    want = hf_pooled(hf, left.tokenizer, texts, pooling=pooling)
    assert_close(z_left, want, rtol=TOL, what="left padding")
    assert_close(z_right, want, rtol=TOL, what="right padding")


def test_data_parallel_decoder_encode_equals_one_device(qwen_dir, rng):
    """``devices=`` with the decoder's batch dict: left padding and ``prompt_length`` (mean
    without the prompt) split by rows over 8 and 3 devices, 11 rows (no device count divides
    the padded 16), same rows as on one device."""
    enc = Encoder.from_pretrained(qwen_dir, pooling="mean", include_prompt=False)
    assert enc.padding_side == "left"
    texts = random_texts(rng, 11, max_words=12)
    kw = dict(prompt=QUERY, batch_size=B)
    one = enc.encode(texts, **kw)
    for devices in (jax.local_devices(), jax.local_devices()[:3]):
        many = enc.encode(texts, devices=devices, **kw)
        # rows are independent; only float32 rounding of other per-device row counts differs
        # (unnormalised means: worst over 12 fresh seeds 2.1e-6 absolute, 1.7e-6 relative)
        np.testing.assert_allclose(many, one, atol=1e-6, rtol=TOL)
    assert np.abs(enc.replace(include_prompt=True).encode(texts, **kw) - one).max() > 1e-3


def test_token_prepending_through_encode_matches_the_official_algorithm(tmp_path, rng):
    """Llama-2 style (BOS, no pad token, <PST> absent): the official code's tokenizer
    surgery, sentence normalisation, left padding and forward pre-hooks in torch, against
    ``Encoder.encode`` with either padding side."""
    from _optional import torch

    ref = build("llama_llama3", tmp_path / "hf", int(rng.integers(2**31)), vocab_size=320)
    save_tokenizer(tmp_path / "hf", "llama", padding_side="left")
    settings = {"start_layer": 1, "end_layer": 3, "output_layer": -2,
                "prompt": PROMPTS["prompteol"], "clean_sentences": True}
    enc = Encoder.from_pretrained(tmp_path / "hf", token_prepending=settings)
    texts = random_texts(rng, 6) + ['he said "over" twice', "is it red?", "a dog runs."]

    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok.add_tokens(["<PST>"])
    pst = tok.convert_tokens_to_ids("<PST>")
    assert enc.placeholder_id == pst == 320 and enc.config.vocab_size == 321
    row = np.random.default_rng(3407).standard_normal(32).astype(np.float32)  # the seeded draw
    np.testing.assert_array_equal(np.asarray(enc.params["embed_tokens"]["embedding"][pst]), row)
    ref.resize_token_embeddings(len(tok))
    with torch.no_grad():
        ref.model.embed_tokens.weight[pst] = torch.from_numpy(row)
    tok.pad_token_id, tok.padding_side = 0, "left"
    batch = tok(official_tp_texts(texts, PROMPTS["prompteol"]), padding=True)
    ids, mask = np.array(batch["input_ids"]), np.array(batch["attention_mask"])
    where = (ids == pst).argmax(axis=1)
    want = torch_token_prepending(ref, ids, mask, where, 1, 3)[-2][:, -1]

    assert_close(enc.encode(texts, batch_size=B), want, rtol=TOL, what="left padding")
    right = enc.replace(padding_side="right")
    assert_close(right.encode(texts, batch_size=B), want, rtol=TOL, what="right padding")

    with pytest.warns(UserWarning, match="token_prepending has no sentence-transformers"):
        out = enc.save_pretrained(tmp_path / "out")
    assert not (out / "modules.json").exists()
    again = Encoder.from_pretrained(out, token_prepending=settings)  # <PST> present: kept as is
    assert again.placeholder_id == pst and again.config.vocab_size == 321
    np.testing.assert_allclose(again.encode(texts, batch_size=B), enc.encode(texts, batch_size=B),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs its placeholder '<PST>' in the prompt"):
        enc.encode(texts, prompt="no placeholder: ")


def test_encoder_prompts_follow_sentence_transformers(tiny_bert_dir, tmp_path, rng):
    needs_torch()  # sentence-transformers requires torch
    from sentence_transformers import SentenceTransformer

    enc = Encoder.from_pretrained(tiny_bert_dir, include_prompt=False,
                                  prompts={"query": "query: ", "document": "passage: "})
    texts = random_texts(rng, 6)
    out = enc.save_pretrained(tmp_path / "out")
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(enc.encode_query(texts), st.encode_query(texts), atol=TOL, rtol=0)
    np.testing.assert_allclose(enc.encode_document(texts), st.encode_document(texts),
                               atol=TOL, rtol=0)
    np.testing.assert_array_equal(enc.encode(texts, prompt="query: "), enc.encode_query(texts))
    # a template: the text goes where {text} is; its head is the prompt to exclude
    b = enc.tokenize(texts, prompt="red {text} blue")
    plain = enc.tokenize(["red " + t + " blue" for t in texts])
    np.testing.assert_array_equal(b["input_ids"], plain["input_ids"])
    assert (b["prompt_length"] == len(enc.tokenizer("red ")["input_ids"]) - 1).all()  # [CLS] red
    with pytest.raises(ValueError, match="not both"):
        enc.encode(texts, prompt="a", prompt_name="query")
    with pytest.raises(ValueError,
                       match=r"prompt_name 'x' is not one of .*\['document', 'query'\]"):
        enc.encode(texts, prompt_name="x")
    with pytest.raises(ValueError, match="default_prompt_name 'x' is not one of"):
        enc.replace(default_prompt_name="x")
    with pytest.raises(ValueError, match="include_prompt=False cannot change 'cls'"):
        enc.replace(pooling="cls")


def test_add_eos_token_in_tokenizer_config_is_honoured(tmp_path):
    """transformers >= 5 drops tokenizer_config.json's add_eos_token when a tokenizer.json
    exists; the loader applies it, and the export carries it in the post-processor."""
    tok = save_tokenizer(tmp_path / "t", "qwen")
    tok.backend_tokenizer.post_processor = None  # no template: nothing appends the EOS
    tok.save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    (tmp_path / "t" / "tokenizer_config.json").write_text(
        json.dumps({**config, "add_eos_token": True}))
    plain = transformers.AutoTokenizer.from_pretrained(tmp_path / "t")
    assert plain("a dog")["input_ids"][-1] != plain.eos_token_id  # transformers ignores it
    ours = load_tokenizer(tmp_path / "t")
    assert ours("a dog")["input_ids"] == plain("a dog")["input_ids"] + [ours.eos_token_id]
    ours.save_pretrained(tmp_path / "out")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert again("a dog")["input_ids"] == ours("a dog")["input_ids"]


def test_st6_pooling_mode_spelling_and_bad_pooling(qwen_st, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(qwen_st, folder)
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "lasttoken",
                                   "include_prompt": False}))
    enc = Encoder.from_pretrained(folder)
    assert (enc.pooling, enc.include_prompt) == ("last_token", False)
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "weightedmean"}))
    with pytest.raises(ValueError, match=r"1_Pooling/config\.json: unsupported sentence-tr"):
        Encoder.from_pretrained(folder)
    pooling.write_text(json.dumps({"embedding_dimension": 32, "pooling_mode": "cls"}))
    with pytest.raises(ValueError, match="pooling 'cls_before_pooler' is not supported for qwen3"):
        Encoder.from_pretrained(folder)


def test_decoder_options_and_presets_are_checked(qwen_dir, tiny_bert_dir, tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'.*'qwen3', 'qwen2', "
                                         r"'llama', 'mistral', 'gemma2', 'gemma3_text'"):
        Encoder.from_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="decoder options; bert is an encoder"):
        Encoder.from_pretrained(tiny_bert_dir, output_layer=1)
    with pytest.raises(ValueError, match="token_prepending needs a decoder"):
        Encoder.from_pretrained(tiny_bert_dir, token_prepending="llama2-7b")
    with pytest.raises(ValueError,
                       match=r"unknown token_prepending preset 'x'; presets: \('llama2"):
        Encoder.from_pretrained(qwen_dir, token_prepending="x")
    with pytest.raises(ValueError, match=r"unknown token_prepending fields \['layers'\]"):
        Encoder.from_pretrained(qwen_dir, token_prepending={"layers": 3})
    with pytest.raises(ValueError, match=r"output_layer must be an int in \[-4, 3\], got 27"):
        Encoder.from_pretrained(qwen_dir, token_prepending="llama2-7b")  # 27 > 3 layers
    with pytest.raises(ValueError, match="unknown pooling 'cls' for qwen3"):
        Encoder.from_pretrained(qwen_dir, pooling="cls")
    with pytest.raises(ValueError, match="padding_side must be"):
        Encoder.from_pretrained(qwen_dir, padding_side="middle")
    p = presets.resolve("qwen2-7b")
    assert (p.start_layer, p.end_layer, p.output_layer, p.prompt) == (1, 6, -2, PROMPTS["cot"])


def test_placeholder_row_reuses_a_spare_row_or_grows_the_table():
    from jaxembed.models.decoder import DecoderConfig

    cfg = DecoderConfig.from_hf_dict({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                      "num_attention_heads": 2, "num_hidden_layers": 1,
                                      "intermediate_size": 8})
    table = np.arange(80, dtype=np.float32).reshape(10, 8)
    params = {"embed_tokens": {"embedding": table}, "norm": {"scale": np.ones(8)}}
    draw = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    spare, cfg_spare = add_placeholder_row(params, cfg, 7, seed=5)
    grown, cfg_grown = add_placeholder_row(params, cfg, 10, seed=5)
    assert cfg_spare.vocab_size == 10 and cfg_grown.vocab_size == 11
    np.testing.assert_array_equal(spare["embed_tokens"]["embedding"][7], draw)
    np.testing.assert_array_equal(grown["embed_tokens"]["embedding"][10], draw)
    np.testing.assert_array_equal(grown["embed_tokens"]["embedding"][:10], table)
    assert params["embed_tokens"]["embedding"] is table and table[7, 0] == 56  # untouched


def test_auto_attention_picks_cudnn_on_gpu_for_half_precision(monkeypatch):
    import jax.numpy as jnp

    from jaxembed.models.decoder import attention

    assert choose_implementation("auto", jnp.float32, softcap=None) == "dot_product"
    assert choose_implementation("auto", jnp.bfloat16, softcap=None) == "dot_product"  # CPU
    assert choose_implementation("auto", jnp.bfloat16, softcap=50.0) == "xla"
    monkeypatch.setattr(attention.jax, "default_backend", lambda: "gpu")
    assert choose_implementation("auto", jnp.bfloat16, softcap=None) == "cudnn_or_dot_product"
    assert choose_implementation("auto", jnp.float32, softcap=None) == "dot_product"
    assert choose_implementation("auto", jnp.float16, softcap=30.0) == "xla"
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        choose_implementation("flash", jnp.float32, softcap=None)


# one variant per model_type, each with its own traps (untied/tied, biases, windows, caps)
FAMILY_VARIANTS = ("qwen3_window_bias_tied", "qwen2_tied", "llama_linear_bias", "mistral_window",
                   "gemma2", "gemma3")


@pytest.mark.parametrize("name", FAMILY_VARIANTS)
def test_every_family_loads_from_sharded_bf16_and_exports_for_transformers(name, tmp_path, rng):
    """``Encoder.from_pretrained`` on a sharded bfloat16 checkpoint (torch blocked), then
    ``save_pretrained``: ``transformers.AutoModel`` reads the export as the bare model with the
    same weights, so its hidden states equal the bf16 source's. Torch forwards only: the Flax
    forward's parity is ``test_decoder_parity``'s."""
    import sys

    from _optional import torch

    ref = build(name, tmp_path / "hf", int(rng.integers(2**31)))
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    with pytest.MonkeyPatch.context() as m:
        m.setitem(sys.modules, "torch", None)  # the load must not need torch
        enc = Encoder.from_pretrained(tmp_path / "bf16")
    assert enc.pooling == "last_token" and enc.config.model_type == ref.config.model_type
    out = enc.save_pretrained(tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"][0].endswith("Model")
    source, again = (transformers.AutoModel.from_pretrained(
        f, dtype="float32", attn_implementation="eager").eval() for f in (tmp_path / "bf16", out))
    for (k, want), (k2, got) in zip(sorted(source.state_dict().items()),
                                    sorted(again.state_dict().items())):
        assert k == k2
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=k)
    ids, mask = padded_batch(rng, enc.config.vocab_size)
    with torch.no_grad():
        got, want = (m(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                       output_hidden_states=True).hidden_states for m in (again, source))
    assert len(got) == len(want) == enc.config.num_hidden_layers + 1
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w.numpy())
