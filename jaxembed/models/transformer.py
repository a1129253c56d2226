"""The BERT-family transformer body as Flax **linen** modules.

Why linen (and not nnx): parameters carry logical axis names through
``nn.with_logical_partitioning`` so that one rules table (the trainer's,
``jaxembed/train/sharding.py``) maps ``batch/seq/embed/heads/kv/mlp/vocab`` to
mesh axes; the parameters are a plain nested-dict pytree that optax and Orbax
handle directly; and ``module.apply`` is a pure function of ``(params,
inputs, rngs)`` that ``jax.jit``/``grad``/``shard_map`` take as is.

One implementation covers BERT (incl. MiniLM-style BERT checkpoints), RoBERTa
and XLM-RoBERTa; they differ only in position ids (see ``EncoderConfig``).

Shapes: ``input_ids``/``attention_mask``/``token_type_ids`` ``[B, L]`` int;
hidden states ``[B, L, H]`` in the compute ``dtype``; ``num_attention_heads = N``,
``head_dim = D = H / N``.

Per layer (post-LayerNorm, as BERT):

    a   = softmax(Q K^T / sqrt(D) + mask) V           (softmax in float32)
    x   = LN(x + Dropout(a W_o))
    x   = LN(x + Dropout(act(x W_1) W_2))

LayerNorm statistics are always computed in float32 (float32 islands inside
bf16 code). Dropout uses the ``"dropout"`` RNG stream and is off when
``deterministic=True``; it is :class:`jaxembed.models.dropout.Dropout`, which
draws ``nn.Dropout``'s exact masks with the random bits fused into the kernel
that applies them (its effect on the train step: ``benchmarks/RESULTS.md``).

Embeddings are read from the float32 tables and summed in float32; the sum's
LayerNorm casts to the compute dtype. So under bf16 compute no embedding
gradient is a bf16 scatter-add (XLA:GPU lowers those to compare-and-swap loops,
openxla/xla#26371) and the sum rounds once, as PyTorch AMP's float32
embeddings do. How each table is read is ``embedding_lookup``
(:func:`lookup_rows`): by default the word table with ``jnp.take``, the
token-type table as a one-hot matmul and BERT's positions ``0..L-1`` as the
slice ``table[:L]`` (no gather at all). Attention goes through
``jax.nn.dot_product_attention`` whenever attention dropout is off
(inference, or a rate of 0), which that function cannot apply; see
``attention`` and ``right_padded`` on :class:`TransformerEncoder`.

Example::

    module = TransformerEncoder(config)
    variables = module.init(jax.random.key(0), ids, mask)
    out = module.apply(variables, ids, mask)          # out.last_hidden_state [B, L, H]

References: Devlin et al. 2019 (BERT); Liu et al. 2019 (RoBERTa);
``transformers/models/bert/modeling_bert.py`` for the exact layout.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxembed.models.config import EncoderConfig
from jaxembed.models.dropout import Dropout

Dtype = Any
_INIT_STD = 0.02


def _kernel(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(_INIT_STD), axes)


def _zeros(axes):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _activation(name: str):
    if name == "gelu":  # HF "gelu" is the exact erf form
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    if name in ("silu", "swish"):
        return jax.nn.silu
    raise ValueError(f"unsupported activation {name!r}")


@flax.struct.dataclass
class EncoderOutput:
    """``last_hidden_state`` [B, L, H]; ``hidden_states``: tuple of ``num_layers + 1``
    [B, L, H] (embedding output first, as HF) or None; ``pooler_output`` [B, H]
    (dense+tanh over [CLS]) or None when the model has no pooler."""

    last_hidden_state: jax.Array
    hidden_states: Optional[tuple] = None
    pooler_output: Optional[jax.Array] = None


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with float32 statistics.

    ``y = (x - mean) / sqrt(var + eps) * scale + bias``, biased variance
    ``mean((x - mean)^2)`` (as ``torch.nn.LayerNorm``); output cast to ``dtype``.
    """

    epsilon: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (features,),
            self.param_dtype,
        )
        bias = self.param("bias", _zeros(("embed",)), (features,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        centred = x32 - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.epsilon)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


EMBEDDING_LOOKUPS = ("auto", "take", "onehot", "cast_take")


def lookup_rows(table: jax.Array, ids: jax.Array, *, method: str, dtype: Dtype = None):
    """The rows ``table[ids]``: ``table`` [V, H], ``ids`` int [...] -> [..., H].

    ``method`` says how, which decides the gradient ``dtable[v] = sum_{i: ids_i = v} g_i``:

    * ``"take"``: ``jnp.take`` on the table in float32 (``promote(table.dtype, float32)``),
      in that dtype; the gradient is a float32 scatter-add.
    * ``"onehot"``: ``one_hot(ids, V) @ table`` in float32 at ``Precision.HIGHEST``,
      the same rows as ``"take"`` (``1 * t_v`` plus exact zeros); the gradient is the
      matmul ``one_hot^T @ g``, no scatter. It costs ``2 V H`` FLOPs per id: for
      small tables (token types, positions), or where scatters are slow.
    * ``"cast_take"``: ``jnp.take`` on the table cast to ``dtype`` first, in ``dtype``
      (``flax.linen.Embed(dtype=...)``, this module before issue #15): under bf16 its
      gradient is a bf16 scatter-add. Kept to measure against.

    As ``jnp.take`` (and so for every method): ids in ``[-V, 0)`` count from the end;
    ids outside ``[-V, V)`` give NaN rows, not silently another row. A one-row table
    (``V == 1``, RoBERTa's token types) is broadcast whatever the ids, as
    ``flax.linen.Embed`` does; its gradient is a sum.

    Example::

      >>> table = jnp.arange(6.0).reshape(3, 2)
      >>> lookup_rows(table, jnp.array([[2, 0]]), method="onehot").tolist()
      [[[4.0, 5.0], [0.0, 1.0]]]
    """
    if method not in EMBEDDING_LOOKUPS[1:]:
        raise ValueError(f"unknown embedding lookup {method!r}; use one of {EMBEDDING_LOOKUPS[1:]}")
    if method == "cast_take":
        table = table.astype(dtype)
    else:
        table = table.astype(jnp.promote_types(table.dtype, jnp.float32))
    num = table.shape[0]
    if num == 1:
        return jnp.broadcast_to(table[0], ids.shape + table.shape[1:])
    if method != "onehot":
        return jnp.take(table, ids, axis=0)
    ids = jnp.where(ids < 0, ids + num, ids)
    hot = jax.nn.one_hot(ids, num, dtype=table.dtype)
    rows = jnp.einsum("...v,vh->...h", hot, table, precision=jax.lax.Precision.HIGHEST)
    valid = (ids >= 0) & (ids < num)
    return jnp.where(valid[..., None], rows, jnp.nan)


class EmbeddingTable(nn.Module):
    """A ``[num_embeddings, features]`` table, the parameter ``embedding`` as
    ``flax.linen.Embed`` names and initialises it; ``__call__`` returns the table."""

    num_embeddings: int
    features: int
    axes: tuple
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        shape = (self.num_embeddings, self.features)
        return self.param("embedding", _kernel(self.axes), shape, self.param_dtype)


class Embeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout.

    BERT positions are ``0..L-1``; RoBERTa/XLM-R positions count non-pad tokens:
    ``pos = cumsum(ids != pad) * (ids != pad) + pad_token_id`` (HF
    ``create_position_ids_from_input_ids``).

    ``embedding_lookup`` (:data:`EMBEDDING_LOOKUPS`): ``"auto"`` reads the word table
    with ``"take"``, the token types with ``"onehot"`` and BERT's positions as the slice
    ``table[:L]`` (RoBERTa's, which depend on the ids, with ``"take"``); any other
    value is :func:`lookup_rows`' ``method`` for every table. The three rows are summed
    in float32 (in ``dtype`` under ``"cast_take"``) and LayerNorm casts to ``dtype``.
    In float32 every choice gives the same sum bit for bit (jitted, XLA may then fuse
    the LayerNorm after it differently: a few ulp).
    """

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embedding_lookup: str = "auto"

    def position_ids(self, input_ids):
        cfg = self.config
        if cfg.model_type == "bert":
            return jnp.broadcast_to(
                jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape
            )
        not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id

    @nn.compact
    def __call__(self, input_ids, token_type_ids, *, deterministic: bool):
        cfg, how = self.config, self.embedding_lookup
        if how not in EMBEDDING_LOOKUPS:
            raise ValueError(f"unknown embedding_lookup {how!r}; use one of {EMBEDDING_LOOKUPS}")

        def table(num, axes, name):
            return EmbeddingTable(num, cfg.hidden_size, axes, self.param_dtype, name=name)()

        def rows(tab, ids, method):
            return lookup_rows(tab, ids, method=how if how != "auto" else method, dtype=self.dtype)

        words = table(cfg.vocab_size, ("vocab", "embed"), "word_embeddings")
        positions = table(cfg.max_position_embeddings, (None, "embed"), "position_embeddings")
        types = table(cfg.type_vocab_size, (None, "embed"), "token_type_embeddings")
        x = rows(words, input_ids, "take")
        if how == "auto" and cfg.model_type == "bert":
            length = input_ids.shape[1]
            x = x + positions[:length].astype(x.dtype)
        else:
            x = x + rows(positions, self.position_ids(input_ids), "take")
        x = x + rows(types, token_type_ids, "onehot")
        x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="LayerNorm")(x)
        x = Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))


class DenseEinsum(nn.Module):
    """``y = einsum(equation, x, kernel) + bias`` with multi-axis kernels, e.g.
    ``[B, L, H] x [H, N, D] -> [B, L, N, D]``. (Used instead of ``nn.DenseGeneral``,
    whose flat-then-reshape init trips logical sharding constraints under a mesh.)
    ``bias`` has the kernel's trailing ``len(bias_axes)`` dims."""

    equation: str
    kernel_shape: tuple
    kernel_axes: tuple
    bias_axes: tuple
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", _kernel(self.kernel_axes), self.kernel_shape, self.param_dtype
        )
        bias = self.param(
            "bias",
            _zeros(self.bias_axes),
            self.kernel_shape[-len(self.bias_axes) :],
            self.param_dtype,
        )
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


ATTENTION_IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")


def attention_path(
    implementation: str, *, dropout_active: bool, dtype: Dtype, right_padded: bool, head_dim: int
) -> str:
    """Which attention computes a layer: ``"einsum"`` (this module's own einsum + softmax,
    the only one that applies attention dropout) or ``jax.nn.dot_product_attention``'s
    ``"xla"`` / ``"cudnn"`` implementation.

    ``implementation`` (:data:`ATTENTION_IMPLEMENTATIONS`): ``"einsum"`` always;
    ``"xla"`` / ``"cudnn"`` that one unless attention dropout is active (then
    ``"einsum"``); ``"auto"``: ``"einsum"`` under attention dropout, else ``"cudnn"`` on
    a GPU for bf16/fp16 with ``right_padded`` (cuDNN takes sequence lengths; an
    arbitrary mask is slow there) and a head size it supports (a multiple of 8 up to
    128), else ``"xla"``. (``jax.nn.dot_product_attention(implementation=None)`` means
    ``"xla"`` in jax 0.10-0.11, so the choice is made here.)
    """
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention {implementation!r}; use one of {ATTENTION_IMPLEMENTATIONS}"
        )
    if implementation == "einsum" or dropout_active:
        return "einsum"
    if implementation != "auto":
        return implementation
    cudnn_fits = (
        jax.default_backend() == "gpu"
        and right_padded
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim % 8 == 0
        and head_dim <= 128
    )
    return "cudnn" if cudnn_fits else "xla"


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask; logits and softmax in float32.

    ``mask`` [B, L] (1 = real token). Masked keys get a large negative logit
    (``finfo(float32).min`` on the einsum path, ``-0.7 finfo(float32).max`` in
    ``jax.nn.dot_product_attention``; both give them probability 0), so a row of
    all-pad keys stays finite: a uniform average (on the einsum and XLA paths).

    ``implementation`` and ``right_padded``: see :func:`attention_path`. With
    ``right_padded=True`` the caller guarantees every mask row is ``1..1 0..0``, and
    ``jax.nn.dot_product_attention`` gets ``key_value_seq_lengths = mask.sum(-1)``
    instead of the mask (a left-padded row would then attend to the wrong keys).
    """

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    implementation: str = "auto"
    right_padded: bool = False

    @nn.compact
    def __call__(self, x, mask, *, deterministic: bool):
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        def project(name):
            y = DenseEinsum(
                "blh,hnd->blnd",
                (cfg.hidden_size, heads, head_dim),
                ("embed", "heads", "kv"),
                ("heads", "kv"),
                self.dtype,
                self.param_dtype,
                name=name,
            )(x)
            return nn.with_logical_constraint(y, ("batch", "seq", "heads", "kv"))

        q, k, v = project("query"), project("key"), project("value")
        dropout = cfg.attention_probs_dropout_prob
        path = attention_path(
            self.implementation,
            dropout_active=not deterministic and dropout > 0,
            dtype=self.dtype,
            right_padded=self.right_padded,
            head_dim=head_dim,
        )
        if path == "einsum":
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            logits = logits * (1.0 / math.sqrt(head_dim))
            keep = mask[:, None, None, :].astype(bool)
            logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)
            probs = Dropout(dropout)(probs, deterministic=deterministic)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
        elif self.right_padded:
            lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
            ctx = jax.nn.dot_product_attention(
                q, k, v, key_value_seq_lengths=lengths, implementation=path
            )
        else:
            keep = mask[:, None, None, :].astype(bool)
            ctx = jax.nn.dot_product_attention(q, k, v, mask=keep, implementation=path)
        ctx = nn.with_logical_constraint(ctx, ("batch", "seq", "heads", "kv"))
        out = DenseEinsum(
            "blnd,ndh->blh",
            (heads, head_dim, cfg.hidden_size),
            ("heads", "kv", "embed"),
            ("embed",),
            self.dtype,
            self.param_dtype,
            name="output",
        )(ctx)
        return nn.with_logical_constraint(out, ("batch", "seq", "embed"))


class TransformerLayer(nn.Module):
    """One post-LN encoder layer: attention block then feed-forward block."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = "auto"
    right_padded: bool = False

    @nn.compact
    def __call__(self, x, mask, deterministic: bool = True):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        a = SelfAttention(cfg, **kw, implementation=self.attention,
                          right_padded=self.right_padded, name="attention")(
            x, mask, deterministic=deterministic
        )
        a = Dropout(cfg.hidden_dropout_prob)(a, deterministic=deterministic)
        x = LayerNorm(cfg.layer_norm_eps, **kw, name="attention_norm")(a + x)
        h = nn.Dense(
            cfg.intermediate_size,
            kernel_init=_kernel(("embed", "mlp")),
            bias_init=_zeros(("mlp",)),
            **kw,
            name="intermediate",
        )(x)
        h = nn.with_logical_constraint(_activation(cfg.hidden_act)(h), ("batch", "seq", "mlp"))
        h = nn.Dense(
            cfg.hidden_size,
            kernel_init=_kernel(("mlp", "embed")),
            bias_init=_zeros(("embed",)),
            **kw,
            name="output",
        )(h)
        h = Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        x = LayerNorm(cfg.layer_norm_eps, **kw, name="output_norm")(h + x)
        return nn.with_logical_constraint(x, ("batch", "seq", "embed"))


