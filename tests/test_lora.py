"""LoRA as a pure parameter transform on small hand-built trees: the update against a NumPy
float64 reference (every kernel layout), layout inference, init, gradients against central
finite differences in float64, dropout, errors, adapter files and the optimizer state."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxembed import lora
from jaxembed.lora.spec import layout_from_names
from jaxembed.train.sharding import logical_to_mesh

H, N, D, L, F = 6, 2, 3, 2, 5
AXES = {
    "attn": {
        "query": {"kernel": ("embed", "heads", "kv"), "bias": ("heads", "kv")},
        "output": {"kernel": ("heads", "kv", "embed")},
    },
    "layers": {"mlp": {"kernel": ("layers", "embed", "mlp")}},
    "head": {"kernel": None},
}
TARGET = r"attn/(query|output)/kernel|layers/mlp/kernel|head/kernel"
apply = jax.jit(lora.apply, static_argnums=2)  # one compile per tree and spec, shared by tests
LAYOUTS = {"attn/query/kernel": "ioo", "attn/output/kernel": "iio",
           "layers/mlp/kernel": "sio", "head/kernel": "io"}


def _params(rng, dtype=np.float32):
    def normal(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)

    return {
        "attn": {"query": {"kernel": normal(H, N, D), "bias": normal(N, D)},
                 "output": {"kernel": normal(N, D, H)}},
        "layers": {"mlp": {"kernel": normal(L, H, H)}},
        "head": {"kernel": normal(H, F)},
    }


def _randomize(adapters, rng, dtype=np.float32):
    """Non-zero A and B (at init B = 0 hides every bug in the product)."""
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(dtype), adapters)


def _np_update(w, a, b, layout, scale):
    """``W + scale * A2 @ B2`` through explicit reshapes to [S, I, r] x [S, r, O], float64."""
    s, i = layout.count("s"), layout.count("i")
    S, I = math.prod(w.shape[:s]), math.prod(w.shape[s:s + i])
    O = math.prod(w.shape[s + i:])
    r = a.shape[-1]
    a2 = np.asarray(a, np.float64).reshape(S, I, r)
    b2 = np.asarray(b, np.float64).reshape(S, r, O)
    return np.asarray(w, np.float64) + scale * np.matmul(a2, b2).reshape(w.shape)


def _kernel(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def test_layouts_from_logical_names_and_shapes(rng):
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=4.0)
    found = lora.find_targets(_params(rng), spec, axes=AXES)
    assert {p: t.layout for p, t in found.items()} == LAYOUTS
    assert found["attn/output/kernel"].fan_in == N * D and found["layers/mlp/kernel"].fan_out == H
    assert layout_from_names(("layers", "embed", "kv_heads", "kv")) == "sioo"
    assert layout_from_names(("vocab", "embed")) == "io"
    assert layout_from_names((None, "embed")) == "io"
    assert layout_from_names(("embed", "mlp", "embed")) is None  # three groups: ambiguous
    # an explicit layout wins over the names, and without names a 3-D kernel needs one
    spec = lora.LoraSpec(target="attn/query/kernel", rank=2, alpha=1, layouts={".*": "iio"})
    assert lora.find_targets(_params(rng), spec, axes=AXES)["attn/query/kernel"].layout == "iio"
    with pytest.raises(ValueError, match=r"attn/query/kernel has shape \(6, 2, 3\) and no "):
        lora.find_targets(_params(rng), lora.LoraSpec(target="attn/query/kernel", rank=2,
                                                      alpha=1))


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_apply_equals_numpy_reference_for_every_layout(rng, dtype):
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=3.0)
    params = jax.tree.map(lambda x: x.astype(dtype), _params(rng))  # NumPy (ml_dtypes bf16)
    adapters = _randomize(lora.init(params, spec, jax.random.key(0), axes=AXES), rng)
    out = apply(params, adapters, spec)
    for path, layout in LAYOUTS.items():
        ab = _kernel(adapters, path)
        w = _kernel(params, path)
        want = _np_update(np.asarray(w, np.float32), ab["lora_a"], ab["lora_b"], layout, 1.5)
        got = _kernel(out, path)
        assert got.dtype == w.dtype and got.shape == w.shape
        # float32: one rounding of W' plus the r-term sum (~1e-7 relative); bfloat16: W' is
        # rounded to 8 significant bits, half an ulp = 2**-9 relative
        tol = 2**-8 if dtype == jnp.bfloat16 else 1e-6
        err = np.abs(np.asarray(got, np.float64) - want).max()
        assert err <= tol * max(1.0, np.abs(want).max()), (path, err)
    bias = out["attn"]["query"]["bias"]
    np.testing.assert_array_equal(bias, params["attn"]["query"]["bias"])


@pytest.mark.parametrize("init", ["kaiming_uniform", "gaussian"])
def test_init_is_the_base_model_exactly(rng, init):
    params = _params(rng)
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=16.0, init=init)
    key = jax.random.key(int(rng.integers(2**31)))
    adapters = lora.init(params, spec, key, axes=AXES)
    for path, t in lora.find_targets(params, spec, axes=AXES).items():
        a, b = (np.asarray(_kernel(adapters, path)[k]) for k in ("lora_a", "lora_b"))
        assert a.shape == t.a_shape + (2,) and a.dtype == jnp.float32
        assert not np.any(b) and np.all(np.abs(a) > 0)
        if init == "kaiming_uniform":  # U(-1/sqrt(I), 1/sqrt(I)), PEFT's kaiming_uniform_(a=sqrt(5))
            assert np.abs(a).max() <= 1 / math.sqrt(t.fan_in)
    jax.tree.map(np.testing.assert_array_equal, apply(params, adapters, spec), params)
    jax.tree.map(np.testing.assert_array_equal, lora.init(params, spec, key, axes=AXES), adapters)
    # only shapes are read: an abstract tree gives the same abstract adapters
    abstract = jax.eval_shape(lambda: lora.init(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params), spec, key,
        axes=AXES))
    assert jax.tree.map(lambda x: x.shape, abstract) == jax.tree.map(jnp.shape, adapters)


def test_init_distribution():
    """A's spread over 64 x 16 entries: kaiming_uniform std = 1/sqrt(3 I); gaussian 1/r."""
    params = {"w": np.zeros((64, 32), np.float32)}
    for init, std in (("kaiming_uniform", 1 / math.sqrt(3 * 64)), ("gaussian", 1 / 16)):
        spec = lora.LoraSpec(target="w", rank=16, alpha=1, init=init)
        a = np.asarray(lora.init(params, spec, jax.random.key(3))["w"]["lora_a"])
        # 1024 samples: the sample std is within 10% of the true one with prob > 0.999
        assert abs(a.std() / std - 1) < 0.1, (init, a.std(), std)


