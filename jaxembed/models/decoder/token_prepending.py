"""Token Prepending (Fu et al., ACL 2025): a training-free way to let the early tokens of a
causal LLM see a summary of the whole sentence.

A placeholder token ``<PST>`` is put before the sentence in the prompt (e.g.
``This sentence : <PST> "{s}" means in one word:"``). For every decoder layer ``i`` with
``start_layer <= i < end_layer``, *before* layer ``i`` runs, the hidden state at the
placeholder is overwritten with the hidden state of the last token (the output of layer
``i - 1``, before any final norm)::

    x[b, placeholder[b]] <- x[b, last(b)]

Masks and positions are unchanged and nothing is trained. The embedding is then read as the
last token of ``hidden_states[output_layer]`` (transformers indexing: 0 = embeddings,
``num_layers`` = after the final norm; an intermediate index is an "early exit").

Exactly as the official code, which pads on the left and reads ``hidden_states[:, -1]``:
"the last token" is the row's last real token (``L - 1`` under left padding; the last real
token under right padding too), the placeholder is the first occurrence of its id, and
because the official code overwrites the tensor in place, ``hidden_states[i]`` for
``start <= i < end`` shows the overwritten input of layer ``i``.

A tokenizer without the placeholder gets it as a new token; :func:`add_placeholder_row` gives
it an embedding row drawn from ``N(0, 1)`` (see ``presets.py`` for the official code's
initialisation), appending a row when the id lies past the table.

Example::

    tp = TokenPrepending(placeholder_positions(ids, pst_id), start_layer=1, end_layer=7)
    out = model.apply(params, ids, mask, token_prepending=tp, output_layer=27)
    z = last_token(out.last_hidden_state, mask)

Reference: Fu et al. 2025, "Token Prepending: A Training-Free Approach for Eliciting Better
Sentence Embeddings from LLMs" (arXiv 2412.11556); github.com/fuyuchenIfyw/token_prepending
(``senllm/modeling_llama.py``, ``LlamaModel.forward``).
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class TokenPrepending:
    """``placeholder_positions`` [B] int (the ``<PST>`` index per row); the layers
    ``start_layer <= i < end_layer`` get the overwrite (``end_layer`` may exceed the depth)."""

    placeholder_positions: jax.Array
    start_layer: int = flax.struct.field(pytree_node=False, default=1)
    end_layer: int = flax.struct.field(pytree_node=False, default=2**31 - 1)

    def __post_init__(self):
        if not (isinstance(self.start_layer, int) and isinstance(self.end_layer, int)):
            raise ValueError("start_layer and end_layer must be ints")
        if not 0 <= self.start_layer < self.end_layer:
            raise ValueError(
                f"need 0 <= start_layer < end_layer, got {self.start_layer}, {self.end_layer}"
            )

    def active(self, layer: int) -> bool:
        """Whether the overwrite happens before decoder layer ``layer``."""
        return self.start_layer <= layer < self.end_layer


def placeholder_positions(input_ids, token_id: int) -> np.ndarray:
    """[B, L] ids -> [B] int32 index of the first ``token_id`` per row (host-side; raises
    ``ValueError`` naming the rows that lack it)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {ids.shape}")
    hits = ids == token_id
    missing = np.flatnonzero(~hits.any(axis=1))
    if missing.size:
        raise ValueError(f"rows {missing.tolist()} contain no placeholder token id {token_id}")
    return hits.argmax(axis=1).astype(np.int32)


def prepend_last_token(x: jax.Array, placeholder: jax.Array, last: jax.Array) -> jax.Array:
    """``x`` [B, L, H] with row ``b``'s position ``placeholder[b]`` set to ``x[b, last[b]]``."""
    rows = jnp.arange(x.shape[0])
    return x.at[rows, placeholder].set(x[rows, last])


def add_placeholder_row(params: dict, config, token_id: int, *, seed: int) -> tuple[dict, object]:
    """``(params, config)`` with embedding row ``token_id`` set to a ``N(0, 1)`` draw of
    NumPy's generator seeded ``seed`` (in the table's dtype); the table (and
    ``config.vocab_size``) grows to ``token_id + 1`` rows, new rows zero, when needed.
    ``params`` is the unstacked numpy/jax tree; the input is not modified."""
    table = np.asarray(params["embed_tokens"]["embedding"])
    rows = max(table.shape[0], token_id + 1)
    grown = np.zeros((rows, table.shape[1]), table.dtype)
    grown[: table.shape[0]] = table
    row = np.random.default_rng(seed).standard_normal(table.shape[1])  # float64 draws
    grown[token_id] = row.astype(table.dtype)
    params = {**params, "embed_tokens": {**params["embed_tokens"], "embedding": grown}}
    return params, dataclasses.replace(config, vocab_size=rows)
