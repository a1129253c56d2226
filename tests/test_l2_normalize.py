"""``jaxembed.losses.l2_normalize``, the one L2 normalisation shared by the losses and the
encoders: values and gradients against ``torch.nn.functional.normalize``, a finite
gradient at a zero row, float32 compute for bf16 input, jit / vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _optional import torch

from jaxembed.losses import l2_normalize


def _rows(rng):
    """Random rows of very different scales, with an all-zero row and a row whose
    norm (1e-13) is below eps, so ``max(||x||, eps)`` takes both branches."""
    x = rng.standard_normal((6, 9)) * np.array([1.0, 1e3, 1e-3, 0.0, 1e-13, 1.0])[:, None]
    return x.astype(np.float32)


def _torch_grad(x, w):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    weights = torch.tensor(w, dtype=torch.float64)
    (torch.nn.functional.normalize(t, dim=-1) * weights).sum().backward()
    return t.grad.numpy()


def test_values_equal_torch_normalize(rng):
    x = _rows(rng)
    got = l2_normalize(x)
    want = torch.nn.functional.normalize(torch.tensor(x), dim=-1).numpy()
    assert got.dtype == jnp.float32
    # rsqrt-and-multiply vs torch's divide: at most 1.2e-7 (1-2 ulps) over 300 seeds
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)
    np.testing.assert_array_equal(got[3], 0.0)
    # other axis, and jit / vmap agree (a fused jit kernel rounds the rsqrt product
    # differently from eager ops: 1 ulp)
    np.testing.assert_allclose(
        l2_normalize(x.T, axis=0), torch.nn.functional.normalize(torch.tensor(x.T), dim=0).numpy(),
        rtol=0, atol=3e-7,
    )
    np.testing.assert_allclose(jax.jit(l2_normalize)(x), got, rtol=0, atol=3e-7)
    np.testing.assert_allclose(jax.vmap(l2_normalize)(x), got, rtol=0, atol=3e-7)


def test_bfloat16_input_computes_in_float32(rng):
    x = rng.standard_normal((4, 16)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    got = l2_normalize(xb)
    assert got.dtype == jnp.float32
    want = torch.nn.functional.normalize(torch.tensor(np.asarray(xb, np.float32)), dim=-1)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=3e-7)


def test_gradient_is_finite_at_a_zero_row_and_equals_torch(rng):
    """The norm-based form gives NaN here (d||x||/dx = 0/0 at x = 0). Ours is finite
    and equals PyTorch's: at a zero row the Jacobian is I / eps."""
    x = _rows(rng)
    w = rng.standard_normal(x.shape).astype(np.float32)
    g = jax.grad(lambda v: jnp.sum(l2_normalize(v) * w))(x)
    assert np.isfinite(np.asarray(g)).all()
    want = _torch_grad(x, w)
    for i in range(len(x)):
        # relative to the row's gradient scale (1/eps = 1e12 at the zero row): at most
        # 3.8e-7 against the float64 reference over 300 seeds
        scale = np.abs(want[i]).max()
        np.testing.assert_allclose(g[i], want[i], rtol=0, atol=2e-6 * scale, err_msg=f"row {i}")
    np.testing.assert_allclose(g[3], w[3] / 1e-12, rtol=1e-6)

    naive = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    assert np.isnan(np.asarray(jax.grad(lambda v: jnp.sum(naive(v) * w))(x))[3]).all()


def test_encoders_use_the_shared_function():
    from jaxembed.models import forward, pooling

    assert forward.l2_normalize is l2_normalize
    assert not hasattr(pooling, "l2_normalize")