def _toy_loss(params, x):
    """A float64 model using every layout: heads in, heads out, stacked layers, a head."""
    q = jnp.tanh(jnp.einsum("bh,hnd->bnd", x, params["attn"]["query"]["kernel"])
                 + params["attn"]["query"]["bias"])
    h = jnp.einsum("bnd,ndh->bh", q, params["attn"]["output"]["kernel"])
    for layer in range(L):
        h = jnp.tanh(h @ params["layers"]["mlp"]["kernel"][layer])
    return jnp.sum(jnp.sin(h @ params["head"]["kernel"]))


def test_adapter_gradients_equal_central_finite_differences(rng):
    """Every adapter coordinate, in float64 (scoped ``jax.enable_x64``). Central differences
    with h = 1e-5 err by ~h^2 f'''/6 ~ 1e-10 plus round-off ~1e-16 / h ~ 1e-11, so 1e-7 of
    the gradient's scale leaves a 100x margin (largest error / scale over 50 random seeds:
    see the commit adding this test). Adapter dropout is on: a fixed key is a fixed mask."""
    with jax.enable_x64(True):
        params = _params(rng, np.float64)
        x = rng.standard_normal((3, H))
        spec = lora.LoraSpec(target=TARGET, rank=2, alpha=3.0, dropout=0.25)
        shapes = jax.eval_shape(lambda: lora.init(params, spec, jax.random.key(0), axes=AXES))
        leaves, treedef = jax.tree.flatten(shapes)
        sizes = [math.prod(leaf.shape) for leaf in leaves]
        theta = rng.standard_normal(sum(sizes))  # random A and B, float64

        def loss(flat, key):
            parts = jnp.split(flat, np.cumsum(sizes)[:-1])
            adapters = treedef.unflatten([p.reshape(s.shape) for p, s in zip(parts, leaves)])
            return _toy_loss(lora.apply(params, adapters, spec, dropout_rng=key), x)

        @jax.jit
        def check(theta, key, other_key):
            h = 1e-5
            fd = jax.vmap(lambda e: (loss(theta + e, key) - loss(theta - e, key)) / (2 * h))(
                h * jnp.eye(theta.size))
            return jax.grad(loss)(theta, key), fd, jax.grad(loss)(theta, other_key)

        key = jax.random.key(int(rng.integers(2**31)))
        grad, fd, other = map(np.asarray, check(theta, key, jax.random.key(1)))
    assert grad.dtype == np.float64
    scale = max(1.0, np.abs(grad).max())
    assert np.abs(grad - fd).max() <= 1e-7 * scale
    # the key really drops something: another key gives another gradient
    assert np.abs(other - grad).max() > 1e-3 * scale


