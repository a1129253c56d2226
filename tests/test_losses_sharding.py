"""Losses on an 8-device CPU mesh: sharded jit and shard_map(axis_name=...) equal the global-batch value."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from _loss_refs import np_info_nce, rel_err

from jaxembed.losses import group_whitening, info_nce, whitened_cse

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)


def _mesh(kind):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    axis_type = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}[
        kind
    ]
    return jax.make_mesh((8,), ("data",), axis_types=(axis_type,), devices=jax.devices()[:8])


@pytest.fixture(scope="module")
def mesh():
    return _mesh("auto")


def _batch(rng, b=64, d=12):
    """64 rows (8 per device): well-conditioned group covariances, so the devices'
    summation order moves results by ~1e-6 (measured), under the 1e-5 tolerance."""
    a = rng.standard_normal((b, d)).astype(np.float32)
    return (
        a,
        (a + rng.standard_normal((b, d))).astype(np.float32),
        (a + 2 * rng.standard_normal((b, d))).astype(np.float32),
    )


def _shard(mesh, *xs):
    return [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in xs]


def test_sharded_jit_equals_single_device(rng):
    """GSPMD (Auto axes) and sharding-in-types (Explicit axes, ``jax.make_mesh``'s default)."""
    a, p, n = _batch(rng)
    views = np.stack([a, p, n], axis=1)
    key = jax.random.key(int(rng.integers(2**31)))
    fns = {
        "info_nce": lambda a, p, n, v: info_nce(a, p, n),
        # sin**2: positive terms. A plain sum of sin cancels to ~0.6 from 768 O(1) terms,
        # which turned float32 summation-order noise into 1e-5..5e-5 relative error
        # (6.7 % of 150 seeds failed); with sin**2 the max over those seeds is 8e-7.
        "group_whitening": lambda a, p, n, v: jnp.sum(
            jnp.sin(group_whitening(a, num_groups=2)) ** 2),
        "whitened_cse": lambda a, p, n, v: whitened_cse(v, key, num_groups=2),
    }
    args = (a, p, n, views)
    vg = jax.jit(lambda *xs: {k: jax.value_and_grad(f, argnums=(0, 1, 2, 3))(*xs) for k, f in fns.items()})
    single = vg(*args)
    assert rel_err(single["info_nce"][0], np_info_nce(a, p, n)) <= 1e-5
    for kind in ("auto", "explicit"):
        sharded_args = _shard(_mesh(kind), *args)
        assert len(sharded_args[0].sharding.device_set) == 8
        sharded = vg(*sharded_args)
        for name, (v0, g0) in single.items():
            v1, g1 = sharded[name]
            assert rel_err(v1, v0) <= 1e-5, (name, kind)
            for x, y in zip(g1, g0):
                assert rel_err(x, y) <= 1e-5, (name, kind)


@pytest.mark.parametrize("hard, chunk_size", [(False, None), (True, 5)])
def test_shard_map_axis_name_equals_global_batch(rng, mesh, hard, chunk_size):
    a, p, n = _batch(rng)
    args = (a, p, n) if hard else (a, p)
    local = partial(info_nce, temperature=0.1, axis_name="data", chunk_size=chunk_size)
    sharded = jax.shard_map(
        lambda *xs: local(*xs), mesh=mesh, in_specs=(P("data"),) * len(args), out_specs=P()
    )
    value, grads = jax.jit(
        jax.value_and_grad(lambda *xs: sharded(*xs), argnums=tuple(range(len(args))))
    )(*args)
    want_value, want_grads = jax.value_and_grad(
        lambda *xs: info_nce(*xs, temperature=0.1), argnums=tuple(range(len(args)))
    )(*args)
    assert rel_err(value, np_info_nce(*args, temperature=0.1)) <= 1e-5
    assert rel_err(value, want_value) <= 1e-5
    for g, w in zip(grads, want_grads):
        assert rel_err(g, w) <= 1e-5
    # Without axis_name each device would only see its 2 local rows: a different (wrong) value.
    local_only = jax.shard_map(
        lambda *xs: jax.lax.pmean(info_nce(*xs, temperature=0.1), "data"),
        mesh=mesh,
        in_specs=(P("data"),) * len(args),
        out_specs=P(),
    )
    assert abs(float(jax.jit(local_only)(*args)) - float(want_value)) > 1e-3


def test_shard_map_whitening_uses_global_statistics(rng, mesh):
    a, p, n = _batch(rng)
    views = np.stack([a, p, n], axis=1)
    key = jax.random.key(int(rng.integers(2**31)))
    gw = jax.shard_map(
        lambda x: group_whitening(x, num_groups=2, axis_name="data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P("data"),
    )
    assert rel_err(jax.jit(gw)(a), group_whitening(a, num_groups=2)) <= 1e-5
    cse = jax.shard_map(
        lambda v: whitened_cse(v, key, num_groups=2, axis_name="data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P(),
    )
    value, grad = jax.jit(jax.value_and_grad(lambda v: cse(v)))(views)
    want_value, want_grad = jax.jit(
        jax.value_and_grad(lambda v: whitened_cse(v, key, num_groups=2))
    )(views)
    assert rel_err(value, want_value) <= 1e-5
    assert rel_err(grad, want_grad) <= 1e-5


def _options_batch(rng, b=64, k=2, d=12):
    """K hard negatives a row at mixed distances, distinct ids, and duplicates that cross
    device boundaries (8 rows a device): positive 3 is positive 21, hard negative (40, 1) is
    positive 40 and hard negative (9, 0) is positive 57."""
    a = rng.standard_normal((b, d)).astype(np.float32)
    p = (a + rng.standard_normal((b, d))).astype(np.float32)
    n = (a[:, None] + rng.uniform(0.6, 2.5, (b, k, 1)) * rng.standard_normal((b, k, d)))
    n = n.astype(np.float32)
    ids = rng.permutation(100_000)[: b * (1 + k)].reshape(b, 1 + k)
    p[3], ids[3, 0] = p[21], ids[21, 0]
    n[40, 1], ids[40, 2] = p[40], ids[40, 0]
    n[9, 0], ids[9, 1] = p[57], ids[57, 0]
    return a, p, n, ids


OPTIONS = dict(
    temperature=0.1,
    hard_negative_weight=0.5,
    false_negative_margin=0.1,
    query_query_negatives=True,
    document_document_negatives=True,
)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_shard_map_options_equal_global_batch(rng, mesh, chunk_size):
    """Every option inside shard_map: hard negatives, queries and ids are gathered and each
    device's rows find their own entries (positive, own hard negatives for the weight, self
    among the queries, own documents) through the label offset."""
    a, p, n, ids = _options_batch(rng)
    local = jax.shard_map(
        lambda a, p, n, i: info_nce(
            a, p, n, document_ids=i, axis_name="data", chunk_size=chunk_size, **OPTIONS
        ),
        mesh=mesh,
        in_specs=(P("data"),) * 4,
        out_specs=P(),
    )
    vg = jax.value_and_grad(lambda a, p, n: local(a, p, n, ids), argnums=(0, 1, 2))
    value, grads = jax.jit(vg)(a, p, n)
    want_value, want_grads = jax.jit(jax.value_and_grad(
        lambda a, p, n: info_nce(a, p, n, document_ids=ids, **OPTIONS), argnums=(0, 1, 2)))(
            a, p, n)
    # Over 100 seeds: value <= 2.1e-7, gradients <= 1.3e-6 relative error (shard_map plain and
    # chunked, and sharded jit on Auto and Explicit meshes below).
    assert rel_err(value, np_info_nce(a, p, n, document_ids=ids, **OPTIONS)) <= 1e-5
    assert rel_err(value, want_value) <= 1e-5
    for g, w in zip(grads, want_grads):
        assert rel_err(g, w) <= 1e-5


def test_sharded_jit_options_equal_single_device(rng):
    a, p, n, ids = _options_batch(rng)
    fn = jax.jit(jax.value_and_grad(
        lambda a, p, n, i: info_nce(a, p, n, document_ids=i, **OPTIONS), argnums=(0, 1, 2)))
    v0, g0 = fn(a, p, n, ids)
    for kind in ("auto", "explicit"):
        v1, g1 = fn(*_shard(_mesh(kind), a, p, n, ids))
        assert rel_err(v1, v0) <= 1e-5, kind
        for x, y in zip(g1, g0):
            assert rel_err(x, y) <= 1e-5, kind
