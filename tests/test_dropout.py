"""jaxembed.models.dropout: the fused threefry dropout draws exactly flax's masks."""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxembed.models.dropout import Dropout, _threefry2x32, bernoulli_mask, threefry_bits
from jaxembed.models.dropout_rng import dropout_key, resolve_impl

# Known-answer vectors of Threefry-2x32, 20 rounds (Random123's kat_vectors):
# (key0, key1, counter0, counter1) -> (out0, out1).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("inputs,expected", KAT)
def test_threefry_known_answers(inputs, expected):
    words = [jnp.uint32(w) for w in inputs]
    out = jax.jit(_threefry2x32)(*words)
    assert (int(out[0]), int(out[1])) == expected


def _keys(rng):
    seed = int(rng.integers(0, 2**31))
    return [jax.random.PRNGKey(seed), jax.random.key(seed + 1)]


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4, 5), (64, 12, 32, 32)])
def test_bits_equal_jax_random(rng, shape):
    for key in _keys(rng):
        ours = jax.jit(threefry_bits, static_argnums=1)(key, shape)
        ref = jax.random.bits(key, shape, jnp.uint32)
        assert ours.shape == shape and ours.dtype == jnp.uint32
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_bits_reject_other_keys():
    with pytest.raises(ValueError, match="threefry key"):
        threefry_bits(jax.random.key(0, impl="rbg"), (4,))
    with pytest.raises(ValueError, match="threefry key"):
        threefry_bits(jnp.zeros((4,), jnp.uint32), (4,))


@pytest.mark.parametrize("keep_prob", [0.9, 0.5, 0.123456789, 1 - 1e-7])
def test_bernoulli_mask_equals_jax(rng, keep_prob):
    key = jax.random.PRNGKey(int(rng.integers(0, 2**31)))
    shape = (256, 300)
    ours = bernoulli_mask(key, keep_prob, shape)
    ref = jax.random.bernoulli(key, keep_prob, shape)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    # and the rate itself, against the binomial standard deviation
    n = np.prod(shape)
    assert abs(float(ours.mean()) - keep_prob) < 6 * np.sqrt(keep_prob * (1 - keep_prob) / n) + 1e-6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rate,broadcast_dims", [(0.1, ()), (0.5, (0,)), (0.3, (-1,)), (0.0, ()),
                                                 (1.0, ())])
def test_dropout_equals_flax(rng, dtype, rate, broadcast_dims):
    x = jnp.asarray(rng.standard_normal((4, 6, 16)), dtype)
    for key in _keys(rng):
        def apply(module, x, key=key):
            return module.apply({}, x, deterministic=False, rngs={"dropout": key})

        ours = jax.jit(lambda x: apply(Dropout(rate, broadcast_dims=broadcast_dims), x))(x)
        ref = jax.jit(lambda x: apply(nn.Dropout(rate, broadcast_dims=broadcast_dims), x))(x)
        assert ours.dtype == dtype
        np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(ref, np.float32))
        # gradient of a random projection: the same mask, scaled by 1/keep
        r = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
        g_ours = jax.grad(lambda x: jnp.sum(apply(Dropout(rate), x).astype(jnp.float32) * r))(x)
        g_ref = jax.grad(lambda x: jnp.sum(apply(nn.Dropout(rate), x).astype(jnp.float32) * r))(x)
        np.testing.assert_array_equal(np.asarray(g_ours, np.float32), np.asarray(g_ref, np.float32))


def test_dropout_deterministic_and_rbg_fallback(rng):
    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    out = Dropout(0.4).apply({}, x, deterministic=True)
    assert out is x
    key = jax.random.key(int(rng.integers(0, 2**31)), impl="rbg")
    ours = Dropout(0.4).apply({}, x, deterministic=False, rngs={"dropout": key})
    ref = nn.Dropout(0.4).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    assert 0 < float((ours == 0).mean()) < 1


def test_dropout_sharded_equals_single_device(rng):
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    x = jnp.asarray(rng.standard_normal((16, 12, 32)), jnp.float32)
    key = jax.random.PRNGKey(int(rng.integers(0, 2**31)))
    f = jax.jit(lambda x: Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": key}))
    single = f(x)
    sharded = f(jax.device_put(x, NamedSharding(mesh, P("data"))))
    assert sharded.sharding.spec == P("data")
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(single))


def _u32_shapes(compiled_hlo: str) -> set[tuple[int, ...]]:
    return {tuple(int(d) for d in dims.split(",") if d)
            for dims in re.findall(r"\bu32\[([\d,]*)\]", compiled_hlo)}


@pytest.mark.parametrize("impl", ["auto", "rbg"])
def test_each_device_draws_only_its_shard_of_the_bits(rng, impl):
    """On a data mesh of 8, the default (``auto``: fused threefry, counters from iotas)
    computes each device's 2 x 12 x 32 bits only; rbg's RngBitGenerator is not split by
    the partitioner, so every device draws the whole 16-row batch's bits (8x the work
    and memory per chip: why ``auto`` is not rbg on accelerators)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    x = jax.device_put(jnp.asarray(rng.standard_normal((16, 12, 32)), jnp.float32),
                       NamedSharding(mesh, P("data")))
    key = dropout_key(jax.random.PRNGKey(int(rng.integers(0, 2**31))), impl)
    f = jax.jit(lambda x, k: Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": k}))
    shapes = _u32_shapes(f.lower(x, key).compile().as_text())
    full = any(math.prod(s) >= 16 * 12 * 32 for s in shapes)
    assert full == (impl == "rbg"), sorted(shapes)
    assert resolve_impl(impl) == ("threefry" if impl == "auto" else impl)


def test_encoder_uses_fused_dropout():
    """The transformer's dropouts are this module's (a change back to nn.Dropout
    would still pass every equality test above, and lose the speed)."""
    from jaxembed.models import transformer

    assert transformer.Dropout is Dropout


def test_legacy_threefry_mode_falls_back(rng):
    """With jax_threefry_partitionable off, jax draws other bits: the fused path
    must step aside (threefry_bits refuses, Dropout still equals nn.Dropout)."""
    x = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    key = jax.random.PRNGKey(int(rng.integers(0, 2**31)))
    with jax.threefry_partitionable(False):
        with pytest.raises(ValueError, match="partitionable"):
            threefry_bits(key, (8, 32))
        ours = Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": key})
        ref = nn.Dropout(0.2).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_dropout_vmapped_over_keys(rng):
    """One mask per key under vmap (e.g. an ensemble of dropout views), as nn.Dropout."""
    x = jnp.asarray(rng.standard_normal((6, 40)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(0, 2**31))), 5)

    def views(module):
        one = lambda k: module.apply({}, x, deterministic=False, rngs={"dropout": k})  # noqa: E731
        return jax.jit(jax.vmap(one))(keys)

    ours, ref = views(Dropout(0.25)), views(nn.Dropout(0.25))
    assert ours.shape == (5, 6, 40)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    assert not np.array_equal(np.asarray(ours[0] == 0), np.asarray(ours[1] == 0))
