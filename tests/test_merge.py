"""Merging pytrees against independent NumPy float64 references; Self Positioning on
quadratic probes whose optimum is known in closed form; 8-device sharding == one device."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxembed.merge import (
    dare,
    elect_and_merge,
    layer_group,
    linear,
    self_positioning,
    slerp,
    task_arithmetic,
    task_vectors,
    ties,
    trim,
)

U32 = 2.0**-24  # float32 unit roundoff
U16 = 2.0**-8  # bfloat16 unit roundoff (8 significant bits)

SHAPES = {  # every dimension a multiple of 8, so an 8-way fsdp mesh can split them
    "embeddings": {"embedding": ((40, 32), np.float32), "norm": ((32,), jnp.bfloat16)},
    "layer_0": {"kernel": ((32, 4, 8), np.float32), "bias": ((16,), jnp.bfloat16)},
    "layer_1": {"kernel": ((32, 16), np.float32), "bias": ((16,), np.float32)},
}


def _tree(rng, scale=1.0, like=None):
    """A random parameter tree (float32 and bfloat16 leaves); ``like + noise`` if given."""
    out = {}
    for group, leaves in SHAPES.items():
        out[group] = {}
        for name, (shape, dtype) in leaves.items():
            x = scale * rng.standard_normal(shape)
            if like is not None:
                x = x + np.asarray(like[group][name], np.float64)
            out[group][name] = jnp.asarray(x, dtype)
    return out


def _f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _check_close(out, ref, bound, dtype):
    """``|out - ref| <= bound`` elementwise, plus the final rounding to ``dtype``
    (half an ulp; the float32 error can push a value across a rounding boundary,
    so one bfloat16 unit roundoff)."""
    out = np.asarray(out, np.float64)
    if dtype == jnp.bfloat16:
        bound = bound + U16 * np.abs(ref)
    else:
        bound = bound + U32 * np.abs(ref)
    err = np.abs(out - ref)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"


def _models(rng, base, n, scale=0.1):
    return [_tree(rng, scale, like=base) for _ in range(n)]


# ------------------------------------------------------------------ task arithmetic


def test_task_vectors_are_float32_differences(rng):
    base = _tree(rng)
    models = _models(rng, base, 3)
    taus = task_vectors(base, models)
    for tau, model in zip(taus, models):
        for t, m, b in zip(jax.tree.leaves(tau), jax.tree.leaves(_f64(model)),
                           jax.tree.leaves(_f64(base))):
            assert t.dtype == jnp.float32
            ref = m - b
            # one float32 rounding of the exact difference (exact for most bf16 pairs)
            assert np.all(np.abs(np.asarray(t, np.float64) - ref) <= U32 * np.abs(ref))


@pytest.mark.parametrize("jit", [False, True])
def test_task_arithmetic_matches_float64(rng, jit):
    n = 3
    base = _tree(rng)
    models = _models(rng, base, n)
    weights = rng.uniform(-1, 1.5, n)
    fn = jax.jit(task_arithmetic) if jit else task_arithmetic
    out = fn(base, task_vectors(base, models), jnp.asarray(weights) if jit else weights)
    b64, m64 = _f64(base), [_f64(m) for m in models]
    for path, leaf in jax.tree_util.tree_leaves_with_path(out):
        b = _get(b64, path)
        taus = [_get(m, path) - b for m in m64]
        ref = b + sum(w * t for w, t in zip(weights, taus))
        # float32: n+1 roundings of the differences/products and n of the sums, each
        # relative to the magnitude of the terms (not of the possibly cancelling result);
        # the largest error seen is 2.8 of the 8 units of this bound (40 seeds)
        bound = (2 * n + 2) * U32 * (np.abs(b) + sum(abs(w) * np.abs(t)
                                                     for w, t in zip(weights, taus)))
        assert leaf.dtype == _get(base, path).dtype
        _check_close(leaf, ref, bound, leaf.dtype)


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_task_arithmetic_zero_weights_is_base_and_unit_weight_is_model(rng):
    base = _tree(rng)
    models = _models(rng, base, 2)
    taus = task_vectors(base, models)
    for a, b in zip(jax.tree.leaves(task_arithmetic(base, taus, [0.0, 0.0])),
                    jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
    # θ₀ + (θ₁ - θ₀) in float32 is θ₁ up to one rounding of the difference
    out = task_arithmetic(base, taus, [1.0, 0.0])
    for a, m, b in zip(jax.tree.leaves(out), jax.tree.leaves(_f64(models[0])),
                       jax.tree.leaves(_f64(base))):
        _check_close(a, m, 2 * U32 * (np.abs(b) + np.abs(m - b)), a.dtype)


def test_linear_matches_float64(rng):
    n = 3
    models = _models(rng, _tree(rng), n)
    for weights, normalize in [(None, True), (rng.uniform(0.1, 2, n), True),
                               (rng.uniform(-1, 1, n), False)]:
        out = linear(models, weights, normalize=normalize)
        w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights)
        if normalize:
            w = w / w.sum()
        for j, leaf in enumerate(jax.tree.leaves(out)):
            xs = [jax.tree.leaves(_f64(m))[j] for m in models]
            ref = sum(wi * x for wi, x in zip(w, xs))
            bound = (2 * n + 2) * U32 * sum(abs(wi) * np.abs(x) for wi, x in zip(w, xs))
            _check_close(leaf, ref, bound, leaf.dtype)
    uniform = linear(models)
    mean = jax.tree.map(lambda *xs: np.mean([np.asarray(x, np.float64) for x in xs], 0), *models)
    for a, b in zip(jax.tree.leaves(uniform), jax.tree.leaves(mean)):
        _check_close(a, b, 8 * U32 * np.abs(b) + 1e-7, a.dtype)  # (1/3)-weighted sum


# ------------------------------------------------------------------ slerp


def _np_slerp(a, b, t, threshold=0.9995):
    """Independent float64 reference: lerp for zero / (anti)parallel vectors, else Shoemake."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    cos = float(np.clip(np.dot(a.ravel(), b.ravel()) / (na * nb), -1, 1))
    if abs(cos) > threshold:
        return (1 - t) * a + t * b
    omega = math.acos(cos)
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_float64(rng, t):
    a, b = _tree(rng), _tree(rng)
    out = slerp(a, b, t)
    for x, y, o in zip(jax.tree.leaves(_f64(a)), jax.tree.leaves(_f64(b)), jax.tree.leaves(out)):
        ref = _np_slerp(x, y, t)
        # float32 angle from sums of up to 1280 products: max error 1.7e-7 relative to
        # |a| + |b| over 40 seeds x t in {0.25, 0.5, 0.9}; 2e-6 leaves 12x margin
        _check_close(o, ref, 2e-6 * (np.abs(x) + np.abs(y)), o.dtype)


