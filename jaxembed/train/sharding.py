"""One rules table from logical axes to the ``data``/``fsdp`` mesh, and placement helpers.

The encoder names the axes of its parameters and activations with logical
names (``batch``, ``seq``, ``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``);
:data:`LOGICAL_RULES` is the single place that maps them to mesh axes:

* ``batch`` -> ``("data", "fsdp")``: every device holds ``B / n_devices`` rows;
* ``embed`` -> ``fsdp``: every large matrix (embeddings ``[vocab, embed]``,
  attention ``[embed, heads, kv]``, MLP ``[embed, mlp]``) is split along its
  hidden dimension over ``fsdp`` (ZeRO-3 / FSDP); XLA all-gathers it per layer.
* everything else replicated.

Rules are applied in order and a mesh axis is used at most once per array
(flax semantics), so activations ``(batch, seq, embed)`` shard on batch only.
A dimension that the mesh axis size does not divide stays replicated.

Example::

    mesh = make_mesh(data=2, fsdp=4)
    shardings = param_shardings(params, mesh, hidden_size=32)
    params = place(params, shardings)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def make_mesh(*, data: int = -1, fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all); ``-1`` fills the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of data/fsdp may be -1")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} != {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), MESH_AXES)


def logical_to_mesh(logical: Sequence[str | None], rules=LOGICAL_RULES) -> P:
    """Map logical axis names to a ``PartitionSpec`` with ``rules`` (first match wins)."""
    result: list[Any] = [None] * len(logical)
    used: set[str] = set()
    for name, mesh_axes in rules:
        if name not in logical or mesh_axes is None:
            continue
        pos = logical.index(name)
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        if result[pos] is None and not used.intersection(axes):
            result[pos] = mesh_axes
            used.update(axes)
    return P(*result)


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drop mesh axes from dimensions they do not divide."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = math.prod(mesh.shape[a] for a in names)
        out.append(axes if dim % size == 0 else None)
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


def param_shardings(params, mesh: Mesh, *, logical=None, hidden_size: int | None = None):
    """A ``NamedSharding`` per leaf of ``params`` from its logical names.

    ``logical`` is a matching tree of logical-name tuples (or ``None`` leaves);
    leaves without names fall back to :func:`infer_logical_axes`.
    """
    leaves, treedef = jax.tree.flatten(params)
    if logical is None:
        names = [None] * len(leaves)
    else:
        names = treedef.flatten_up_to(logical)
    out = []
    for leaf, name in zip(leaves, names):
        shape = np.shape(leaf)
        if name is None:
            name = infer_logical_axes(shape, hidden_size=hidden_size)
        out.append(NamedSharding(mesh, _fit(logical_to_mesh(name), shape, mesh)))
    return jax.tree.unflatten(treedef, out)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ``data`` x ``fsdp``; the rest replicated."""
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
