"""Group whitening, SGW and WhitenedCSE vs float64 references; numerics of rank-deficient batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import torch
from _loss_refs import np_group_whitening, np_info_nce, rel_err, torch_grad, torch_group_whitening

from jaxembed.losses import (
    cholesky_matrix,
    group_whitening,
    newton_schulz_matrix,
    shuffled_group_whitening,
    whitened_cse,
    zca_matrix,
)


def _data(rng, b=32, d=12):
    """Correlated, offset rows with channel scales 1..3: group covariances have condition numbers
    ~10-100 (float32 ZCA error grows like κ·1e-7; see whitening_matrices)."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix = q * np.linspace(1.0, 3.0, d)
    return (rng.standard_normal((b, d)) @ mix + rng.standard_normal(d)).astype(np.float32)


def _group_cov(z, num_groups):
    b, d = z.shape
    zg = np.asarray(z, np.float64).reshape(b, num_groups, d // num_groups)
    zc = zg - zg.mean(0)
    return np.einsum("bgi,bgj->gij", zc, zc) / b


@pytest.mark.parametrize("num_groups", [1, 2, 4])
def test_group_whitening_matches_float64_zca(rng, num_groups):
    x = _data(rng)
    eps = float(rng.choice([0.0, 1e-3]))
    z = group_whitening(x, num_groups=num_groups, eps=eps)
    assert z.dtype == jnp.float32 and z.shape == x.shape
    assert rel_err(z, np_group_whitening(x, num_groups, eps)) <= 1e-5
    if eps == 0.0:
        np.testing.assert_allclose(
            _group_cov(z, num_groups),
            np.broadcast_to(
                np.eye(12 // num_groups), (num_groups, 12 // num_groups, 12 // num_groups)
            ),
            atol=1e-4,
        )


def test_group_whitening_well_conditioned_is_exact_to_1e5(rng):
    """With a well-conditioned covariance the float32 result matches float64 to 1e-5 relative."""
    x = rng.standard_normal((64, 12)).astype(np.float32)
    for method in ("eigh", "cholesky"):
        z = group_whitening(x, num_groups=2, method=method)
        if method == "eigh":
            assert rel_err(z, np_group_whitening(x, 2)) <= 1e-5
        np.testing.assert_allclose(
            _group_cov(z, 2), np.broadcast_to(np.eye(6), (2, 6, 6)), atol=2e-5
        )


def test_cholesky_whitens_but_rotates_and_newton_schulz_approximates(rng):
    x = _data(rng, b=64)
    zca = np.asarray(group_whitening(x, num_groups=2), np.float64)
    chol = np.asarray(group_whitening(x, num_groups=2, method="cholesky"), np.float64)
    ns = np.asarray(
        group_whitening(x, num_groups=2, method="newton_schulz", iterations=30, eps=0.0), np.float64
    )
    for g in range(2):
        blk = slice(6 * g, 6 * g + 6)
        q = np.linalg.lstsq(zca[:, blk], chol[:, blk], rcond=None)[
            0
        ]  # chol = zca @ Q, Q orthogonal
        np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-3)
        assert np.abs(q - np.eye(6)).max() > 1e-2  # ... and not the identity: it rotates
    # Newton-Schulz converges to ZCA as the iterations grow (error shrinks).
    ns5 = np.asarray(group_whitening(x, num_groups=2, method="newton_schulz"), np.float64)
    assert rel_err(ns, zca) < rel_err(ns5, zca)
    assert rel_err(ns, zca) < 5e-2


def test_whitening_matrices_against_float64(rng):
    a = rng.standard_normal((3, 5, 5))
    cov = (a @ a.transpose(0, 2, 1) / 5 + 0.3 * np.eye(5)).astype(np.float32)
    lam, u = np.linalg.eigh(cov.astype(np.float64))
    want = u @ (lam[..., None] ** -0.5 * u.transpose(0, 2, 1))
    assert rel_err(zca_matrix(cov), want) <= 1e-5
    w = np.asarray(cholesky_matrix(cov), np.float64)
    np.testing.assert_allclose(
        w.transpose(0, 2, 1) @ cov @ w, np.broadcast_to(np.eye(5), (3, 5, 5)), atol=1e-5
    )
    assert np.all(np.tril(w, -1) == 0)  # W = L^-T is upper triangular
    assert (
        rel_err(w, np.linalg.inv(np.linalg.cholesky(cov.astype(np.float64))).transpose(0, 2, 1))
        <= 1e-5
    )
    ns = newton_schulz_matrix(cov, iterations=40)
    assert rel_err(ns, want) <= 1e-4


@pytest.mark.parametrize("method", ["eigh", "cholesky", "newton_schulz"])
def test_stop_gradient_matches_official_detached_covariance(rng, method):
    """Default gradient = official WhitenedCSE (covariance detached): through centring and X_c W only."""
    x = _data(rng, b=16)
    r = rng.standard_normal(x.shape).astype(np.float32)
    g = jax.jit(jax.grad(lambda x: jnp.sum(r * group_whitening(x, num_groups=2, method=method))))(x)
    assert np.all(np.isfinite(g))
    # d/dx sum(r * (x - mean) W) with W constant = (r - mean_b r) W^T.
    w = np.asarray(
        jax.vmap(
            lambda c: {
                "eigh": zca_matrix,
                "cholesky": cholesky_matrix,
                "newton_schulz": newton_schulz_matrix,
            }[method](c)
        )(jnp.asarray(_group_cov(x, 2), jnp.float32)),
        np.float64,
    )
    rg = (r - r.mean(0)).reshape(16, 2, 6).astype(np.float64)
    want = np.einsum("bgj,gij->bgi", rg, w).reshape(16, 12)
    assert rel_err(g, want) <= 1e-5
    if method == "eigh":
        want_t = torch_grad(
            lambda t: (torch.tensor(r, dtype=torch.float64) * torch_group_whitening(t, 2)).sum(), x
        )[0]
        assert rel_err(g, want_t) <= 1e-5


def test_full_gradient_matches_torch_eigh_autograd(rng):
    x = rng.standard_normal((24, 8)).astype(np.float32)
    r = rng.standard_normal(x.shape).astype(np.float32)
    fn = lambda x: jnp.sum(r * group_whitening(x, num_groups=2, stop_gradient=False))  # noqa: E731
    g = jax.jit(jax.grad(fn))(x)
    want = torch_grad(
        lambda t: (
            torch.tensor(r, dtype=torch.float64) * torch_group_whitening(t, 2, detach=False)
        ).sum(),
        x,
    )[0]
    assert rel_err(g, want) <= 1e-5
    # Central differences along a random direction (float32, step 1e-2: loose but meaningful).
    v = rng.standard_normal(x.shape).astype(np.float32)
    fd = (fn(x + 1e-2 * v) - fn(x - 1e-2 * v)) / 2e-2
    np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=2e-2)