def test_slerp_endpoints_are_exact_and_norm_is_kept(rng):
    a, b = _tree(rng), _tree(rng)
    for t, want in ((0.0, a), (1.0, b)):
        for o, w in zip(jax.tree.leaves(slerp(a, b, t)), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(o, np.float64), np.asarray(w, np.float64))
    # equal norms: slerp stays on the sphere (linear interpolation would shrink by cos(Ω/2))
    x = rng.standard_normal(512)
    y = rng.standard_normal(512)
    y *= np.linalg.norm(x) / np.linalg.norm(y)
    mid = np.asarray(slerp({"w": jnp.asarray(x, jnp.float32)}, {"w": jnp.asarray(y, jnp.float32)},
                           0.5)["w"], np.float64)
    np.testing.assert_allclose(np.linalg.norm(mid), np.linalg.norm(x), rtol=1e-5)
    assert np.linalg.norm((x + y) / 2) < 0.8 * np.linalg.norm(x)


def test_slerp_parallel_antiparallel_and_zero_fall_back_to_lerp(rng):
    x = rng.standard_normal(64)
    cases = {"parallel": 2.5 * x, "antiparallel": -3.0 * x, "zero_b": np.zeros(64)}
    t = 0.3
    for name, y in cases.items():
        out = slerp({"w": jnp.asarray(x, jnp.float32)}, {"w": jnp.asarray(y, jnp.float32)}, t)
        out = np.asarray(out["w"], np.float64)
        assert np.all(np.isfinite(out)), name
        # inputs rounded to float32 (6e-8) and three float32 operations
        np.testing.assert_allclose(out, (1 - t) * x + t * y, rtol=1e-6, atol=1e-6, err_msg=name)
    zero = slerp({"w": jnp.zeros(8)}, {"w": jnp.zeros(8)}, 0.5)["w"]
    np.testing.assert_array_equal(zero, np.zeros(8))
    # inside the threshold (Ω ≈ 0.08): slerp proper. It differs from lerp by
    # t(1-t)Ω²/2 ≈ 7e-4 relative, which rtol 1e-4 resolves; float32's arccos error
    # there is ~1e-7 / sin Ω ≈ 1e-6
    y = x + 0.08 * np.linalg.norm(x) * rng.standard_normal(64) / 8
    cos = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
    out = slerp({"w": jnp.asarray(x, jnp.float32)}, {"w": jnp.asarray(y, jnp.float32)}, t)["w"]
    assert cos < 0.9995
    np.testing.assert_allclose(np.asarray(out), _np_slerp(x, y, t), rtol=1e-4, atol=1e-5)


