"""Shared references for the decoder tests: tiny random transformers models of every family
(norm weights randomised: transformers initialises them to 1 or 0, which hides bugs),
padded batches, and independent NumPy/PyTorch references for pooling and Token Prepending.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2)

# name -> (transformers config class, kwargs, legacy_rope: rewrite config.json in v4 spelling)
VARIANTS = {
    "qwen3": ("Qwen3Config", dict(head_dim=12), False),
    "qwen3_window_bias_tied": ("Qwen3Config", dict(
        head_dim=12, use_sliding_window=True, sliding_window=3, max_window_layers=1,
        attention_bias=True, tie_word_embeddings=True), False),
    "qwen3_bidirectional_window": ("Qwen3Config", dict(
        use_sliding_window=True, sliding_window=3, max_window_layers=2, is_causal=False), False),
    # attention_bias is no Qwen2 field: transformers ignores it (q/k/v biased, o not)
    "qwen2_tied": ("Qwen2Config", dict(tie_word_embeddings=True, attention_bias=True), False),
    "llama_linear_bias": ("LlamaConfig", dict(
        rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 500.0},
        attention_bias=True, mlp_bias=True), True),
    "llama_llama3": ("LlamaConfig", dict(rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 12, "rope_theta": 100.0}), False),
    "llama_yarn_bidirectional": ("LlamaConfig", dict(max_position_embeddings=32, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
        "rope_theta": 100.0}, is_causal=False), True),
    "mistral_window": ("MistralConfig", dict(head_dim=12, sliding_window=3), False),
    "mistral_bidirectional_window": ("MistralConfig", dict(sliding_window=2, is_causal=False),
                                     False),
    "gemma2": ("Gemma2Config", dict(head_dim=12, sliding_window=3, attn_logit_softcapping=1.0,
                                    query_pre_attn_scalar=10), False),
    "gemma2_bidirectional": ("Gemma2Config", dict(
        sliding_window=3, attn_logit_softcapping=2.0, is_causal=False,
        tie_word_embeddings=False), False),
    "gemma3": ("Gemma3TextConfig", dict(
        num_hidden_layers=6, head_dim=12, sliding_window=4, rope_theta=1000.0,
        rope_local_base_freq=50.0, rope_scaling={"rope_type": "linear", "factor": 2.0}), True),
    "gemma3_bidirectional": ("Gemma3TextConfig", dict(
        num_hidden_layers=6, sliding_window=5, use_bidirectional_attention=True), False),
}


def randomize(model, seed: int, *, std: float = 0.15) -> None:
    """All weights N(0, std); norm weights around their neutral value (1, or 0 for Gemma's
    1 + w) with spread 0.3."""
    from _optional import torch

    gen = torch.Generator().manual_seed(seed)
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.3 * noise)
            else:
                p.copy_(std * noise)


def _legacy_rope(folder: pathlib.Path) -> None:
    """Rewrite config.json's v5 ``rope_parameters`` in the v4 spelling (``rope_scaling`` with
    ``type`` + top-level ``rope_theta``; Gemma 3: ``rope_scaling`` with ``rope_type``,
    ``rope_theta`` and ``rope_local_base_freq``)."""
    path = folder / "config.json"
    d = json.loads(path.read_text())
    rp = d.pop("rope_parameters")
    if d["model_type"] == "gemma3_text":
        full, local = dict(rp["full_attention"]), rp["sliding_attention"]
        d["rope_theta"], d["rope_local_base_freq"] = full.pop("rope_theta"), local["rope_theta"]
        d["rope_scaling"] = full  # Gemma 3 files spell it rope_type (a "type" would be ignored)
    else:
        rp = dict(rp)
        d["rope_theta"] = rp.pop("rope_theta")
        rp["type"] = rp.pop("rope_type")
        d["rope_scaling"] = rp
    path.write_text(json.dumps(d))


def build(name: str, folder: pathlib.Path, seed: int, **overrides):
    """Save a random tiny ``*ForCausalLM`` of variant ``name`` to ``folder``; return it reloaded
    from that folder by transformers (eager attention, float32, eval) -- the reference."""
    from _optional import torch
    import transformers

    cls_name, kwargs, legacy = VARIANTS[name]
    config = getattr(transformers, cls_name)(**{**SIZES, **kwargs, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    randomize(model, seed)
    model.save_pretrained(folder)
    if legacy:
        _legacy_rope(pathlib.Path(folder))
    return load_reference(folder)


def load_reference(folder):
    import transformers
    from _optional import needs_torch

    needs_torch()

    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype="float32"
    ).eval()


def padded_batch(rng: np.random.Generator, vocab: int, *, batch: int = 4, length: int = 9):
    """ids, mask [B, T] int32: a full row, a left-padded, a right-padded and a short row."""
    ids = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[1, : rng.integers(2, 5)] = 0
    mask[2, rng.integers(5, 8):] = 0
    mask[3, :1] = 0
    mask[3, -2:] = 0
    return ids, mask


def hf_hidden_states(model, ids, mask, position_ids=None) -> list[np.ndarray]:
    from _optional import torch

    kwargs = dict(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                  attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long))
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        out = model.model(**kwargs, output_hidden_states=True)
    return [h.numpy() for h in out.hidden_states]


def hf_logits(model, ids, mask) -> np.ndarray:
    from _optional import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                     attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long)).logits.numpy()


def last_real_index(mask: np.ndarray) -> list[int]:
    return [int(np.flatnonzero(row)[-1]) for row in mask]


def ref_last_token(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.stack([h[b, i] for b, i in enumerate(last_real_index(mask))]).astype(np.float64)


def ref_mean(h: np.ndarray, mask: np.ndarray, prompt: int = 0) -> np.ndarray:
    """Row by row: the mean of the real tokens after the first ``prompt`` of them."""
    rows = []
    for b in range(h.shape[0]):
        real = np.flatnonzero(mask[b])[prompt:]
        rows.append(h[b, real].astype(np.float64).mean(axis=0))
    return np.stack(rows)


def torch_token_prepending(model, ids, mask, placeholder, start: int, end: int):
    """The official algorithm on a transformers model via forward pre-hooks: before decoder
    layer ``i`` (``start <= i < end``) overwrite, in place, the placeholder row with the last
    token's row. Returns all hidden states."""
    last = last_real_index(mask)
    rows = list(range(len(last)))
    handles = []

    def hook(module, args):
        h = args[0]
        h[rows, list(placeholder)] = h[rows, last]

    for i, layer in enumerate(model.model.layers):
        if start <= i < end:
            handles.append(layer.register_forward_pre_hook(hook))
    try:
        return hf_hidden_states(model, ids, mask)
    finally:
        for handle in handles:
            handle.remove()


