"""The generic decoder as Flax linen modules: embeddings -> ``num_hidden_layers`` x
:class:`DecoderLayer` -> final RMSNorm, driven by a :class:`DecoderConfig`.

Shapes: ``input_ids``/``attention_mask`` [B, T] int (1 = real token; pads may be on either
side), ``position_ids`` [B, T] or [1, T] (default ``0..T-1`` for every row, as a
transformers forward without ``position_ids``); hidden states [B, T, H] in ``dtype``.

Outputs follow transformers' ``output_hidden_states``: ``hidden_states[0]`` is the (scaled)
embedding output, ``hidden_states[i]`` the input of layer ``i`` (= output of layer
``i - 1``), ``hidden_states[L]`` the final-norm output (= ``last_hidden_state``).
``output_layer=k`` (negative counts from the end, as Python) returns ``hidden_states[k]`` as
``last_hidden_state`` and, without ``scan_layers``, runs only layers ``0..k-1`` (early exit).
``token_prepending`` applies :mod:`token_prepending` before the chosen layers.

Options: ``dtype`` (activations) vs ``param_dtype`` (weights); norms, RoPE and softmax
run in float32. ``attention`` picks the implementation (``attention.IMPLEMENTATIONS``).
``remat`` rematerialises each layer in the backward pass. ``scan_layers`` runs the layers
with ``nn.scan`` over stacked parameters (leading logical axis ``layers``): one compiled
layer body instead of ``L``. Layers may differ (Gemma's sliding/global layers, Gemma 3's two
RoPE bases): each distinct ``(window, rope)`` *kind* gets its own window bounds and cos/sin
table, and the scanned body picks its kind by index, so every family can be scanned. Under scan,
``output_layer`` still runs all layers (the parameters are one stacked array).

Example::

    ckpt = load_decoder(folder)                      # config, params, extra, ...
    model = Decoder(ckpt.config, dtype=jnp.bfloat16)
    out = model.apply({"params": ckpt.params}, ids, mask, output_hidden_states=True)

References: Touvron et al. 2023 (Llama); Qwen Team 2025 (Qwen3, arXiv 2505.09388);
Gemma Team 2024/2025 (Gemma 2/3); ``transformers/models/*/modeling_*.py``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.models.decoder.attention import IMPLEMENTATIONS, Attention
from jaxembed.models.decoder.config import DecoderConfig
from jaxembed.models.decoder.layers import Embedding, GatedMLP, RMSNorm
from jaxembed.models.decoder.pooling import last_token_index
from jaxembed.models.decoder.rope import inverse_frequencies, rope_tables
from jaxembed.models.decoder.token_prepending import TokenPrepending, prepend_last_token

Dtype = Any


@flax.struct.dataclass
class DecoderOutput:
    """``last_hidden_state`` [B, T, H] (``hidden_states[output_layer]``); ``hidden_states``:
    tuple of ``output_layer + 1`` [B, T, H] arrays (transformers indexing) or None."""

    last_hidden_state: jax.Array
    hidden_states: Optional[tuple] = None


class DecoderLayer(nn.Module):
    """Pre-norm attention and gated-MLP blocks (+ Gemma's post norms)."""

    config: DecoderConfig
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, attention_mask, window, cos, sin):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(name):
            return RMSNorm.of(cfg, name=name, **kw)

        h = Attention(cfg, self.attention, **kw, name="attn")(
            norm("attn_norm")(x), attention_mask, window, cos, sin)
        if cfg.sandwich_norms:
            h = norm("attn_post_norm")(h)
        x = x + h
        h = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, cfg.mlp_bias, **kw,
                     name="mlp")(norm("mlp_norm")(x))
        if cfg.sandwich_norms:
            h = norm("mlp_post_norm")(h)
        return nn.with_logical_constraint(x + h, ("batch", "seq", "embed"))


class _ScanStep(nn.Module):
    """One ``nn.scan`` step: the optional Token Prepending overwrite, then a layer. Carry is
    the hidden state; the scanned input is ``(kind, prepend_here)``; with ``emit_inputs`` it
    also emits the layer input (``hidden_states[i]``), else nothing (no [L, B, T, H] buffer)."""

    config: DecoderConfig
    attention: str = "auto"
    remat: bool = False
    emit_inputs: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, per_layer, attention_mask, windows, cos, sin, prepend):
        kind, prepend_here = per_layer
        if prepend is not None:
            x = jnp.where(prepend_here, prepend_last_token(x, *prepend), x)
        layer = nn.remat(DecoderLayer, prevent_cse=False) if self.remat else DecoderLayer
        y = layer(self.config, self.attention, self.dtype, self.param_dtype, name="layer")(
            x, attention_mask, (windows[kind, 0], windows[kind, 1]), cos[kind], sin[kind]
        )
        return y, (x if self.emit_inputs else None)