def test_full_gradient_finite_for_repeated_eigenvalues():
    """Autodiff through eigh is NaN on ties; the Daleckii-Krein JVP is not."""
    x = jnp.asarray(
        np.kron(np.eye(4), np.ones((4, 1))) * 2.0, jnp.float32
    )  # [16, 4]: cov = 3/4 I - ..., tied eigenvalues
    x = jnp.concatenate([x, -x], 0)  # cov proportional to I: all four eigenvalues equal
    naive = jax.grad(lambda c: jnp.sum(jnp.linalg.eigh(c)[1] ** 3))(jnp.cov(x.T))
    assert not np.all(np.isfinite(naive))
    g = jax.jit(
        jax.grad(lambda x: jnp.sum(jnp.sin(group_whitening(x, num_groups=1, stop_gradient=False))))
    )(x)
    assert np.all(np.isfinite(g))
    # For Σ = s² I, d Σ^{-1/2} [E] = -E / (2 s³): compare with the closed form.
    cov = jnp.eye(3) * 4.0
    e = jnp.asarray([[1.0, 2.0, 0.0], [2.0, -1.0, 0.5], [0.0, 0.5, 3.0]])
    _, dw = jax.jvp(zca_matrix, (cov,), (e,))
    np.testing.assert_allclose(dw, -e / 16.0, rtol=1e-6)