def test_slerp_with_traced_t(rng):
    a, b = _tree(rng), _tree(rng)
    eager = slerp(a, b, 0.4)
    jitted = jax.jit(slerp)(a, b, jnp.float32(0.4))
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ TIES and DARE


def _np_ties(taus, density, weights):
    """Float64 TIES per tensor: top-k by magnitude, sign election, disjoint weighted mean."""
    trimmed = []
    for t in taus:
        k = min(t.size, max(1, math.ceil(density * t.size)))
        thresh = np.sort(np.abs(t).ravel())[t.size - k]
        trimmed.append(np.where(np.abs(t) >= thresh, t, 0.0))
    weighted = np.stack([w * t for w, t in zip(weights, trimmed)])
    sign = np.sign(weighted.sum(0))
    agree = (np.sign(weighted) == sign) & (sign != 0)
    num = np.where(agree, weighted, 0).sum(0)
    den = np.where(agree, np.asarray(weights).reshape((-1,) + (1,) * t.ndim), 0).sum(0)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def test_kth_largest_equals_sort(rng):
    from jaxembed.merge.sparsify import kth_largest

    x = np.abs(rng.standard_normal(997)).astype(np.float32)
    x[:50] = 0.0  # zeros and repeated values (not subnormals: XLA:CPU flushes them to 0)
    x[50:80] = x[80]
    order = np.sort(x)
    for k in (1, 2, 17, 500, 946, 947, 948, 996, 997):
        assert float(kth_largest(jnp.asarray(x), k)) == order[x.size - k], k
    assert float(kth_largest(jnp.zeros(8), 3)) == 0.0
    assert float(kth_largest(jnp.float32([1e-40, 2.0, 0.0]), 2)) == 0.0  # subnormal -> 0


def test_ties_small_example_by_hand():
    taus = [{"w": jnp.array([3.0, -1.0, 0.5, 0.0])},
            {"w": jnp.array([-2.0, -2.0, 0.1, 0.0])},
            {"w": jnp.array([0.5, 4.0, -0.7, 0.0])}]
    # density 1: no trimming. Entry 0: mass 3-2+0.5 > 0 -> mean(3, 0.5) = 1.75.
    # entry 1: -1-2+4 = +1 -> only 4 agrees -> 4. entry 2: 0.5+0.1-0.7 < 0 -> -0.7. entry 3: 0.
    merged = elect_and_merge(taus)["w"]
    np.testing.assert_allclose(merged, [1.75, 4.0, -0.7, 0.0], rtol=1e-7)
    # density 0.5 keeps the 2 largest magnitudes per vector: [3,-1,0,0], [-2,-2,0,0], [0,4,-0.7,0]
    trimmed = trim(taus, density=0.5)
    np.testing.assert_array_equal(trimmed[2]["w"], np.float32([0.0, 4.0, -0.7, 0.0]))
    out = ties({"w": jnp.ones(4)}, taus, density=0.5, scale=0.5)["w"]
    np.testing.assert_allclose(out, 1 + 0.5 * np.array([3.0, 4.0, -0.7, 0.0]), rtol=1e-7)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_float64(rng, density):
    base = _tree(rng)
    taus = task_vectors(base, _models(rng, base, 4))
    weights = rng.uniform(0.2, 2.0, 4)
    out = ties(base, taus, density=density, weights=weights, scale=0.7)
    for j, (leaf, b) in enumerate(zip(jax.tree.leaves(out), jax.tree.leaves(_f64(base)))):
        t64 = [np.asarray(jax.tree.leaves(t)[j], np.float64) for t in taus]
        ref = b + 0.7 * _np_ties(t64, density, weights)
        bound = 12 * U32 * (np.abs(b) + sum(np.abs(t) for t in t64))
        _check_close(leaf, ref, bound, leaf.dtype)


