"""info_nce and streaming_logsumexp vs float64 references; jit, grad, vmap, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _loss_refs import (
    info_nce_temperature_grad_scale,
    np_info_nce,
    rel_err,
    torch_grad,
    torch_info_nce,
)

from jaxembed.losses import info_nce


def _triplet(rng, b=12, d=16):
    a = rng.standard_normal((b, d)).astype(np.float32)
    p = (a + 1.5 * rng.standard_normal((b, d))).astype(np.float32)
    n = (a + 2.0 * rng.standard_normal((b, d))).astype(np.float32)
    return a, p, n


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("hard", [False, True])
def test_info_nce_matches_float64_reference(rng, similarity, hard):
    a, p, n = _triplet(rng)
    tau = 0.05 if similarity == "cosine" else 4.0
    neg = n if hard else None
    got = info_nce(a, p, neg, temperature=tau, similarity=similarity)
    assert got.dtype == jnp.float32 and got.shape == ()
    want = np_info_nce(a, p, neg, temperature=tau, similarity=similarity)
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("hard", [False, True])
def test_info_nce_gradient_matches_torch_float64(rng, hard):
    a, p, n = _triplet(rng)
    args = (a, p, n) if hard else (a, p)
    got = jax.jit(
        jax.grad(lambda *xs: info_nce(*xs, temperature=0.1), argnums=tuple(range(len(args))))
    )(*args)
    want = torch_grad(lambda *ts: torch_info_nce(*ts, temperature=0.1), *args)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g))
        assert rel_err(g, w) <= 1e-5


@pytest.mark.parametrize("chunk, hard", [(50, False), (5, True)])
def test_chunked_info_nce_equals_plain_value_and_grad(rng, chunk, hard):
    a, p, n = _triplet(rng, b=12)
    neg = n if hard else None
    plain = jax.value_and_grad(lambda a, p: info_nce(a, p, neg), argnums=(0, 1))
    chunked = jax.value_and_grad(lambda a, p: info_nce(a, p, neg, chunk_size=chunk), argnums=(0, 1))
    (v0, g0), (v1, g1) = jax.jit(plain)(a, p), jax.jit(chunked)(a, p)
    assert rel_err(v1, v0) <= 1e-5
    assert rel_err(v1, np_info_nce(a, p, neg)) <= 1e-5
    for x, y in zip(g1, g0):
        assert rel_err(x, y) <= 1e-5


def test_chunked_info_nce_never_builds_full_logits(rng):
    a, p, n = _triplet(rng, b=6, d=4)
    got = info_nce(a, p, n, chunk_size=5)
    assert rel_err(got, np_info_nce(a, p, n)) <= 1e-5
    # The compiled value-and-gradient only holds [6, 5] score blocks, never the [6, 12] logits.
    grad_fn = jax.grad(lambda a, p, n: info_nce(a, p, n, chunk_size=5), argnums=(0, 1, 2))
    hlo = jax.jit(grad_fn).lower(a, p, n).compile().as_text()
    assert "f32[6,5]" in hlo and "f32[6,12]" not in hlo and "f32[6,10]" not in hlo


def test_chunked_info_nce_memory_grows_linearly_with_batch():
    """The custom VJP re-streams the blocks: no [B/chunk, B] carries are saved, so the
    compiled value-and-gradient's scratch grows like B (4x here), not B^2/chunk (16x)."""
    def scratch(b):
        x = jax.ShapeDtypeStruct((b, 8), jnp.float32)
        fn = jax.jit(jax.grad(lambda a, p: info_nce(a, p, chunk_size=32), argnums=(0, 1)))
        return fn.lower(x, x).compile().memory_analysis().temp_size_in_bytes

    small, large = scratch(1024), scratch(4096)
    assert large / small < 5.0, (small, large)


