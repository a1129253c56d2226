r"""Whitening matrices of (batched) covariance matrices, in float32.

Given ``cov`` [..., c, c] (symmetric positive semi-definite), each function
returns ``W`` [..., c, c] with ``Wᵀ (cov + eps I) W = I`` (exactly for
``"eigh"`` and ``"cholesky"``, approximately for ``"newton_schulz"``):

``"eigh"`` (ZCA)
    ``W = U diag((λ + eps)^{-1/2}) Uᵀ = (cov + eps I)^{-1/2}``: the unique
    *symmetric* whitening matrix, the one that moves the data least
    (Kessy et al. 2018). WhitenedCSE / DBN use it. Its derivative is given by a
    custom JVP (Daleckii-Krein): with ``s = sqrt(λ + eps)``,
    ``dW = U (F ∘ Uᵀ dΣ U) Uᵀ``, ``F_ij = -1 / (s_i s_j (s_i + s_j))``, the
    divided difference of ``λ^{-1/2}``. It is finite for repeated eigenvalues,
    unlike autodiff through ``eigh`` (whose ``1/(λ_i - λ_j)`` factors give
    NaN/inf on ties, jax-ml/jax#669); it grows like ``(λ + eps)^{-3/2}`` for
    small eigenvalues, so the full gradient is large on near-singular groups.
``"cholesky"``
    ``cov + eps I = L Lᵀ``, ``W = L^{-ᵀ}`` (so ``X W`` solves ``L Zᵀ = Xᵀ``).
    It whitens (``Wᵀ Σ W = L^{-1} Σ L^{-ᵀ} = I``) but is *not* ZCA:
    ``W = Σ^{-1/2} Q`` with ``Q = Σ^{1/2} L^{-ᵀ}`` orthogonal, i.e. ZCA
    followed by a data-dependent rotation that depends on the channel order
    (W-MSE, Ermolov et al. 2021). Cheaper than eigh.
``"newton_schulz"``
    IterNorm (Huang et al. 2019): ``Σ_N = (cov + eps I) / tr``,
    ``P_0 = I``, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Σ_N``, ``W = P_T / sqrt(tr)``
    (computed in the numerically stable coupled form, same iterates).
    Matmuls only (accelerator friendly, differentiable by plain autodiff) but
    approximate: eigenvalues of ``Σ_N`` far below ``1/c`` are not yet whitened
    after ``T`` steps (see ``benchmarks/RESULTS.md`` for measured accuracy).

Rank-deficient covariances (batch <= group size, duplicated rows):
eigenvalues below ``c · λ_max · ε_float32`` (``numpy.linalg.matrix_rank``'s
tolerance; they are round-off) are set to exactly 0, negative round-off
included. With ``eps > 0`` the result is then finite; with ``eps = 0``
(the official WhitenedCSE code has no epsilon) ``"eigh"`` gives inf/NaN, loudly,
instead of amplifying round-off by ``1e4``; ``"cholesky"`` gives NaN (or, for a
round-off pivot, huge values); ``"newton_schulz"`` stays finite but leaves the
null directions unwhitened (NaN only for an all-constant group).

On the CPU backend the LAPACK decompositions (``"eigh"``, ``"cholesky"``) run
one matrix per call, in a loop, and both methods differentiate by matmuls only
(custom JVPs), never through LAPACK: jaxlib 0.10.0-0.11.0 can deadlock on a
batched LAPACK call inside a multi-device program (see
:func:`_one_matrix_per_lapack_call`). The results are the batched call's, bit
for bit; other backends keep the batched call.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import HIGHEST, check_choice, check_nonnegative, check_positive_int

__all__ = ["whitening_matrix", "zca_matrix", "cholesky_matrix", "newton_schulz_matrix", "METHODS"]

METHODS = ("eigh", "cholesky", "newton_schulz")


def _symmetrize(m):
    return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def _one_matrix_per_lapack_call(decompose):
    """``decompose`` of [..., c, c] matrices, with ONE matrix per LAPACK call on CPU.

    jaxlib 0.10.0 to 0.11.0 (``ParallelBatchMap`` in ``jaxlib/cpu/lapack_kernels.cc``)
    splits a batched LAPACK call whose estimated work ``batch * cost`` exceeds 2e5
    flops into tasks on XLA's intra-op thread pool and blocks until they have run.
    That pool has ``max(cores, devices)`` threads and also runs the devices'
    kernels: when every one of its threads is a device blocked in such a call
    (the WhitenedCSE step on 2 or 8 simulated devices), nothing is left to run
    the tasks and the step never returns. Split from, for ``c = 6``: eigh (cost
    ``5 c^3``) 187 matrices, i.e. 64 groups x 3 views; triangular solve (``c^3``)
    927; Cholesky (``c^3 / 3``) 2779; for eigh with ``c >= 35``, 2 matrices. A call
    on one matrix is never split, so on CPU we loop (``lax.map``) over the
    matrices, also when a caller ``vmap``s us (``sequential_vmap``); the loop gives
    the batched call's results bit for bit. Reverse-mode autodiff does not pass
    ``sequential_vmap``: callers differentiate by custom JVPs. Other backends
    get the batched ``decompose``. jax commit 859992407d (after 0.11.0) stops the
    splitting in open-source builds.
    """

    @jax.custom_batching.sequential_vmap
    def one_at_a_time(m):
        out = jax.lax.map(decompose, m.reshape((-1,) + m.shape[-2:]))
        return jax.tree.map(lambda o: o.reshape(m.shape[:-2] + o.shape[1:]), out)

    return lambda m: jax.lax.platform_dependent(m, cpu=one_at_a_time, default=decompose)


_eigh = _one_matrix_per_lapack_call(partial(jnp.linalg.eigh, symmetrize_input=False))


def _regularized_eigh(cov, eps):
    """Eigen-decomposition with round-off eigenvalues zeroed, then ``+ eps``."""
    lam, u = _eigh(_symmetrize(cov))
    c = cov.shape[-1]
    tol = lam[..., -1:] * (c * jnp.finfo(jnp.float32).eps)
    lam = jnp.where(lam > tol, lam, 0.0) + eps
    return lam, u


def _mm(a, b):
    return jnp.matmul(a, b, precision=HIGHEST)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def zca_matrix(cov: ArrayLike, eps: float = 0.0) -> jax.Array:
    r"""ZCA whitening matrix ``(cov + eps I)^{-1/2}`` of ``cov`` [..., c, c] -> [..., c, c].

    Example:
      >>> w = zca_matrix(jnp.diag(jnp.array([4.0, 1.0])))
      >>> w.diagonal().tolist()
      [0.5, 1.0]
    """
    lam, u = _regularized_eigh(cov, eps)
    return _mm(u * jax.lax.rsqrt(lam)[..., None, :], jnp.swapaxes(u, -1, -2))


@zca_matrix.defjvp
def _zca_matrix_jvp(eps, primals, tangents):
    (cov,), (dcov,) = primals, tangents
    lam, u = _regularized_eigh(cov, eps)
    ut = jnp.swapaxes(u, -1, -2)
    s = jnp.sqrt(lam)
    w = _mm(u / s[..., None, :], ut)
    # Divided differences of f(λ) = λ^{-1/2}:
    # (f(a) - f(b)) / (a - b) = -1 / (√a √b (√a + √b)).
    f = -1.0 / (s[..., :, None] * s[..., None, :] * (s[..., :, None] + s[..., None, :]))
    dw = _mm(_mm(u, f * _mm(_mm(ut, _symmetrize(dcov)), u)), ut)
    return w, dw


def _inverse_cholesky_factor(sigma):
    """``L^{-1}`` of ``sigma = L Lᵀ`` [..., c, c]; NaN where ``sigma`` is not pos. definite."""
    chol = jnp.linalg.cholesky(sigma, symmetrize_input=False)
    identity = jnp.broadcast_to(jnp.eye(sigma.shape[-1], dtype=sigma.dtype), sigma.shape)
    return jax.lax.linalg.triangular_solve(chol, identity, left_side=True, lower=True)


_inverse_cholesky = _one_matrix_per_lapack_call(_inverse_cholesky_factor)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def cholesky_matrix(cov: ArrayLike, eps: float = 0.0) -> jax.Array:
    r"""Cholesky whitening matrix ``L^{-ᵀ}``, ``cov + eps I = L Lᵀ``: [..., c, c] -> same.

    Its derivative is a custom JVP of matmuls: ``dL = L Φ(L^{-1} dΣ L^{-ᵀ})``
    (``Φ``: lower triangle, halved diagonal) and ``dW = -W dLᵀ W``, i.e.
    ``dW = -W Φ(Wᵀ dΣ W)ᵀ``, the derivative autodiff through Cholesky gives.

    Example:
      >>> w = cholesky_matrix(jnp.array([[4.0, 2.0], [2.0, 2.0]]))
      >>> bool(jnp.allclose(w.T @ jnp.array([[4.0, 2.0], [2.0, 2.0]]) @ w, jnp.eye(2)))
      True
    """
    eye = jnp.eye(cov.shape[-1], dtype=cov.dtype)
    return jnp.swapaxes(_inverse_cholesky(_symmetrize(cov) + eps * eye), -1, -2)


@cholesky_matrix.defjvp
def _cholesky_matrix_jvp(eps, primals, tangents):
    (cov,), (dcov,) = primals, tangents
    w = cholesky_matrix(cov, eps)
    inner = _mm(_mm(jnp.swapaxes(w, -1, -2), _symmetrize(dcov)), w)
    phi = jnp.tril(inner) - 0.5 * inner * jnp.eye(cov.shape[-1], dtype=inner.dtype)
    return w, -_mm(w, jnp.swapaxes(phi, -1, -2))


def newton_schulz_matrix(cov: ArrayLike, eps: float = 0.0, *, iterations: int = 5) -> jax.Array:
    r"""IterNorm's Newton-Schulz approximation of ``(cov + eps I)^{-1/2}``: [..., c, c] -> same.

    ``Σ_N = (cov + eps I) / tr(cov + eps I)``; IterNorm iterates
    ``P_{k+1} = (3 P_k - P_k^3 Σ_N) / 2`` from ``P_0 = I`` and returns
    ``P_T / sqrt(tr)``. We compute the *same iterates* with the coupled form
    (Higham 1997): ``Y_0 = Σ_N, Z_0 = I, T_k = (3I - Z_k Y_k)/2,
    Y_{k+1} = Y_k T_k, Z_{k+1} = T_k Z_k`` (``Z_k = P_k``, ``Y_k = P_k Σ_N`` in exact
    arithmetic), also 3 matmuls per step. The uncoupled form amplifies round-off
    once an eigenvalue ratio exceeds ~2.4 and reaches NaN after ~30 steps on
    ordinary batches; the coupled one converges to ``Σ_N^{-1/2}`` and stays there.

    Example:
      >>> w = newton_schulz_matrix(jnp.eye(3), iterations=8)
      >>> bool(jnp.allclose(w, jnp.eye(3), atol=1e-3))
      True
    """
    iterations = check_positive_int(iterations, "iterations")
    c = cov.shape[-1]
    eye = jnp.eye(c, dtype=cov.dtype)
    sigma = _symmetrize(cov) + eps * eye
    trace = jnp.trace(sigma, axis1=-2, axis2=-1)[..., None, None]
    y = sigma / trace
    z = jnp.broadcast_to(eye, sigma.shape)
    for _ in range(iterations):
        t = 1.5 * eye - 0.5 * _mm(z, y)
        y, z = _mm(y, t), _mm(t, z)
    return z * jax.lax.rsqrt(trace)


def whitening_matrix(cov: ArrayLike, *, eps: float = 0.0, method: str = "eigh",
                     iterations: int = 5) -> jax.Array:
    """Dispatch to :func:`zca_matrix`, :func:`cholesky_matrix` or :func:`newton_schulz_matrix`.

    Args:
      cov: [..., c, c] float32 covariance(s).
      eps: ``>= 0`` added to the diagonal (to the eigenvalues for eigh).
      method: one of ``METHODS``.
      iterations: Newton-Schulz steps (only for ``"newton_schulz"``).
    """
    check_choice(method, set(METHODS), "method")
    check_nonnegative(eps, "eps")
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov must have shape [..., c, c], got shape {tuple(cov.shape)}")
    if method == "eigh":
        return zca_matrix(cov, float(eps))
    if method == "cholesky":
        return cholesky_matrix(cov, float(eps))
    return newton_schulz_matrix(cov, eps, iterations=iterations)