@pytest.mark.parametrize("case", ["duplicated_rows", "batch_le_group"])
def test_rank_deficient_batches_finite_with_eps(rng, case):
    if case == "duplicated_rows":
        x = np.repeat(_data(rng, b=3, d=12), 8, axis=0)  # 24 rows, rank 2 per group of 6
    else:
        x = _data(rng, b=4, d=12)  # B = 4 <= group size 6
    combos = [(m, stop) for m in ("eigh", "cholesky", "newton_schulz") for stop in (True, False)]

    def loss(x, method, stop):
        z = group_whitening(x, num_groups=2, eps=1e-3, method=method, stop_gradient=stop)
        return jnp.sum(jnp.tanh(z))

    results = jax.jit(lambda x: [jax.value_and_grad(loss)(x, m, s) for m, s in combos])(x)
    for combo, (value, grad) in zip(combos, results):
        assert np.isfinite(value) and np.all(np.isfinite(grad)), combo


def test_eps_zero_rank_deficient_is_loud_for_eigh(rng):
    """Documented: eps=0 on a singular group gives non-finite output (round-off eigenvalues are zeroed)."""
    x = _data(rng, b=4, d=12)
    z = group_whitening(x, num_groups=2, eps=0.0)
    assert not np.all(np.isfinite(z))
    # ... while a full-rank batch at eps=0 is fine.
    assert np.all(np.isfinite(group_whitening(_data(rng, b=32), num_groups=2, eps=0.0)))


def test_group_whitening_bfloat16_input_float32_island(rng):
    x = _data(rng, b=64)
    xb = jnp.asarray(x, jnp.bfloat16)
    z = group_whitening(xb, num_groups=2)
    assert z.dtype == jnp.float32
    assert rel_err(z, np_group_whitening(np.asarray(xb, np.float64), 2)) <= 1e-4
    np.testing.assert_allclose(_group_cov(z, 2), np.broadcast_to(np.eye(6), (2, 6, 6)), atol=1e-4)


def test_group_whitening_vmaps_over_views(rng):
    x = np.stack([_data(rng, b=16), _data(rng, b=16)])
    z = jax.vmap(lambda v: group_whitening(v, num_groups=3))(x)
    for k in range(2):
        assert rel_err(z[k], np_group_whitening(x[k], 3)) <= 1e-4


def test_shuffled_group_whitening_is_group_whitening_of_permuted_channels(rng):
    x = _data(rng, b=32)
    key = jax.random.key(int(rng.integers(2**31)))
    perm = np.asarray(jax.random.permutation(key, 12))
    want = np.empty((32, 12))
    want[:, perm] = np_group_whitening(x[:, perm], 3)
    got = jax.jit(lambda x, k: shuffled_group_whitening(x, k, num_groups=3))(x, key)
    assert rel_err(got, want) <= 1e-4
    assert not np.array_equal(perm, np.arange(12))


def np_whitened_cse(views, key, num_groups, temperature=0.05):
    keys = jax.random.split(key, views.shape[1])
    whitened = []
    for k in range(views.shape[1]):
        perm = np.asarray(jax.random.permutation(keys[k], views.shape[2]))
        w = np.empty(views[:, k].shape)
        w[:, perm] = np_group_whitening(views[:, k][:, perm], num_groups)
        whitened.append(w)
    return sum(
        np_info_nce(whitened[0], whitened[k], temperature=temperature)
        for k in range(1, len(whitened))
    )


