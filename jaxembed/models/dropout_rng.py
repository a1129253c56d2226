"""Which random-bit generator the encoder's dropout masks come from (the ``dropout_rng`` policy).

* ``threefry`` (JAX's default): the same masks whatever the sharding, which
  the 8-vs-1-device and resume tests rely on; :class:`jaxembed.models.dropout.Dropout`
  computes these bits fused into the kernels that apply the masks.
* ``rbg`` / ``unsafe_rbg``: the bits come from XLA's RngBitGenerator
  (deterministic for a given key and sharding, not across shardings).
* ``auto`` (the default): threefry, on every backend.

Why not rbg on accelerators (the default until 2026-12-02): XLA's SPMD
partitioner does not split an RngBitGenerator, so on a data-parallel mesh
**every chip draws the bits of the whole global batch** and keeps its slice.
Compiled for v5p:2x2x2 (data 8, WhitenedCSE, batch 128 x 3 views, seq 128,
BERT-base width with 2 layers), each chip ran ``u32[384, 12, 128, 128]``
RngBitGenerators for its ``[48, 12, 128, 128]`` attention scores: 8x the bits
(``chips``x on any data axis), 1.08 GB of temporaries per chip against 0.47 GB
with the fused threefry bits, whose counters are iotas the partitioner shards,
and XLA's step estimate 5.10 ms against 4.19 ms. On CPU RngBitGenerator is also
far slower than the fused bits; on one GPU the two measured the same
(``benchmarks/RESULTS.md``, "train_step on a GPU").

Example::

    key = dropout_key(jax.random.PRNGKey(0), "auto")   # threefry
    out = enc.apply(params, ids, mask, deterministic=False, dropout_rng=key)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# kept equal to jaxembed.train.config.DROPOUT_RNGS by tests/test_train_config.py
DROPOUT_RNGS = ("auto", "threefry", "rbg", "unsafe_rbg")


def resolve_impl(impl: str) -> str:
    """``impl`` with ``auto`` replaced by ``threefry`` (see the module docstring)."""
    if impl not in DROPOUT_RNGS:
        raise ValueError(f"dropout_rng must be one of {DROPOUT_RNGS}, got {impl!r}")
    if impl == "auto":
        return "threefry"
    return impl


def dropout_key(key: jax.Array, impl: str) -> jax.Array:
    """The key dropout masks are drawn from, for the step key ``key`` (raw ``uint32[2]``).

    ``threefry`` returns ``key`` itself; ``rbg``/``unsafe_rbg`` a typed key of
    that implementation whose data are the 4 words ``jax.random.bits(key, (4,))``,
    so the masks are a deterministic function of ``key`` under every policy.
    """
    impl = resolve_impl(impl)
    if impl == "threefry":
        return key
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=impl)