def test_dropout_zeroes_or_rescales_input_rows(rng):
    """Each input feature of each kernel (and stacked slice) is dropped or kept / (1 - p),
    from the key alone; no key, no dropout."""
    p = 0.25
    params = {"w": np.zeros((L, 400, 3), np.float32)}
    spec = lora.LoraSpec(target="w", rank=2, alpha=2.0, dropout=p, layouts={"w": "sio"})
    adapters = _randomize(lora.init(params, spec, jax.random.key(0)), rng)
    full = np.asarray(apply(params, adapters, spec)["w"])
    key = jax.random.key(int(rng.integers(2**31)))
    dropped = np.asarray(apply(params, adapters, spec, dropout_rng=key)["w"])
    np.testing.assert_array_equal(dropped, apply(params, adapters, spec, dropout_rng=key)["w"])
    zero = np.all(dropped == 0, axis=-1)
    # W = 0, so W' is the float32 product itself: equal up to its rounding (~1e-7 relative)
    np.testing.assert_allclose(dropped[~zero], full[~zero] / (1 - p), rtol=0, atol=1e-6)
    # 800 Bernoulli(0.25) draws: the dropped fraction is within 0.25 +- 0.06 (> 4 sigma)
    assert abs(zero.mean() - p) < 0.06
    assert np.any(zero[0] != zero[1])  # stacked layers draw their own masks
    other = np.asarray(apply(params, adapters, spec, dropout_rng=jax.random.key(7))["w"])
    assert np.any(np.all(other == 0, axis=-1) != zero)


def test_spec_and_target_errors(rng):
    params = _params(rng)
    with pytest.raises(ValueError, match=r"matches no parameter path; matrix paths are: "
                                         r"attn/output/kernel, attn/query/bias"):
        lora.init(params, lora.LoraSpec(target=r".*/q_proj/kernel", rank=2, alpha=1),
                  jax.random.key(0), axes=AXES)
    with pytest.raises(ValueError, match=r"rank 6 exceeds min\(in, out\) = min\(6, 5\) "
                                         r"of head/kernel"):
        lora.find_targets(params, lora.LoraSpec(target="head/kernel", rank=6, alpha=1))
    with pytest.raises(ValueError, match=r"rank 7 exceeds min\(in, out\) = min\(6, 6\) of "
                                         "attn/query/kernel"):  # out = N * D = 6
        lora.find_targets(params, lora.LoraSpec(target="attn/query/kernel", rank=7, alpha=1),
                          axes=AXES)
    with pytest.raises(ValueError, match="not a floating matrix"):
        lora.find_targets({"b": np.zeros(4, np.float32)}, lora.LoraSpec(target="b", rank=1,
                                                                          alpha=1))
    with pytest.raises(ValueError, match="layouts regex 'nothing' matches none"):
        lora.find_targets(params, lora.LoraSpec(target="head/kernel", rank=2, alpha=1,
                                                layouts={"nothing": "io"}))
    with pytest.raises(ValueError, match="cannot split logical axes"):
        lora.find_targets({"w": np.zeros((2, 3, 2), np.float32)},
                          lora.LoraSpec(target="w", rank=1, alpha=1),
                          axes={"w": ("embed", "mlp", "embed")})
    for bad, match in ((dict(rank=0), "rank"), (dict(alpha=-1.0), "alpha"),
                       (dict(dropout=1.0), "dropout"), (dict(init="xavier"), "init"),
                       (dict(target="("), "valid regex"), (dict(layouts={"w": "oi"}), "s\\*i")):
        with pytest.raises(ValueError, match=match):
            lora.LoraSpec(**{"target": "w", "rank": 2, "alpha": 1.0, **bad})
    spec = lora.LoraSpec(target="head/kernel", rank=2, alpha=1)
    adapters = lora.init(params, spec, jax.random.key(0))
    with pytest.raises(ValueError, match=r"adapters for \['head/kernel'\] have no parameter"):
        lora.apply({"other": params["head"]}, adapters, spec)
    with pytest.raises(ValueError, match=r"adapter head/kernel: A \(6, 2\) and B \(2, 5\) do "
                                         r"not fit the kernel's shape \(6, 4\)"):
        lora.apply({"head": {"kernel": np.zeros((6, 4), np.float32)}}, adapters, spec)


