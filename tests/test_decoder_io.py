"""Decoder checkpoints and configs: bf16 and sharded safetensors read without torch, the
scanned layout's export, family defaults and RoPE tables against transformers' own
interpretation, and clear errors for bad configs, weights and inputs."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _decoder_refs import build

from jaxembed.models.decoder import (
    Decoder,
    DecoderConfig,
    TokenPrepending,
    load_decoder,
    placeholder_positions,
    save_decoder,
)
from jaxembed.models.decoder.attention import attend
from jaxembed.models.decoder.families import SUPPORTED_DECODER_TYPES
from jaxembed.models.decoder.rope import RopeConfig, inverse_frequencies
from jaxembed.models.decoder.weights import flax_to_hf, hf_to_flax, split_state
from jaxembed.models.model_files import read_state_dict

TINY = dict(vocab_size=16, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8)


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in model.model.state_dict().items()}


def test_bf16_and_sharded_checkpoints_load_without_torch(tmp_path, rng, monkeypatch):
    from _optional import torch

    ref = build("gemma2_bidirectional", tmp_path / "f32", int(rng.integers(2**31)))
    ref.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
    index = json.loads((tmp_path / "bf16" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    raw = read_state_dict(tmp_path / "bf16")
    assert raw["model.embed_tokens.weight"].dtype == jnp.bfloat16
    ckpt = load_decoder(tmp_path / "bf16")
    monkeypatch.undo()
    want = _state_dict(ref)  # the bf16 values, widened by torch
    got = flax_to_hf(ckpt.params, ckpt.config)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(ckpt.extra["lm_head.weight"],
                                  ref.lm_head.weight.detach().float().numpy())


def test_scanned_params_export_and_reload(tmp_path, rng):
    build("qwen3_window_bias_tied", tmp_path / "hf", int(rng.integers(2**31)))
    flat = load_decoder(tmp_path / "hf")
    stacked = load_decoder(tmp_path / "hf", scan_layers=True)
    assert stacked.params["layers"]["layer"]["attn"]["q_proj"]["kernel"].shape[0] == 3
    save_decoder(tmp_path / "out", stacked.config, stacked.params, prefix="")
    d = json.loads((tmp_path / "out" / "config.json").read_text())
    assert d["architectures"] == ["Qwen3Model"] and "rope_scaling" not in d
    again = load_decoder(tmp_path / "out")
    assert again.prefix == "" and again.config == flat.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, again.params, flat.params)


@pytest.mark.parametrize("model_type", SUPPORTED_DECODER_TYPES)
def test_family_defaults_match_transformers(model_type):
    """A config.json that only names the family gets transformers' class defaults."""
    import transformers

    hf = transformers.AutoConfig.for_model(model_type)
    cfg = DecoderConfig.from_hf_dict({"model_type": model_type})
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                  "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(cfg, field) == getattr(hf, field), field
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    assert cfg.head_dim == head_dim
    types = [("full" if w is None else "sliding") + "_attention" for w, _ in cfg.layer_windows]
    sliding = getattr(hf, "sliding_window", None)
    assert types == list(getattr(hf, "layer_types", None) or
                         [("sliding" if sliding else "full") + "_attention"] * len(types))
    ropes = hf.rope_parameters
    if model_type == "gemma3_text":
        assert [r.to_hf() for r in cfg.ropes] == [ropes["full_attention"],
                                                   ropes["sliding_attention"]]
    else:
        assert cfg.ropes[0].to_hf() == ropes


@pytest.mark.parametrize("legacy", [
    {"model_type": "llama", "rope_theta": 1234.0, "rope_scaling": {"type": "linear", "factor": 2}},
    {"model_type": "qwen2", "rope_theta": 1e6, "rope_scaling": None},
    {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    {"model_type": "gemma3_text", "rope_theta": 5e5, "rope_local_base_freq": 99.0,
     "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    {"model_type": "gemma3_text", "rope_scaling": {"type": "linear", "factor": 8.0}},
])
def test_legacy_rope_spellings_read_as_transformers_reads_them(legacy, tmp_path):
    import transformers

    (tmp_path / "config.json").write_text(json.dumps(legacy))
    hf = transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters
    cfg = DecoderConfig.from_file(tmp_path / "config.json")
    if legacy["model_type"] == "gemma3_text":
        # transformers keeps a legacy "type" key but it does not override rope_type
        hf = [{k: v for k, v in hf[t].items() if k != "type"} for t in ("full_attention",
                                                                       "sliding_attention")]
        got = [r.to_hf() for r in cfg.ropes]
        assert [g["rope_type"] for g in got] == [h["rope_type"] for h in hf]
        assert [g["rope_theta"] for g in got] == [h["rope_theta"] for h in hf]
    else:
        want = {k: v for k, v in hf.items() if k != "type"}
        assert cfg.ropes[0].to_hf() == want


@pytest.mark.parametrize("params", [
    {"rope_type": "default", "rope_theta": 10000.0},
    {"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0},
    {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64, "rope_theta": 500000.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
     "rope_theta": 10000.0},
    {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 128,
     "rope_theta": 1e6, "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5,
     "truncate": False},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
     "rope_theta": 10000.0, "attention_factor": 1.5},
])
def test_rope_tables_match_transformers(params):
    from _optional import needs_torch

    needs_torch()  # transformers computes the tables in torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_cfg = transformers.LlamaConfig(hidden_size=256, num_attention_heads=2,
                                      max_position_embeddings=256, rope_parameters=dict(params))
    if params["rope_type"] == "default":
        fn = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding
        want, want_scale = fn.compute_default_rope_parameters(hf_cfg)
    else:
        want, want_scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg)
    rope = RopeConfig.from_hf(params, theta=10000.0, max_position_embeddings=256)
    inv, scale = inverse_frequencies(rope, head_dim=128, max_position_embeddings=256)
    # a few float32 ulps: transformers evaluates the formulas in float32, we in float64
    np.testing.assert_allclose(inv, want.numpy(), rtol=5e-7)
    assert scale == pytest.approx(want_scale, rel=1e-12)


