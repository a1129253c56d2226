"""Distilled Sentence Embedding (DSE): pair features and the logit-matching loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxembed.losses._checks import as_float32, check_same_shape

__all__ = ["pair_features", "distill_mse"]


def pair_features(u: ArrayLike, v: ArrayLike) -> jax.Array:
    r"""InferSent/DSE pair features ``[u, v, u ⊙ v, |u − v|]``.

    Args:
      u: [..., D] embeddings of the first sentences (any float dtype).
      v: [..., D] embeddings of the second sentences.

    Returns:
      [..., 4D] float32, the input of the DSE pair head
      (``Dense(512) -> ReLU -> Dense(out)``).

    Example:
      >>> pair_features(jnp.array([[1.0, -2.0]]), jnp.array([[3.0, 1.0]])).tolist()
      [[1.0, -2.0, 3.0, 1.0, 3.0, -2.0, 2.0, 3.0]]

    References:
      Conneau et al. 2017 (InferSent, arXiv 1705.02364); Barkan et al. 2020,
      "Scalable Attentive Sentence-Pair Modeling via Distilled Sentence
      Embedding" (AAAI 2020, arXiv 1908.05161).
    """
    u = as_float32(u, "u")
    v = as_float32(v, "v")
    check_same_shape(u, "u", v, "v")
    if u.ndim < 1:
        raise ValueError(f"u and v must have shape [..., D], got shape {tuple(u.shape)}")
    return jnp.concatenate([u, v, u * v, jnp.abs(u - v)], axis=-1)


def distill_mse(student_scores: ArrayLike, teacher_scores: ArrayLike) -> jax.Array:
    r"""DSE distillation loss: batch mean of the summed squared logit error.

    Args:
      student_scores: [B] or [B, K] student logits (any float dtype).
      teacher_scores: same shape: the teacher's cached pre-softmax logits
        (binary tasks: ``logit_1 - logit_0``). Treated as constants
        (``stop_gradient``).

    Returns:
      scalar float32, :math:`\frac1B \sum_b \sum_k (\hat y_{bk} - t_{bk})^2`.
      DSE trains ``(1 - α) · task_loss + α · distill_mse`` with ``α = 0.5``.

    Example:
      >>> s, t = jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> float(distill_mse(s, t))
      3.5

    References:
      Barkan et al. 2020, DSE (arXiv 1908.05161), Sec. 3.
    """
    s = as_float32(student_scores, "student_scores")
    t = jax.lax.stop_gradient(as_float32(teacher_scores, "teacher_scores"))
    check_same_shape(s, "student_scores", t, "teacher_scores")
    if s.ndim not in (1, 2):
        raise ValueError(
            f"student_scores must have shape [B] or [B, K], got shape {tuple(s.shape)}"
        )
    err = (s - t).reshape(s.shape[0], -1)
    return jnp.mean(jnp.sum(err * err, axis=-1))
