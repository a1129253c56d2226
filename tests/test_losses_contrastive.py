"""info_nce vs float64 references (NumPy row by row; torch: SimCSE's code, sentence-transformers'
MNRL, a masked cross-entropy); every option plain and chunked; jit, grad, vmap, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import torch
from _loss_refs import (
    info_nce_temperature_grad_scale,
    np_info_nce,
    rel_err,
    st_multiple_negatives_ranking,
    torch_grad,
    torch_info_nce,
    torch_simcse_supervised,
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
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), negatives=np.ones((4, 2, 5))),
            r"\[B, K, D\].*\(4, 3\).*\(4, 2, 5\)",
        ),
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), negatives=np.ones((3, 2, 3))),
            r"\(3, 2, 3\)",
        ),
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), hard_negative_weight=1.0),
            "hard_negative_weight needs negatives",
        ),
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), false_negative_margin="0.1"),
            "false_negative_margin",
        ),
        (
            dict(
                anchors=np.ones((4, 3)),
                positives=np.ones((4, 3)),
                negatives=np.ones((4, 3)),
                hard_negative_weight=None,
            ),
            "hard_negative_weight must be a real",
        ),
        (
            dict(
                anchors=np.ones((4, 3)),
                positives=np.ones((4, 3)),
                negatives=np.ones((4, 2, 3)),
                document_ids=np.arange(4),
            ),
            r"document_ids.*\[B, 1 \+ K\].*\(4, 3\).*\(4,\)",
        ),
        (
            dict(anchors=np.ones((4, 3)), positives=np.ones((4, 3)), document_ids=np.ones(4)),
            r"document_ids.*integer.*float",
        ),
    ],
)
def test_info_nce_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        info_nce(**kwargs)


# --- several hard negatives, SimCSE's weight, false-negative masks, same-tower negatives ---


def _tuples(rng, b=10, k=3, d=16):
    """Queries, positives and K hard negatives a row at mixed distances (some closer to the
    query than its positive: what ``false_negative_margin`` drops), distinct document ids,
    then two duplicates with matching ids: positive 3 is positive 5 (an in-batch false
    negative) and row 2's last hard negative is its positive."""
    a = rng.standard_normal((b, d)).astype(np.float32)
    p = (a + 1.2 * rng.standard_normal((b, d))).astype(np.float32)
    spread = rng.uniform(0.6, 2.5, (b, k, 1))
    n = (a[:, None] + spread * rng.standard_normal((b, k, d))).astype(np.float32)
    ids = rng.permutation(10_000)[: b * (1 + k)].reshape(b, 1 + k)
    p[3], ids[3, 0] = p[5], ids[5, 0]
    n[2, -1], ids[2, -1] = p[2], ids[2, 0]
    return a, p, n, ids


