"""Flax encoder vs PyTorch ``transformers``: hidden states, poolings, loading errors,
dropout, bf16, remat, heads. Tiny random models built offline from HF configs."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import torch
import transformers

from jaxembed.models.config import EncoderConfig
from jaxembed.models.encoder import Encoder
from jaxembed.models.heads import PairScoreHead, ProjectionHead
from jaxembed.models.pooling import POOLING_METHODS, pool
from jaxembed.models.model_files import read_state_dict
from jaxembed.models.weights import flax_to_hf, hf_to_flax, param_table

TOL = 1e-5
KINDS = {
    "bert": (transformers.BertConfig, transformers.BertModel, 2, 64),
    "roberta": (transformers.RobertaConfig, transformers.RobertaModel, 1, 66),
    "xlm-roberta": (transformers.XLMRobertaConfig, transformers.XLMRobertaModel, 1, 66),
}


def make_hf(kind, folder, rng, *, pooler=True, layers=4, model_cls=None, **save_kw):
    """A random tiny HF model of ``kind`` saved to ``folder``; returns the torch model."""
    config_cls, default_cls, type_vocab, positions = KINDS[kind]
    torch.manual_seed(int(rng.integers(2**31)))
    cfg = config_cls(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=positions,
        type_vocab_size=type_vocab,
        hidden_act="gelu",
    )
    if model_cls is None:
        model = default_cls(cfg, add_pooling_layer=pooler).eval()
    else:
        model = model_cls(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values so a mis-mapping cannot hide
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder, **save_kw)
    return model


def padded_batch(rng, *, pad, batch=4, length=12, vocab=97, type_vocab=2):
    """Mixed-length batch: first row full, one row of length 2..3, rest random; ids avoid pad.

    One fixed shape for every test so the eager per-op compilation cache is shared
    (compiling is what costs time on a busy 2-core CI machine)."""
    lengths = rng.integers(2, length + 1, size=batch)
    lengths[0], lengths[-1] = length, rng.integers(2, 4)
    ids = rng.integers(3, vocab, size=(batch, length))
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, pad)
    types = rng.integers(0, type_vocab, size=(batch, length)) * mask
    return ids, mask, types


def ref_pool(hs, pooler_output, mask, method):
    """float64 NumPy pooling over HF hidden states."""
    hs = [h.numpy().astype(np.float64) for h in hs]
    m = mask.astype(np.float64)[..., None]
    if method == "cls":
        return pooler_output.numpy() if pooler_output is not None else hs[-1][:, 0]
    if method == "cls_before_pooler":
        return hs[-1][:, 0]
    if method == "mean":
        return (hs[-1] * m).sum(1) / m.sum(1)
    if method == "max":
        return np.where(m > 0, hs[-1], -np.inf).max(1)
    if method == "last4_mean":
        top = np.concatenate(hs[-4:], axis=-1)
        m = m.copy()
        m[:, 0] = 0
        return (top * m).sum(1) / m.sum(1)
    if method == "last_token":  # right padding: the row's last real token ([SEP])
        return hs[-1][np.arange(len(mask)), mask.sum(1) - 1]
    raise AssertionError(method)


@pytest.mark.parametrize("kind,pooler", [("bert", True), ("roberta", True), ("xlm-roberta", False)])
def test_parity_with_transformers(kind, pooler, tmp_path, rng):
    model = make_hf(kind, tmp_path, rng, pooler=pooler)
    enc = Encoder.from_pretrained(tmp_path)
    assert enc.config.model_type == kind and enc.config.add_pooling_layer == pooler
    ids, mask, types = padded_batch(rng, pad=enc.config.pad_token_id, type_vocab=KINDS[kind][2])
    with torch.no_grad():
        ref = model(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
    out = enc.apply(enc.params, ids, mask, types, output_hidden_states=True)
    np.testing.assert_allclose(
        out.last_hidden_state, ref.last_hidden_state.numpy(), atol=TOL, rtol=0
    )
    assert len(out.hidden_states) == len(ref.hidden_states) == 5
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=TOL, rtol=0)
    if pooler:
        np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=TOL, rtol=0)
    else:
        assert out.pooler_output is None
    for method in POOLING_METHODS:
        got = pool(out, jnp.asarray(mask), method)
        want = ref_pool(ref.hidden_states, ref.pooler_output if pooler else None, mask, method)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=method)
        e = enc.replace(pooling=method)
        np.testing.assert_allclose(
            e.embed(e.params, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}),
            want,
            atol=TOL,
            rtol=0,
            err_msg=method,
        )


def test_roberta_positions_count_non_pad_tokens(tmp_path, rng):
    """Left padding moves RoBERTa positions but not the real tokens' outputs (HF semantics)."""
    model = make_hf("roberta", tmp_path, rng)
    enc = Encoder.from_pretrained(tmp_path)
    ids = rng.integers(3, 97, size=(4, 12))
    ids[1, :4] = 1
    ids[3, :7] = 1  # left-padded second row
    mask = (ids != 1).astype(np.int64)
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = enc.apply(enc.params, ids, mask).last_hidden_state
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_weight_mapping_round_trip(tmp_path, rng):
    make_hf("bert", tmp_path, rng)
    cfg = EncoderConfig.from_file(tmp_path / "config.json")
    state = {k: v for k, v in read_state_dict(tmp_path).items() if k != "embeddings.position_ids"}
    back = flax_to_hf(hf_to_flax(state, cfg), cfg)
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k], err_msg=k)
    assert len(param_table(cfg)) == len(jax.tree.leaves(hf_to_flax(state, cfg)))


