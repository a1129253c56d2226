r"""GradCache: contrastive losses over batches larger than the encoder's memory.

A contrastive loss couples every row of the batch, so the batch cannot simply
be split into micro-batches with gradient accumulation. GradCache (Gao et al.
2021) splits the *encoder* work instead:

1. embed every chunk without keeping activations (``lax.map``, no autodiff);
2. evaluate the loss on the full batch of embeddings and take its gradient
   ``G = ∂L/∂E`` with respect to the embeddings (cheap: [B, D]);
3. re-embed chunk by chunk and pull ``G`` back through the encoder with
   ``jax.vjp``, accumulating the parameter gradient (``lax.scan``).

Peak activation memory is that of one chunk; compute is one extra forward
pass. The result equals ``jax.value_and_grad`` of the full-batch loss (to
float32 round-off) provided ``embed_fn`` is deterministic given its RNG key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxembed.losses._checks import check_positive_int

__all__ = ["grad_cache", "chunk_keys"]


def chunk_keys(rng: jax.Array | None, input_index: int, num_chunks: int) -> jax.Array | None:
    """Dropout keys of GradCache: ``fold_in(fold_in(rng, input_index), j)`` for chunk ``j``.

    Returns a [num_chunks] key array (or ``None`` for ``rng=None``). Both passes
    use these same keys, so the re-embedding reproduces the first pass exactly.
    """
    if rng is None:
        return None
    base = jax.random.fold_in(rng, input_index)
    return jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.arange(num_chunks))


def _batch_size(tree, chunk: int, name: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} has no arrays to split into chunks")
    sizes = {leaf.shape[0] if getattr(leaf, "ndim", 0) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
        raise ValueError(
            f"every array of {name} needs the same leading batch axis, got shapes {shapes}"
        )
    (b,) = sizes
    if b % chunk:
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(
            f"{name} has batch size {b} (shapes {shapes}), not a multiple of chunk_size={chunk}"
        )
    return b


def _to_chunks(tree, chunk: int):
    """[B, ...] -> [n, chunk, ...]; chunk ``j`` = rows ``j, j + n, j + 2n, ...`` (n = B / chunk).

    Strided rather than contiguous: a batch sharded over devices in contiguous
    blocks puts ``chunk / n_devices`` rows of every chunk on every device, so
    the chunk loop needs no communication and keeps all devices busy.
    """

    def split(x):
        n = x.shape[0] // chunk
        return jnp.swapaxes(x.reshape((chunk, n) + x.shape[1:]), 0, 1)

    return jax.tree_util.tree_map(split, tree)


def _from_chunks(tree):
    """Inverse of :func:`_to_chunks`: [n, chunk, ...] -> [B, ...]."""

    def merge(x):
        n, chunk = x.shape[:2]
        return jnp.swapaxes(x, 0, 1).reshape((n * chunk,) + x.shape[2:])

    return jax.tree_util.tree_map(merge, tree)


def grad_cache(
    embed_fn: Callable,
    loss_fn: Callable,
    *,
    chunk_size: int,
    loss_takes_params: bool = False,
    has_aux: bool = False,
) -> Callable:
    r"""Build ``fn(params, *inputs, rng=None, **loss_kwargs) -> (loss, grads)`` using GradCache.

    Args:
      embed_fn: ``embed_fn(params, x_chunk)`` -> embeddings of one chunk, or
        ``embed_fn(params, x_chunk, rng)`` when ``fn`` is called with ``rng``
        (dropout). ``x_chunk`` is the input pytree (e.g. a tokenised batch dict)
        restricted to ``chunk_size`` rows; the output is a pytree of arrays with
        leading axis ``chunk_size`` (e.g. [c, D], or [c, L, D] per-layer stacks).
      loss_fn: ``loss_fn(*embeddings, **loss_kwargs) -> scalar`` over the full
        batch, one embedding pytree per input, in order; with
        ``loss_takes_params=True`` it is ``loss_fn(params, *embeddings, **kw)``
        and its direct parameter gradient (e.g. a projection head applied after
        whitening) is added. Any jaxembed loss fits: ``info_nce`` with or
        without hard negatives, ``whitened_cse`` (stack the views),
        ``matryoshka(...)``.
      chunk_size: rows per chunk; every input's batch must be a multiple of it.
        Chunk ``j`` holds rows ``j, j + n, j + 2n, ...`` (``n = B / chunk_size``),
        so on a batch-sharded mesh every chunk is spread over all devices
        (use a ``chunk_size`` divisible by the number of batch shards).
      loss_takes_params: see ``loss_fn``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; ``fn`` then returns
        ``((loss, aux), grads)`` as ``jax.value_and_grad(..., has_aux=True)``.

    Returns:
      ``fn(params, *inputs, rng=None, **loss_kwargs) -> (loss, grads)`` with
      ``grads`` a float32-accumulated pytree like ``params`` (cast back to each
      parameter's dtype). Input ``k``, chunk ``j`` gets the dropout key
      :func:`chunk_keys` ``(rng, k, n)[j]`` in both passes, so passing the same
      batch twice gives two different dropout views (SimCSE). ``loss_kwargs``
      (e.g. the whitening key of ``whitened_cse``) are passed to ``loss_fn`` and
      not differentiated. Pure and jit-able; under ``jit`` with batch-sharded
      inputs it equals the unsharded result. Inside ``shard_map`` give the
      loss ``axis_name=`` (cross-device negatives): each device chunks its
      local rows and the gradients of the replicated ``params`` come out
      summed over devices (JAX's transpose of the implicit broadcast); fold
      ``lax.axis_index`` into ``rng`` there if devices need distinct dropout.

    Example:
      >>> from jaxembed.losses import info_nce
      >>> embed = lambda p, x: jnp.tanh(x @ p)
      >>> fn = grad_cache(embed, lambda a, b: info_nce(a, b), chunk_size=4)
      >>> p = jnp.eye(8); x = jax.random.normal(jax.random.key(0), (16, 8))
      >>> loss, g = fn(p, x, x + 0.1)
      >>> g.shape
      (8, 8)

    References:
      Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch
      Size under Memory Limited Setup" (RepL4NLP, arXiv 2101.06983).
    """
    chunk = check_positive_int(chunk_size, "chunk_size")

    def embed(params, x, key):
        return embed_fn(params, x) if key is None else embed_fn(params, x, key)

    def value_and_grad(params, *inputs, rng=None, **loss_kwargs):
        if not inputs:
            raise ValueError("grad_cache: pass at least one input batch after params")
        chunked, keys = [], []
        for k, x in enumerate(inputs):
            b = _batch_size(x, chunk, f"input {k}")
            chunked.append(_to_chunks(x, chunk))
            keys.append(chunk_keys(rng, k, b // chunk))

        # Pass 1: embeddings only, no autodiff, so no activations are kept.
        embeddings = [
            _from_chunks(jax.lax.map(lambda xk: embed(params, xk[0], xk[1]), (xs, ks)))
            for xs, ks in zip(chunked, keys)
        ]
        embeddings = jax.lax.stop_gradient(embeddings)

        # Full-batch loss and its gradient w.r.t. the embeddings (and the loss's own params).
        num = len(inputs)
        if loss_takes_params:
            full = lambda p, *e: loss_fn(p, *e, **loss_kwargs)  # noqa: E731
            out, (direct, *emb_grads) = jax.value_and_grad(
                full, argnums=tuple(range(num + 1)), has_aux=has_aux
            )(params, *embeddings)
        else:
            full = lambda *e: loss_fn(*e, **loss_kwargs)  # noqa: E731
            out, emb_grads = jax.value_and_grad(full, argnums=tuple(range(num)), has_aux=has_aux)(
                *embeddings
            )
            direct = jax.tree_util.tree_map(jnp.zeros_like, params)
        acc = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), direct)

        # Pass 2: re-embed chunk by chunk and pull the embedding gradients back to the parameters.
        def backprop(acc, item):
            xk, key, g = item
            _, vjp = jax.vjp(lambda p: embed(p, xk, key), params)
            (gp,) = vjp(g)
            return jax.tree_util.tree_map(lambda a, b: a + b.astype(jnp.float32), acc, gp), None

        for xs, ks, g in zip(chunked, keys, emb_grads):
            acc, _ = jax.lax.scan(backprop, acc, (xs, ks, _to_chunks(g, chunk)))
        grads = jax.tree_util.tree_map(lambda a, p: a.astype(jnp.result_type(p)), acc, params)
        return out, grads

    return value_and_grad