QWEN3 = dict(
    false_negative_margin=0.1,
    document_ids=True,
    query_query_negatives=True,
    document_document_negatives=True,
)
OPTIONS = {
    "hard_k3": {},
    "hard_weight": dict(hard_negative_weight=0.7),
    "margin": dict(false_negative_margin=0.1),
    "document_ids": dict(document_ids=True),
    "query_query": dict(query_query_negatives=True),
    "document_document": dict(document_document_negatives=True),
    "qwen3": QWEN3,
    "all_dot": dict(QWEN3, hard_negative_weight=-0.5, false_negative_margin=3.0, similarity="dot"),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_info_nce_options_match_references_plain_and_chunked(rng, name):
    a, p, n, ids = _tuples(rng)
    kwargs = dict(OPTIONS[name])
    kwargs["temperature"] = 4.0 if kwargs.get("similarity") == "dot" else 0.1
    if kwargs.get("document_ids"):
        kwargs["document_ids"] = ids
    vg = lambda **kw: jax.value_and_grad(  # noqa: E731
        lambda a, p, n: info_nce(a, p, n, **kwargs, **kw), argnums=(0, 1, 2)
    )
    (v0, g0), (v1, g1) = jax.jit(lambda *x: (vg()(*x), vg(chunk_size=7)(*x)))(a, p, n)
    want = np_info_nce(a, p, n, **kwargs)
    # The option is live: without it the float64 value moves (by >= 3e-3 over 200 seeds).
    base = {k: kwargs[k] for k in ("temperature", "similarity") if k in kwargs}
    assert abs(want - np_info_nce(a, p, n, **base)) > 1e-4 or name == "hard_k3"
    # Over 200 seeds (every option, plain and chunk_size=7): value <= 5.6e-7, gradient vs
    # torch float64 <= 1.5e-6 and chunked vs plain <= 1.4e-6 relative error.
    assert rel_err(v0, want) <= 1e-5 and rel_err(v1, want) <= 1e-5
    want_grads = torch_grad(lambda *t: torch_info_nce(*t, **kwargs), a, p, n)
    for x, y, w in zip(g0, g1, want_grads):
        assert np.all(np.isfinite(x)) and rel_err(x, w) <= 1e-5
        assert rel_err(y, x) <= 1e-5


def test_hard_negative_weight_matches_simcse_code(rng):
    a, p, n, _ = _tuples(rng, k=1)
    n = n[:, 0]  # SimCSE: one hard negative a row, as [B, D]
    args = (a, p, n)
    fn = lambda *x: info_nce(*x, temperature=0.05, hard_negative_weight=0.7)  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(*args)
    # Over 200 seeds: value <= 5.7e-7, gradients <= 1.1e-6 relative error (same for the
    # sentence-transformers and bfloat16 comparisons below: <= 1.6e-6).
    ref = lambda *t: torch_simcse_supervised(  # noqa: E731
        *t, temperature=0.05, hard_negative_weight=0.7
    )
    assert rel_err(value, ref(*(torch.tensor(x, dtype=torch.float64) for x in args))) <= 1e-5
    for g, w in zip(grads, torch_grad(ref, *args)):
        assert rel_err(g, w) <= 1e-5
    # [B, D] is [B, 1, D]; weight 0 is the plain loss
    assert rel_err(fn(a, p, n[:, None]), value) <= 1e-6
    assert rel_err(info_nce(a, p, n, temperature=0.05, hard_negative_weight=0.0),
                   info_nce(a, p, n, temperature=0.05)) == 0


def test_same_tower_negatives_match_sentence_transformers(rng):
    """sentence-transformers' MNRL with the GTE directions but ``doc_to_query``: query_to_doc
    (in-batch and every row's K hard negatives), query_to_query, doc_to_doc (other rows'
    documents)."""
    a, p, n, _ = _tuples(rng, k=2)
    kw = dict(query_query_negatives=True, document_document_negatives=True, temperature=0.05)
    value, grads = jax.jit(jax.value_and_grad(
        lambda *x: info_nce(*x, **kw), argnums=(0, 1, 2)))(a, p, n)
    ref = lambda *t: st_multiple_negatives_ranking(  # noqa: E731
        *t, temperature=0.05, directions=("query_to_doc", "query_to_query", "doc_to_doc")
    )
    assert rel_err(value, ref(*(torch.tensor(x, dtype=torch.float64) for x in (a, p, n)))) <= 1e-5
    for g, w in zip(grads, torch_grad(ref, a, p, n)):
        assert rel_err(g, w) <= 1e-5


@pytest.mark.parametrize("chunk", [None, 2])
def test_false_negative_margin_compares_unscaled_cosine(chunk):
    """s(q, d+) = 0.5, margin 0.1: a negative at cosine 0.62 is dropped, one at 0.58 kept.
    On the scaled logits (tau = 0.05) the margin would be 2.0 and keep both."""
    tau = 0.05
    unit = lambda c: np.array([c, np.sqrt(1 - c * c)], np.float32)  # noqa: E731
    a, p = np.array([[1.0, 0.0]], np.float32), unit(0.5)[None]
    n = np.stack([unit(0.62), unit(0.58)])[None]
    fn = lambda a, p, n: info_nce(  # noqa: E731
        a, p, n, temperature=tau, false_negative_margin=0.1, chunk_size=chunk
    )
    value, (_, _, dn) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(a, p, n)
    np.testing.assert_allclose(value, np.log1p(np.exp((0.58 - 0.5) / tau)), rtol=1e-6)
    assert np.all(dn[0, 0] == 0) and np.abs(dn[0, 1]).max() > 1e-2  # stop-gradient mask


@pytest.mark.parametrize("chunk", [None, 3])
def test_degenerate_rows_are_finite_and_documented(rng, chunk):
    a, p, n, ids = _tuples(rng, b=6, k=2, d=8)
    kw = dict(temperature=0.1, chunk_size=chunk, query_query_negatives=True,
              document_document_negatives=True)
    vg = lambda f, *x: jax.value_and_grad(f, argnums=tuple(range(len(x))))(*x)  # noqa: E731

    @jax.jit
    def cases(a, p, n, empty, tie):
        # Every negative masked (margin far below any score).
        masked = vg(lambda *x: info_nce(*x, false_negative_margin=-5.0, **kw), a, p, n)
        # K = 0 hard negatives, with a weight and ids, and no hard negatives.
        k0 = vg(lambda a, p, n: info_nce(
            a, p, n, hard_negative_weight=1.0, document_ids=ids[:, :1], **kw), a, p, empty)
        none = vg(lambda a, p: info_nce(a, p, document_ids=ids[:, 0], **kw), a, p)
        # One row whose hard negative IS its positive, with the margin, then with ids.
        a1, p1 = a[:1], p[:1]
        kept = info_nce(a1, p1, tie, temperature=0.1, chunk_size=chunk, false_negative_margin=0.1)
        dropped = vg(lambda n: info_nce(
            a1, p1, n, temperature=0.1, chunk_size=chunk, document_ids=[[7, 7]]), tie)
        return masked, k0, none, kept, dropped

    masked, k0, none, kept, dropped = cases(a, p, n, np.zeros((6, 0, 8), np.float32), p[:1])
    # All masked: each row's partition function is its positive alone: loss and gradients 0.
    assert float(masked[0]) == 0.0 and all(np.all(g == 0) for g in masked[1])
    # K = 0 hard negatives is no hard negatives.
    assert rel_err(k0[0], none[0]) <= 1e-6
    for x, y in zip(k0[1], none[1]):
        assert np.all(np.isfinite(x)) and rel_err(x, y) <= 1e-6
    # The duplicate ties the positive: log 2, which the margin keeps (s = s+ is not above
    # s+ + 0.1); its document id drops it.
    np.testing.assert_allclose(kept, np.log(2.0), rtol=1e-5)
    assert float(dropped[0]) == 0.0 and np.all(dropped[1][0] == 0)


def test_info_nce_options_bfloat16_and_vmap(rng):
    a, p, n, ids = _tuples(rng)
    kw = dict(QWEN3, document_ids=ids, hard_negative_weight=0.5, temperature=0.1)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (a, p, n)]
    got = jax.jit(lambda *x: info_nce(*x, **kw))(*bf)
    assert got.dtype == jnp.float32
    rounded = [np.asarray(x, np.float64) for x in bf]
    assert rel_err(got, np_info_nce(*rounded, **kw)) <= 1e-5
    a2, p2, n2, _ = _tuples(rng)
    stacked = jax.vmap(lambda *x: info_nce(*x, **kw))(
        np.stack([a, a2]), np.stack([p, p2]), np.stack([n, n2])
    )
    want = [np_info_nce(*x, **kw) for x in ((a, p, n), (a2, p2, n2))]
    assert rel_err(stacked, want) <= 1e-5
