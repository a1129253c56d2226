"""LoRA under FSDP and GradCache, on a one-layer random BERT (and FSDP on a Qwen3). Base params and adapters are
placed on an 8-device (data=2, fsdp=4) mesh by the trainer's rules table: the jitted adapted
forward equals the single-device one, and GradCache's adapter gradients, computed on that
mesh, equal plain ``value_and_grad`` of the full-batch loss on one device.

Tolerance 1e-5 relative (as tests/test_grad_cache.py): the sharded and chunked programs
sum the same float32 terms in another order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_refs import rel_err
from jax.sharding import PartitionSpec as P

from jaxembed import lora
from jaxembed.losses import grad_cache, info_nce
from jaxembed.models.config import EncoderConfig
from jaxembed.models.encoder import Encoder
from jaxembed.models.transformer import TransformerEncoder
from jaxembed.train import sharding as shd

SPEC = lora.LoraSpec(target=r"layer_\d+/(attention/(query|value|output)|output)/kernel",
                     rank=4, alpha=8.0)


def _random_encoder(rng) -> Encoder:
    """One BERT layer (hidden 32, 4 heads) with random weights, built from abstract shapes
    (no compiled init: every compile counts in a 2-core test run)."""
    config = EncoderConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=16, add_pooling_layer=False)
    module = TransformerEncoder(config)
    ids = jnp.ones((1, 8), jnp.int32)
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"])
    params = jax.tree_util.tree_map_with_path(
        lambda p, s: (float(p[-1].key == "scale") + 0.2 * rng.standard_normal(s.shape)
                      ).astype(np.float32), shapes)
    return Encoder(module=module, params=params)


@pytest.fixture(scope="module")
def setup(module_rng):
    enc = _random_encoder(module_rng)
    axes = enc.param_axes()
    adapters = lora.init(enc.params, SPEC, jax.random.key(int(module_rng.integers(2**31))),
                         axes=axes)
    adapters = jax.tree_util.tree_map_with_path(  # non-zero B, or dL/dA = 0
        lambda p, x: 0.05 * module_rng.standard_normal(x.shape).astype(np.float32)
        if jax.tree_util.keystr(p).endswith("'lora_b']") else np.asarray(x), adapters)
    ids = module_rng.integers(0, enc.config.vocab_size, (16, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, 5:] = 0
    views = tuple({"input_ids": np.roll(ids, k, axis=1), "attention_mask": mask,
                   "token_type_ids": np.zeros_like(ids)} for k in (0, 1))

    def embed(params, a, batch):
        return enc.embed(lora.apply(params, a, SPEC), batch)

    def loss(a, x, y):
        z = embed(enc.params, a, x), embed(enc.params, a, y)
        return info_nce(*z, temperature=0.1), z

    (value, z), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(adapters, *views)
    mesh = shd.make_mesh(data=2, fsdp=4)
    ad_shardings = shd.param_shardings(  # min_shard_bytes=0: shard even these tiny arrays
        adapters, mesh, logical=lora.adapter_axes(enc.params, SPEC, axes=axes), min_shard_bytes=0)
    placed = (shd.place(enc.params, shd.param_shardings(enc.params, mesh, logical=axes,
                                                        min_shard_bytes=0)),
              shd.place(adapters, ad_shardings),
              tuple(shd.shard_batch(v, mesh) for v in views))
    return dict(embed=embed, reference=(value, z, grads), placed=placed, shardings=ad_shardings)


def test_fsdp_sharded_adapted_forward_equals_single_device(setup):
    query = setup["shardings"]["layer_0"]["attention"]["query"]["kernel"]
    out = setup["shardings"]["layer_0"]["attention"]["output"]["kernel"]
    assert query["lora_a"].spec == P("fsdp", None) and out["lora_b"].spec == P(None, "fsdp")
    params, adapters, views = setup["placed"]
    assert adapters["layer_0"]["attention"]["query"]["kernel"]["lora_a"].sharding == \
        query["lora_a"]
    forward = jax.jit(lambda p, a, x, y: (setup["embed"](p, a, x), setup["embed"](p, a, y)))
    for got, want in zip(forward(params, adapters, *views), setup["reference"][1]):
        assert rel_err(got, want) <= 1e-5


def test_grad_cache_on_the_mesh_equals_full_batch_gradient(setup):
    params, adapters, views = setup["placed"]
    value, _, grads = setup["reference"]
    fn = jax.jit(grad_cache(lambda a, x: setup["embed"](params, a, x),
                            lambda x, y: info_nce(x, y, temperature=0.1), chunk_size=4))
    got_value, got_grads = fn(adapters, *views)
    assert rel_err(got_value, value) <= 1e-5
    assert jax.tree.structure(got_grads) == jax.tree.structure(grads)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads)):
        assert rel_err(got, want) <= 1e-5
    a_grad = got_grads["layer_0"]["attention"]["query"]["kernel"]["lora_a"]
    assert a_grad.sharding.is_equivalent_to(  # gradients keep the adapters' placement
        setup["shardings"]["layer_0"]["attention"]["query"]["kernel"]["lora_a"], 2)


def test_decoder_adapter_gradients_on_the_mesh_equal_single_device(rng):
    """A random one-layer Qwen3: adapters get the decoder's logical names (``A`` of q_proj
    FSDP-sharded on ``embed``, ``B`` of o_proj/down_proj too) and the loss and adapter
    gradients on the (data=2, fsdp=4) mesh equal the single-device ones (1e-5, as above)."""
    import transformers

    from jaxembed.models.decoder import Decoder, DecoderConfig, last_token

    cfg = DecoderConfig.from_hf_dict(transformers.Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8).to_dict())
    model = Decoder(cfg)
    ids = rng.integers(0, cfg.vocab_size, (8, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, :3] = 0  # left padding, as last-token pooling expects
    axes = lora.module_axes(model, ids, mask)
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, mask)["params"])
    params = jax.tree_util.tree_map_with_path(
        lambda p, s: (float("norm" in jax.tree_util.keystr(p)) + 0.2 * rng.standard_normal(
            s.shape)).astype(np.float32), shapes)
    spec = lora.LoraSpec(target=r"layer_\d+/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel",
                         rank=2, alpha=4.0)
    adapters = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                            lora.init(params, spec, jax.random.key(0), axes=axes))

    def loss(a, p, ids, mask):
        def embed(x):
            h = model.apply({"params": lora.apply(p, a, spec)}, x, mask).last_hidden_state
            return last_token(h, mask)

        return info_nce(embed(ids), embed(jnp.roll(ids, 1, axis=1)), temperature=0.1)

    fn = jax.value_and_grad(loss)
    value, grads = jax.jit(fn)(adapters, params, ids, mask)
    mesh = shd.make_mesh(data=2, fsdp=4)
    ad_sh = shd.param_shardings(adapters, mesh, min_shard_bytes=0,
                                logical=lora.adapter_axes(params, spec, axes=axes))
    assert ad_sh["layer_0"]["attn"]["q_proj"]["kernel"]["lora_a"].spec == P("fsdp", None)
    assert ad_sh["layer_0"]["mlp"]["down_proj"]["kernel"]["lora_b"].spec == P(None, "fsdp")
    batch = shd.shard_batch({"ids": ids, "mask": mask}, mesh)
    got_value, got_grads = jax.jit(fn)(
        shd.place(adapters, ad_sh),
        shd.place(params, shd.param_shardings(params, mesh, logical=axes, min_shard_bytes=0)),
        batch["ids"], batch["mask"])
    assert rel_err(got_value, value) <= 1e-5
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads)):
        assert rel_err(got, want) <= 1e-5