def test_whitened_cse_matches_reference_and_projection_is_applied(rng):
    base = rng.standard_normal((16, 1, 12))
    views = (base + 0.3 * rng.standard_normal((16, 3, 12))).astype(np.float32)
    key = jax.random.key(int(rng.integers(2**31)))
    got = jax.jit(lambda v, k: whitened_cse(v, k, num_groups=2))(views, key)
    assert got.dtype == jnp.float32
    assert rel_err(got, np_whitened_cse(views, key, 2)) <= 1e-4
    w = rng.standard_normal((12, 12)).astype(np.float32) / 4
    fn = jax.jit(
        jax.value_and_grad(
            lambda v: whitened_cse(v, key, num_groups=2, projection=lambda z: jnp.tanh(z @ w))
        )
    )
    proj, grad = fn(views)
    assert abs(float(proj) - float(got)) > 1e-3
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: group_whitening(np.ones((8, 10)), num_groups=3), r"\(8, 10\).*num_groups=3"),
        (lambda: group_whitening(np.ones((2, 8, 10)), num_groups=2), r"\[B, D\].*\(2, 8, 10\)"),
        (lambda: group_whitening(np.ones((8, 10)), num_groups=2, method="svd"), "method"),
        (lambda: group_whitening(np.ones((8, 10)), num_groups=2, eps=-1.0), "eps"),
        (lambda: group_whitening(np.ones((8, 10)), num_groups=0), "num_groups"),
        (
            lambda: whitened_cse(np.ones((8, 1, 10)), jax.random.key(0), num_groups=2),
            r"P >= 2.*\(8, 1, 10\)",
        ),
        (
            lambda: whitened_cse(np.ones((8, 10)), jax.random.key(0), num_groups=2),
            r"\[B, P, D\].*\(8, 10\)",
        ),
    ],
)
def test_whitening_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- CPU: LAPACK one matrix per call (jaxlib's batched kernels can deadlock multi-device steps) ---

F32_EPS = float(np.finfo(np.float32).eps)


def _np_zca(cov, eps=0.0):
    """float64 ZCA of the float32 ``cov`` [..., c, c], eigenvalues below c·λ_max·ε32 zeroed."""
    lam, u = np.linalg.eigh(np.asarray(cov, np.float64))
    lam = np.where(lam > lam[..., -1:] * cov.shape[-1] * F32_EPS, lam, 0.0) + eps
    return u @ (lam[..., None] ** -0.5 * np.swapaxes(u, -1, -2))


def _np_cholesky_whitening(cov, eps=0.0):
    c = np.asarray(cov, np.float64) + eps * np.eye(cov.shape[-1])
    return np.swapaxes(np.linalg.inv(np.linalg.cholesky(c)), -1, -2)


def _rel_err_per_matrix(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.abs(actual - expected).max((-2, -1)) / np.abs(expected).max((-2, -1))


def _quickstart_covariances(rng):
    """[3, 64, 6, 6]: the quick start's 3 views x 64 groups of 6 channels, batch 64."""
    x = np.stack([_data(rng, b=64, d=384) for _ in range(3)], 1).reshape(64, 3, 64, 6)
    xc = x.astype(np.float64) - x.mean(0)
    return (np.einsum("bpgi,bpgj->pgij", xc, xc) / 64).astype(np.float32)


def test_lapack_loop_gives_the_batched_results_bit_for_bit(rng):
    from jaxembed.losses.whitening_matrices import _eigh, _inverse_cholesky, _inverse_cholesky_factor

    cov = jnp.asarray(_quickstart_covariances(rng)[:, :40])  # 120 matrices: a safe batched call
    eigh = jnp.linalg.eigh(cov)
    for got, want in [
        (_eigh(cov), eigh),
        (jax.jit(jax.vmap(_eigh))(cov), eigh),
        (_inverse_cholesky(cov), _inverse_cholesky_factor(cov)),
    ]:
        jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_many_groups_match_float64(rng, eps):
    """192 matrices (the quick start's count, where jaxlib's batched eigh splits) vs float64.

    Stress run (20 fresh seeds x 192 matrices, eps 0 and 1e-5): worst per-matrix relative error
    1.1e-6 for ZCA, 1.2e-7 for Cholesky; the vmapped path gave the same bits as the direct one.

    Both sides of the bit-for-bit check are jitted: from jaxlib 0.12 XLA fuses ZCA's round-off
    zeroing (a select) into the rsqrt under jit, and that fused rsqrt rounds 1 ulp differently
    from the op-by-op one (eager vs jit: ~20% of the entries, by 1 ulp, over 5 seeds; equal on
    jaxlib 0.10); the vmapped loop vs the direct batched call is what this test checks."""
    cov = _quickstart_covariances(rng)
    zca = jax.jit(lambda c: zca_matrix(c, eps))(cov)
    assert _rel_err_per_matrix(zca, _np_zca(cov, eps)).max() <= 1e-5
    chol = cholesky_matrix(cov, eps)
    assert _rel_err_per_matrix(chol, _np_cholesky_whitening(cov, eps)).max() <= 1e-5
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda c: zca_matrix(c, eps)))(cov), zca)


