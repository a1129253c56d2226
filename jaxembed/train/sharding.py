"""The one rules table from logical axes to the ``data``/``fsdp`` mesh, and placement helpers.

The encoder names the axes of its parameters and activations with logical
names (``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``);
:data:`LOGICAL_RULES` is the single place that maps them to mesh axes:

* ``batch`` -> ``("data", "fsdp")``: every device holds ``B / n_devices`` rows;
* ``embed`` -> ``fsdp``: every large matrix (embeddings ``[vocab, embed]``,
  attention ``[embed, heads, kv]``, MLP ``[embed, mlp]``) is split along its
  hidden dimension over ``fsdp`` (ZeRO-3 / FSDP); XLA all-gathers it per layer.
* everything else replicated.

Rules are applied in order and a mesh axis is used at most once per array
(flax's :func:`flax.linen.logical_to_mesh_axes`), so activations
``(batch, seq, embed)`` shard on batch only. Two exceptions keep a parameter
(and its optimiser moments) replicated:

* it is smaller than ``min_shard_bytes`` (:data:`MIN_SHARD_BYTES`, 1 MiB; the
  idea of big_vision's ``min_size_to_shard_mb``): biases and LayerNorm
  vectors, whose all-gathers would cost more latency than they save memory;
* the mesh axis size does not divide the dimension (logged once per case).

Parameters get their shardings from :func:`param_shardings`; activations get
theirs from the model's ``nn.with_logical_constraint`` calls, which only act
while :func:`logical_axis_context` is active while the step is traced
(:func:`jaxembed.train.step.make_train_step` does this).

Example::

    mesh = make_mesh(data=2, fsdp=4)
    shardings = param_shardings(params, mesh, logical=logical)
    params = place(params, shardings)
    with logical_axis_context(mesh):          # inside the traced function
        out = enc.apply(params, ids, mask)    # activations constrained by LOGICAL_RULES
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger("jaxembed.train.sharding")

MESH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", None),
    ("seq", None),
    ("heads", None),
    ("kv", None),
    ("mlp", None),
)

# parameters below this many bytes stay replicated: every vector of a BERT
# (at most 4096 floats = 16 KiB) replicates, every BERT-base matrix
# (768 x 768 float32 = 2.25 MiB and up) is sharded
MIN_SHARD_BYTES = 1 << 20

_logged: set = set()


def make_mesh(*, data: int = -1, fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all); ``-1`` fills the rest.

    The device grid follows the physical interconnect where JAX knows it
    (``mesh_utils.create_device_mesh``; TPU slices); devices of several slices
    (``slice_index``) put the slices on the ``data`` axis (DCN), so ``fsdp``
    all-gathers stay inside a slice.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of data/fsdp may be -1")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} != {n} devices "
                         f"(mesh_data x mesh_fsdp must equal the device count)")
    return Mesh(_device_grid(devices, data, fsdp), MESH_AXES)


def _device_grid(devices: list, data: int, fsdp: int) -> np.ndarray:
    from jax.experimental import mesh_utils

    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        if data % slices:
            raise ValueError(f"{slices} slices need mesh data ({data}) to be a multiple of "
                             f"{slices}: fsdp stays inside a slice, data spans slices")
        return mesh_utils.create_hybrid_device_mesh((data // slices, fsdp), (slices, 1), devices,
                                                    allow_split_physical_axes=True)
    if devices[0].platform != "tpu":
        return np.asarray(devices).reshape(data, fsdp)
    try:
        return mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError) as e:  # a subset of a slice
        log.info("device mesh in enumeration order (%s)", e)
        return np.asarray(devices).reshape(data, fsdp)


@contextlib.contextmanager
def logical_axis_context(mesh: Mesh):
    """Make the model's ``nn.with_logical_constraint`` calls act: :data:`LOGICAL_RULES`
    plus ``mesh`` (as an abstract mesh, so this works inside ``jax.jit`` tracing)."""
    import flax.linen as nn

    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


def logical_to_mesh(logical: Sequence[str | None]) -> P:
    """Logical axis names -> ``PartitionSpec`` by :data:`LOGICAL_RULES` (flax semantics)."""
    import flax.linen as nn

    return nn.logical_to_mesh_axes(tuple(logical), LOGICAL_RULES)


def _log_once(key, msg: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        log.warning(msg, *args)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh, names: Sequence[str | None]) -> P:
    """Drop mesh axes from dimensions they do not divide (logged once per case)."""
    out = []
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        if axes is None:
            out.append(None)
            continue
        size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
        if dim % size:
            _log_once((names[i], dim, axes, size),
                      "logical axis %r of size %d is not divisible by mesh axes %s (%d devices): "
                      "that dimension stays replicated", names[i], dim, axes, size)
            out.append(None)
        else:
            out.append(axes)
    return P(*out)


def infer_logical_axes(shape: Sequence[int], *, hidden_size: int | None) -> tuple[str | None, ...]:
    """Fallback when a parameter carries no logical names: call the first
    dimension equal to ``hidden_size`` of a matrix ``embed``; vectors replicate."""
    names: list[str | None] = [None] * len(shape)
    if len(shape) >= 2 and hidden_size is not None and hidden_size in shape:
        names[list(shape).index(hidden_size)] = "embed"
    return tuple(names)


def _unbox(tree):
    """Strip flax ``Partitioned`` boxes, returning (values, logical names or None per leaf)."""
    import flax.linen as nn

    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    values = jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)
    names = jax.tree.map(lambda x: tuple(x.names) if is_box(x) else None, tree, is_leaf=is_box)
    return values, names


def _shape_dtype(leaf) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an array, ``ShapeDtypeStruct`` or Python scalar."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    a = np.asarray(leaf)
    return a.shape, a.dtype


def param_sharding(leaf, names: Sequence[str | None], mesh: Mesh, *,
                   min_shard_bytes: int = MIN_SHARD_BYTES) -> NamedSharding:
    """The ``NamedSharding`` of one parameter (array or ``ShapeDtypeStruct``) with
    logical axis ``names``: :data:`LOGICAL_RULES`, replicated below ``min_shard_bytes``."""
    shape, dtype = _shape_dtype(leaf)
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match a parameter of shape {shape}")
    if math.prod(shape) * dtype.itemsize < min_shard_bytes:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, _fit(logical_to_mesh(names), shape, mesh, names))


def param_shardings(params, mesh: Mesh, *, logical=None, hidden_size: int | None = None,
                    min_shard_bytes: int = MIN_SHARD_BYTES):
    """A ``NamedSharding`` per leaf of ``params`` (see :func:`param_sharding`).

    ``logical`` is a matching tree of logical-name tuples (or ``None`` leaves);
    leaves without names fall back to :func:`infer_logical_axes`.
    """
    leaves, treedef = jax.tree.flatten(params)
    names = [None] * len(leaves) if logical is None else treedef.flatten_up_to(logical)
    out = []
    for leaf, name in zip(leaves, names):
        if name is None:
            name = infer_logical_axes(_shape_dtype(leaf)[0], hidden_size=hidden_size)
        out.append(param_sharding(leaf, name, mesh, min_shard_bytes=min_shard_bytes))
    return jax.tree.unflatten(treedef, out)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension by the ``batch`` rule; the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh(("batch",)))


def place(tree, shardings):
    """Place host (or single-device) arrays as global arrays with ``shardings``.

    Works across processes: every process passes the same full values and
    contributes the shards its devices own.
    """
    def put(x, sharding):
        if isinstance(x, jax.Array) and x.is_fully_addressable is False:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's rows of a global batch -> global arrays sharded over the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def to_host(tree):
    """Gather a (possibly multi-process) sharded tree to full NumPy arrays on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)
