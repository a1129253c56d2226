"""The generic Flax decoder against PyTorch transformers (eager attention, float32) on tiny
random models of every supported family: every hidden state, every pooling, padding on the
left and right with mixed lengths in one batch, and the export read back by transformers.

Tolerance: float32 rounding grows with the residual stream's magnitude (up to ~12 here,
Gemma scales embeddings by sqrt(H)), so errors are judged relative to max(1, max |ref|):
``RTOL = 1e-5``. Stress run (seeds 0..29, every variant, both attention implementations,
all hidden states and poolings): the largest error / scale was 5.8e-6 (gemma3_bidirectional,
6 layers of bidirectional mixing), at most 3.0e-6 for every other variant.
"""

from __future__ import annotations

import numpy as np
import pytest
from _decoder_refs import (
    VARIANTS,
    assert_close,
    build,
    hf_hidden_states,
    hf_logits,
    load_reference,
    padded_batch,
    ref_last_token,
    ref_mean,
)

from jaxembed.models.decoder import (
    Decoder,
    last_token,
    load_decoder,
    mean,
    position_ids_from_mask,
    save_decoder,
)

RTOL = 1e-5
# these run the einsum ("xla") attention; the others "auto" (jax.nn.dot_product_attention
# unless the model soft-caps), so both implementations meet transformers on every feature
XLA_ATTENTION = ("qwen3", "qwen3_bidirectional_window", "llama_llama3",
                 "mistral_bidirectional_window", "gemma3_bidirectional")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_hidden_states_poolings_and_export_match_transformers(name, tmp_path, rng):
    ref = build(name, tmp_path / "hf", int(rng.integers(2**31)))
    ckpt = load_decoder(tmp_path / "hf")
    ids, mask = padded_batch(rng, ckpt.config.vocab_size)
    expected = hf_hidden_states(ref, ids, mask)

    attention = "xla" if name in XLA_ATTENTION else "auto"
    out = Decoder(ckpt.config, attention=attention).apply(
        {"params": ckpt.params}, ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == ckpt.config.num_hidden_layers + 1 == len(expected)
    for i, (got, want) in enumerate(zip(out.hidden_states, expected)):
        assert_close(got, want, rtol=RTOL, what=f"{name} hidden_states[{i}]")
    np.testing.assert_array_equal(out.last_hidden_state, out.hidden_states[-1])

    h = expected[-1]
    prompt = np.array([2, 1, 0, 3])  # per-row prompt lengths
    assert_close(last_token(out.last_hidden_state, mask), ref_last_token(h, mask), rtol=RTOL,
                 what="last_token")
    assert_close(mean(out.last_hidden_state, mask), ref_mean(h, mask), rtol=RTOL, what="mean")
    assert_close(mean(out.last_hidden_state, mask, prompt_lengths=2), ref_mean(h, mask, 2),
                 rtol=RTOL, what="mean without a 2-token prompt")
    want = np.stack([ref_mean(h[b:b + 1], mask[b:b + 1], int(p))[0] for b, p in enumerate(prompt)])
    assert_close(mean(out.last_hidden_state, mask, prompt_lengths=prompt), want, rtol=RTOL,
                 what="mean without per-row prompts")

    # export: transformers reads the folder back with bit-identical weights and outputs,
    # the LM head included (kept aside on load when untied, tied otherwise)
    save_decoder(tmp_path / "out", ckpt.config, ckpt.params, extra=ckpt.extra,
                 hf_config=ckpt.hf_config, prefix=ckpt.prefix)
    again = load_reference(tmp_path / "out")
    for got, want in zip(hf_hidden_states(again, ids, mask), expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(hf_logits(again, ids, mask), hf_logits(ref, ids, mask))


@pytest.mark.parametrize("name", ["llama_yarn_bidirectional", "gemma3"])
def test_explicit_position_ids_match_transformers(name, tmp_path, rng):
    """Padding-independent positions (cumsum of the mask, as transformers' generate)."""
    ref = build(name, tmp_path, int(rng.integers(2**31)))
    ckpt = load_decoder(tmp_path)
    ids, mask = padded_batch(rng, ckpt.config.vocab_size)
    pos = np.asarray(position_ids_from_mask(mask))
    n = mask[1].sum()
    np.testing.assert_array_equal(pos[1], np.r_[np.ones(9 - n), np.arange(n)])  # left-padded
    expected = hf_hidden_states(ref, ids, mask, position_ids=pos)
    out = Decoder(ckpt.config).apply({"params": ckpt.params}, ids, mask, pos,
                                     output_hidden_states=True)
    for i, (got, want) in enumerate(zip(out.hidden_states, expected)):
        assert_close(got, want, rtol=RTOL, what=f"hidden_states[{i}]")