@pytest.mark.parametrize("patch, match", [
    ({"model_type": "bert"}, "supported: .*qwen3.*gemma3_text"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
    ({"head_dim": 7}, "even"),
    ({"hidden_act": "gelu_fast"}, "unsupported hidden_act"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1.0}}, "unsupported rope_type"),
    ({"rope_parameters": {"rope_type": "linear"}}, r"needs \['factor'\]"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_size": 0}, r"hidden_size must be in \[1, 65536\], got 0"),
    ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ({"is_causal": "no"}, "is_causal must be true or false"),
    ({"model_type": "gemma2", "use_bidirectional_attention": True}, "ambiguous"),
    ({"model_type": "qwen3", "layer_types": ["sliding_attention", "full_attention"]},
     "no sliding_window"),
    ({"model_type": "qwen3", "layer_types": ["full_attention"]}, "layer_types must list 2"),
    ({"model_type": "mistral", "sliding_window": 0}, r"sliding_window must be in \[1, "),
    ({"model_type": "gemma3_text", "rope_parameters": {"rope_type": "default"}},
     "keyed by layer type"),
])
def test_bad_configs_are_refused_with_the_reason(patch, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig.from_hf_dict({"model_type": "llama", **TINY, **patch})


def test_configs_a_family_cannot_express_are_refused_on_export():
    cfg = DecoderConfig.from_hf_dict({"model_type": "llama", **TINY})
    windowed = dataclasses.replace(cfg, layer_windows=((3, 0), (None, 0)))
    with pytest.raises(ValueError, match="llama config.json cannot express"):
        windowed.to_hf_dict()
    with pytest.raises(ValueError, match="cannot express"):
        dataclasses.replace(cfg, qk_norm=True).to_hf_dict()


def test_bad_checkpoints_are_refused_with_the_reason(tmp_path, rng):
    build("qwen2_tied", tmp_path, int(rng.integers(2**31)))
    cfg = DecoderConfig.from_file(tmp_path / "config.json")
    base, _, prefix = split_state(read_state_dict(tmp_path))
    assert prefix == "model."
    broken = dict(base)
    del broken["layers.1.mlp.up_proj.weight"]
    broken["layers.0.self_attn.k_proj.bias"] = np.zeros(5, np.float32)
    broken["layers.0.extra.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ValueError) as e:
        hf_to_flax(broken, cfg)
    msg = str(e.value)
    assert "missing keys ['layers.1.mlp.up_proj.weight']" in msg
    assert "unexpected keys ['layers.0.extra.weight']" in msg
    assert "layers.0.self_attn.k_proj.bias: expected (16,), found (5,)" in msg
    with pytest.raises(ValueError, match="unexpected base-model prefix 'transformer.'"):
        split_state({"transformer.embed_tokens.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="outside the base model"):
        split_state({"model.embed_tokens.weight": np.zeros(1), "score.weight": np.zeros(1)})
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8])  # truncated
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_decoder(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_decoder(tmp_path)
    params = hf_to_flax(base, cfg)
    with pytest.raises(ValueError, match="prefix must be"):
        save_decoder(tmp_path / "out", cfg, params, prefix="transformer.")
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"needs extra\['lm_head.weight'\]"):
        save_decoder(tmp_path / "out", untied, params)


def test_bad_inputs_are_refused_with_the_reason():
    cfg = DecoderConfig.from_hf_dict({"model_type": "gemma2", **TINY,
                                      "rope_parameters": {"rope_type": "dynamic", "factor": 2}})
    ids = jnp.zeros((2, 5), jnp.int32)
    mask = jnp.ones((2, 5), jnp.int32)

    def init(*args, module=Decoder(cfg), **kwargs):
        return jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))

    init(ids, mask)
    with pytest.raises(ValueError, match="attention_mask shape"):
        init(ids, mask[:, :4])
    with pytest.raises(ValueError, match="integers"):
        init(ids.astype(jnp.float32), mask)
    with pytest.raises(ValueError, match="position_ids must be"):
        init(ids, mask, jnp.zeros((3, 5), jnp.int32))
    with pytest.raises(ValueError, match="placeholder_positions must be"):
        init(ids, mask, token_prepending=TokenPrepending(jnp.zeros(3, jnp.int32)))
    with pytest.raises(ValueError, match="dynamic RoPE"):
        init(jnp.zeros((1, 9), jnp.int32), jnp.ones((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="start_layer < end_layer"):
        TokenPrepending(jnp.zeros(2, jnp.int32), start_layer=3, end_layer=3)
    with pytest.raises(ValueError, match=r"rows \[1\] contain no placeholder token id 7"):
        placeholder_positions(np.array([[1, 7, 7], [1, 2, 3]]), 7)
    q = jnp.zeros((1, 3, 4, 8))
    with pytest.raises(ValueError, match="cannot soft-cap"):
        attend(q, q[:, :, :2], q[:, :, :2], jnp.ones((1, 1, 3, 3), bool), scale=1.0,
               softcap=50.0, implementation="dot_product")
