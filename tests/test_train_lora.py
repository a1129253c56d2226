"""``TrainConfig.lora``: the config validates the LoraSpec fields; the trainer's step on an
(data=2, fsdp=4) mesh keeps the encoder frozen and the optimizer state adapter-sized; its
adapter gradients, plain and GradCache, equal ``jax.grad`` of the adapted loss; a short
``train()`` exports the merged encoder and adapter files that reproduce it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxembed import lora
from jaxembed.models.encoder import Encoder
from jaxembed.train import adapters
from jaxembed.train import sharding as shd
from jaxembed.train.config import TrainConfig, parse_value
from jaxembed.train.objectives import build_objective
from jaxembed.train.state import make_optimizer
from jaxembed.train.step import create_state, initial_params, make_train_step, state_shardings

LORA = {"target": r"layer_\d+/attention/(query|value|output)/kernel", "rank": 4, "alpha": 8.0}
WORDS = "the a man woman dog cat runs sits on under red blue big small house car tree".split()


def _batch(enc, rng, rows, columns=1, length=16):
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 10))) for _ in range(rows * columns)]
    tok = enc.tokenize(texts, max_length=length, pad_to=length)
    return {k: np.asarray(v).reshape(rows, columns, -1) for k, v in tok.items()}  # [R, C, L|1]


def test_config_validates_lora_fields():
    cfg = TrainConfig(lora=LORA)
    assert lora.LoraSpec.from_dict(cfg.lora).scale == 2.0
    assert parse_value("lora", '{"target": "x", "rank": 2, "alpha": 4}') == {
        "target": "x", "rank": 2, "alpha": 4}
    assert parse_value("lora", "none") is None
    with pytest.raises(ValueError, match=r"unknown LoraSpec fields \['ranks'\]"):
        TrainConfig(lora={**LORA, "ranks": 4})
    with pytest.raises(ValueError, match=r"needs fields \['alpha'\]"):
        TrainConfig(lora={"target": "x", "rank": 2})
    with pytest.raises(ValueError, match="dropout must be in"):
        TrainConfig(lora={**LORA, "dropout": 1.5})
    with pytest.raises(ValueError, match="lora must be of type"):
        TrainConfig(lora="rank=4")


def test_step_trains_adapters_only_and_grad_cache_agrees(tiny_bert_dir, rng):
    # dropout off, so the GradCache and the plain path see the same function
    enc = Encoder.from_pretrained(tiny_bert_dir, config_overrides={
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    cfg = TrainConfig(model=str(tiny_bert_dir), objective="simcse_sup", batch_size=8,
                      max_length=16, train_pooling="mean", lora=LORA)
    tx, schedule = make_optimizer(learning_rate=1e-3, total_steps=10)
    mesh = shd.make_mesh(data=2, fsdp=4)
    objs = {}
    for chunk in (0, 4):
        obj = build_objective(cfg.replace(grad_cache_chunk=chunk), enc)
        params, logical = initial_params(enc, obj, head_key=jax.random.PRNGKey(1))
        objs[chunk], tx_l, params, logical, run = adapters.setup(
            cfg, obj, tx, params, logical, key=jax.random.PRNGKey(int(rng.integers(1 << 30))))
    # non-zero B (at init B = 0 and dL/dA = 0)
    params["lora"] = jax.tree_util.tree_map_with_path(
        lambda p, x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32)
        if jax.tree_util.keystr(p).endswith("'lora_b']") else x, params["lora"])
    batch = _batch(enc, rng, 8, columns=3)
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))

    def grads(p, b):
        direct = jax.grad(lambda t: objs[0].loss({**p, **t}, b, key)[0])(
            {"lora": p["lora"], "head": p["head"]})
        return direct, objs[0].value_and_grad(p, b, key)[1], objs[4].value_and_grad(p, b, key)[1]

    direct, plain, cached = jax.jit(grads)(params, batch)
    assert not np.any(jax.tree.leaves(plain["encoder"])[0])
    for got in (plain, cached):
        for a, b in zip(jax.tree.leaves({"lora": got["lora"], "head": got["head"]}),
                        jax.tree.leaves(direct)):
            # plain: the same products in another program (round-off); GradCache: the
            # chunked sums, 1e-3 of the norm as tests/test_train_step.py's GradCache test
            assert np.linalg.norm(np.asarray(a) - b) <= 1e-3 * np.linalg.norm(b) + 1e-7

    sh = state_shardings(params, tx_l, mesh, logical=logical, min_shard_bytes=0)
    q_a = sh.params["lora"]["layer_0"]["attention"]["query"]["kernel"]["lora_a"]
    assert tuple(q_a.spec) == ("fsdp", None)  # adapters sharded like their kernels
    state = create_state(params, tx_l, sh, seed=3)
    head_and_lora = [x.shape for x in jax.tree.leaves({"h": params["head"], "l": params["lora"]})]
    moments = [x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sorted(moments) == sorted(2 * head_and_lora)  # no encoder-sized optimizer state
    step = make_train_step(objs[4].loss, tx_l, schedule, sh, mesh,
                           value_and_grad=objs[4].value_and_grad)
    new, m = step(state, shd.shard_batch(batch, mesh))
    new = jax.device_get(new.params)
    jax.tree.map(np.testing.assert_array_equal, new["encoder"], params["encoder"])
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(new["lora"]),
                                                   jax.tree.leaves(params["lora"]))]
    assert min(moved) > 0 and np.isfinite(m["loss"])


def test_train_exports_merged_encoder_and_adapters(tiny_bert_dir, rng, tmp_path):
    from jaxembed.train.trainer import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS, size=6)) for _ in range(32)) + "\n")
    cfg = TrainConfig(model=str(tiny_bert_dir), data=str(corpus), batch_size=8, steps=2,
                      max_length=16, eval_every=0, progress=False, learning_rate=1e-2,
                      lora={**LORA, "dropout": 0.1})
    train(cfg, tmp_path / "run", echo=lambda _m: None)
    base = Encoder.from_pretrained(tiny_bert_dir)
    ad, spec = lora.load_adapters(tmp_path / "run" / "export" / adapters.ADAPTERS_DIR,
                                  base.params)  # the base stayed frozen: fingerprint matches
    assert spec == lora.LoraSpec.from_dict(cfg.lora)
    exported = Encoder.from_pretrained(tmp_path / "run" / "export").params
    merged = lora.merge(base.params, ad, spec)
    changed = 0
    for path, got in lora.spec.flat_leaves(exported).items():
        want = lora.spec.flat_leaves(merged)[path]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the same float32 sum
        changed += not np.array_equal(want, lora.spec.flat_leaves(base.params)[path])
    assert changed == len(lora.find_targets(base.params, spec, axes=base.param_axes()))
