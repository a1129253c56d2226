"""Training objectives: a config name -> ``loss(params, batch, rng) -> (loss, aux)``.

No loss math lives here: every objective composes the encoder
(``enc.apply`` + :func:`jaxembed.models.pooling.pool`), the heads of
:mod:`jaxembed.models.heads` and the functions of :mod:`jaxembed.losses`.

``params = {"encoder": <enc.params>, "head": <head params or {}>}``. A batch
holds ``input_ids``/``attention_mask``/``token_type_ids`` of shape
``[B, C, L]`` (C text columns) and, for DSE, ``scores [B, K]`` (teacher
values, then the task label if present). Losses are float32 scalars.

Two layers: a builder per objective returns its :class:`RepresentationLoss`
(what it computes on pooled rows ``z [B, C*views, D]``), and
:func:`build_objective` composes it with one way of producing ``z`` (the plain
dropout forward, or 2DMSE's per-layer stacks) and optionally GradCache into a
complete :class:`Objective`.

* ``simcse_unsup`` (Gao et al. 2021 §3): every sentence twice through the
  encoder with independent dropout (one forward over ``[B*2, L]``), pooled
  (``train_pooling``, default raw [CLS]) -> ``ProjectionHead`` (Linear+tanh,
  training only) -> ``info_nce(z1, z2, temperature)``.
* ``simcse_sup`` (§4): (premise, entailment, contradiction) ->
  ``info_nce(z_p, z_e, negatives=z_c)``; generally (query, positive, K >= 0 hard
  negatives) -> ``info_nce(q, d⁺, [B, K, D])`` with ``hard_negative_weight``,
  ``false_negative_margin`` (Qwen3-Embedding's mask), ``document_ids`` from the
  reader's id columns (``mask_duplicate_documents``) and, with ``matryoshka_dims``,
  summed over those prefix dimensions (:func:`jaxembed.losses.matryoshka`).
* ``whitenedcse`` (Zhuo et al. 2023, official code's order): ``num_views``
  dropout views ``[B, P, H]`` of raw [CLS] -> ``whitened_cse(views, key,
  num_groups, projection=ProjectionHead)``: shuffled group whitening per view,
  then the MLP, then InfoNCE of view 0 against each other view.
* ``dse`` (Barkan et al. 2020): ``u, v`` pooled (shared encoder), dropout
  ``dse_dropout`` on each pooled vector (the official code builds its
  student from ``BertForSequenceClassification``, whose dropout of
  ``hidden_dropout_prob`` stays in front of the emptied classifier:
  microsoft/Distilled-Sentence-Embedding ``models/dse_model.py``,
  ``pytorch_pretrained_bert/modeling.py:1306,1315``),
  -> ``PairScoreHead`` logits ``[B, out]``; loss
  ``(1-a)·task + a·distill_mse(logits, teacher)`` with task ``mse`` / ``bce`` /
  ``ce`` on the label column (or ``none``).
* ``matryoshka_2d`` (2DMSE, Li et al. 2024) wraps any of them but DSE: the
  representation loss is evaluated on hidden states of sampled layers and
  truncated dimensions by :func:`jaxembed.losses.matryoshka_2d`.

Randomness: the step key splits into ``k_drop, k_loss``; the encoder's dropout
masks come from ``k_drop`` (through the ``dropout_rng`` policy of
:mod:`jaxembed.models.dropout_rng`), everything the representation loss draws
(the whitening shuffles, DSE's pooled dropout) from ``k_loss``.

Example::

    obj = build_objective(cfg, enc)
    heads = obj.init_heads(jax.random.PRNGKey(0))
    loss, aux = obj.loss({"encoder": enc.params, "head": heads}, batch, key)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxembed.models.dropout_rng import dropout_key
from jaxembed.train.config import TrainConfig

LossFn = Callable[[Any, dict, jax.Array], "tuple[jax.Array, dict]"]


@dataclasses.dataclass(frozen=True)
class RepresentationLoss:
    """What one objective computes on pooled rows: ``rep_loss(head_params, z, key, batch)
    -> (loss, aux)`` with ``z [B, C*views, D]`` float32 in (column, view) order."""

    name: str
    text_columns: tuple[int, ...]       # accepted numbers of text columns in a batch
    views: int                          # dropout views per text column
    init_heads: Callable[[jax.Array], Any]   # key -> boxed head params ({} if none)
    rep_loss: Callable[[Any, jax.Array, jax.Array, dict], "tuple[jax.Array, dict]"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A complete training objective: ``loss(params, batch, key) -> (loss, aux)``;
    ``value_and_grad`` (GradCache) replaces ``jax.value_and_grad(loss)`` when set."""

    name: str
    text_columns: tuple[int, ...]
    views: int
    init_heads: Callable[[jax.Array], Any]
    loss: LossFn
    value_and_grad: Callable | None = None

    def sequences_per_row(self, text_columns: int) -> int:
        return text_columns * self.views