def test_dare_drops_and_rescales(rng):
    base = _tree(rng)
    # two leaf shapes only: DARE's threefry compiles take ~1 s per shape
    taus = [{"e": t["embeddings"]["embedding"], "b": t["layer_1"]["bias"]}
            for t in task_vectors(base, _models(rng, base, 2))]
    p = 0.7
    key = jax.random.key(int(rng.integers(2**31)))
    out = dare(taus, drop_rate=p, key=key)
    kept, total = 0, 0
    for t, o in zip(taus, out):
        for x, y in zip(jax.tree.leaves(t), jax.tree.leaves(o)):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            keep = y != 0
            # float32 x / fl(1 - p): two roundings
            np.testing.assert_allclose(y[keep], x[keep] / (1 - p), rtol=4 * U32)
            kept, total = kept + keep.sum(), total + keep.size
    # 2592 Bernoulli(0.3) draws: sd of the kept fraction 0.009; 4.4 sd
    assert abs(kept / total - (1 - p)) < 0.04
    again = dare(taus, drop_rate=p, key=key)
    other = dare(taus, drop_rate=p, key=jax.random.fold_in(key, 1))
    leaves = lambda ts: np.concatenate([np.ravel(x) for x in jax.tree.leaves(ts)])  # noqa: E731
    np.testing.assert_array_equal(leaves(out), leaves(again))
    assert not np.array_equal(leaves(out) != 0, leaves(other) != 0)
    assert not np.array_equal(leaves(out[0]) != 0, leaves(out[1]) != 0)  # masks per vector
    identity = dare(taus, drop_rate=0.0, key=key)
    np.testing.assert_array_equal(leaves(identity), leaves(taus))


# ------------------------------------------------------------------ errors


def test_bad_inputs_name_the_leaf_and_shapes(rng):
    base = _tree(rng)
    bad_shape = _tree(rng)
    bad_shape["layer_1"]["kernel"] = jnp.zeros((32, 8))
    with pytest.raises(ValueError, match=r"models\[0\]: leaf layer_1/kernel has shape \(32, 8\), "
                                         r"base has \(32, 16\)"):
        task_vectors(base, [bad_shape])
    bad_dtype = _tree(rng)
    bad_dtype["embeddings"]["norm"] = jnp.zeros(32, jnp.float32)
    with pytest.raises(ValueError, match="embeddings/norm has dtype float32, base has bfloat16"):
        task_vectors(base, [bad_dtype])
    missing = _tree(rng)
    del missing["layer_1"]["bias"]
    with pytest.raises(ValueError, match=r"missing \['layer_1/bias'\]"):
        task_vectors(base, [missing])
    ints = _tree(rng)
    ints["layer_1"]["bias"] = jnp.zeros(16, jnp.int32)
    with pytest.raises(ValueError, match="layer_1/bias has dtype int32"):
        linear([ints, ints])
    taus = task_vectors(base, _models(rng, base, 2))
    with pytest.raises(ValueError, match=r"one number per model \(2\), got shape \(3,\)"):
        task_arithmetic(base, taus, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-empty list"):
        task_arithmetic(base, [], [])
    with pytest.raises(ValueError, match="sum to 0"):
        linear([base, base], [1.0, -1.0])
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        slerp(base, base, 1.5)
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        ties(base, taus, density=0.0)
    with pytest.raises(ValueError, match="TIES weights must be > 0"):
        ties(base, taus, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 1\)"):
        dare(taus, drop_rate=1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="init must have shape"):
        self_positioning(lambda p: 0.0, base, taus, steps=1, lr=0.1, init=[1.0, 2.0, 3.0])


# ------------------------------------------------------------------ Self Positioning


def _quadratic(target):
    """Mean squared distance to ``target`` over all entries (float32)."""
    leaves = jax.tree.leaves(target)
    size = sum(x.size for x in leaves)

    def loss(params):
        return sum(jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)
                   for a, b in zip(jax.tree.leaves(params), leaves)) / size

    return loss


def _f32_tree(rng, scale=1.0, like=None):
    return jax.tree.map(lambda x: x.astype(jnp.float32), _tree(rng, scale, like))