def test_adapter_axes_follow_the_kernel_and_the_rules_table(rng):
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=1)
    axes = lora.adapter_axes(_params(rng), spec, axes=AXES)
    assert axes["attn"]["query"]["kernel"] == {"lora_a": P("embed", "lora_rank"),
                                               "lora_b": P("lora_rank", "heads", "kv")}
    assert axes["attn"]["output"]["kernel"] == {"lora_a": P("heads", "kv", "lora_rank"),
                                                "lora_b": P("lora_rank", "embed")}
    assert axes["layers"]["mlp"]["kernel"] == {"lora_a": P("layers", "embed", "lora_rank"),
                                               "lora_b": P("layers", "lora_rank", "mlp")}
    assert axes["head"]["kernel"] == {"lora_a": P(None, "lora_rank"),
                                      "lora_b": P("lora_rank", None)}
    # the trainer's table: A of a query is FSDP-sharded like its kernel's input axis
    assert logical_to_mesh(axes["attn"]["query"]["kernel"]["lora_a"]) == P("fsdp", None)
    assert logical_to_mesh(axes["attn"]["output"]["kernel"]["lora_b"]) == P(None, "fsdp")


def test_optimizer_state_holds_adapters_only(rng):
    params = _params(rng)
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=1)
    adapters = jax.eval_shape(lambda: lora.init(params, spec, jax.random.key(0), axes=AXES))
    state = jax.eval_shape(optax.adamw(1e-3).init, adapters)
    arrays = [x.shape for x in jax.tree.leaves(state) if x.shape]
    assert sorted(arrays) == sorted(2 * [x.shape for x in jax.tree.leaves(adapters)])
    assert jax.tree.structure(state[0].mu) == jax.tree.structure(adapters)


def test_adapter_files_round_trip_and_refuse_another_base(rng, tmp_path):
    params = _params(rng)
    spec = lora.LoraSpec(target=TARGET, rank=2, alpha=3.0, dropout=0.1,
                         layouts={"head/kernel": "io"})
    adapters = _randomize(lora.init(params, spec, jax.random.key(0), axes=AXES), rng)
    folder = lora.save_adapters(tmp_path / "ad", adapters, spec, base_params=params)
    loaded, spec2 = lora.load_adapters(folder, params)
    assert spec2 == spec
    assert jax.tree.structure(loaded) == jax.tree.structure(adapters)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(adapters)):
        np.testing.assert_array_equal(got, want)
    config = json.loads((folder / "lora_config.json").read_text())
    assert config["targets"]["attn/output/kernel"] == {"shape": [N, D, H], "layout": "iio"}

    # a bfloat16 copy of the same base is the same base
    lora.load_adapters(folder, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    lora.load_adapters(folder, jax.device_put(params))  # kernels sampled on device
    # other weights of the same shapes: refused unless asked
    other = jax.tree.map(lambda x: x + np.float32(0.01), params)
    with pytest.raises(ValueError, match="trained on other base weights"):
        lora.load_adapters(folder, other)
    lora.load_adapters(folder, other, check_weights=False)
    # other shapes or paths: always refused, saying what differs
    wider = {**params, "head": {"kernel": np.zeros((H, F + 1), np.float32)}}
    with pytest.raises(ValueError, match=r"shapes differ: \['head/kernel \[6, 5\] -> \[6, 6\]'"):
        lora.load_adapters(folder, wider, check_weights=False)
    with pytest.raises(ValueError, match=r"missing in this base: \['head/kernel'\]"):
        lora.load_adapters(folder, {k: v for k, v in params.items() if k != "head"})
    (folder / "lora_config.json").write_text(json.dumps({**config, "format": "peft"}))
    with pytest.raises(ValueError, match="format 'peft'"):
        lora.load_adapters(folder, params)