def _flat(batch: dict, views: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``[B, C, L]`` columns -> ``[B*C*views, L]`` (row-major: row, column, view)."""
    def f(x):
        if views > 1:
            x = jnp.repeat(x, views, axis=1)
        return x.reshape(-1, x.shape[-1])

    ids = f(batch["input_ids"])
    mask = f(batch["attention_mask"])
    tt = f(batch["token_type_ids"]) if "token_type_ids" in batch else jnp.zeros_like(ids)
    return ids, mask, tt


def _encode(enc, cfg: TrainConfig, enc_params, ids, mask, tt, key, *, hidden_states=False):
    """Forward with dropout on (masks from ``key`` under ``cfg.dropout_rng``)."""
    return enc.apply(enc_params, ids, mask, tt, deterministic=False,
                     dropout_rng=dropout_key(key, cfg.dropout_rng),
                     output_hidden_states=hidden_states or cfg.train_pooling == "last4_mean")


def _projection(cfg: TrainConfig, hidden: int):
    from jaxembed.models.heads import ProjectionHead

    head = ProjectionHead(hidden)
    if not cfg.mlp:
        return (lambda key: {}), (lambda hp, z: z)
    init = lambda key: head.init(key, jnp.zeros((1, hidden), jnp.float32))["params"]  # noqa: E731
    apply = lambda hp, z: head.apply({"params": hp}, z)  # noqa: E731
    return init, apply


def _pooled_width(enc, cfg: TrainConfig) -> int:
    return enc.hidden_size * (4 if cfg.train_pooling == "last4_mean" else 1)


def _chunk(cfg: TrainConfig) -> int | None:
    return cfg.info_nce_chunk or None


def simcse_unsup(cfg: TrainConfig, enc) -> RepresentationLoss:
    from jaxembed.losses import info_nce

    init, project = _projection(cfg, _pooled_width(enc, cfg))

    def rep_loss(hp, z, key, batch):
        z = project(hp, z)
        return info_nce(z[:, 0], z[:, 1], temperature=cfg.temperature,
                        chunk_size=_chunk(cfg)), {}

    return RepresentationLoss("simcse_unsup", (1,), 2, init, rep_loss)


# simcse_sup reads (anchor, positive, hard negative 0, .., K-1): any K up to this
MAX_HARD_NEGATIVES = 1024


def simcse_sup(cfg: TrainConfig, enc) -> RepresentationLoss:
    import functools

    from jaxembed.losses import info_nce, matryoshka

    init, project = _projection(cfg, _pooled_width(enc, cfg))
    loss = functools.partial(info_nce, temperature=cfg.temperature, chunk_size=_chunk(cfg),
                             hard_negative_weight=cfg.hard_negative_weight,
                             false_negative_margin=cfg.false_negative_margin,
                             query_query_negatives=cfg.query_query_negatives,
                             document_document_negatives=cfg.document_document_negatives)
    if cfg.matryoshka_dims:
        loss = matryoshka(loss, cfg.matryoshka_dims)

    def rep_loss(hp, z, key, batch):
        z = project(hp, z)
        neg = z[:, 2:] if z.shape[1] > 2 else None   # [B, K, D]
        ids = None
        if cfg.mask_duplicate_documents:   # the reader's doc_id_0..K float columns
            ids = batch["scores"].astype(jnp.int32)
            if ids.shape[1] != z.shape[1] - 1:
                raise ValueError(f"mask_duplicate_documents needs {z.shape[1] - 1} document id "
                                 f"columns (scores), got {ids.shape[1]}")
            if neg is None:   # info_nce takes [B] ids without hard negatives
                ids = ids[:, 0]
        return loss(z[:, 0], z[:, 1], neg, document_ids=ids), {}

    return RepresentationLoss("simcse_sup", range(2, 3 + MAX_HARD_NEGATIVES), 1, init, rep_loss)


def whitenedcse(cfg: TrainConfig, enc) -> RepresentationLoss:
    from jaxembed.losses import whitened_cse

    init, project = _projection(cfg, _pooled_width(enc, cfg))

    def rep_loss(hp, views, key, batch):
        value = whitened_cse(views, key, num_groups=cfg.num_groups,
                             temperature=cfg.temperature, eps=cfg.whitening_eps,
                             method=cfg.whitening_method,
                             stop_gradient=cfg.whitening_stop_gradient,
                             iterations=cfg.whitening_iterations, chunk_size=_chunk(cfg),
                             projection=(lambda v: project(hp, v)) if cfg.mlp else None)
        return value, {}

    return RepresentationLoss("whitenedcse", (1,), cfg.num_views, init, rep_loss)


def _dse_task_loss(kind: str, logits: jax.Array, label: jax.Array) -> jax.Array:
    import optax

    from jaxembed.losses import distill_mse

    if kind == "mse":
        return distill_mse(logits[:, 0], label)
    if kind == "bce":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], label))
    if kind == "ce":
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, label.astype(jnp.int32)))
    raise ValueError(f"dse_task_loss must be mse|bce|ce|none, got {kind!r}")


def dse(cfg: TrainConfig, enc) -> RepresentationLoss:
    from jaxembed.losses import distill_mse
    from jaxembed.models.dropout import Dropout
    from jaxembed.models.heads import PairScoreHead

    head = PairScoreHead(hidden=cfg.dse_hidden, out=cfg.dse_out)
    width = _pooled_width(enc, cfg)
    dropout = Dropout(cfg.dse_dropout)

    def init(key):
        x = jnp.zeros((1, width), jnp.float32)
        return head.init(key, x, x)["params"]

    def rep_loss(hp, z, key, batch):
        # u and v get independent masks, as the official siamese forwards draw them
        z = dropout.apply({}, z, deterministic=False, rng=dropout_key(key, cfg.dropout_rng))
        logits = head.apply({"params": hp}, z[:, 0], z[:, 1])
        scores = batch["scores"].astype(jnp.float32)
        teacher = scores[:, :cfg.dse_out]
        distill = distill_mse(logits, teacher)
        if cfg.dse_task_loss == "none" or scores.shape[1] <= cfg.dse_out:
            return distill, {"distill_loss": distill}
        task = _dse_task_loss(cfg.dse_task_loss, logits, scores[:, cfg.dse_out])
        total = (1.0 - cfg.dse_alpha) * task + cfg.dse_alpha * distill
        return total, {"distill_loss": distill, "task_loss": task}

    return RepresentationLoss("dse", (2,), 1, init, rep_loss)


_BUILDERS = {"simcse_unsup": simcse_unsup, "simcse_sup": simcse_sup,
             "whitenedcse": whitenedcse, "dse": dse}


def build_objective(cfg: TrainConfig, enc) -> Objective:
    """The objective named by ``cfg.objective``, with 2DMSE and GradCache as configured."""
    rep = _BUILDERS[cfg.objective](cfg, enc)
    loss = (_matryoshka_2d_loss if cfg.matryoshka_2d else _standard_loss)(rep, cfg, enc)
    value_and_grad = _grad_cache(rep, cfg, enc) if cfg.grad_cache_chunk > 0 else None
    return Objective(rep.name, rep.text_columns, rep.views, rep.init_heads, loss, value_and_grad)


def _standard_loss(rep: RepresentationLoss, cfg: TrainConfig, enc) -> LossFn:
    """One dropout forward over ``[B*C*views, L]``, pooled -> ``rep.rep_loss``."""
    from jaxembed.models.pooling import pool

    def loss(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        ids, mask, tt = _flat(batch, rep.views)
        z = pool(_encode(enc, cfg, params["encoder"], ids, mask, tt, k_drop), mask,
                 cfg.train_pooling)
        z = z.reshape(batch["input_ids"].shape[0], -1, z.shape[-1])
        return rep.rep_loss(params["head"], z, k_loss, batch)

    return loss


def _matryoshka_2d_loss(rep: RepresentationLoss, cfg: TrainConfig, enc) -> LossFn:
    """2DMSE (Li et al. 2024) via :func:`jaxembed.losses.matryoshka_2d`.

    Every hidden state (embedding output first, then each layer) is pooled
    with ``train_pooling`` -> stacks ``[L+1, B, D]``, one per column/view; the
    objective's own loss over those representations is applied to every
    layer and every prefix ``[..., :d]`` (``m2d_dims``; default ``D, D/2, D/4,
    ...`` down to 8, and for WhitenedCSE only multiples of ``num_groups``),
    plus the KL from each layer to the last. The config rules already refuse
    what cannot work (``mlp``: the embedding the loss sees must be the one
    truncated at inference; DSE: its pair head has a fixed input width;
    ``last4_mean``); the dimensions need the encoder's width and are checked here.
    """
    from jaxembed.losses import matryoshka_2d
    from jaxembed.models.pooling import pool
    from jaxembed.models.transformer import EncoderOutput

    width = enc.hidden_size
    dims = tuple(cfg.m2d_dims) or tuple(width >> i for i in range(8) if (width >> i) >= 8)
    if rep.name == "whitenedcse":
        dims = tuple(d for d in dims if d % cfg.num_groups == 0)
    if not dims or max(dims) > width:
        raise ValueError(f"m2d_dims {dims} invalid for hidden size {width}")

    def loss(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        ids, mask, tt = _flat(batch, rep.views)
        out = _encode(enc, cfg, params["encoder"], ids, mask, tt, k_drop, hidden_states=True)
        layers = jnp.stack([pool(EncoderOutput(last_hidden_state=h), mask, cfg.train_pooling)
                            for h in out.hidden_states])                  # [L+1, N, D]
        b = batch["input_ids"].shape[0]
        layers = layers.reshape(layers.shape[0], b, -1, layers.shape[-1])  # [L+1, B, C*views, D]

        def base(*cols):
            return rep.rep_loss(params["head"], jnp.stack(cols, axis=1), k_loss, batch)[0]

        value = matryoshka_2d(base, dims)(*[layers[:, :, j] for j in range(layers.shape[2])])
        return value, {}

    return loss


def _grad_cache(rep: RepresentationLoss, cfg: TrainConfig, enc) -> Callable:
    """GradCache (Gao et al. 2021) via :func:`jaxembed.losses.grad_cache`.

    Each (text column, view) is one input of ``[B, L]`` token arrays; chunks of
    ``grad_cache_chunk`` rows are embedded without activations, the objective's
    loss runs on the full batch of embeddings, and its embedding gradient is
    pulled back chunk by chunk. Memory: one chunk's activations; the loss and
    gradient equal the full-batch ones for the same dropout masks (GradCache's
    per-chunk keys, so not the masks of the un-cached path).
    ``value_and_grad(params, batch, key) -> ((loss, aux), grads)``.
    """
    from jaxembed.losses import grad_cache
    from jaxembed.models.pooling import pool

    def embed(params, x, key):
        out = _encode(enc, cfg, params["encoder"], x["input_ids"], x["attention_mask"],
                      x["token_type_ids"], key)
        return pool(out, x["attention_mask"], cfg.train_pooling)

    def loss_fn(params, *embeddings, key, scores):
        z = jnp.stack(embeddings, axis=1)  # [B, C*views, D] in (column, view) order
        return rep.rep_loss(params["head"], z, key, {"scores": scores})

    fn = grad_cache(embed, loss_fn, chunk_size=cfg.grad_cache_chunk, loss_takes_params=True, has_aux=True)

    def value_and_grad(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        c = batch["input_ids"].shape[1]
        tt = batch.get("token_type_ids", jnp.zeros_like(batch["input_ids"]))
        inputs = [{"input_ids": batch["input_ids"][:, j], "attention_mask": batch["attention_mask"][:, j],
                   "token_type_ids": tt[:, j]} for j in range(c) for _ in range(rep.views)]
        scores = batch.get("scores", jnp.zeros((batch["input_ids"].shape[0], 0), jnp.float32))
        return fn(params, *inputs, rng=k_drop, key=k_loss, scores=scores)

    return value_and_grad
