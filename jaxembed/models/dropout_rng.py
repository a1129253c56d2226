"""Which random-bit generator the encoder's dropout masks come from (the ``dropout_rng`` policy).

* ``threefry`` (JAX's default): the same masks whatever the sharding, which
  the 8-vs-1-device and resume tests rely on; :class:`jaxembed.models.dropout.Dropout`
  computes these bits fused into the kernels that apply the masks.
* ``rbg`` / ``unsafe_rbg``: the bits come from XLA's RngBitGenerator
  (deterministic for a given key and sharding, not across shardings), the
  choice large JAX trainers make on TPU.
* ``auto``: threefry on CPU, rbg on accelerators. On CPU XLA's RngBitGenerator
  is far slower than the fused threefry bits; on one GPU the two measured
  the same (numbers: ``benchmarks/RESULTS.md``, "train_step on a GPU", and
  ``benchmarks/LOG.md``, "train_step", session 3).

Example::

    key = dropout_key(jax.random.PRNGKey(0), "auto")   # threefry on CPU
    out = enc.apply(params, ids, mask, deterministic=False, dropout_rng=key)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# kept equal to jaxembed.train.config.DROPOUT_RNGS by tests/test_train_config.py
DROPOUT_RNGS = ("auto", "threefry", "rbg", "unsafe_rbg")


def resolve_impl(impl: str) -> str:
    """``impl`` with ``auto`` replaced by this backend's choice (threefry on CPU, else rbg)."""
    if impl not in DROPOUT_RNGS:
        raise ValueError(f"dropout_rng must be one of {DROPOUT_RNGS}, got {impl!r}")
    if impl == "auto":
        return "threefry" if jax.default_backend() == "cpu" else "rbg"
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