class Pooler(nn.Module):
    """HF pooler: ``tanh(h_cls W + b)`` over the last layer's [CLS] row -> [B, H]."""

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, cls_row):
        y = nn.Dense(
            self.config.hidden_size,
            kernel_init=_kernel((None, "embed")),
            bias_init=_zeros(("embed",)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="dense",
        )(cls_row)
        return jnp.tanh(y)


class TransformerEncoder(nn.Module):
    """Embeddings -> ``num_hidden_layers`` x TransformerLayer (-> optional Pooler).

    Attributes:
      config: the model's shape (:class:`EncoderConfig`).
      dtype: compute dtype of the activations; ``param_dtype``: of the parameters.
      remat: rematerialise each layer in the backward pass (``nn.remat``), trading
        compute for activation memory.
      embedding_lookup: how the embedding tables are read (:class:`Embeddings`,
        :func:`lookup_rows`); ``"auto"`` makes no embedding gradient a scatter in
        the compute dtype.
      attention: ``"auto"``, ``"einsum"``, ``"xla"`` or ``"cudnn"``
        (:func:`attention_path`): ``jax.nn.dot_product_attention`` unless attention
        dropout is active.
      right_padded: the caller guarantees right padding (every ``attention_mask`` row
        ``1..1 0..0``, as the bundled tokenizers pad), so attention may take sequence
        lengths instead of the mask (what cuDNN's fused kernel wants). Off by default:
        any padding mask is then handled exactly.

    Every ``embedding_lookup`` and ``attention`` choice computes the same function: in
    float32 on CPU the embedding sums agree bit for bit and the jitted outputs within
    2e-6 (lookups) and 1e-6 (attention), a few ulp (tests).
    """

    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    embedding_lookup: str = "auto"
    attention: str = "auto"
    right_padded: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, L], got shape {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {attention_mask.shape} != input_ids shape "
                f"{input_ids.shape}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids shape {token_type_ids.shape} != input_ids shape "
                f"{input_ids.shape}"
            )
        if input_ids.shape[1] > cfg.max_tokens:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds the model's "
                f"{cfg.max_tokens} positions"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = Embeddings(cfg, **kw, embedding_lookup=self.embedding_lookup, name="embeddings")(
            input_ids, token_type_ids, deterministic=deterministic
        )
        hidden = [x]
        layer_cls = (
            nn.remat(TransformerLayer, static_argnums=(3,)) if self.remat else TransformerLayer
        )
        for i in range(cfg.num_hidden_layers):
            x = layer_cls(cfg, **kw, attention=self.attention, right_padded=self.right_padded,
                          name=f"layer_{i}")(x, attention_mask, deterministic)
            hidden.append(x)
        pooled = Pooler(cfg, **kw, name="pooler")(x[:, 0]) if cfg.add_pooling_layer else None
        return EncoderOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            pooler_output=pooled,
        )
