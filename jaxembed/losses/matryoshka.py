"""Matryoshka (nested-dimension) and 2D Matryoshka (layer × dimension) loss wrappers.

Both are deterministic and stateless: they evaluate *every* dimension (and
every layer) instead of sampling some per step, so no key is needed. They are
not a rescaled expectation of the sampled variants: :func:`matryoshka_2d`
states how its value relates to sentence-transformers' one-layer, one-dim
sampling (the two parts scale differently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import check_positive
from jaxembed.losses.normalize import l2_normalize

__all__ = ["matryoshka", "matryoshka_2d"]


def _check_dims(dims) -> tuple[int, ...]:
    if isinstance(dims, (int, str)) or not isinstance(dims, Sequence) or len(dims) == 0:
        raise ValueError(f"dims must be a non-empty sequence of positive ints, got {dims!r}")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(f"dims must be a non-empty sequence of positive ints, got {dims!r}")
        out.append(d)
    return tuple(out)


def _check_weights(weights, n: int, name: str) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * n
    weights = tuple(float(w) for w in weights)
    if len(weights) != n:
        raise ValueError(
            f"{name} must have one weight per entry ({n}), got {len(weights)}: {weights}"
        )
    return weights


def _truncate(x, dim: int, normalize: bool):
    if x is None:
        return None
    if dim > x.shape[-1]:
        raise ValueError(
            f"Matryoshka dim {dim} exceeds the embedding size: "
            f"got an embedding of shape {tuple(x.shape)}"
        )
    x = x[..., :dim]
    return l2_normalize(x) if normalize else x


def matryoshka(
    loss_fn: Callable[..., jax.Array],
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    normalize: bool = True,
) -> Callable[..., jax.Array]:
    r"""Wrap ``loss_fn`` so it is applied to every prefix ``[..., :d]`` of its embeddings.

    Args:
      loss_fn: ``loss_fn(*embeddings, **kwargs) -> scalar`` (e.g. :func:`info_nce`).
      dims: the nested sizes, e.g. ``(768, 512, 256, 128, 64)``.
      weights: one weight per dim (default all 1, as sentence-transformers).
      normalize: re-L2-normalise every truncation (sentence-transformers'
        ``MatryoshkaLoss`` does); irrelevant for cosine InfoNCE, which
        normalises anyway, but it matters for ``"dot"`` or MSE-type losses.

    Returns:
      ``fn(*embeddings, **kwargs) =
      Σ_d w_d · loss_fn(*[e[..., :d] for e in embeddings], **kwargs)``.
      Positional arguments are truncated (``None`` passes through); keyword
      arguments are forwarded unchanged.

    Example:
      >>> from jaxembed.losses import info_nce
      >>> loss = matryoshka(info_nce, (16, 8))
      >>> a = jax.random.normal(jax.random.key(0), (4, 16))
      >>> loss(a, a + 0.1).shape
      ()

    References:
      Kusupati et al. 2022, "Matryoshka Representation Learning" (arXiv 2205.13147).
    """
    dims = _check_dims(dims)
    weights = _check_weights(weights, len(dims), "weights")

    def matryoshka_loss(*embeddings, **kwargs):
        total = jnp.float32(0.0)
        for dim, weight in zip(dims, weights):
            total = total + weight * loss_fn(
                *(_truncate(e, dim, normalize) for e in embeddings), **kwargs
            )
        return total

    return matryoshka_loss


def _layer_weights(layer_weights, num_prior: int) -> jnp.ndarray:
    schemes = {
        "uniform": lambda i: 1.0,
        "log": lambda i: 1.0 / (1.0 + math.log(1 + i)),
        "linear": lambda i: 1.0 / (1 + i),
    }
    if layer_weights is None:
        layer_weights = "uniform"
    if isinstance(layer_weights, str):
        if layer_weights not in schemes:
            raise ValueError(
                "layer_weights must be 'uniform', 'log', 'linear' or a sequence, "
                f"got {layer_weights!r}"
            )
        w = [schemes[layer_weights](i) for i in range(num_prior)]
    else:
        w = _check_weights(layer_weights, num_prior, "layer_weights (one per prior layer, L - 1)")
    return jnp.asarray(w, jnp.float32)


def matryoshka_2d(
    loss_fn: Callable[..., jax.Array],
    dims: Sequence[int],
    *,
    dim_weights: Sequence[float] | None = None,
    layer_weights: Sequence[float] | str | None = None,
    last_layer_weight: float = 1.0,
    prior_layers_weight: float = 1.0,
    kl_weight: float = 1.0,
    kl_temperature: float = 0.3,
    normalize: bool = True,
) -> Callable[..., jax.Array]:
    r"""2D Matryoshka: the Matryoshka loss on every layer, plus a KL to the last layer.

    This is sentence-transformers' ``Matryoshka2dLoss`` (= ``AdaptiveLayerLoss``
    over ``MatryoshkaLoss``) with *all* layers and dims every step
    (``n_layers_per_step = n_dims_per_step = -1``): deterministic, no RNG,
    and the variant whose gradient has no sampling noise. The original 2DMSE
    trainer (one random layer and dim per step, ``1/i`` weights) and ESE (fixed
    128-dim prefix, PCA target) are not reproduced; ``layer_weights="linear"``
    / ``"log"`` give their layer weightings.

    Args:
      loss_fn: the base loss, ``loss_fn(*embeddings, **kwargs) -> scalar``.
      dims: Matryoshka sizes, as :func:`matryoshka`.
      dim_weights: one weight per dim (default 1).
      layer_weights: weights ``w_i`` of the ``L - 1`` prior layers: a sequence,
        or ``"uniform"`` (default, 1), ``"log"`` (``1/(1+ln(1+i))``, ESE) or
        ``"linear"`` (``1/(1+i)``, 2DMSE).
      last_layer_weight, prior_layers_weight: as sentence-transformers (1, 1).
      kl_weight: weight of the KL self-distillation term (1; 0 disables it).
      kl_temperature: ``T`` (sentence-transformers' code default 0.3; ``<= 0``
        disables the KL term as there).
      normalize: re-normalise truncations (see :func:`matryoshka`).

    Returns:
      ``fn(*stacks, **kwargs)`` where each positional argument is a stack
      [L, B, D] of pooled per-layer embeddings (e.g. of HF ``hidden_states``,
      embedding output first); the last entry is the final layer:

      .. math::
         \mathcal{L} = \lambda_{last} M(e_{L-1}) + \sum_{i=0}^{L-2}
            \Big[\frac{\lambda_{prior} w_i}{L-1} M(e_i)
            + \kappa T\, \mathrm{KL}\big(\mathrm{softmax}(\bar e_{L-1}/T) \,\|\,
              \mathrm{softmax}(\bar e_i/T)\big)\Big]

      with ``M`` the Matryoshka loss, ``ē_i`` all stacks' layer ``i`` rows
      concatenated (full dimension), softmax over channels, KL summed over
      channels and averaged over rows ("batchmean"), the last layer a
      stop-gradient teacher.

      Relation to the sampled variant: sentence-transformers' default
      ``Matryoshka2dLoss`` (``n_layers_per_step = n_dims_per_step = 1``) draws,
      per step, one prior layer ``l`` uniformly from the ``L - 1`` and, for each
      of its two Matryoshka calls (last layer, layer ``l``), one dim ``d``
      uniformly from the ``n_dims``; its loss is ``C + K`` with ``C`` the
      weighted contrastive terms and ``K = κ T KL_l``. Over those draws,
      exactly (the same weights, all ``L > 1``),

      .. math::
         \mathcal{L} = n_{dims} \, \mathbb{E}[C] + (L - 1) \, \mathbb{E}[K],

      so this loss is *not* a constant multiple of the sampled one, value or
      gradient: the contrastive part is ``n_dims`` times its expectation, the KL
      part ``L - 1`` times. ``matryoshka_2d(..., kl_weight=κ·n_dims/(L-1))`` divided
      by ``n_dims`` is the sampled loss's expectation. With ``L = 1`` it is
      ``n_dims · E[C]`` (no prior layer, no KL).

    Example:
      >>> from jaxembed.losses import info_nce
      >>> loss = matryoshka_2d(info_nce, (16, 8))
      >>> s = jax.random.normal(jax.random.key(0), (3, 4, 16))
      >>> loss(s, s + 0.1).shape
      ()

    References:
      Li et al. 2024, "2D Matryoshka Sentence Embeddings" / "ESE"
      (arXiv 2402.14776); sentence-transformers ``Matryoshka2dLoss``.
    """
    inner = matryoshka(loss_fn, dims, dim_weights, normalize=normalize)

    def matryoshka_2d_loss(*stacks, **kwargs):
        arrays = [s for s in stacks if s is not None]
        if not arrays:
            raise ValueError("matryoshka_2d loss needs at least one [L, B, D] stack")
        num_layers = arrays[0].shape[0]
        for s in arrays:
            if s.ndim != 3 or s.shape[0] != num_layers:
                raise ValueError(
                    "every stack must have shape [L, B, D] with the same L, "
                    f"got shapes {[tuple(a.shape) for a in arrays]}"
                )
        last = [None if s is None else s[-1] for s in stacks]
        loss = last_layer_weight * inner(*last, **kwargs)
        if num_layers == 1:
            return loss
        weights = _layer_weights(layer_weights, num_layers - 1)
        prior = [None if s is None else s[:-1] for s in stacks]
        in_axes = tuple(None if s is None else 0 for s in prior)
        per_layer = jax.vmap(lambda *xs: inner(*xs, **kwargs), in_axes=in_axes)(*prior)
        loss = loss + prior_layers_weight * jnp.sum(weights * per_layer) / (num_layers - 1)
        if kl_weight and isinstance(kl_temperature, (int, float)) and kl_temperature > 0:
            check_positive(kl_temperature, "kl_temperature")
            rows = jnp.concatenate([a.astype(jnp.float32) for a in arrays], axis=1)  # [L, N, D]
            teacher = jax.nn.log_softmax(jax.lax.stop_gradient(rows[-1]) / kl_temperature, axis=-1)
            student = jax.nn.log_softmax(rows[:-1] / kl_temperature, axis=-1)
            kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)  # [L-1, N]
            loss = loss + kl_weight * kl_temperature * jnp.sum(jnp.mean(kl, axis=-1))
        return loss

    return matryoshka_2d_loss