def test_self_positioning_recovers_known_coefficients(rng):
    base = _f32_tree(rng)
    taus = task_vectors(base, [_f32_tree(rng, 1.0, like=base) for _ in range(3)])
    lam_star = rng.uniform(-0.5, 1.5, 3)
    target = task_arithmetic(base, taus, lam_star)
    # the loss is quadratic in λ with Hessian 2 TᵀT / D ≈ 2 I: plain SGD at lr 0.2 contracts
    # the error by ~0.6 per step, so 150 steps reach float32 resolution
    res = self_positioning(_quadratic(target), base, taus, steps=150, lr=0.2,
                           optimizer=optax.sgd)
    # max |λ - λ*| over 8 seeds: 1.6e-7 (SGD), 1.8e-7 (Adam); merged params 1e-6
    np.testing.assert_allclose(res.lambdas, lam_star, atol=1e-5)
    assert res.history.shape == (150,) and res.history[0] > 0.1
    assert res.final_loss < 1e-7 and res.groups == ("all",)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(target)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the default (Adam) gets there too and the probe loss decreases
    adam = self_positioning(_quadratic(target), base, taus, steps=300, lr=0.05)
    np.testing.assert_allclose(adam.lambdas, lam_star, atol=1e-4)
    assert adam.history[-1] < 1e-3 * adam.history[0]


def test_self_positioning_per_layer_recovers_per_group_coefficients(rng):
    base = _f32_tree(rng)
    taus = task_vectors(base, [_f32_tree(rng, 1.0, like=base) for _ in range(2)])
    groups = tuple(SHAPES)
    lam_star = rng.uniform(-0.5, 1.5, (len(groups), 2))
    target = {g: task_arithmetic({g: base[g]}, [{g: t[g]} for t in taus], lam_star[i])[g]
              for i, g in enumerate(groups)}
    # per-group Hessians scale with the group's share of the entries: the smallest group
    # (layer_1, 528 of 2656) has eigenvalues ~0.4, so lr 1.0 and 300 steps
    res = self_positioning(_quadratic(target), base, taus, steps=300, lr=1.0, per_layer=True,
                           optimizer=optax.sgd)
    assert res.groups == groups
    np.testing.assert_allclose(res.lambdas, lam_star, atol=1e-5)  # max error 1.5e-7, 8 seeds
    custom = self_positioning(_quadratic(target), base, taus, steps=0, lr=1.0,
                              group_fn=lambda path: path.split("/")[-1], init=0.5)
    assert custom.groups == ("embedding", "norm", "bias", "kernel")  # jax.tree order
    np.testing.assert_array_equal(custom.lambdas, np.full((4, 2), 0.5, np.float32))
    assert layer_group("layer_3/attention/kernel") == "layer_3"


def test_self_positioning_regulariser_matches_closed_form(rng):
    base = _f32_tree(rng)
    taus = task_vectors(base, [_f32_tree(rng, 1.0, like=base) for _ in range(3)])
    lam_star, lam0, rho = rng.uniform(-0.5, 1.5, 3), rng.uniform(0, 1, 3), 0.3
    target = task_arithmetic(base, taus, lam_star)
    res = self_positioning(_quadratic(target), base, taus, steps=300, lr=0.2, init=lam0,
                           regularization=rho, optimizer=optax.sgd)
    # argmin (λ-λ*)ᵀG(λ-λ*) + ρ|λ-λ0|² with G = TᵀT/D  =>  (G + ρI) λ = Gλ* + ρλ0
    t = np.stack([np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(v)])
                  for v in taus], 1)
    g = t.T @ t / t.shape[0]
    want = np.linalg.solve(g + rho * np.eye(3), g @ lam_star + rho * lam0)
    np.testing.assert_allclose(res.lambdas, want, atol=1e-5)  # max error 9e-8, 8 seeds
    assert np.max(np.abs(want - lam_star)) > 0.01  # the penalty did move the optimum