def assert_close(actual, expected, *, rtol: float, what: str) -> None:
    """``max |actual - expected| <= rtol * max(1, max |expected|)``: float32 error grows with
    the magnitude of the residual stream (Gemma scales embeddings by sqrt(H))."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol} x {scale:.3g}"


# ----------------------------------------------------------------------------- Encoder tests
TOKENIZER_WORDS = (
    "the a man woman dog plays guitar slices onion river bank quickly under over red blue "
    "jumps runs happily zebra quantum xylophone this sentence means in one word query find "
    "passage instruct thinking step by"
).split()

# family style -> (special tokens, post-processor template, pad token)
TOKENIZER_STYLES = {
    # Qwen3-Embedding: EOS appended by the post-processor, EOS doubles as pad
    "qwen": (["<|endoftext|>"], "$A <|endoftext|>", "<|endoftext|>"),
    # Llama 2: BOS prepended, no pad token
    "llama": (["<s>", "</s>"], "<s> $A", None),
    # Gemma: BOS prepended, a pad token
    "gemma": (["<pad>", "<eos>", "<bos>"], "<bos> $A", "<pad>"),
}


def save_tokenizer(folder, style: str, *, vocab_size: int = 320, padding_side: str = "left"):
    """A byte-level BPE tokenizer trained on ``TOKENIZER_WORDS`` (any text tokenises) in the
    special-token style of a family, saved to ``folder``; returns it reloaded."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials, template, pad = TOKENIZER_STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([" ".join(TOKENIZER_WORDS)] * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in specials])
    bos = {"llama": "<s>", "gemma": "<bos>"}.get(style)
    eos = {"qwen": "<|endoftext|>", "llama": "</s>", "gemma": "<eos>"}[style]
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
        padding_side=padding_side)
    fast.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def official_tp_texts(sentences, template: str) -> list[str]:
    """The official Token Prepending batcher's text preparation, written out from its
    description (evaluate.py): end the sentence with '.' unless it ends in . ? " ',
    replace double quotes by single ones, a final '?' becomes '.', then put it in the
    template (``*sent 0*`` there, ``{text}`` here)."""
    out = []
    for s in sentences:
        if len(s) > 0 and s[-1] not in ".?\"'":
            s = s + "."
        s = s.replace('"', "'")
        if s.endswith("?"):
            s = s[:-1] + "."
        out.append(template.replace("{text}", s).strip())
    return out


def hf_pooled(model, tokenizer, texts, *, pooling: str, prompt_tokens: int = 0) -> np.ndarray:
    """float64 reference embeddings from a transformers base model, each text run alone (no
    padding at all): ``last_token`` or ``mean`` without the first ``prompt_tokens`` tokens."""
    from _optional import torch

    rows = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            h = model(input_ids=ids).last_hidden_state[0].double().numpy()
        rows.append(h[-1] if pooling == "last_token" else h[prompt_tokens:].mean(axis=0))
    return np.stack(rows)
