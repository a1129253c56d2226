"""matryoshka and matryoshka_2d vs float64 references (sentence-transformers semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _optional import torch
from _loss_refs import np_info_nce, np_normalize, rel_err, torch_grad, torch_info_nce

from jaxembed.losses import info_nce, matryoshka, matryoshka_2d


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_matryoshka_matches_reference_with_weights(rng):
    a = rng.standard_normal((8, 16)).astype(np.float32)
    p = (a + rng.standard_normal((8, 16))).astype(np.float32)
    dims, weights = (16, 8, 4), (1.0, 0.5, 0.25)
    got = jax.jit(matryoshka(info_nce, dims, weights))(a, p)
    want = sum(w * np_info_nce(a[:, :d], p[:, :d]) for d, w in zip(dims, weights))
    assert got.dtype == jnp.float32 and rel_err(got, want) <= 1e-5
    # Keyword arguments are forwarded, positional None passes through.
    got_t = jax.jit(lambda a, p: matryoshka(info_nce, dims, weights)(a, p, None, temperature=0.2))(
        a, p
    )
    assert (
        rel_err(
            got_t,
            sum(
                w * np_info_nce(a[:, :d], p[:, :d], temperature=0.2) for d, w in zip(dims, weights)
            ),
        )
        <= 1e-5
    )


def test_matryoshka_renormalises_truncations_for_dot_losses(rng):
    a = rng.standard_normal((8, 16)).astype(np.float32)
    p = (a + rng.standard_normal((8, 16))).astype(np.float32)
    loss = matryoshka(lambda x, y: info_nce(x, y, similarity="dot", temperature=0.5), (16, 8))
    want = sum(
        np_info_nce(
            np_normalize(a[:, :d]), np_normalize(p[:, :d]), similarity="dot", temperature=0.5
        )
        for d in (16, 8)
    )
    assert rel_err(loss(a, p), want) <= 1e-5
    raw = matryoshka(
        lambda x, y: info_nce(x, y, similarity="dot", temperature=0.5), (16, 8), normalize=False
    )
    want_raw = sum(
        np_info_nce(a[:, :d], p[:, :d], similarity="dot", temperature=0.5) for d in (16, 8)
    )
    assert rel_err(raw(a, p), want_raw) <= 1e-5


def test_matryoshka_gradient_matches_torch(rng):
    a = rng.standard_normal((8, 16)).astype(np.float32)
    p = (a + rng.standard_normal((8, 16))).astype(np.float32)
    got = jax.jit(jax.grad(matryoshka(info_nce, (16, 4), (1.0, 2.0)), argnums=(0, 1)))(a, p)
    want = torch_grad(
        lambda x, y: torch_info_nce(x, y) + 2.0 * torch_info_nce(x[:, :4], y[:, :4]), a, p
    )
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-5


def np_matryoshka_2d(stack_a, stack_p, dims, layer_w, kl_weight, temp):
    num_layers = stack_a.shape[0]
    m = lambda x, y: sum(np_info_nce(x[:, :d], y[:, :d]) for d in dims)  # noqa: E731
    loss = m(stack_a[-1], stack_p[-1])
    rows = np.concatenate([stack_a, stack_p], axis=1).astype(np.float64)
    log_t = np_log_softmax(rows[-1] / temp)
    for i in range(num_layers - 1):
        loss += layer_w[i] / (num_layers - 1) * m(stack_a[i], stack_p[i])
        kl = np.sum(np.exp(log_t) * (log_t - np_log_softmax(rows[i] / temp)), -1).mean()
        loss += kl_weight * temp * kl
    return loss


def test_matryoshka_2d_matches_reference(rng):
    stack_a = rng.standard_normal((3, 8, 16)).astype(np.float32)
    stack_p = (stack_a + rng.standard_normal((3, 8, 16))).astype(np.float32)
    schemes = {"uniform": (1.0, 1.0), "linear": (1.0, 0.5), "log": (1.0, 1 / (1 + np.log(2)))}
    schemes[(0.3, 2.0)] = (0.3, 2.0)
    got = jax.jit(
        lambda a, p: [matryoshka_2d(info_nce, (16, 8), layer_weights=lw)(a, p) for lw in schemes]
    )(stack_a, stack_p)
    for value, w in zip(got, schemes.values()):
        want = np_matryoshka_2d(stack_a, stack_p, (16, 8), w, kl_weight=1.0, temp=0.3)
        assert rel_err(value, want) <= 1e-5, w


def test_matryoshka_2d_kl_teacher_is_stop_gradient_and_kl_can_be_disabled(rng):
    stack_a = rng.standard_normal((2, 8, 16)).astype(np.float32)
    stack_p = (stack_a + rng.standard_normal((2, 8, 16))).astype(np.float32)
    no_kl = jax.jit(matryoshka_2d(info_nce, (16,), kl_weight=0.0))(stack_a, stack_p)
    assert rel_err(no_kl, np_matryoshka_2d(stack_a, stack_p, (16,), (1.0,), 0.0, 0.3)) <= 1e-5
    # Gradient w.r.t. the last layer does not see the KL term (teacher detached) ...
    with_kl = jax.jit(jax.grad(matryoshka_2d(info_nce, (16,)), argnums=0))(stack_a, stack_p)
    without = jax.jit(jax.grad(matryoshka_2d(info_nce, (16,), kl_weight=0.0), argnums=0))(
        stack_a, stack_p
    )
    np.testing.assert_allclose(with_kl[-1], without[-1], rtol=1e-6, atol=1e-7)
    # ... but the prior layer's does.
    assert np.abs(np.asarray(with_kl[0]) - np.asarray(without[0])).max() > 1e-4


def test_matryoshka_2d_gradient_matches_torch(rng):
    stack_a = rng.standard_normal((2, 6, 8)).astype(np.float32)
    stack_p = (stack_a + rng.standard_normal((2, 6, 8))).astype(np.float32)

    def torch_loss(sa, sp):
        m = lambda x, y: torch_info_nce(x, y) + torch_info_nce(x[:, :4], y[:, :4])  # noqa: E731
        rows = torch.cat([sa, sp], 1)
        teacher = torch.softmax(rows[-1] / 0.3, -1).detach()
        kl = torch.nn.functional.kl_div(
            torch.log_softmax(rows[0] / 0.3, -1), teacher, reduction="batchmean"
        )
        return m(sa[-1], sp[-1]) + m(sa[0], sp[0]) + 0.3 * kl

    got = jax.jit(jax.grad(matryoshka_2d(info_nce, (8, 4)), argnums=(0, 1)))(stack_a, stack_p)
    for g, w in zip(got, torch_grad(torch_loss, stack_a, stack_p)):
        assert rel_err(g, w) <= 1e-5


def test_matryoshka_2d_equals_n_dims_contrastive_plus_layers_kl_of_the_sampled_loss(rng):
    """The docstring's identity: all-layers, all-dims 2DMSE = n_dims x E[contrastive part]
    + (L - 1) x E[KL part] of sentence-transformers' one-layer, one-dim sampled loss, the
    expectation taken by enumerating every draw (d for the last layer, layer l, d for l)."""
    num_layers, dims, dim_w = 3, (16, 8, 4), (1.0, 0.5, 2.0)  # n_dims != L - 1
    stack_a = rng.standard_normal((num_layers, 8, 16)).astype(np.float32)
    stack_p = (stack_a + rng.standard_normal((num_layers, 8, 16))).astype(np.float32)
    last_w, prior_w, kl_w, temp = 0.7, 1.3, 0.8, 0.3
    layer_w = [1.0 / (1 + i) for i in range(num_layers - 1)]  # "linear"
    c = {(l, d): np_info_nce(stack_a[l, :, :d], stack_p[l, :, :d])
         for l in range(num_layers) for d in dims}
    rows = np.concatenate([stack_a, stack_p], axis=1).astype(np.float64)
    log_t = np_log_softmax(rows[-1] / temp)
    kl = [np.sum(np.exp(log_t) * (log_t - np_log_softmax(rows[l] / temp)), -1).mean()
          for l in range(num_layers - 1)]
    draws_c, draws_k = [], []
    for d_last, w_last in zip(dims, dim_w):
        for l in range(num_layers - 1):
            for d, w in zip(dims, dim_w):
                draws_c.append(last_w * w_last * c[num_layers - 1, d_last]
                               + prior_w * layer_w[l] * w * c[l, d])
                draws_k.append(kl_w * temp * kl[l])
    expected_c, expected_k = np.mean(draws_c), np.mean(draws_k)

    def ours(kl_weight):
        return matryoshka_2d(
            info_nce, dims, dim_weights=dim_w, layer_weights="linear",
            last_layer_weight=last_w, prior_layers_weight=prior_w,
            kl_weight=kl_weight, kl_temperature=temp)

    full, rescaled = jax.jit(lambda a, p: (
        ours(kl_w)(a, p), ours(kl_w * len(dims) / (num_layers - 1))(a, p)))(stack_a, stack_p)
    assert rel_err(full, len(dims) * expected_c + (num_layers - 1) * expected_k) <= 1e-5
    assert rel_err(rescaled / len(dims), expected_c + expected_k) <= 1e-5
    # ... and not a constant multiple of the expectation (the statement it replaces).
    assert abs(float(full) / (expected_c + expected_k) - len(dims)) > 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: matryoshka(info_nce, ()), "dims"),
        (lambda: matryoshka(info_nce, (8, 0)), "dims"),
        (lambda: matryoshka(info_nce, 8), "dims"),
        (lambda: matryoshka(info_nce, (8, 4), (1.0,)), "weights"),
        (lambda: matryoshka(info_nce, (32,))(np.ones((4, 16)), np.ones((4, 16))), r"32.*\(4, 16\)"),
        (
            lambda: matryoshka_2d(info_nce, (8,))(np.ones((4, 16)), np.ones((4, 16))),
            r"\[L, B, D\].*\(4, 16\)",
        ),
        (
            lambda: matryoshka_2d(info_nce, (8,), layer_weights="cubic")(
                np.ones((2, 4, 16)), np.ones((2, 4, 16))
            ),
            "layer_weights",
        ),
        (
            lambda: matryoshka_2d(info_nce, (8,), layer_weights=(1.0, 2.0))(
                np.ones((2, 4, 16)), np.ones((2, 4, 16))
            ),
            "layer_weights",
        ),
    ],
)
def test_matryoshka_rejects_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
