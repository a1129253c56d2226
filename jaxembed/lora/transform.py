r"""LoRA as a pure transform of a parameter tree: ``init``, ``apply``, ``merge``, axis names.

For every adapted kernel ``W`` (see :mod:`jaxembed.lora.spec` for the selection and the
layout ``s* i+ o+`` of multi-axis kernels), with ``r = spec.rank``::

    W' = W + (alpha / r) * A @ B        A: [S..., in..., r],  B: [S..., r, out...]

The product contracts only the rank axis (an ``einsum``) and is added to ``W`` in float32
(float64 if ``W``, ``A`` or ``B`` is float64); ``W'`` is cast back to ``W``'s dtype. Adapters are a nested dict mirroring ``params`` that holds
only ``{"lora_a": A, "lora_b": B}`` at each adapted kernel's path, so

* ``model.apply({"params": apply(frozen, adapters, spec)}, ...)`` is the adapted forward
  of any model, and ``jax.grad`` with respect to ``adapters`` gives adapter gradients only;
* ``optax`` state built with ``tx.init(adapters)`` holds adapter-sized leaves only;
* at :func:`init` ``B = 0``, so ``apply`` returns ``W`` bit for bit (the adapted model
  *is* the base model, Hu et al. 2021 section 4.1).

Dropout (``spec.dropout = p > 0`` and a ``dropout_rng``): the adapter input is dropped as
one mask over the *input features* of each kernel, ``A <- diag(m) A / (1 - p)``, ``m_k ~
Bernoulli(1 - p)``, drawn from ``fold_in(dropout_rng, index of the kernel)`` (stacked
layers draw independent masks). A parameter transform cannot see tokens, so the mask is
shared by all tokens of a step -- DropConnect on the rows of ``A`` -- unlike PEFT's
``lora_dropout``, which draws one mask per token. Without a key no dropout is applied.

Precision: ``W'`` is rounded to ``W``'s dtype, so with a bfloat16 base (or bfloat16
compute, which casts kernels to bfloat16) the part of the update smaller than half a
bfloat16 ulp of ``W`` (about ``|W| / 512``) does not reach the forward pass; the gradient
still does. Use a float32 base and float32 compute where small updates must count.

Example::

    spec = LoraSpec(target=r"layer_\d+/attention/(query|value)/kernel", rank=8, alpha=16)
    adapters = init(enc.params, spec, jax.random.key(0), axes=enc.param_axes())
    loss = lambda a, batch: objective(enc.embed(apply(enc.params, a, spec), batch))
    grads = jax.grad(loss)(adapters, batch)               # same tree as adapters
    enc.save_pretrained("out/", params=merge(enc.params, adapters, spec))

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv
2106.09685); He et al. 2015 (Kaiming init); PEFT's ``LoraLayer.reset_lora_parameters``.
"""

from __future__ import annotations

import functools
import math
import string
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxembed.lora.spec import (
    RANK_AXIS,
    LoraSpec,
    find_targets,
    flat_leaves,
    path_str,
)

A_KEY, B_KEY = "lora_a", "lora_b"


