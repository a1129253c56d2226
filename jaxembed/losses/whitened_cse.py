"""WhitenedCSE's objective: shuffled group whitening of every view, then InfoNCE."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import jax
from jax.typing import ArrayLike

from jaxembed.losses._checks import as_float32, check_ndim
from jaxembed.losses.contrastive import info_nce
from jaxembed.losses.whitening import shuffled_group_whitening

__all__ = ["whitened_cse"]


def whitened_cse(
    views: ArrayLike,
    key: jax.Array,
    *,
    num_groups: int,
    temperature: ArrayLike = 0.05,
    eps: float = 0.0,
    method: str = "eigh",
    projection: Callable[[jax.Array], jax.Array] | None = None,
    stop_gradient: bool = True,
    iterations: int = 5,
    axis_name: Hashable | tuple[Hashable, ...] | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""WhitenedCSE loss over ``P >= 2`` views (dropout passes) of each sentence.

    Args:
      views: [B, P, D] any float dtype: ``views[:, k]`` is view ``k`` of the
        batch (the raw [CLS] vectors in the official recipe).
      key: PRNG key, split into ``P`` keys: each view gets its own channel
        shuffle (Fig. 1 of the paper: one independent SGW per positive).
      num_groups: channel groups of the whitening (official: 128, i.e. 6 channels).
      temperature: InfoNCE ``tau`` (official 0.05), cosine similarity.
      eps, method, stop_gradient, iterations: as :func:`group_whitening`.
      projection: optional callable [B, D] -> [B, D'] applied to each whitened
        view before the loss (the trainer's Linear + tanh MLP:
        CLS -> SGW -> MLP -> InfoNCE, as the official code).
      axis_name: batch split over this ``shard_map`` axis: global-batch whitening
        statistics and global in-batch negatives.
      chunk_size: forwarded to :func:`info_nce`.

    Returns:
      scalar float32,
      :math:`\mathcal{L} = \sum_{k=2}^{P} \mathrm{InfoNCE}(g(w_1), g(w_k))` with
      :math:`w_k = \mathrm{SGW}_{key_k}(views[:, k])` and ``g`` the projection
      (identity if ``None``). Views 2..P are all positives for view 1; other
      rows are in-batch negatives (no hard negatives, as the official loss).

    Example:
      >>> v = jax.random.normal(jax.random.key(0), (16, 3, 12))
      >>> whitened_cse(v, jax.random.key(1), num_groups=2).shape
      ()

    References:
      Zhuo et al. 2023, "WhitenedCSE: Whitening-based Contrastive Learning of
      Sentence Embeddings" (ACL 2023, arXiv 2305.17746).
    """
    views = as_float32(views, "views")
    check_ndim(views, 3, "views", "[B, P, D]")
    num_views = views.shape[1]
    if num_views < 2:
        raise ValueError(
            f"views must have shape [B, P, D] with P >= 2 views, got shape {tuple(views.shape)}"
        )
    keys = jax.random.split(key, num_views)
    whiten = lambda x, k: shuffled_group_whitening(  # noqa: E731
        x,
        k,
        num_groups=num_groups,
        eps=eps,
        method=method,
        stop_gradient=stop_gradient,
        iterations=iterations,
        axis_name=axis_name,
    )
    whitened = jax.vmap(whiten, in_axes=(1, 0))(views, keys)  # [P, B, D]
    outs = [
        whitened[k] if projection is None else projection(whitened[k]) for k in range(num_views)
    ]
    return sum(
        info_nce(
            outs[0], outs[k], temperature=temperature, axis_name=axis_name, chunk_size=chunk_size
        )
        for k in range(1, num_views)
    )
