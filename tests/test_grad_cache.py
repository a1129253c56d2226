"""GradCache equals plain value_and_grad over the full batch (dropout on), also on an 8-device mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from _loss_refs import rel_err

from jaxembed.losses import grad_cache, info_nce, matryoshka, whitened_cse

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)

DIN, HIDDEN, DOUT = 6, 16, 12


def _params(rng):
    return {
        "w1": jnp.asarray(rng.standard_normal((DIN, HIDDEN)) / np.sqrt(DIN), jnp.float32),
        "b1": jnp.asarray(0.1 * rng.standard_normal(HIDDEN), jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((HIDDEN, DOUT)) / np.sqrt(HIDDEN), jnp.float32),
        "head": jnp.asarray(rng.standard_normal((DOUT, DOUT)) / np.sqrt(DOUT), jnp.float32),
    }


def embed(params, batch, key=None):
    """Tiny MLP with dropout; ``batch`` is a dict pytree like a tokenised batch."""
    h = jax.nn.relu((batch["x"] * batch["scale"]) @ params["w1"] + params["b1"])
    if key is not None:
        h = h * jax.random.bernoulli(key, 0.8, h.shape) / 0.8
    return h @ params["w2"]


def _batch(rng, b):
    return {
        "x": rng.standard_normal((b, DIN)).astype(np.float32),
        "scale": rng.uniform(0.5, 1.5, (b, 1)).astype(np.float32),
    }


def _reference(params, inputs, loss_fn, chunk, rng, loss_takes_params=False, **kw):
    """Full-batch jax.value_and_grad with GradCache's documented dropout keys and strided chunks."""

    def total(p):
        embs = []
        for k, x in enumerate(inputs):
            b = x["x"].shape[0]
            n = b // chunk
            rows = []
            for j in range(n):
                key = None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, k), j)
                rows.append(embed(p, {name: v[j::n] for name, v in x.items()}, key))
            order = np.argsort(np.concatenate([np.arange(j, b, n) for j in range(n)]))
            embs.append(jnp.concatenate(rows)[order])
        return loss_fn(p, *embs, **kw) if loss_takes_params else loss_fn(*embs, **kw)

    return jax.jit(jax.value_and_grad(total))(params)


def _check(got, want):
    (v1, g1), (v0, g0) = got, want
    assert rel_err(v1, v0) <= 1e-5
    for name in g0:
        assert g1[name].dtype == g0[name].dtype
        assert rel_err(g1[name], g0[name]) <= 1e-5, name


def test_grad_cache_info_nce_with_dropout(rng):
    """Hard negatives are covered by the sharded test below."""
    params = _params(rng)
    a = _batch(rng, 16)
    inputs = (a, a)  # SimCSE: the same sentences twice, two dropout views
    loss = lambda *e: info_nce(*e, temperature=0.1)  # noqa: E731
    key = jax.random.key(int(rng.integers(2**31)))
    fn = jax.jit(grad_cache(embed, loss, chunk_size=4))
    got = fn(params, *inputs, rng=key)
    _check(got, _reference(params, inputs, loss, 4, key))
    # Dropout is really on: without a key (deterministic embed) the loss differs ...
    assert abs(float(fn(params, *inputs)[0]) - float(got[0])) > 1e-4


def test_grad_cache_whitened_cse_with_projection_head(rng):
    params = _params(rng)
    batch = _batch(rng, 32)  # 32 rows: well-conditioned 6-channel group covariances
    key, wkey = jax.random.split(jax.random.key(int(rng.integers(2**31))))

    def loss(p, *views, whiten_key):
        head = lambda z: jnp.tanh(z @ p["head"])  # noqa: E731  (the MLP after SGW, trained too)
        return whitened_cse(jnp.stack(views, axis=1), whiten_key, num_groups=2, projection=head)

    fn = jax.jit(grad_cache(embed, loss, chunk_size=8, loss_takes_params=True))
    got = fn(params, batch, batch, batch, rng=key, whiten_key=wkey)
    want = _reference(params, (batch,) * 3, loss, 8, key, loss_takes_params=True, whiten_key=wkey)
    _check(got, want)
    assert np.abs(np.asarray(got[1]["head"])).max() > 0


def test_grad_cache_matryoshka_with_aux(rng):
    params = _params(rng)
    a, p = _batch(rng, 12), _batch(rng, 12)
    loss = matryoshka(info_nce, (12, 6, 3), (1.0, 0.5, 0.25))
    key = jax.random.key(int(rng.integers(2**31)))
    (value, aux), grads = jax.jit(
        grad_cache(embed, lambda *e: (loss(*e), e[0].mean()), chunk_size=3, has_aux=True)
    )(params, a, p, rng=key)
    _check((value, grads), _reference(params, (a, p), loss, 3, key))
    assert aux.shape == ()


def test_grad_cache_sharded_equals_single_device_hard_negatives(rng):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    params = _params(rng)
    inputs = (_batch(rng, 32), _batch(rng, 32), _batch(rng, 32))
    loss = lambda *e: info_nce(*e, temperature=0.1)  # noqa: E731
    key = jax.random.key(int(rng.integers(2**31)))
    fn = jax.jit(grad_cache(embed, loss, chunk_size=8))
    single = fn(params, *inputs, rng=key)
    _check(single, _reference(params, inputs, loss, 8, key))
    for axis_type in (jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit):
        mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,), devices=jax.devices()[:8])
        shard = lambda t: jax.tree_util.tree_map(
            lambda v: jax.device_put(v, NamedSharding(mesh, P("data"))), t
        )  # noqa: E731
        replicate = lambda t: jax.tree_util.tree_map(
            lambda v: jax.device_put(v, NamedSharding(mesh, P())), t
        )  # noqa: E731
        sharded_inputs = [shard(x) for x in inputs]
        assert len(sharded_inputs[0]["x"].sharding.device_set) == 8
        _check(fn(replicate(params), *sharded_inputs, rng=key), single)


def test_grad_cache_rejects_ragged_batches(rng):
    params = _params(rng)
    fn = grad_cache(embed, lambda a, b: info_nce(a, b), chunk_size=4)
    with pytest.raises(ValueError, match=r"batch size 10.*\(10, 6\).*chunk_size=4"):
        fn(params, _batch(rng, 10), _batch(rng, 10))
    with pytest.raises(ValueError, match=r"same leading batch axis.*\(6, 1\).*\(8, 6\)"):
        fn(
            params,
            {"x": np.ones((8, DIN), np.float32), "scale": np.ones((6, 1), np.float32)},
            _batch(rng, 8),
        )
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache(embed, info_nce, chunk_size=0)


def test_grad_cache_inside_shard_map_with_cross_device_negatives(rng):
    """Per-device chunks, loss with ``axis_name``: global-batch loss and summed parameter gradients."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    params = _params(rng)
    inputs = (_batch(rng, 32), _batch(rng, 32), _batch(rng, 32))  # anchors, positives, hard negatives
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:8])
    fn = grad_cache(embed, lambda *e: info_nce(*e, temperature=0.1, axis_name="data"), chunk_size=2)
    specs = (P(),) + (P("data"),) * 3
    value, grads = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=(P(), P())))(params, *inputs)
    plain = lambda *e: info_nce(*e, temperature=0.1)  # noqa: E731
    _check((value, grads), _reference(params, inputs, plain, 32, None))