def resolve_output_layer(output_layer: Optional[int], num_layers: int) -> int:
    """``None`` -> ``num_layers``; negative ``k`` -> ``num_layers + 1 + k``; checks the range."""
    if output_layer is None:
        return num_layers
    if not isinstance(output_layer, (int, np.integer)) or not (
        -(num_layers + 1) <= output_layer <= num_layers
    ):
        raise ValueError(
            f"output_layer must be an int in [{-(num_layers + 1)}, {num_layers}], "
            f"got {output_layer!r}"
        )
    return int(output_layer) % (num_layers + 1)


class Decoder(nn.Module):
    """Embeddings -> layers -> final norm; see the module docstring for the options."""

    config: DecoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = "auto"
    remat: bool = False
    scan_layers: bool = False

    def _check_inputs(self, input_ids, attention_mask, position_ids, token_prepending):
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be [B, T] integers, got {input_ids.shape} "
                             f"{input_ids.dtype}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids shape "
                             f"{input_ids.shape}")
        B, T = input_ids.shape
        if position_ids is not None and (
            position_ids.ndim != 2 or position_ids.shape[1] != T
            or position_ids.shape[0] not in (1, B)
        ):
            raise ValueError(
                f"position_ids must be [{B}, {T}] or [1, {T}], got {position_ids.shape}"
            )
        if token_prepending is not None and token_prepending.placeholder_positions.shape != (B,):
            raise ValueError(f"token_prepending.placeholder_positions must be [{B}], got "
                             f"{token_prepending.placeholder_positions.shape}")
        cfg = self.config
        if any(r.rope_type == "dynamic" for r in cfg.ropes) and T > cfg.max_position_embeddings:
            raise ValueError(f"dynamic RoPE is only supported up to max_position_embeddings = "
                             f"{cfg.max_position_embeddings} tokens, got {T}")
        if self.attention not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention {self.attention!r}; choose from {IMPLEMENTATIONS}")

    def _kind_tables(self, positions):
        """Per attention kind: the window ``(left, right)`` as ints (unbounded -> ``T``, which
        no distance reaches) and RoPE cos/sin [B, T, D]."""
        cfg = self.config
        T = positions.shape[1]
        kinds, layer_kind = cfg.attention_kinds()
        windows, cos, sin = [], [], []
        for window, rope in kinds:
            inv_freq, scale = inverse_frequencies(
                cfg.ropes[rope], head_dim=cfg.head_dim,
                max_position_embeddings=cfg.max_position_embeddings,
            )
            c, s = rope_tables(positions, inv_freq, scale)
            windows.append(tuple(T if w is None else w for w in window))
            cos.append(c)
            sin.append(s)
        return layer_kind, windows, cos, sin

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask,
        position_ids=None,
        *,
        output_hidden_states: bool = False,
        output_layer: Optional[int] = None,
        token_prepending: Optional[TokenPrepending] = None,
    ) -> DecoderOutput:
        cfg = self.config
        self._check_inputs(input_ids, attention_mask, position_ids, token_prepending)
        L = cfg.num_hidden_layers
        stop = L if self.is_initializing() else resolve_output_layer(output_layer, L)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        scale = math.sqrt(cfg.hidden_size) if cfg.scale_embeddings else None
        x = Embedding(cfg.vocab_size, cfg.hidden_size, scale, **kw, name="embed_tokens")(input_ids)
        B, T = input_ids.shape
        positions = jnp.arange(T)[None] if position_ids is None else position_ids
        positions = jnp.broadcast_to(positions, (B, T))
        layer_kind, windows, cos, sin = self._kind_tables(positions)
        prepend = None
        if token_prepending is not None:
            prepend = (token_prepending.placeholder_positions, last_token_index(attention_mask))
        active = [token_prepending is not None and token_prepending.active(i) for i in range(L + 1)]

        if self.scan_layers:
            scan = nn.scan(
                _ScanStep,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0,) + (nn.broadcast,) * 5,
                length=L,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            per_layer = (jnp.asarray(layer_kind, jnp.int32), jnp.asarray(active[:L]))
            emit = output_hidden_states or stop < L
            x, inputs = scan(cfg, self.attention, self.remat, emit, **kw, name="layers")(
                x, per_layer, attention_mask, jnp.asarray(windows, jnp.int32), jnp.stack(cos),
                jnp.stack(sin), prepend,
            )
            hidden = [inputs[i] for i in range(L)] if emit else []
        else:
            layer_cls = nn.remat(DecoderLayer) if self.remat else DecoderLayer
            hidden = []
            for i in range(stop):
                if active[i]:
                    x = prepend_last_token(x, *prepend)
                hidden.append(x)
                k = layer_kind[i]
                x = layer_cls(cfg, self.attention, **kw, name=f"layer_{i}")(
                    x, attention_mask, windows[k], cos[k], sin[k])
        if stop == L:
            x = RMSNorm.of(cfg, name="norm", **kw)(x)
            hidden = hidden[:L] + [x]
        else:
            if not self.scan_layers and active[stop]:
                x = prepend_last_token(x, *prepend)
            x = hidden[stop] if self.scan_layers else x
            hidden = hidden[:stop] + [x]
        return DecoderOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
        )
