"""pair_features, distill_mse, alignment and uniformity vs float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import torch
from _loss_refs import np_normalize, rel_err, torch_grad

from jaxembed.losses import alignment, distill_mse, pair_features, uniformity


def test_pair_features_layout_and_dtype(rng):
    u = rng.standard_normal((5, 7)).astype(np.float32)
    v = rng.standard_normal((5, 7)).astype(np.float32)
    got = pair_features(jnp.asarray(u, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16))
    assert got.dtype == jnp.float32 and got.shape == (5, 28)
    ub, vb = (np.asarray(jnp.asarray(t, jnp.bfloat16), np.float64) for t in (u, v))
    np.testing.assert_array_equal(
        got, np.concatenate([ub, vb, ub * vb, np.abs(ub - vb)], -1).astype(np.float32)
    )


@pytest.mark.parametrize("shape", [(9,), (9, 3)])
def test_distill_mse_matches_reference_and_gradient(rng, shape):
    s = rng.standard_normal(shape).astype(np.float32)
    t = rng.standard_normal(shape).astype(np.float32)
    got, (gs, gt) = jax.jit(jax.value_and_grad(distill_mse, argnums=(0, 1)))(s, t)
    err = (s.astype(np.float64) - t).reshape(shape[0], -1)
    assert rel_err(got, np.mean(np.sum(err**2, -1))) <= 1e-5
    assert rel_err(gs, 2 * err.reshape(shape) / shape[0]) <= 1e-5
    assert np.all(gt == 0)  # teacher logits are constants


def test_alignment_and_uniformity_match_wang_isola(rng):
    x = np_normalize(rng.standard_normal((10, 6))).astype(np.float32)
    y = np_normalize(x + 0.3 * rng.standard_normal((10, 6))).astype(np.float32)
    for alpha in (2, 1.5):
        want = np.mean(np.linalg.norm(x.astype(np.float64) - y, axis=1) ** alpha)
        assert rel_err(alignment(x, y, alpha=alpha), want) <= 1e-5
    i, j = np.triu_indices(10, 1)
    for t in (2, 0.5):
        d2 = np.sum((x.astype(np.float64)[i] - x[j]) ** 2, -1)
        assert rel_err(uniformity(x, t=t), np.log(np.mean(np.exp(-t * d2)))) <= 1e-5
    # Gradients vs torch float64 (torch.pdist, as the paper's code).
    g = jax.jit(jax.grad(lambda x: uniformity(x) + alignment(x, y)))(x)
    want = torch_grad(
        lambda xt: torch.pdist(xt).pow(2).mul(-2).exp().mean().log()
        + (xt - torch.tensor(y, dtype=torch.float64)).norm(dim=1).pow(2).mean(),
        x,
    )[0]
    assert rel_err(g, want) <= 1e-5
    assert np.all(
        np.isfinite(jax.grad(lambda x: alignment(x, x))(x))
    )  # zero distance: finite gradient


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pair_features(np.ones((3, 4)), np.ones((3, 5))), r"\(3, 5\).*\(3, 4\)"),
        (lambda: distill_mse(np.ones((3,)), np.ones((4,))), r"\(4,\).*\(3,\)"),
        (
            lambda: distill_mse(np.ones((3, 2, 2)), np.ones((3, 2, 2))),
            r"\[B\] or \[B, K\].*\(3, 2, 2\)",
        ),
        (lambda: alignment(np.ones((3, 4)), np.ones((2, 4))), r"\(2, 4\).*\(3, 4\)"),
        (lambda: uniformity(np.ones((1, 4))), r"\(1, 4\)"),
        (lambda: uniformity(np.ones((3, 4)), t=0), "t must be"),
    ],
)
def test_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