def nest(flat: dict[str, dict]) -> dict:
    """``{"a/b/kernel": leaf}`` -> ``{"a": {"b": {"kernel": leaf}}}``."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return out


def adapter_pairs(adapters) -> dict[str, tuple]:
    """``{kernel path: (A, B)}`` from an adapter tree; checks every leaf is an A or a B."""
    grouped: dict[str, dict] = {}
    for path, leaf in flat_leaves(adapters).items():
        kernel, _, name = path.rpartition("/")
        if name not in (A_KEY, B_KEY):
            raise ValueError(f"adapter tree leaf {path} is neither {A_KEY} nor {B_KEY}")
        grouped.setdefault(kernel, {})[name] = leaf
    for kernel, ab in grouped.items():
        if set(ab) != {A_KEY, B_KEY}:
            raise ValueError(f"adapter {kernel} has {sorted(ab)}, needs {A_KEY} and {B_KEY}")
    return {k: (ab[A_KEY], ab[B_KEY]) for k, ab in sorted(grouped.items())}


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_arrays(key: jax.Array, shapes: tuple, rank: int, how: str, dtype) -> list:
    """``[(A, B)]`` for ``shapes = ((a_shape, b_shape, fan_in), ...)``. All ``A`` entries come
    from one draw, cut in order: one small RNG program instead of one per kernel (each is
    unrolled and compiled separately; hundreds for a large model)."""
    sizes = [math.prod(a_shape) for a_shape, _, _ in shapes]
    if how == "kaiming_uniform":
        draw = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    else:
        draw = jax.random.normal(key, (sum(sizes),), jnp.float32)
    out, start = [], 0
    for size, (a_shape, b_shape, fan_in) in zip(sizes, shapes):
        scale = 1.0 / math.sqrt(fan_in) if how == "kaiming_uniform" else 1.0 / rank
        a = draw[start:start + size].reshape(a_shape) * scale
        out.append((a.astype(dtype), jnp.zeros(b_shape, dtype)))
        start += size
    return out


def init(params, spec: LoraSpec, key: jax.Array, *, axes=None, dtype=jnp.float32) -> dict:
    """Adapters for the kernels ``spec`` selects: ``A`` random (``spec.init``), ``B = 0``.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct``s (only shapes are read); ``axes``
    gives logical names for layout inference (:func:`jaxembed.lora.find_targets`); ``A``
    and ``B`` are ``dtype``. The ``A``s are consecutive slices, in sorted path order, of
    one draw from ``key`` (``U(-1, 1)`` scaled by ``1/sqrt(I)``, or ``N(0, 1)`` by ``1/r``).
    """
    targets = find_targets(params, spec, axes=axes).values()
    r = spec.rank
    shapes = tuple((t.a_shape + (r,), t.dims("s") + (r,) + t.dims("o"), t.fan_in) for t in targets)
    arrays = _init_arrays(key, shapes, r, spec.init, jnp.dtype(dtype))
    return nest({t.path: {A_KEY: a, B_KEY: b} for t, (a, b) in zip(targets, arrays)})


def adapter_axes(params, spec: LoraSpec, *, axes=None) -> dict:
    """Logical names of the adapters' axes, a tree like :func:`init`'s of ``PartitionSpec``s:
    ``A`` gets the kernel's stacked and input names then :data:`RANK_AXIS`, ``B`` the stacked
    names, :data:`RANK_AXIS`, then the output names (``None`` where the kernel has none), so
    a rules table that shards ``embed`` shards ``A`` of a query and ``B`` of an output
    projection the way it shards their kernels."""
    flat = {}
    for t in find_targets(params, spec, axes=axes).values():
        names = t.names or (None,) * len(t.shape)
        pick = lambda letters: tuple(n for n, c in zip(names, t.layout) if c in letters)  # noqa
        flat[t.path] = {
            A_KEY: PartitionSpec(*pick("si"), RANK_AXIS),
            B_KEY: PartitionSpec(*pick("s"), RANK_AXIS, *pick("o")),
        }
    return nest(flat)


def split_dims(path: str, w_shape: tuple, a_shape: tuple, b_shape: tuple) -> tuple:
    """``(s, i, o)``, the numbers of stacked, input and output axes that adapter shapes
    ``A = [S..., in..., r]``, ``B = [S..., r, out...]`` imply for a kernel of ``w_shape``;
    ``ValueError`` naming ``path`` if they do not fit it."""
    s = len(a_shape) + len(b_shape) - 2 - len(w_shape)
    i, o = len(a_shape) - 1 - s, len(b_shape) - 1 - s
    if s < 0 or i < 1 or o < 1 or (
        tuple(a_shape[:-1]) + tuple(b_shape[s + 1:]) != tuple(w_shape)
        or tuple(b_shape[:s]) != tuple(w_shape[:s]) or a_shape[-1] != b_shape[s]
    ):
        raise ValueError(f"adapter {path}: A {tuple(a_shape)} and B {tuple(b_shape)} do not "
                         f"fit the kernel's shape {tuple(w_shape)}")
    return s, i, o


def _delta(path: str, w_shape: tuple, a: jax.Array, b: jax.Array, acc) -> jax.Array:
    """``A @ B`` over the rank axis accumulated in ``acc``, checked against ``W``'s shape."""
    letters = iter(string.ascii_letters)
    S, I, O, R = ("".join(next(letters) for _ in range(n))
                  for n in split_dims(path, w_shape, a.shape, b.shape) + (1,))
    return jnp.einsum(f"{S}{I}{R},{S}{R}{O}->{S}{I}{O}", a, b, preferred_element_type=acc)


def _drop_rows(a: jax.Array, key: jax.Array, rate: float, acc) -> jax.Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, a.shape[:-1])
    return jnp.where(keep[..., None], a.astype(acc) / (1.0 - rate), 0.0)


def apply(params, adapters, spec: LoraSpec, *, dropout_rng: Optional[jax.Array] = None):
    """``params`` with every adapted kernel replaced by ``W + (alpha / r) A @ B`` (in ``W``'s
    dtype, float32 accumulation); other leaves are returned as they are. Pure, ``jit``-able,
    differentiable in both arguments. With ``spec.dropout > 0`` and a ``dropout_rng``, ``A``
    sees adapter-input dropout (module docstring). Raises ``ValueError`` for an adapter
    whose path is not in ``params`` or whose shapes do not fit its kernel."""
    pairs = adapter_pairs(adapters)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = {path_str(p): leaf for p, leaf in flat}
    missing = [p for p in pairs if p not in leaves]
    if missing:
        raise ValueError(f"adapters for {missing[:8]} have no parameter at that path")
    drop = spec.dropout > 0 and dropout_rng is not None
    new = {}
    for index, (path, (a, b)) in enumerate(pairs.items()):
        w = leaves[path]
        acc = jnp.result_type(jnp.float32, w.dtype, a.dtype, b.dtype)  # float64 stays float64
        if drop:
            a = _drop_rows(a, jax.random.fold_in(dropout_rng, index), spec.dropout, acc)
        delta = _delta(path, tuple(w.shape), a, b, acc)
        new[path] = (w.astype(acc) + spec.scale * delta).astype(w.dtype)
    return jax.tree_util.tree_unflatten(treedef, [new.get(p, w) for p, w in leaves.items()])


_apply_jit = jax.jit(apply, static_argnums=2)


def merge(params, adapters, spec: LoraSpec):
    """The adapted parameters materialised on the host (NumPy, no dropout), ready for
    ``Encoder.save_pretrained(dir, params=...)`` or ``save_decoder(dir, config, ...)``."""
    return jax.device_get(_apply_jit(params, adapters, spec))
