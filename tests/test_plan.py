"""``jaxembed plan``: the real train step compiled for a TPU topology on this CPU machine.

The compile tests need libtpu (``pip install 'jaxembed[tpu]'``, part of ``dev``)
and are skipped without it; no TPU is used.
"""

from __future__ import annotations

import json
import pathlib

import jax
import pytest

from jaxembed.cli import main
from jaxembed.models.config import EncoderConfig
from jaxembed.train import plan as plan_mod
from jaxembed.train.config import TrainConfig
from jaxembed.train.flops import train_step_flops

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parent.parent
KEYS = {"chips", "per_chip_bytes", "hbm_bytes_per_chip", "fits", "flops_per_step",
        "flops_per_chip", "optimal_seconds", "model_flops_per_step", "sentences_per_s_bound",
        "mfu_bound", "largest_params", "largest_activations", "argument_bytes", "temp_bytes"}


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A config.json only (no weights): 1 layer, hidden 128, a 16k vocabulary, so the
    embedding table (8 MiB, sharded) dominates the state and matmuls dominate FLOPs."""
    folder = tmp_path_factory.mktemp("plan_model")
    config = EncoderConfig(vocab_size=16384, hidden_size=128, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=512, max_position_embeddings=64)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict()))
    return folder


def test_unknown_topology_lists_the_known_ones(capsys):
    assert main(["plan", str(REPO / "configs" / "quickstart.py"), "--topology", "v9x:2x2"]) == 2
    err = capsys.readouterr().err
    assert "unknown TPU topology 'v9x:2x2'" in err and "v5p" in err and "v5p:2x2x2" in err
    with pytest.raises(ValueError, match="v4 needs 3 positive sizes"):
        plan_mod.parse_topology("v4:2x2")
    assert plan_mod.parse_topology("v6e:2x4") == ("v6e", (2, 4))


def test_missing_libtpu_says_how_to_install(monkeypatch):
    real = plan_mod.importlib.util.find_spec
    monkeypatch.setattr(plan_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'jaxembed\[tpu\]'"):
        plan_mod.tpu_devices("v5p:2x2x1")


def test_mesh_and_batch_must_divide_the_devices(small_model):
    cfg = TrainConfig(model=str(small_model), batch_size=16, max_length=32)
    with pytest.raises(ValueError, match=r"mesh data=3 x fsdp=1 != 8 devices"):
        plan_mod.abstract_step(cfg.replace(mesh_data=3), jax.devices())
    with pytest.raises(ValueError, match="batch_size 12 is not divisible by the 8 devices"):
        plan_mod.abstract_step(cfg.replace(batch_size=12), jax.devices())


def test_model_config_needs_only_config_json(small_model):
    assert plan_mod.model_config(TrainConfig(model=str(small_model))).vocab_size == 16384
    large = plan_mod.model_config(TrainConfig(model="google-bert/bert-large-uncased"))
    assert (large.hidden_size, large.num_hidden_layers, large.intermediate_size) == (1024, 24, 4096)
    with pytest.raises(FileNotFoundError, match="config.json"):
        plan_mod.model_config(TrainConfig(model="/nonexistent/model"))


def test_plan_on_v5p_2x2x1(small_model, tmp_path, capsys):
    """fsdp=1 (library) and fsdp=4 (CLI --json) of one unsupervised SimCSE step on 4 v5p chips."""
    pytest.importorskip("libtpu")
    import os

    env_before = dict(os.environ)
    cfg = TrainConfig(model=str(small_model), objective="simcse_unsup", batch_size=16,
                      max_length=32, mixed_precision=True, mesh_data=4, mesh_fsdp=1)
    data = plan_mod.plan(cfg, topology="v5p:2x2x1")
    config_py = tmp_path / "cfg.py"
    config_py.write_text("from jaxembed.train.config import TrainConfig\n\n"
                         "def get_config(arg=None):\n"
                         f"    return TrainConfig(**{cfg.to_dict()!r})\n")
    assert main(["plan", str(config_py), "--topology", "v5p:2x2x1", "--set", "mesh_data=1",
                 "--set", "mesh_fsdp=4", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    fsdp = json.loads(lines[0])
    # e.g. a TPU_WORKER_HOSTNAMES left behind made a later `jaxembed train` in this
    # process take itself for a TPU pod worker and call jax.distributed.initialize
    changed = {k for k in set(env_before) | set(os.environ) if env_before.get(k) != os.environ.get(k)}
    assert changed <= {"ALLOW_MULTIPLE_LIBTPU_LOAD", "TPU_LIBRARY_PATH", "TPU_SKIP_MDS_QUERY",
                       "TF_CPP_MIN_LOG_LEVEL"}, changed

    for r in (data, fsdp):
        assert KEYS <= set(r)
        assert r["chips"] == 4 and r["chip"] == "TPU v5"
        assert r["hbm_bytes_per_chip"] == 95 * 2**30 and r["fits"] is True
        assert r["per_chip_bytes"] == (r["argument_bytes"] + r["output_bytes"]
                                       - r["alias_bytes"] + r["temp_bytes"]) > 0
        # XLA's count against 6 N tokens + attention: it adds softmax, LayerNorm, GELU and
        # AdamW elementwise work and the embedding-gradient scatter (measured 1.01x here)
        assert 0.9 < r["flops_per_step"] / r["model_flops_per_step"] < 1.3
        assert r["flops_per_step"] == pytest.approx(4 * r["flops_per_chip"])
        assert 0 < r["optimal_seconds"] < 1 and 0 < r["mfu_bound"] <= 1
        assert r["sentences_per_s_bound"] == pytest.approx(16 / r["optimal_seconds"])
        assert r["activation_constraints"] >= 8  # the encoder's constraints reached the program
        assert r["largest_params"][0]["name"] == "encoder/embeddings/word_embeddings/embedding"
    expected = train_step_flops(data["params"], plan_mod.model_config(cfg), seq_len=32,
                                sequences=32)
    assert data["model_flops_per_step"] == pytest.approx(expected)
    # the same model work; with data=4 every chip also runs the whole AdamW update of the
    # replicated embedding table (~21 FLOPs x 2.1M params x 3 extra chips: 9 % more here)
    assert 0.8 * data["flops_per_step"] < fsdp["flops_per_step"] < data["flops_per_step"]
    # params + AdamW moments: ~25 MiB replicated, a quarter of the embedding part with fsdp=4
    assert fsdp["argument_bytes"] < 0.4 * data["argument_bytes"]
    # temporaries: the embedding rows are gathered from the float32 table (issue #15.3:
    # no bf16 scatter-add gradients), so fsdp=4 all-gathers it in float32, 2x the bf16
    # copy flax Embed(dtype=bf16) gathered: 0.62x here against 0.52x before (+4.4 MiB)
    assert fsdp["per_chip_bytes"] < 0.65 * data["per_chip_bytes"]
    assert fsdp["largest_params"][0]["spec"] == "P(None, 'fsdp')"
    assert data["mesh"] == {"data": 4, "fsdp": 1} and fsdp["mesh"] == {"data": 1, "fsdp": 4}


def test_peak_flops_of_tpu_device_kinds():
    """The device kinds JAX reports (v5p is "TPU v5", v5e "TPU v5 lite", v6e "TPU v6 lite")
    against Google's published bf16 peaks."""
    from jaxembed.train.flops import peak_flops_per_device

    for kind, peak in [("TPU v4", 275e12), ("TPU v5", 459e12), ("TPU v5 lite", 197e12),
                       ("TPU v6 lite", 918e12)]:
        assert peak_flops_per_device(kind, bf16=True) == peak


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A Qwen3 config.json only: 1 layer, hidden 128, GQA 4/2 heads of 64, a 16k vocabulary
    (its 8 MiB embedding dominates the state, so FSDP's saving is visible)."""
    folder = tmp_path_factory.mktemp("plan_decoder")
    (folder / "config.json").write_text(json.dumps(dict(
        model_type="qwen3", vocab_size=16384, hidden_size=128, intermediate_size=512,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        max_position_embeddings=128, tie_word_embeddings=True)))
    return folder


def test_decoder_shape_presets_and_folder_detection(tiny_decoder, small_model):
    from jaxembed.train.plan_decoder import DECODER_SHAPES, decoder_config

    big = decoder_config(TrainConfig(), "qwen3-8b")
    assert (big.hidden_size, big.num_hidden_layers, big.num_key_value_heads) == (4096, 36, 8)
    assert set(DECODER_SHAPES) == {"qwen3-0.6b", "qwen3-8b", "llama3-8b"}
    assert decoder_config(TrainConfig(model=str(tiny_decoder))).model_type == "qwen3"
    assert decoder_config(TrainConfig(model=str(small_model))) is None  # an encoder
    with pytest.raises(ValueError, match="unknown decoder shape 'qwen9'.*qwen3-8b"):
        decoder_config(TrainConfig(), "qwen9")


def test_plan_decoder_on_v5p_2x2x1(tiny_decoder, tmp_path, capsys):
    """A decoder embedder step (last token, InfoNCE) with data=4 (library) and fsdp=4 (CLI)."""
    pytest.importorskip("libtpu")
    cfg = TrainConfig(model=str(tiny_decoder), batch_size=16, max_length=32,
                      mixed_precision=True, mesh_data=4, mesh_fsdp=1, temperature=0.02)
    data = plan_mod.plan(cfg, topology="v5p:2x2x1", scan_layers=False)
    config_py = tmp_path / "cfg.py"
    config_py.write_text("from jaxembed.train.config import TrainConfig\n\n"
                         "def get_config(arg=None):\n"
                         f"    return TrainConfig(**{cfg.to_dict()!r})\n")
    assert main(["plan", str(config_py), "--topology", "v5p:2x2x1", "--set", "mesh_data=1",
                 "--set", "mesh_fsdp=4", "--remat", "--no-scan-layers", "--json"]) == 0
    fsdp = json.loads(capsys.readouterr().out.strip())
    for r in (data, fsdp):
        assert KEYS <= set(r) and r["chips"] == 4 and r["fits"] is True
        assert r["objective"] == "qwen3 decoder, last token, InfoNCE"
        assert r["sequences_per_step"] == 32 and r["scan_layers"] is False
        assert r["largest_params"][0]["name"] == "encoder/embed_tokens/embedding"
        # 6 N tokens + attention against XLA's count (softmax, RMSNorm, AdamW extra; the
        # 16k x 128 embedding's gradient scatter is not in 6 N): 1.0x-1.3x expected
        assert 0.9 < r["flops_per_step"] / r["model_flops_per_step"] < 1.5
        assert 0 < r["mfu_bound"] <= 1
    assert data["remat"] is False and fsdp["remat"] is True
    assert fsdp["largest_params"][0]["spec"] == "P(None, 'fsdp')"
    # params + AdamW moments: the 8 MiB embedding (x3) split four ways
    assert fsdp["argument_bytes"] < 0.5 * data["argument_bytes"]
    assert fsdp["per_chip_bytes"] < 0.8 * data["per_chip_bytes"]


DECODER_LORA = {"target": r"(layers/layer|layer_\d+)/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)"
                          r"/kernel", "rank": 8, "alpha": 16}


def test_plan_decoder_lora_keeps_only_adapters_in_the_optimizer(tiny_decoder, capsys):
    """LoRA on every projection of the tiny decoder, scanned, fsdp=4: the frozen base is
    sharded as in full fine-tuning, the AdamW moments cover the adapters only."""
    pytest.importorskip("libtpu")
    cfg = TrainConfig(model=str(tiny_decoder), batch_size=16, max_length=32,
                      mixed_precision=True, mesh_data=1, mesh_fsdp=4, temperature=0.02)
    full = plan_mod.plan(cfg, topology="v5p:2x2x1")
    lora_cfg = cfg.replace(lora=DECODER_LORA)
    low = plan_mod.plan(lora_cfg, topology="v5p:2x2x1")
    # adapters of rank 8 on 7 kernels of one layer: q,k,v [128, 8]+[8, 4|2, 64],
    # o [4, 64, 8]+[8, 128], gate/up [128, 8]+[8, 512], down [512, 8]+[8, 128]
    adapter_params = (3 * 128 * 8 + 8 * (256 + 128 + 128) + 256 * 8 + 8 * 128
                      + 2 * (128 * 8 + 8 * 512) + 512 * 8 + 8 * 128)
    assert low["trainable_params"] == adapter_params
    assert low["params"] == full["params"] + adapter_params
    assert full["trainable_params"] == full["params"] and full["lora"] is None
    assert low["lora"] == DECODER_LORA
    # arguments: full = params + 2 AdamW moments (3x the 8.5 MiB base over 4 chips);
    # LoRA = the base once + adapters x 3: measured 3.5 / 9.4 MiB = 0.37 (shapes only, no
    # seed). Were the moments over the base, this would be ~1.
    assert low["argument_bytes"] < 0.4 * full["argument_bytes"]
    # the frozen base keeps full fine-tuning's shardings
    assert low["largest_params"][0] == full["largest_params"][0]
    assert low["largest_params"][0]["spec"] == "P(None, 'fsdp')"
    assert "LoRA" in plan_mod.format_plan(low) and "trainable" in plan_mod.format_plan(low)


def test_a_program_over_hbm_is_reported_as_not_fitting(tiny_decoder, capsys):
    """The TPU compiler refuses a program whose temporaries exceed HBM; the plan reports
    ``fits: false`` with the demand it names (not an error), and the arguments' bytes per
    chip from the shardings: the same as a fitting plan's but for the larger batch."""
    pytest.importorskip("libtpu")
    assert plan_mod.hbm_shortfall("INTERNAL: something else") is None
    small = TrainConfig(model=str(tiny_decoder), batch_size=16, max_length=128,
                        mixed_precision=True, mesh_data=1, mesh_fsdp=4, temperature=0.02)
    fits = plan_mod.plan(small, topology="v5p:2x2x1")
    big = small.replace(batch_size=1 << 20)   # ~1.3 TiB of temporaries per chip
    r = plan_mod.plan(big, topology="v5p:2x2x1")
    assert r["fits"] is False and r["flops_per_step"] is None
    assert r["temp_bytes"] > r["hbm_available_bytes"] > 0.9 * r["hbm_bytes_per_chip"]
    assert r["per_chip_bytes"] == r["argument_bytes"] + r["temp_bytes"]
    # tokens: ids + mask int32 [B, 2, 128] over 4 chips, the rest (state) as the fitting plan
    batch_bytes = lambda b: 2 * b * 2 * 128 * 4 // 4  # noqa: E731
    assert r["argument_bytes"] - batch_bytes(1 << 20) == pytest.approx(
        fits["argument_bytes"] - batch_bytes(16), rel=0.01)
    assert r["params"] == fits["params"]
    assert "DOES NOT FIT" in plan_mod.format_plan(r)