def test_self_positioning_batches(rng):
    base = _f32_tree(rng)
    taus = task_vectors(base, [_f32_tree(rng, 1.0, like=base) for _ in range(2)])
    lam_a, lam_b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    targets = [task_arithmetic(base, taus, lam_a), task_arithmetic(base, taus, lam_b)]
    # two batches alternate between two targets: SGD ends in a 2-cycle around their
    # midpoint, O(lr) away from it (max 0.0054 at lr 0.01 over 10 seeds)
    loss = lambda p, which: jax.lax.switch(which, [_quadratic(t) for t in targets], p)  # noqa
    res = self_positioning(loss, base, taus, steps=400, lr=0.01, optimizer=optax.sgd,
                           batches=[i % 2 for i in range(400)])
    np.testing.assert_allclose(res.lambdas, [0.5, 0.5], atol=0.02)
    seen = []
    with pytest.raises(ValueError, match="batches ran out after 2 of 3 steps"):
        self_positioning(loss, base, taus, steps=3, lr=0.1, batches=[0, 1],
                         callback=lambda k, value, lam: seen.append((k, value, lam.copy())))
    assert [k for k, _, _ in seen] == [0, 1]
    np.testing.assert_allclose(seen[0][2], [0.5, 0.5])  # the λ the first loss was measured at
    # batch 0's loss at the initial λ = (½, ½): |½ τ₁ - ½ τ₂|² / D
    want = _quadratic(targets[0])(task_arithmetic(base, taus, [0.5, 0.5]))
    np.testing.assert_allclose(seen[0][1], want, rtol=1e-6)


# ------------------------------------------------------------------ sharding


def test_sharded_over_8_devices_equals_one_device(rng):
    from jaxembed.train.sharding import make_mesh, param_shardings, place

    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = make_mesh(data=1, fsdp=8)
    # three leaves (every merge compiles once per leaf shape and sharding): a matrix split
    # over its hidden dimension, a replicated vector and a replicated bfloat16 vector
    sub = lambda t: {"embeddings": {"norm": t["embeddings"]["norm"]},  # noqa: E731
                     "layer_1": t["layer_1"]}
    full = _tree(rng)
    base, models = sub(full), [sub(m) for m in _models(rng, full, 2)]
    # tiny test tensors: shard them anyway (real ones under 1 MiB stay replicated)
    shardings = param_shardings(base, mesh, hidden_size=32, min_shard_bytes=0)
    sbase, smodels = place(base, shardings), [place(m, shardings) for m in models]
    assert sbase["layer_1"]["kernel"].sharding.spec[0] == "fsdp"
    key = jax.random.key(int(rng.integers(2**31)))
    lam_star = np.array([0.8, -0.3])

    def merges(base, models):  # each function jits per leaf; the inputs' shardings flow in
        taus = task_vectors(base, models)
        return {
            "task_vectors": taus,
            "task_arithmetic": task_arithmetic(base, taus, [0.3, 0.6]),
            "linear": linear(models, [0.25, 0.75]),
            "slerp": slerp(base, models[0], 0.4),
            "ties": ties(base, taus, density=0.3),
            "dare": dare(taus, drop_rate=0.5, key=key),
        }

    one, many = merges(base, models), merges(sbase, smodels)
    for name in ("task_arithmetic", "linear", "slerp", "ties"):  # the inputs' sharding is kept
        assert many[name]["layer_1"]["kernel"].sharding.spec[0] == "fsdp", name
    for name in one:
        for a, b in zip(jax.tree.leaves(one[name]), jax.tree.leaves(many[name])):
            # elementwise except slerp's per-tensor sums over device partial sums: max
            # relative difference 2.5e-6 (slerp, task arithmetic; 6 seeds)
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                       rtol=1e-5, atol=1e-6, err_msg=name)

    f32 = jax.tree.map(lambda x: x.astype(jnp.float32), base)
    f32_models = [jax.tree.map(lambda x: x.astype(jnp.float32), m) for m in models]
    taus = task_vectors(f32, f32_models)
    target = task_arithmetic(f32, taus, lam_star)
    f32_sh = param_shardings(f32, mesh, hidden_size=32, min_shard_bytes=0)
    kw = dict(steps=50, lr=0.2, optimizer=optax.sgd)
    single = self_positioning(_quadratic(target), f32, taus, **kw)
    sharded = self_positioning(_quadratic(place(target, f32_sh)), place(f32, f32_sh),
                               [place(t, f32_sh) for t in taus], **kw)
    # the loss's sum over 8 shards is reordered: max |Δλ| 6e-8 and relative Δloss 1e-6
    # after 50 steps over 6 seeds
    np.testing.assert_allclose(sharded.lambdas, single.lambdas, atol=1e-6)
    np.testing.assert_allclose(sharded.history, single.history, rtol=1e-5)
    assert sharded.params["layer_1"]["kernel"].sharding.spec[0] == "fsdp"