def test_chunked_info_nce_temperature_gradient(rng):
    a, p, n = _triplet(rng, b=10)
    tau = float(rng.uniform(0.05, 0.5))
    plain = jax.grad(lambda t: info_nce(a, p, n, temperature=t))(tau)
    chunked = jax.grad(lambda t: info_nce(a, p, n, temperature=t, chunk_size=3))(tau)
    loss64 = lambda a, p, n, t: torch_info_nce(a, p, n, temperature=t)  # noqa: E731
    *_, want = torch_grad(loss64, a, p, n, tau)
    scale = info_nce_temperature_grad_scale(a, p, n, temperature=tau)
    # Errors are measured against the size of the cancelling terms (see the helper):
    # over 1,000 seeds, |chunked - plain| / scale <= 1.5e-7 and |chunked - f64| / scale
    # <= 2.1e-7, while rel_err reached 4e-4 when dL/dtau cancelled to near zero.
    assert abs(float(chunked) - float(plain)) <= 2e-6 * scale
    assert abs(float(chunked) - float(want)) <= 2e-6 * scale


@pytest.mark.parametrize("chunk", [None, 4])
def test_info_nce_single_row_without_negatives(rng, chunk):
    a = rng.standard_normal((1, 6)).astype(np.float32)
    p = rng.standard_normal((1, 6)).astype(np.float32)
    value, grads = jax.value_and_grad(lambda a, p: info_nce(a, p, chunk_size=chunk), argnums=(0, 1))(a, p)
    assert float(value) == 0.0  # one candidate, the positive: nothing to contrast
    assert all(np.all(np.isfinite(g)) and np.all(g == 0) for g in grads)


def test_tiny_loss_keeps_relative_precision(rng):
    a = rng.standard_normal((8, 32)).astype(np.float32)
    p = (a + 0.1 * rng.standard_normal((8, 32))).astype(np.float32)
    want = np_info_nce(a, p)
    assert want < 1e-3  # logsumexp - z+ (~20 - 20) would lose 2-3 digits here in float32
    assert rel_err(info_nce(a, p), want) <= 1e-5
    assert rel_err(info_nce(a, p, chunk_size=3), want) <= 1e-5


def test_info_nce_prefers_the_true_positive(rng):
    a, p, _ = _triplet(rng)
    assert float(info_nce(a, p)) < float(info_nce(a, np.roll(p, 1, axis=0)))


def test_info_nce_bfloat16_and_vmap(rng):
    a, p, n = _triplet(rng)
    bf = info_nce(jnp.asarray(a, jnp.bfloat16), jnp.asarray(p, jnp.bfloat16))
    assert bf.dtype == jnp.float32
    want = np_info_nce(
        np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64),
        np.asarray(jnp.asarray(p, jnp.bfloat16), np.float64),
    )
    assert rel_err(bf, want) <= 1e-5
    stacked = jax.vmap(lambda x, y: info_nce(x, y))(np.stack([a, n]), np.stack([p, p]))
    assert rel_err(stacked, [np_info_nce(a, p), np_info_nce(n, p)]) <= 1e-5


def test_info_nce_traced_temperature_gradient(rng):
    a, p, _ = _triplet(rng)
    g = jax.grad(lambda t: info_nce(a, p, temperature=t))(0.07)
    *_, want = torch_grad(lambda a, p, t: torch_info_nce(a, p, temperature=t), a, p, 0.07)
    # dL/dtau sums O(1/tau^2) terms that largely cancel, so its float32 error scales with
    # those terms, not with |dL/dtau| (rel_err reached 7.5e-5 over 300 seeds); a wrong
    # term or factor is off by a sizeable fraction of the scale.
    scale = info_nce_temperature_grad_scale(a, p, temperature=0.07)
    assert abs(float(g) - float(want)) <= 2e-6 * scale


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 2))),
            r"\(4, 3\).*\(4, 2\)|\(4, 2\).*\(4, 3\)",
        ),
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), negatives=np.ones((5, 3))),
            r"\(5, 3\)",
        ),
        (dict(anchors=np.ones((2, 4, 3)), positives=np.ones((2, 4, 3))), r"\[B, D\].*\(2, 4, 3\)"),
        (dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), temperature=0.0), "temperature"),
        (dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), similarity="l2"), "similarity"),
        (dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), chunk_size=0), "chunk_size"),
        (dict(anchors=np.ones((4, 3), np.int32), positives=np.ones((4, 3))), "floating"),
    ],
)
def test_info_nce_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        info_nce(**kwargs)
