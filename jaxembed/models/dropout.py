"""Dropout whose random bits XLA can fuse: same masks as ``flax.linen.Dropout``, faster.

``jax.random`` lowers its threefry hash on CPU as a ``while`` loop of five
4-round blocks, so every dropout in the encoder writes and re-reads ~10 full
``uint32`` arrays the size of its input before the mask exists. Profiled on the
2-core CPU (all-MiniLM-L6-v2, batch 64 x 2 views, seq 32), those loops were
~25 % of the forward pass: 230 kernels and ~260 ms of a ~1.2 s forward.

:func:`threefry_bits` is the same Threefry-2x32 hash (Salmon et al. 2011, 20
rounds), on the same counters as ``jax.random.bits`` with
``jax_threefry_partitionable`` (the default), written as straight-line
elementwise ``uint32`` ops: XLA fuses the counters, the hash, the comparison
and the scaling into the kernel that applies the mask. The bits are
**identical** to ``jax.random.bits(key, shape, jnp.uint32)``, so :class:`Dropout`
draws exactly the masks ``nn.Dropout`` draws for the same key (tests check
both bit for bit); nothing about the training changes except its speed: the
MiniLM SimCSE and WhitenedCSE train steps ran 1.24x faster on that CPU
(``benchmarks/RESULTS.md``, ``train_step``).

Reference: J. Salmon, M. Moraes, R. Dror, D. Shaw, "Parallel random numbers:
as easy as 1, 2, 3", SC 2011 (Threefry); counters as in ``jax.random``.

Keys of another implementation (``rbg``, ``unsafe_rbg``), the legacy
non-partitionable threefry mode, and arrays of 2**32 elements or more go
through ``jax.random.bernoulli`` as ``nn.Dropout`` does.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def _threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 with 20 rounds: key words ``k0, k1``, counter words ``x0, x1``."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, r) ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """``arange(prod(shape)).reshape(shape)`` as ``uint32``, built from per-axis iotas so
    the SPMD partitioner can shard it (prod(shape) < 2**32)."""
    strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1] if shape else ()
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    return index


def _partitionable() -> bool:
    # jax may retire the flag once partitionable counters are its only mode
    return bool(getattr(jax.config, "jax_threefry_partitionable", True))


def _threefry_key_words(key: jax.Array):
    """The two ``uint32`` key words of a threefry key, or ``None`` for any other key."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if "threefry" not in str(jax.random.key_impl(key)):
            return None
        key = jax.random.key_data(key)
    elif not (key.shape == (2,) and key.dtype == jnp.uint32
              and "threefry" in str(getattr(jax.config, "jax_default_prng_impl", "threefry2x32"))):
        return None
    return key[0], key[1]


def _unfusable(key: jax.Array, shape: tuple[int, ...]) -> str | None:
    """Why the straight-line hash would not reproduce ``jax.random`` here, or ``None``."""
    if _threefry_key_words(key) is None:
        return f"needs a threefry key, got dtype {key.dtype}, shape {key.shape}"
    if not _partitionable():
        return "reproduces jax_threefry_partitionable=True only"
    if math.prod(shape) >= 2**32:
        return f"supports fewer than 2**32 elements, got shape {shape}"
    return None


def _bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    k0, k1 = _threefry_key_words(key)
    b0, b1 = _threefry2x32(k0, k1, jnp.zeros(shape, jnp.uint32), _flat_index(shape))
    return b0 ^ b1


def threefry_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """``uint32`` random bits of ``shape``, equal to ``jax.random.bits(key, shape, jnp.uint32)``.

    Args:
      key: a threefry key: typed (``jax.random.key``) or raw ``uint32[2]``
        (``jax.random.PRNGKey``).
      shape: output shape, fewer than 2**32 elements.

    Returns:
      ``uint32[*shape]``: ``b0 ^ b1`` of Threefry-2x32 applied to the counters
      ``(0, i)`` for the flat index ``i``, as ``jax.random`` computes them with
      ``jax_threefry_partitionable``.

    Raises:
      ValueError: for a non-threefry key, the non-partitionable mode, or a shape
        of 2**32 elements or more.

    Example::

      >>> key = jax.random.key(0)
      >>> bool((threefry_bits(key, (3, 4)) == jax.random.bits(key, (3, 4), jnp.uint32)).all())
      True
    """
    shape = tuple(int(d) for d in shape)
    problem = _unfusable(key, shape)
    if problem:
        raise ValueError(f"threefry_bits {problem}")
    return _bits(key, shape)


def bernoulli_mask(key: jax.Array, keep_prob: float, shape: Sequence[int]) -> jax.Array:
    """``jax.random.bernoulli(key, keep_prob, shape)``, fused for threefry keys.

    ``jax.random.uniform`` turns bits ``b`` into ``(b >> 9) / 2**23`` exactly, so
    ``u < p`` is the integer test ``(b >> 9) < ceil(p * 2**23)`` with ``p`` in
    float32, as ``bernoulli`` compares it.
    """
    shape = tuple(int(d) for d in shape)
    if _unfusable(key, shape):
        return jax.random.bernoulli(key, keep_prob, shape)
    threshold = math.ceil(float(np.float32(keep_prob)) * 2**23)
    return (_bits(key, shape) >> np.uint32(9)) < np.uint32(threshold)


class Dropout(nn.Module):
    """``flax.linen.Dropout`` (same fields, same masks for the same key), with
    the mask's random bits fused into the kernel that applies it.

    Attributes:
      rate: probability of dropping an element (not the keep rate).
      broadcast_dims: axes that share one mask value.
      deterministic: default for the call argument; ``True`` returns the input.
      rng_collection: the RNG stream the key comes from.

    Example::

      >>> x = jnp.ones((2, 4))
      >>> y = Dropout(0.5).apply({}, x, deterministic=False,
      ...                        rngs={"dropout": jax.random.key(0)})
      >>> ref = nn.Dropout(0.5).apply({}, x, deterministic=False,
      ...                             rngs={"dropout": jax.random.key(0)})
      >>> bool((y == ref).all())
      True
    """

    rate: float
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool | None = None,
                 rng: jax.Array | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shared = {d % inputs.ndim for d in self.broadcast_dims}
        mask_shape = [1 if i in shared else d for i, d in enumerate(inputs.shape)]
        mask = jnp.broadcast_to(bernoulli_mask(rng, keep_prob, mask_shape), inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
