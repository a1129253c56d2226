"""Training objectives: a config name -> ``loss(params, batch, rng) -> (loss, aux)``.

No loss math lives here: every objective composes the encoder
(``enc.apply`` + :func:`jaxembed.models.pooling.pool`), the heads of
:mod:`jaxembed.models.heads` and the functions of :mod:`jaxembed.losses`.

``params = {"encoder": <enc.params>, "head": <head params or {}>}``. A batch
holds ``input_ids``/``attention_mask``/``token_type_ids`` of shape
``[B, C, L]`` (C text columns) and, for DSE, ``scores [B, K]`` (teacher
values, then the task label if present). Losses are float32 scalars.

* ``simcse_unsup`` (Gao et al. 2021 §3): every sentence twice through the
  encoder with independent dropout (one forward over ``[B*2, L]``), pooled
  (``train_pooling``, default raw [CLS]) -> ``ProjectionHead`` (Linear+tanh,
  training only) -> ``info_nce(z1, z2, temperature)``.
* ``simcse_sup`` (§4): (premise, entailment, contradiction) ->
  ``info_nce(z_p, z_e, negatives=z_c)``.
* ``whitenedcse`` (Zhuo et al. 2023, official code's order): ``num_views``
  dropout views ``[B, P, H]`` of raw [CLS] -> ``whitened_cse(views, key,
  num_groups, projection=ProjectionHead)``: shuffled group whitening per view,
  then the MLP, then InfoNCE of view 0 against each other view.
* ``dse`` (Barkan et al. 2020): ``u, v`` pooled (shared encoder) ->
  ``PairScoreHead`` logits ``[B, out]``; loss ``(1-a)·task + a·distill_mse(logits, teacher)``
  with task ``mse`` / ``bce`` / ``ce`` on the label column (or ``none``).
* ``matryoshka_2d`` (2DMSE, Li et al. 2024) wraps any of them: the
  representation function is evaluated on hidden states of sampled layers and
  truncated dimensions by :func:`jaxembed.losses.matryoshka_2d`.

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

from jaxembed.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Objective:
    """``loss(params, batch, key) = rep_loss(params["head"], z, k_loss, batch)`` with
    ``z = pooled encoder rows [B, C*views, D]`` under dropout key ``k_drop``
    (``k_drop, k_loss = split(key)``)."""

    name: str
    text_columns: tuple[int, ...]       # accepted numbers of text columns in a batch
    views: int                          # dropout views per text column
    init_heads: Callable[[jax.Array], Any]   # key -> boxed head params ({} if none)
    rep_loss: Callable                  # (head_params, z, k_loss, batch) -> (loss, aux)
    loss: Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]] = None
    value_and_grad: Callable | None = None   # replaces jax.value_and_grad(loss) (GradCache)

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


def dropout_key(key: jax.Array, impl: str) -> jax.Array:
    """The key the encoder draws its dropout masks from.

    ``threefry`` (JAX's default) gives the same masks whatever the sharding,
    which the 8-vs-1-device and resume tests rely on; the encoder's
    :class:`jaxembed.models.dropout.Dropout` computes its bits fused into the
    kernels that apply the masks. ``rbg``/``unsafe_rbg`` draw the bits with
    XLA's RngBitGenerator instead (deterministic for a given key and sharding,
    not across shardings), the choice large JAX trainers make on TPU.
    Measured: on one H100, BERT-base SimCSE at batch 128 (bf16) ran 101.1
    ms/step with (unfused) threefry and 101.2 ms with rbg; on the 2-core CPU
    (MiniLM, batch 64 x 2 views) rbg's RngBitGenerator took ~360 ms of a
    forward pass where the fused threefry bits take a few ms.
    ``auto`` keeps threefry on CPU and uses rbg on accelerators.
    """
    if impl == "auto":
        impl = "threefry" if jax.default_backend() == "cpu" else "rbg"
    if impl == "threefry":
        return key
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=impl)


def _encode(enc, cfg: TrainConfig, enc_params, ids, mask, tt, key, *, hidden_states=False):
    """Forward with dropout on; returns the encoder outputs."""
    return enc.apply(enc_params, ids, mask, tt, deterministic=False,
                     dropout_rng=dropout_key(key, cfg.dropout_rng),
                     output_hidden_states=hidden_states or cfg.train_pooling == "last4_mean")


def _representation(enc, cfg: TrainConfig) -> Callable:
    """``(enc_params, batch, key, views) -> [B, C*views, H]`` float32 pooled rows."""
    from jaxembed.models.pooling import pool

    def rep(enc_params, batch, key, views):
        ids, mask, tt = _flat(batch, views)
        out = _encode(enc, cfg, enc_params, ids, mask, tt, key)
        z = pool(out, mask, cfg.train_pooling)
        b = batch["input_ids"].shape[0]
        return z.reshape(b, -1, z.shape[-1])

    return rep


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


def simcse_unsup(cfg: TrainConfig, enc) -> Objective:
    from jaxembed.losses import info_nce

    init, project = _projection(cfg, _pooled_width(enc, cfg))

    def rep_loss(hp, z, key, batch):
        z = project(hp, z)
        return info_nce(z[:, 0], z[:, 1], temperature=cfg.temperature), {}

    return Objective("simcse_unsup", (1,), 2, init, rep_loss)


def simcse_sup(cfg: TrainConfig, enc) -> Objective:
    from jaxembed.losses import info_nce

    init, project = _projection(cfg, _pooled_width(enc, cfg))

    def rep_loss(hp, z, key, batch):
        z = project(hp, z)
        neg = z[:, 2] if z.shape[1] > 2 else None
        return info_nce(z[:, 0], z[:, 1], neg, temperature=cfg.temperature), {}

    return Objective("simcse_sup", (2, 3), 1, init, rep_loss)


def whitenedcse(cfg: TrainConfig, enc) -> Objective:
    from jaxembed.losses import whitened_cse

    init, project = _projection(cfg, _pooled_width(enc, cfg))

    def rep_loss(hp, views, key, batch):
        value = whitened_cse(views, key, num_groups=cfg.num_groups,
                             temperature=cfg.temperature, eps=cfg.whitening_eps,
                             method=cfg.whitening_method,
                             projection=(lambda v: project(hp, v)) if cfg.mlp else None)
        return value, {}

    return Objective("whitenedcse", (1,), cfg.num_views, init, rep_loss)


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


def dse(cfg: TrainConfig, enc) -> Objective:
    from jaxembed.losses import distill_mse
    from jaxembed.models.heads import PairScoreHead

    head = PairScoreHead(hidden=cfg.dse_hidden, out=cfg.dse_out)
    width = _pooled_width(enc, cfg)

    def init(key):
        x = jnp.zeros((1, width), jnp.float32)
        return head.init(key, x, x)["params"]

    def rep_loss(hp, z, key, batch):
        logits = head.apply({"params": hp}, z[:, 0], z[:, 1])
        scores = batch["scores"].astype(jnp.float32)
        teacher = scores[:, :cfg.dse_out]
        distill = distill_mse(logits, teacher)
        if cfg.dse_task_loss == "none" or scores.shape[1] <= cfg.dse_out:
            return distill, {"distill_loss": distill}
        task = _dse_task_loss(cfg.dse_task_loss, logits, scores[:, cfg.dse_out])
        total = (1.0 - cfg.dse_alpha) * task + cfg.dse_alpha * distill
        return total, {"distill_loss": distill, "task_loss": task}

    return Objective("dse", (2,), 1, init, rep_loss)


def _with_standard_loss(obj: Objective, cfg: TrainConfig, enc) -> Objective:
    rep = _representation(enc, cfg)

    def loss(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        z = rep(params["encoder"], batch, k_drop, obj.views)
        return obj.rep_loss(params["head"], z, k_loss, batch)

    return dataclasses.replace(obj, loss=loss)


_BUILDERS = {"simcse_unsup": simcse_unsup, "simcse_sup": simcse_sup,
             "whitenedcse": whitenedcse, "dse": dse}


def build_objective(cfg: TrainConfig, enc) -> Objective:
    """The objective named by ``cfg.objective`` (2DMSE and grad-cache applied on top)."""
    obj = _BUILDERS[cfg.objective](cfg, enc)
    if cfg.matryoshka_2d:
        obj = _with_matryoshka_2d(obj, cfg, enc)
    else:
        obj = _with_standard_loss(obj, cfg, enc)
    if cfg.grad_cache_chunk > 0:
        obj = _with_grad_cache(obj, cfg, enc)
    return obj


def _with_matryoshka_2d(obj: Objective, cfg: TrainConfig, enc) -> Objective:
    """2DMSE (Li et al. 2024) via :func:`jaxembed.losses.matryoshka_2d`.

    Every hidden state (embedding output first, then each layer) is pooled
    with ``train_pooling`` -> stacks ``[L+1, B, D]``, one per column/view; the
    objective's own loss over those representations is applied to every
    layer and every prefix ``[..., :d]`` (``m2d_dims``; default ``D, D/2, D/4,
    ...`` down to 8, and for WhitenedCSE only multiples of ``num_groups``),
    plus the KL from each layer to the last. The embedding the loss sees must
    be the one that is truncated at inference, so ``mlp`` must be off; DSE's
    pair head has a fixed input width, so DSE is not supported.
    """
    import jax.numpy as jnp

    from jaxembed.losses import matryoshka_2d
    from jaxembed.models.pooling import pool
    from jaxembed.models.transformer import EncoderOutput

    if obj.name == "dse":
        raise ValueError("matryoshka_2d is not supported with dse (the pair head's input width is fixed)")
    if cfg.mlp:
        raise ValueError("matryoshka_2d needs mlp=False: the truncated embedding must be the one evaluated")
    if cfg.train_pooling == "last4_mean":
        raise ValueError("matryoshka_2d pools each layer on its own; use cls, cls_before_pooler, mean or max")
    width = enc.hidden_size
    dims = tuple(cfg.m2d_dims) or tuple(width >> i for i in range(8) if (width >> i) >= 8)
    if obj.name == "whitenedcse":
        dims = tuple(d for d in dims if d % cfg.num_groups == 0)
    if not dims or max(dims) > width:
        raise ValueError(f"m2d_dims {dims} invalid for hidden size {width}")

    def loss(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        ids, mask, tt = _flat(batch, obj.views)
        out = enc.apply(params["encoder"], ids, mask, tt, deterministic=False,
                        dropout_rng=dropout_key(k_drop, cfg.dropout_rng),
                        output_hidden_states=True)
        layers = jnp.stack([pool(EncoderOutput(last_hidden_state=h), mask, cfg.train_pooling)
                            for h in out.hidden_states])                  # [L+1, N, D]
        b = batch["input_ids"].shape[0]
        layers = layers.reshape(layers.shape[0], b, -1, layers.shape[-1])  # [L+1, B, C*views, D]

        def base(*cols):
            return obj.rep_loss(params["head"], jnp.stack(cols, axis=1), k_loss, batch)[0]

        value = matryoshka_2d(base, dims)(*[layers[:, :, j] for j in range(layers.shape[2])])
        return value, {}

    return dataclasses.replace(obj, loss=loss)


def _with_grad_cache(obj: Objective, cfg: TrainConfig, enc) -> Objective:
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

    if cfg.matryoshka_2d:
        raise ValueError("grad_cache_chunk with matryoshka_2d is not supported")
    if cfg.batch_size % cfg.grad_cache_chunk:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of grad_cache_chunk {cfg.grad_cache_chunk}")

    def embed(params, x, key):
        out = enc.apply(params["encoder"], x["input_ids"], x["attention_mask"], x["token_type_ids"],
                        deterministic=False,
                        dropout_rng=dropout_key(key, cfg.dropout_rng),
                        output_hidden_states=cfg.train_pooling == "last4_mean")
        return pool(out, x["attention_mask"], cfg.train_pooling)

    def loss_fn(params, *embeddings, key, scores):
        z = jnp.stack(embeddings, axis=1)  # [B, C*views, D] in (column, view) order
        return obj.rep_loss(params["head"], z, key, {"scores": scores})

    fn = grad_cache(embed, loss_fn, chunk_size=cfg.grad_cache_chunk, loss_takes_params=True, has_aux=True)

    def value_and_grad(params, batch, key):
        k_drop, k_loss = jax.random.split(key)
        c = batch["input_ids"].shape[1]
        tt = batch.get("token_type_ids", jnp.zeros_like(batch["input_ids"]))
        inputs = [{"input_ids": batch["input_ids"][:, j], "attention_mask": batch["attention_mask"][:, j],
                   "token_type_ids": tt[:, j]} for j in range(c) for _ in range(obj.views)]
        scores = batch.get("scores", jnp.zeros((batch["input_ids"].shape[0], 0), jnp.float32))
        return fn(params, *inputs, rng=k_drop, key=k_loss, scores=scores)

    return dataclasses.replace(obj, value_and_grad=value_and_grad)