def test_degenerate_covariances(rng):
    """Ties, a constant channel, rank deficiency and a 1e6 eigenvalue range, batched past 187."""
    q = np.linalg.qr(rng.standard_normal((4, 6, 6)))[0]
    spectra = {
        "identity": np.ones(6),
        "scaled_identity": np.full(6, 4.0),
        "pairwise_ties": np.repeat([0.5, 1.0, 2.0], 2),
        "rank_3": np.array([0, 0, 0, 1.0, 2.0, 3.0]),
        "range_1e6": np.logspace(-3, 3, 6),
    }
    covs = {k: (q[i % 4] * lam) @ q[i % 4].T for i, (k, lam) in enumerate(spectra.items())}
    covs["identity"] = np.eye(6)
    covs["scaled_identity"] = 4.0 * np.eye(6)
    const = covs["pairwise_ties"].copy()
    const[2, :] = const[:, 2] = 0.0  # channel 2 constant over the batch
    covs["constant_channel"] = const
    names = list(covs)
    batch = np.stack([covs[k] for k in names]).astype(np.float32)
    batch = np.repeat(batch, 32, axis=0)  # 192 matrices
    eps = 1e-5
    zca = np.asarray(zca_matrix(jnp.asarray(batch), eps))
    chol = np.asarray(cholesky_matrix(jnp.asarray(batch), eps))
    assert np.all(np.isfinite(zca)) and np.all(np.isfinite(chol))
    lam = np.clip(np.linalg.eigvalsh(batch.astype(np.float64)), 0.0, None) + eps
    kappa = (lam[:, -1] / lam[:, 0]).reshape(len(names), 32).max(1)
    err_zca = _rel_err_per_matrix(zca, _np_zca(batch, eps)).reshape(len(names), 32).max(1)
    err_chol = _rel_err_per_matrix(chol, _np_cholesky_whitening(batch, eps)).reshape(len(names), 32)
    for name, k, ez, ec in zip(names, kappa, err_zca, err_chol.max(1)):
        # float32 eigh/Cholesky of a matrix with condition number κ are accurate to ~κ·ε32.
        # ZCA zeroes round-off eigenvalues, so only the 1e6 range reaches that bound; Cholesky
        # sees κ = λ_max / eps on the rank-deficient groups. Stress run (40 seeds): ZCA <= 9.1e-7
        # on the others and <= 0.7 κ ε32 at κ = 1e6; Cholesky <= 1.1e-7 on the full-rank
        # groups, <= 0.2 κ ε32 on rank 3 and the 1e6 range.
        assert ez <= (k * F32_EPS if name == "range_1e6" else 1e-5), (name, ez)
        assert ec <= max(k * F32_EPS, 1e-5), (name, ec, k)
    want = [(1 + eps) ** -0.5 * np.eye(6), (4 + eps) ** -0.5 * np.eye(6)]  # (s² + eps)^{-1/2} I
    np.testing.assert_allclose(zca[: 2 * 32 : 32], want, rtol=1e-6, atol=1e-7)
    # eps = 0: the rank-3 and constant-channel groups are loud (inf/NaN), the others finite.
    loud = ~np.isfinite(np.asarray(zca_matrix(jnp.asarray(batch), 0.0))).all((-2, -1))
    assert loud.reshape(len(names), 32).all(1).tolist() == [
        k in ("rank_3", "constant_channel") for k in names
    ]


def test_cholesky_custom_jvp_matches_torch_float64(rng):
    """The matmul-only JVP of L^{-T} equals autograd through torch's float64 Cholesky
    (stress run, 40 seeds: relative error <= 5.6e-7)."""
    a = rng.standard_normal((3, 6, 6))
    cov = (a @ a.transpose(0, 2, 1) / 6 + 0.3 * np.eye(6)).astype(np.float32)
    r = rng.standard_normal(cov.shape).astype(np.float32)
    eps = 1e-3
    g = jax.jit(jax.grad(lambda c: jnp.sum(r * cholesky_matrix(c, eps))))(cov)

    def torch_loss(c):
        sym = 0.5 * (c + c.transpose(-1, -2)) + eps * torch.eye(6, dtype=torch.float64)
        w = torch.linalg.inv(torch.linalg.cholesky(sym)).transpose(-1, -2)
        return (torch.tensor(r, dtype=torch.float64) * w).sum()

    assert rel_err(g, torch_grad(torch_loss, cov)[0]) <= 1e-5