def _rewrite(folder, edit):
    from safetensors.numpy import save_file

    state = read_state_dict(folder)
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_missing_weight_is_named(tmp_path, rng):
    make_hf("bert", tmp_path, rng)
    _rewrite(tmp_path, lambda s: s.pop("encoder.layer.1.output.dense.bias"))
    with pytest.raises(
        ValueError, match=r"missing keys \['encoder\.layer\.1\.output\.dense\.bias'\]"
    ):
        Encoder.from_pretrained(tmp_path)


def test_misshaped_weight_is_named(tmp_path, rng):
    make_hf("bert", tmp_path, rng)

    def edit(s):
        s["encoder.layer.0.attention.self.key.weight"] = rng.standard_normal((32, 31)).astype(
            np.float32
        )

    _rewrite(tmp_path, edit)
    with pytest.raises(
        ValueError,
        match=r"encoder\.layer\.0\.attention\.self\.key\.weight: "
        r"expected \(32, 32\), found \(32, 31\)",
    ):
        Encoder.from_pretrained(tmp_path)


def test_unexpected_weight_is_named(tmp_path, rng):
    make_hf("bert", tmp_path, rng)

    def edit(s):
        s["encoder.layer.0.adapter.weight"] = rng.standard_normal((4, 4)).astype(np.float32)

    _rewrite(tmp_path, edit)
    with pytest.raises(
        ValueError, match=r"unexpected keys \['encoder\.layer\.0\.adapter\.weight'\]"
    ):
        Encoder.from_pretrained(tmp_path)


def test_unsupported_model_type(tmp_path, rng):
    make_hf("bert", tmp_path, rng)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        Encoder.from_pretrained(tmp_path)


def test_mlm_checkpoint_prefix_and_heads_ignored(tmp_path, rng):
    """``bert.`` prefix stripped, ``cls.predictions.*`` ignored."""
    model = make_hf("bert", tmp_path, rng, model_cls=transformers.BertForMaskedLM)
    keys = read_state_dict(tmp_path)
    assert any(k.startswith("bert.") for k in keys) and any(k.startswith("cls.") for k in keys)
    enc = Encoder.from_pretrained(tmp_path)
    ids, mask, _ = padded_batch(rng, pad=0)
    with torch.no_grad():
        ref = model.bert(
            torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(
        enc.apply(enc.params, ids, mask).last_hidden_state, ref, atol=TOL, rtol=0
    )


def test_pytorch_bin_and_sharded_safetensors(tmp_path, rng):
    model = make_hf("bert", tmp_path / "st", rng)
    ids, mask, _ = padded_batch(rng, pad=0)
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    # pytorch_model.bin only (loaded with weights_only=True)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    # sharded safetensors with an index
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    for sub in ("bin", "sharded"):
        enc = Encoder.from_pretrained(tmp_path / sub)
        np.testing.assert_allclose(
            enc.apply(enc.params, ids, mask).last_hidden_state, ref, atol=TOL, rtol=0, err_msg=sub
        )


def test_dropout_rng_semantics(tmp_path, rng):
    make_hf("bert", tmp_path, rng, layers=2)
    enc = Encoder.from_pretrained(tmp_path)
    ids, mask, _ = padded_batch(rng, pad=0)
    batch = {"input_ids": ids, "attention_mask": mask}
    k1, k2 = jax.random.split(jax.random.key(int(rng.integers(2**31))))
    f = enc.embed
    a = f(enc.params, batch, deterministic=False, dropout_rng=k1)
    b = f(enc.params, batch, deterministic=False, dropout_rng=k1)
    c = f(enc.params, batch, deterministic=False, dropout_rng=k2)
    d = f(enc.params, batch)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(d)).max() > 1e-3
    np.testing.assert_allclose(d, f(enc.params, batch), atol=0)
    with pytest.raises(ValueError, match="dropout_rng"):
        enc.embed(enc.params, batch, deterministic=False)


