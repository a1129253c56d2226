"""LoRA on the real models: a tiny random BERT (``tiny_bert_dir``) and a tiny random Qwen3
built by transformers. At init the adapted model is the base bit for bit; the merged export,
read back by PyTorch transformers, equals the adapted JAX forward; a scanned decoder takes
stacked adapters; adapter files refuse another base.

Tolerance 1e-5 of max(1, max |ref|): the JAX/PyTorch parity of the plain models
(test_decoder_parity.py, test_encoder.py) -- merging changes the weights, not the numerics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _decoder_refs import assert_close, build, hf_hidden_states, load_reference, padded_batch

from jaxembed import lora
from jaxembed.models.decoder import Decoder, load_decoder, save_decoder
from jaxembed.models.decoder.weights import stack_layers
from jaxembed.models.encoder import Encoder

RTOL = 1e-5
BERT_TARGET = r"layer_\d+/(attention/(query|key|value|output)|intermediate|output)/kernel"
DECODER_TARGET = r"(layer_\d+|layers/layer)/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"
# adapted params are made by their own program, so the model's forward is one compiled
# program for base and adapted params (inside one jit XLA may reorder float32 rounding)
apply = jax.jit(lora.apply, static_argnums=2)


def _perturb(adapters, rng, std=0.05):
    """B ~ N(0, std^2) (B = 0 at init): updates of the order of the weights themselves."""
    def leaf(path, x):
        if jax.tree_util.keystr(path).endswith("'lora_b']"):
            return jnp.asarray(std * rng.standard_normal(x.shape), x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(leaf, adapters)


def _bert_batch(rng, vocab, rows=4, length=8):
    ids = rng.integers(1000, vocab, (rows, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    enc = Encoder.from_pretrained(tiny_bert_dir)
    return enc, enc.param_axes()


def test_bert_init_is_the_base_and_merged_export_matches_transformers(bert, rng, tmp_path):
    import torch
    import transformers

    enc, axes = bert
    spec = lora.LoraSpec(target=BERT_TARGET, rank=4, alpha=8.0)
    embed = jax.jit(enc.embed)
    assert {t.layout for t in lora.find_targets(enc.params, spec, axes=axes).values()} == {
        "io", "ioo", "iio"}
    adapters = lora.init(enc.params, spec, jax.random.key(int(rng.integers(2**31))), axes=axes)
    batch = _bert_batch(rng, enc.config.vocab_size)
    base = np.asarray(embed(enc.params, batch))
    jax.tree.map(np.testing.assert_array_equal, apply(enc.params, adapters, spec), enc.params)
    np.testing.assert_array_equal(embed(apply(enc.params, adapters, spec), batch), base)

    adapters = _perturb(adapters, rng)
    adapted = np.asarray(embed(apply(enc.params, adapters, spec), batch))
    assert np.abs(adapted - base).max() > 1e-2  # the update is visible
    folder = enc.save_pretrained(tmp_path / "merged", params=lora.merge(enc.params, adapters, spec))
    model = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        h = model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(batch["attention_mask"])).last_hidden_state.numpy()
    m = batch["attention_mask"][..., None].astype(np.float64)
    want = (h * m).sum(1) / m.sum(1)  # the encoder's default mean pooling
    assert_close(adapted, want, rtol=RTOL, what="merged BERT export vs adapted forward")


def test_bert_adapter_files_refuse_another_base(bert, rng, tmp_path):
    enc, axes = bert
    spec = lora.LoraSpec(target=r"layer_\d+/attention/(query|value)/kernel", rank=2, alpha=4.0)
    adapters = _perturb(lora.init(enc.params, spec, jax.random.key(0), axes=axes), rng)
    folder = lora.save_adapters(tmp_path / "ad", adapters, spec, base_params=enc.params)
    loaded, spec2 = lora.load_adapters(folder, enc.params)
    assert spec2 == spec
    jax.tree.map(np.testing.assert_array_equal, loaded, adapters)
    # the merged model is another base: loading the adapters onto it again is refused
    merged = lora.merge(enc.params, adapters, spec)
    with pytest.raises(ValueError, match="trained on other base weights"):
        lora.load_adapters(folder, merged)


def test_decoder_merged_export_and_scanned_layers_match_transformers(rng, tmp_path):
    build("qwen3", tmp_path / "hf", int(rng.integers(2**31)), num_hidden_layers=2)
    ckpt = load_decoder(tmp_path / "hf")
    cfg = ckpt.config
    ids, mask = padded_batch(rng, cfg.vocab_size)
    spec = lora.LoraSpec(target=DECODER_TARGET, rank=4, alpha=8.0)
    axes = lora.module_axes(Decoder(cfg), ids, mask)
    layouts = {p.split("/", 1)[1]: t.layout
               for p, t in lora.find_targets(ckpt.params, spec, axes=axes).items()}
    assert layouts == {"attn/q_proj/kernel": "ioo", "attn/k_proj/kernel": "ioo",
                       "attn/v_proj/kernel": "ioo", "attn/o_proj/kernel": "iio",
                       "mlp/gate_proj/kernel": "io", "mlp/up_proj/kernel": "io",
                       "mlp/down_proj/kernel": "io"}
    adapters = lora.init(ckpt.params, spec, jax.random.key(int(rng.integers(2**31))), axes=axes)

    def forward(params, model=Decoder(cfg)):
        return model.apply({"params": params}, ids, mask).last_hidden_state

    forward = jax.jit(forward, static_argnames="model")
    base = np.asarray(forward(ckpt.params))
    jax.tree.map(np.testing.assert_array_equal, apply(ckpt.params, adapters, spec), ckpt.params)
    np.testing.assert_array_equal(forward(apply(ckpt.params, adapters, spec)), base)

    adapters = _perturb(adapters, rng)
    adapted = np.asarray(forward(apply(ckpt.params, adapters, spec)))
    assert np.abs(adapted - base).max() > 1e-2
    save_decoder(tmp_path / "merged", cfg, lora.merge(ckpt.params, adapters, spec),
                 extra=ckpt.extra, hf_config=ckpt.hf_config, prefix=ckpt.prefix)
    want = hf_hidden_states(load_reference(tmp_path / "merged"), ids, mask)[-1]
    assert_close(adapted, want, rtol=RTOL, what="merged Qwen3 export vs adapted forward")

    # scan_layers: one stacked kernel per projection, adapters with a leading layer axis
    scanned = load_decoder(tmp_path / "hf", scan_layers=True)
    model = Decoder(cfg, scan_layers=True)
    found = lora.find_targets(scanned.params, spec, axes=lora.module_axes(model, ids, mask))
    assert found["layers/layer/attn/o_proj/kernel"].layout == "siio"
    stacked = stack_layers(adapters, cfg.num_hidden_layers)
    got = forward(apply(scanned.params, stacked, spec), model=model)
    assert_close(got, want, rtol=RTOL, what="scanned adapted forward")
