"""simcse_sup on (query, positive, K hard negatives) rows with the retrieval options
(false-negative margin, hard-negative weight, same-tower negatives, Matryoshka dims) against
the float64 row-by-row InfoNCE of ``_loss_refs``, and their config rules."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _loss_refs import np_info_nce
from test_train_step import _batch, _loss_and_pooled, _setup

from jaxembed.train.config import TrainConfig, apply_overrides, config_changes
from jaxembed.train.errors import ConfigError

OPTIONS = dict(false_negative_margin=0.0, hard_negative_weight=0.7, query_query_negatives=True,
               document_document_negatives=True, matryoshka_dims=(32, 8),
               mask_duplicate_documents=True, data="rows.jsonl")


@pytest.mark.parametrize("model, pooling", [("bert", "mean"),
                                            ("tiny-random-qwen3", "last_token")])
def test_k_negatives_margin_and_matryoshka_match_float64(tiny_bert_dir, rng, model, pooling):
    """On a BERT and on the trainer's random Qwen3 decoder (last-token pooling)."""
    model = tiny_bert_dir if model == "bert" else model
    cfg, enc, obj, params, _ = _setup(model, rng, objective="simcse_sup", mlp=False,
                                      train_pooling=pooling, eval_pooling=pooling, temperature=0.02,
                                      **OPTIONS)
    batch = _batch(enc, rng, cfg, 6, 2 + 3)                     # K = 3 negatives per row
    ids = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)      # doc_id_0..3 columns
    ids[3, 2] = ids[0, 0]   # row 0's positive is also a negative of row 3 (and of row 5)
    ids[5, 0] = ids[0, 0]
    batch["scores"] = ids
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    loss, _, z = _loss_and_pooled(obj, enc, params, batch, key, jax.random.split(key)[0], 1,
                                  pooling)
    kw = {k: v for k, v in OPTIONS.items()
          if k not in ("matryoshka_dims", "mask_duplicate_documents", "data")}
    kw["document_ids"] = ids.astype(np.int64)

    def ref(dims=(32, 8), **over):
        return sum(np_info_nce(z[:, 0, :d], z[:, 1, :d], z[:, 2:, :d], temperature=0.02,
                               **{**kw, **over}) for d in dims)

    # tolerance: the float32 loss vs float64 on the same pooled rows at tau = 0.02; seeds 0-5
    # give relative errors 2.5e-7 to 6.2e-7, so 1e-5 leaves a wide margin
    np.testing.assert_allclose(loss, ref(), rtol=1e-5)
    # every option changes the reference, so the match above could fail for each
    for changed in (ref(false_negative_margin=None), ref(hard_negative_weight=0.0),
                    ref(query_query_negatives=False), ref(document_document_negatives=False),
                    ref(document_ids=None),
                    ref(dims=(32,))):
        assert abs(changed - ref()) > 1e-3 * abs(ref())


def test_duplicate_documents_masked_without_hard_negatives(rng):
    """``num_negatives=0`` (in-batch only) with ``mask_duplicate_documents``: the one
    ``doc_id_0`` column reaches info_nce as ``[B]`` ids (it raised on ``[B, 1]``)."""
    cfg, enc, obj, params, _ = _setup("tiny-random-qwen3", rng, objective="simcse_sup",
                                      mlp=False, train_pooling="last_token",
                                      eval_pooling="last_token", temperature=0.02,
                                      mask_duplicate_documents=True, data="rows.jsonl",
                                      num_negatives=0)
    batch = _batch(enc, rng, cfg, 6, 2)
    ids = np.arange(6, dtype=np.float32)[:, None]
    ids[4, 0] = ids[1, 0]   # rows 1 and 4 share their positive: no negative of each other
    batch["scores"] = ids
    key = jax.random.PRNGKey(int(rng.integers(1 << 30)))
    loss, _, z = _loss_and_pooled(obj, enc, params, batch, key, jax.random.split(key)[0], 1,
                                  "last_token")
    ref = lambda ids: np_info_nce(z[:, 0], z[:, 1], None, temperature=0.02,  # noqa: E731
                                  document_ids=ids)
    # tolerance as in the test above (float32 vs float64 on the same rows at tau = 0.02)
    np.testing.assert_allclose(loss, ref(ids[:, 0].astype(np.int64)), rtol=1e-5)
    assert abs(ref(None) - ref(ids[:, 0].astype(np.int64))) > 1e-4 * abs(ref(None))


@pytest.mark.parametrize("changes, message", [
    (dict(false_negative_margin=0.1), "only simcse_sup uses it"),
    (dict(objective="simcse_sup", false_negative_margin=-0.1), "None .off. or finite and >= 0"),
    (dict(objective="simcse_sup", matryoshka_dims=(8, 8)), "distinct dimensions"),
    (dict(objective="simcse_sup", mlp=False, matryoshka_2d=True, matryoshka_dims=(8,)),
     "set its m2d_dims instead"),
    (dict(num_negatives=3, data="x.csv"), "only retrieval_jsonl data uses it"),
    (dict(data="x.jsonl", query_template="Query:"), "a template holding {task}"),
    (dict(data="x.jsonl", mask_duplicate_documents=True), "only simcse_sup on retrieval_jsonl"),
])
def test_retrieval_settings_are_validated(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_retrieval_settings_parse_and_guard_resume():
    cfg = apply_overrides(TrainConfig(objective="simcse_sup", data="r.jsonl"),
                          ["false_negative_margin=0.1", "num_negatives=7", "matryoshka_dims=64,32"])
    assert (cfg.false_negative_margin, cfg.num_negatives, cfg.matryoshka_dims) == (0.1, 7, (64, 32))
    assert apply_overrides(cfg, ["false_negative_margin=none"]).false_negative_margin is None
    # a run recorded before these fields existed resumes under their defaults only
    base = TrainConfig(objective="simcse_sup", data="r.jsonl")
    old = {k: v for k, v in json.loads(json.dumps(base.to_dict())).items()
           if k not in ("false_negative_margin", "num_negatives", "matryoshka_dims")}
    assert config_changes(old, base) == []
    changed = config_changes(old, cfg)
    assert {k for k, *_ in changed} == {"false_negative_margin", "num_negatives", "matryoshka_dims"}


def test_trainer_flops_of_a_decoder_count_its_own_shapes():
    """A decoder has one token table and attention width heads x head_dim (the trainer's
    FLOPs once read BERT's type_vocab_size from it and crashed)."""
    from jaxembed.models.decoder.config import DecoderConfig
    from jaxembed.train.flops import train_step_flops
    from jaxembed.train.trainer import TINY_QWEN3

    c = DecoderConfig.from_hf_dict(TINY_QWEN3)
    n_total, t = 1_000_000, 16 * 9
    dense = 6 * (n_total - 30522 * 32) * 16 * t
    attn = 12 * 2 * 16 * (4 * 8) * 16 * t
    assert train_step_flops(n_total, c, seq_len=16, sequences=t) == dense + attn