def test_bf16_compute_close_to_float32(tmp_path, rng):
    make_hf("bert", tmp_path, rng, layers=2)
    e32 = Encoder.from_pretrained(tmp_path, pooling="mean")
    e16 = Encoder.from_pretrained(tmp_path, pooling="mean", dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(e16.params))
    ids, mask, _ = padded_batch(rng, pad=0)
    out16 = e16.apply(e16.params, ids, mask)
    assert out16.last_hidden_state.dtype == jnp.bfloat16
    z16 = e16.embed(e16.params, {"input_ids": ids, "attention_mask": mask})
    z32 = e32.embed(e32.params, {"input_ids": ids, "attention_mask": mask})
    assert z16.dtype == jnp.float32 and np.isfinite(np.asarray(z16)).all()
    scale = np.abs(np.asarray(z32)).max()
    err = np.abs(np.asarray(z16) - np.asarray(z32)).max()
    assert 0 < err < 0.05 * scale


def test_remat_checkpoints_layers_and_keeps_values(tmp_path, rng):
    """remat=True wraps each layer in jax.checkpoint (seen in the grad jaxpr) and changes
    no value. (Gradient equality under checkpointing is JAX's guarantee; compiling two
    backward passes here would cost ~40 s on the shared CI cores.)"""
    make_hf("bert", tmp_path, rng, layers=2)
    plain = Encoder.from_pretrained(tmp_path)
    remat = Encoder.from_pretrained(tmp_path, remat=True)
    assert jax.tree.structure(plain.params) == jax.tree.structure(remat.params)
    ids, mask, _ = padded_batch(rng, pad=0)
    batch = {"input_ids": ids, "attention_mask": mask}
    key = jax.random.key(int(rng.integers(2**31)))
    outs = [e.embed(e.params, batch) for e in (plain, remat)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6, rtol=0)

    def grad_jaxpr(enc):
        loss = lambda p: jnp.sum(enc.embed(p, batch, deterministic=False, dropout_rng=key))
        return str(jax.make_jaxpr(jax.grad(loss))(enc.params))

    assert grad_jaxpr(remat).count("checkpoint") + grad_jaxpr(remat).count("remat") >= 2
    assert "checkpoint" not in grad_jaxpr(plain) and "remat" not in grad_jaxpr(plain)


def test_logical_axes_on_every_param(tmp_path, rng):
    make_hf("bert", tmp_path, rng, layers=2)
    enc = Encoder.from_pretrained(tmp_path)
    axes = enc.param_axes()
    specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert jax.tree.structure(enc.params) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    allowed = {"batch", "seq", "embed", "heads", "kv", "mlp", "vocab", None}
    for spec, leaf in zip(specs, jax.tree.leaves(enc.params)):
        assert len(spec) == leaf.ndim and set(spec) <= allowed and set(spec) != {None}
    # the trainer's rules table maps them onto a mesh, and sharded compute equals unsharded
    from jaxembed.train import sharding as shd

    mesh = shd.make_mesh(data=2, fsdp=4)
    shardings = nn.logical_to_mesh_sharding(axes, mesh, shd.LOGICAL_RULES)
    params = jax.device_put(enc.params, shardings)
    ids, mask, _ = padded_batch(rng, pad=0)
    batch = {"input_ids": ids, "attention_mask": mask}
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        sharded = jax.jit(enc.embed)(params, batch)
    np.testing.assert_allclose(sharded, enc.embed(enc.params, batch), atol=1e-5, rtol=0)


def test_projection_and_pair_heads(rng):
    x = rng.standard_normal((5, 6)).astype(np.float32)
    head = ProjectionHead(7)
    v = nn.meta.unbox(head.init(jax.random.key(int(rng.integers(2**31))), x))
    w, b = v["params"]["dense"]["kernel"], v["params"]["dense"]["bias"]
    np.testing.assert_allclose(head.apply(v, x), np.tanh(x.astype(np.float64) @ w + b), atol=1e-6)

    u, t = rng.standard_normal((2, 5, 6)).astype(np.float32)
    pair = PairScoreHead(hidden=9, out=3)
    v = nn.meta.unbox(pair.init(jax.random.key(int(rng.integers(2**31))), u, t))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
    feats = np.concatenate([u, t, u * t, np.abs(u - t)], axis=1).astype(np.float64)
    hid = np.maximum(feats @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
    want = hid @ p["out"]["kernel"] + p["out"]["bias"]
    np.testing.assert_allclose(pair.apply(v, u, t), want, atol=1e-5)
    with pytest.raises(ValueError, match="u and v"):
        pair.apply(v, u, t[:, :5])


def test_legacy_layernorm_names_and_config_defaults(tmp_path, rng):
    """TF-era ``LayerNorm.gamma/beta`` keys load; a RoBERTa config.json without
    ``pad_token_id`` gets transformers' default (1), not BERT's (0)."""
    model = make_hf("roberta", tmp_path, rng, layers=2)

    def edit(s):
        for k in [k for k in s if "LayerNorm" in k]:
            s[k.replace(".weight", ".gamma").replace(".bias", ".beta")] = s.pop(k)

    _rewrite(tmp_path, edit)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("pad_token_id")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    enc = Encoder.from_pretrained(tmp_path)
    assert enc.config.pad_token_id == 1
    ids, mask, _ = padded_batch(rng, pad=1)
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    np.testing.assert_allclose(
        enc.apply(enc.params, ids, mask).last_hidden_state, ref, atol=TOL, rtol=0
    )


def test_bf16_safetensors_load_exactly_without_torch(tmp_path, rng):
    """A bf16 checkpoint written by torch reads through safetensors' NumPy reader (no torch
    import, checked in a subprocess where ``import torch`` fails) and every weight equals
    torch's bf16 value upcast to float32, bit for bit."""
    import subprocess
    import sys

    model = make_hf("bert", tmp_path, rng, layers=2, pooler=True)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    want = {k: v.float().numpy() for k, v in model.state_dict().items()}
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxembed.models.model_files import read_state_dict\n"
        f"s = read_state_dict({str(tmp_path)!r})\n"
        "print(sorted({str(v.dtype) for v in s.values()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bfloat16" in out.stdout and "float32" not in out.stdout
    enc = Encoder.from_pretrained(tmp_path)
    got = flax_to_hf(jax.device_get(enc.params), enc.config)
    assert set(got) == set(want) - {"embeddings.position_ids"}
    for k, v in got.items():
        np.testing.assert_array_equal(v, want[k], err_msg=k)


# ----------------------------------------------------------------------------- issue #15:
# embedding lookups and attention implementations that compute the same function

def random_encoder(rng, model_type="bert", **module_kw):
    """A 2-layer random ``TransformerEncoder`` (parameters perturbed so LayerNorms and
    biases are not trivial) and a batch: right-padded rows of lengths 12, 5, 7 and one
    all-pad row. Returns ``(module, params, ids, mask, types)``."""
    from jaxembed.models.transformer import TransformerEncoder

    cfg = EncoderConfig(model_type=model_type, vocab_size=97, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        max_position_embeddings=66, type_vocab_size=2)
    lengths = np.array([12, 5, 7, 0])
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, rng.integers(3, 97, size=mask.shape), cfg.pad_token_id)
    types = rng.integers(0, 2, size=mask.shape) * mask
    ids, types = ids.astype(np.int32), types.astype(np.int32)
    module = TransformerEncoder(cfg, **module_kw)
    params = nn.meta.unbox(module.init(jax.random.key(0), ids, mask, types))["params"]
    params = jax.tree.map(
        lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
    return module, params, ids, mask, types


def test_lookup_rows_equal_flax_embed_and_sum_gradients_exactly(rng):
    """Every ``lookup_rows`` method gives ``flax.linen.Embed``'s rows (the pre-#15 path)
    bit for bit, ids from the end and out-of-range NaN rows included; ``"take"`` and
    ``"cast_take"`` have its gradient bit for bit, and every gradient is the float64
    scatter-add within the float32 summation bound ``eps * n_v * sum_v |g|`` (``n_v``
    ids of row ``v``, any summation order; a factor 2 over the first-order bound)."""
    from jaxembed.models.transformer import lookup_rows

    V, H = 7, 5
    table = rng.standard_normal((V, H)).astype(np.float32)
    ids = rng.integers(0, V, size=(6, 9)).astype(np.int32)
    ids[0, :4] = [-1, -V, V, -V - 1]  # from the end, from the end, out, out
    cot = rng.standard_normal(ids.shape + (H,)).astype(np.float32)
    embed = nn.Embed(V, H)
    old_rows, old_vjp = jax.vjp(lambda t: embed.apply({"params": {"embedding": t}}, ids), table)
    (old_grad,) = old_vjp(cot)
    valid = (ids >= -V) & (ids < V)
    rows_of = ids[valid] % V
    want_grad, abs_sum, count = np.zeros((V, H)), np.zeros((V, H)), np.zeros((V, 1))
    np.add.at(want_grad, rows_of, cot[valid].astype(np.float64))
    np.add.at(abs_sum, rows_of, np.abs(cot[valid]).astype(np.float64))
    np.add.at(count, rows_of, 1)
    assert np.isnan(np.asarray(old_rows)[0, 2:4]).all()
    for method in ("take", "onehot", "cast_take"):
        rows, vjp = jax.vjp(
            lambda t: lookup_rows(t, jnp.asarray(ids), method=method, dtype=jnp.float32), table)
        (grad,) = vjp(jnp.asarray(cot))
        np.testing.assert_array_equal(rows, old_rows, err_msg=method)
        if method != "onehot":
            np.testing.assert_array_equal(grad, old_grad, err_msg=method)
        bound = np.finfo(np.float32).eps * count * abs_sum
        assert (np.abs(np.asarray(grad, np.float64) - want_grad) <= bound).all(), method
    # compute dtype: "take"/"onehot" stay float32 (cast later), "cast_take" is Embed(dtype)
    for method in ("take", "onehot"):
        assert lookup_rows(table, ids, method=method, dtype=jnp.bfloat16).dtype == jnp.float32
    old16 = nn.Embed(V, H, dtype=jnp.bfloat16).apply({"params": {"embedding": table}}, ids)
    new16 = lookup_rows(table, ids, method="cast_take", dtype=jnp.bfloat16)
    assert new16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(new16.astype(jnp.float32), old16.astype(jnp.float32))
    # a one-row table is broadcast whatever the id, as flax.linen.Embed does
    one = table[:1]
    old_one = nn.Embed(1, H).apply({"params": {"embedding": one}}, ids)
    for method in ("take", "onehot", "cast_take"):
        got = lookup_rows(one, ids, method=method, dtype=jnp.float32)
        np.testing.assert_array_equal(got, old_one, err_msg=method)
    with pytest.raises(ValueError, match="unknown embedding lookup 'gather'"):
        lookup_rows(table, ids, method="gather")


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_embedding_lookups_keep_the_float32_encoder_exact(model_type, rng):
    """In float32 every ``embedding_lookup`` computes the pre-#15 embedding sum
    (``"cast_take"``, i.e. ``flax.linen.Embed``) bit for bit, jitted. The tables'
    gradients (the VJP of that sum for a cotangent ``g``) equal the float64 scatter-add
    of ``g`` within the float32 summation bound, ``"take"``'s the old ones bit for bit.
    The whole encoder's jitted outputs agree within 2e-6: XLA fuses the LayerNorm after
    the sum differently per lookup and may reorder its float32 reductions (measured
    <= 9.6e-7 over 10 seeds, outputs of magnitude <= ~4, i.e. a few ulp)."""
    from jaxembed.models.transformer import Embeddings, LayerNorm

    module, params, ids, mask, types = random_encoder(rng, model_type)
    cfg, emb = module.config, params["embeddings"]
    tables = {k: emb[k]["embedding"] for k in
              ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    cot = rng.standard_normal(ids.shape + (cfg.hidden_size,)).astype(np.float32)

    def skip_layernorm(next_fun, args, kwargs, context):
        if isinstance(context.module, LayerNorm) and context.method_name == "__call__":
            return args[0]
        return next_fun(*args, **kwargs)

    @functools.partial(jax.jit, static_argnums=1)
    def summed(tables, lookup):
        def f(tables):
            p = {**emb, **{k: {"embedding": t} for k, t in tables.items()}}
            with nn.intercept_methods(skip_layernorm):
                return Embeddings(cfg, embedding_lookup=lookup).apply(
                    {"params": p}, ids, types, deterministic=True)

        out, vjp = jax.vjp(f, tables)
        return out, vjp(jnp.asarray(cot))[0]

    forward = jax.jit(lambda m: m.apply({"params": params}, ids, mask, types).last_hidden_state,
                      static_argnums=0)
    old_sum, old_grads = summed(tables, "cast_take")
    old_out = forward(module.clone(embedding_lookup="cast_take"))
    if model_type == "bert":
        positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    else:
        not_pad = (ids != cfg.pad_token_id).astype(np.int64)
        positions = np.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
    table_ids = {"word_embeddings": ids, "position_embeddings": positions,
                 "token_type_embeddings": types}
    g = cot.reshape(-1, cfg.hidden_size).astype(np.float64)
    for lookup in ("auto", "take", "onehot"):
        total, grads = summed(tables, lookup)
        np.testing.assert_array_equal(total, old_sum, err_msg=lookup)
        out = forward(module.clone(embedding_lookup=lookup))
        np.testing.assert_allclose(out, old_out, atol=2e-6, rtol=0, err_msg=lookup)
        for name, leaf in grads.items():
            if lookup == "take":
                np.testing.assert_array_equal(leaf, old_grads[name], err_msg=name)
                continue
            rows = table_ids[name].reshape(-1)
            want, abs_sum = np.zeros(leaf.shape), np.zeros(leaf.shape)
            count = np.bincount(rows, minlength=leaf.shape[0])[:, None]
            np.add.at(want, rows, g)
            np.add.at(abs_sum, rows, np.abs(g))
            bound = np.finfo(np.float32).eps * count * abs_sum
            err = np.abs(np.asarray(leaf, np.float64) - want)
            assert (err <= bound).all(), (lookup, name, float((err - bound).max()))


def test_bf16_embeddings_round_once(rng):
    """Under bf16 compute the embedding sum and its LayerNorm run in float32 and round
    once: the bf16 embedding output is the float32 one cast to bf16, bit for bit (as
    PyTorch AMP's float32 embeddings), where the pre-#15 path (``"cast_take"``) rounds
    each row and each partial sum to bf16 first."""
    module, params, ids, mask, types = random_encoder(rng)

    def embedded(**kw):
        m = module.clone(**kw)
        fn = jax.jit(lambda p: m.apply({"params": p}, ids, mask, types,
                                       output_hidden_states=True).hidden_states[0])
        return np.asarray(fn(params).astype(jnp.float32))

    want = embedded().astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(embedded(dtype=jnp.bfloat16), want)
    old = embedded(dtype=jnp.bfloat16, embedding_lookup="cast_take")
    assert (old != want).any()


def test_dot_product_attention_equals_the_einsum_path(rng):
    """``jax.nn.dot_product_attention`` (XLA, with the mask or with sequence lengths)
    gives the einsum path's outputs within 1e-6 in float32 (a few ulp: another
    reduction order), an all-pad row included; with the mask it also takes left padding."""
    module, params, ids, mask, types = random_encoder(rng)
    left = mask[:, ::-1].copy()

    def hidden(m, mask):
        fn = jax.jit(lambda p: m.apply({"params": p}, ids, mask, types,
                                       output_hidden_states=True).hidden_states)
        return [np.asarray(h) for h in fn(params)]

    # ("auto" is "xla" on a CPU: test_attention_path_falls_back_to_einsum_...)
    for msk, variants in ((mask, [("xla", False), ("xla", True)]), (left, [("xla", False)])):
        want = hidden(module.clone(attention="einsum"), msk)
        assert all(np.isfinite(h).all() for h in want)
        for attention, right_padded in variants:
            got = hidden(module.clone(attention=attention, right_padded=right_padded), msk)
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, atol=1e-6, rtol=0,
                                           err_msg=f"{attention} right_padded={right_padded}")


def test_attention_path_falls_back_to_einsum_under_attention_dropout(rng, monkeypatch):
    """Training with attention dropout takes the einsum path (``dot_product_attention``
    has no dropout); inference, or a rate of 0, calls ``jax.nn.dot_product_attention``
    once per layer (with lengths when ``right_padded``); ``"auto"`` picks cuDNN only on
    a GPU for bf16/fp16, right padding and head sizes it supports."""
    import dataclasses

    from jaxembed.models import transformer

    module, params, ids, mask, types = random_encoder(rng)
    calls = []
    real = jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    no_attention_dropout = dataclasses.replace(module.config, attention_probs_dropout_prob=0.0)

    def count(m, deterministic):
        calls.clear()
        rngs = {"dropout": jax.random.key(1)}
        jax.eval_shape(lambda p: m.apply({"params": p}, ids, mask, types,
                                         deterministic=deterministic, rngs=rngs), params)
        return [(c["implementation"], "key_value_seq_lengths" in c, "mask" in c) for c in calls]

    assert count(module, True) == [("xla", False, True)] * 2          # inference
    assert count(module, False) == []                                  # dropout 0.1: einsum
    assert count(module.clone(config=no_attention_dropout), False) == [("xla", False, True)] * 2
    assert count(module.clone(attention="einsum"), True) == []
    assert count(module.clone(right_padded=True), True) == [("xla", True, False)] * 2
    assert count(module.clone(attention="cudnn"), False) == []         # dropout wins

    path = transformer.attention_path
    kw = dict(dropout_active=False, right_padded=True, head_dim=64, dtype=jnp.bfloat16)
    assert path("auto", **kw) == "xla"  # on this CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert path("auto", **kw) == "cudnn"
    assert path("auto", **{**kw, "dtype": jnp.float32}) == "xla"
    assert path("auto", **{**kw, "right_padded": False}) == "xla"
    assert path("auto", **{**kw, "head_dim": 12}) == "xla"
    assert path("auto", **{**kw, "head_dim": 256}) == "xla"
    assert path("auto", **{**kw, "dropout_active": True}) == "einsum"
    assert path("xla", **kw) == "xla" and path("einsum", **kw) == "einsum"
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        path("flash", **kw)
    with pytest.raises(ValueError, match="unknown embedding_lookup 'gather'"):
        module.clone(embedding_lookup="gather").init(jax.random.key(0), ids, mask)


@pytest.mark.parametrize("lookup", ["auto", "cast_take"])
def test_bf16_train_step_has_no_bf16_scatter(lookup, rng):
    """The mixed-precision train step's program (the HLO XLA gets on any backend) has no
    bf16 ``scatter`` with the default ``embedding_lookup``: every embedding gradient is
    a float32 scatter-add, a matmul or a pad. The pre-#15 lookup (``"cast_take"``,
    ``flax.linen.Embed(dtype=bf16)``) has one per table, so the test can fail."""
    import re

    from jaxembed.train import sharding as shd
    from jaxembed.train.config import TrainConfig
    from jaxembed.train.objectives import build_objective
    from jaxembed.train.state import make_optimizer
    from jaxembed.train.step import build_train_step

    module, params, ids, mask, types = random_encoder(rng, embedding_lookup=lookup)
    enc = Encoder(module=module.clone(dtype=jnp.bfloat16), params=params,
                  pooling="cls_before_pooler")
    cfg = TrainConfig(objective="simcse_unsup", batch_size=4, max_length=12,
                      mixed_precision=True)
    tx, schedule = make_optimizer(learning_rate=1e-5, total_steps=10)
    mesh = shd.make_mesh(devices=jax.devices()[:1])
    state, step = build_train_step(enc, build_objective(cfg, enc), tx, schedule, mesh)
    batch = shd.shard_batch({"input_ids": ids[:, None], "attention_mask": mask[:, None],
                             "token_type_ids": types[:, None]}, mesh)
    hlo = step.lower(state, batch).as_text(dialect="hlo")
    scatters = re.findall(r"= (\w+)\[([\d,]*)\][^ ]* scatter\(", hlo)
    bf16 = sorted({shape for dtype, shape in scatters if dtype == "bf16"})
    if lookup == "auto":
        assert bf16 == [] and ("f32", "97,32") in scatters  # the word table, float32
    else:  # word, position and token-type tables
        assert bf16 == ["2,32", "66,32", "97,32"]
