r"""Which parameters get LoRA adapters, and how each multi-axis kernel becomes a matrix.

A :class:`LoraSpec` names the adapted kernels with one regular expression, matched
(``re.fullmatch``) against each parameter's path joined with ``/``, e.g.
``layer_0/attention/query/kernel`` (BERT) or ``layer_3/attn/q_proj/kernel`` (decoder).

**Layouts.** A kernel ``W`` may have several axes, e.g. BERT's query ``[H, N, D]`` or
output ``[N, D, H]``, or a leading stacked-layer axis under ``nn.scan``
(``[L, H, N, D]``). Its *layout* is a string with one letter per axis:

* ``s`` -- a stacked axis (leading only): every slice gets its own adapter;
* ``i`` -- an input axis (contracted with the activations), ``o`` -- an output axis.

The layout must read ``s* i+ o+``. With ``I = prod(input dims)`` and ``O = prod(output
dims)`` the kernel is the matrix ``W2 = reshape(W, [S..., I, O])``, and the adapter is
``A`` with shape ``[S..., in dims..., r]`` and ``B`` with ``[S..., r, out dims...]``, so
``reshape(A, [I, r]) @ reshape(B, [r, O])`` is the low-rank update of ``W2`` (the arrays
keep the kernel's own axes, so each adapter axis keeps a logical name and no sharded axis
is ever merged by a reshape). The layout of a kernel is, in order of precedence:

1. the first ``spec.layouts`` entry ``(regex, layout)`` whose regex matches its path;
2. inferred from its logical axis names (``axes=``): leading :data:`STACK_AXES` are
   ``s``; of the rest, every maximal run of :data:`HEAD_AXES` is one group and every other
   axis a group of its own; exactly two groups must remain, the first is the input and
   the second the output. So ``(embed, heads, kv)`` -> ``ioo``, ``(heads, kv, embed)`` ->
   ``iio``, ``(embed, mlp)`` -> ``io``, ``(layers, embed, kv_heads, kv)`` -> ``sioo``;
3. ``io`` for a 2-D kernel without names (``nn.Dense``'s ``[in, out]``).

Anything else is an error that names the kernel and asks for a layout.

Example::

    spec = LoraSpec(target=r"layer_\d+/attention/(query|value)/kernel", rank=8, alpha=16)
    found = find_targets(enc.params, spec, axes=enc.param_axes())
    found["layer_0/attention/query/kernel"].layout            # 'ioo'

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"
(arXiv 2106.09685), section 4.1.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

#: Logical names of leading axes that stack independent layers (``nn.scan``).
STACK_AXES = ("layers",)
#: Logical names of the axes that split one feature dimension into heads x head_dim.
HEAD_AXES = ("heads", "kv_heads", "kv")
#: Logical name of the adapters' rank axis (``A`` [..., r], ``B`` [..., r, ...]).
RANK_AXIS = "lora_rank"
INITS = ("kaiming_uniform", "gaussian")
_LAYOUT = re.compile(r"s*i+o+")
_SHOWN_PATHS = 8


def _compile(pattern: str, field: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"LoraSpec.{field} must be a non-empty regex string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"LoraSpec.{field} {pattern!r} is not a valid regex: {e}") from e


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how (hashable: usable as a ``jit`` static argument).

    Fields:
      target: regex, ``re.fullmatch``-ed against ``/``-joined parameter paths.
      rank: ``r``, the inner dimension of ``A @ B``; ``1 <= r <= min(I, O)`` per kernel.
      alpha: the update is ``(alpha / r) A @ B`` (``scale``).
      dropout: rate of the adapter-input dropout in :func:`jaxembed.lora.apply` (see there).
      init: ``"kaiming_uniform"`` (``A ~ U(-1/sqrt(I), 1/sqrt(I))``, PEFT's default:
        ``kaiming_uniform_(a=sqrt(5))``) or ``"gaussian"`` (``A ~ N(0, 1/r^2)``); ``B = 0``.
      layouts: ``(regex, layout)`` pairs overriding the inferred layout of the kernels
        whose path the regex fully matches (a mapping is accepted and sorted).
    """

    target: str
    rank: int
    alpha: float
    dropout: float = 0.0
    init: str = "kaiming_uniform"
    layouts: tuple = ()

    def __post_init__(self):
        _compile(self.target, "target")
        if not (isinstance(self.rank, (int, np.integer)) and not isinstance(self.rank, bool)
                and self.rank >= 1):
            raise ValueError(f"LoraSpec.rank must be a positive integer, got {self.rank!r}")
        object.__setattr__(self, "rank", int(self.rank))
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                and self.alpha > 0):
            raise ValueError(f"LoraSpec.alpha must be a positive number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        if self.init not in INITS:
            raise ValueError(f"LoraSpec.init must be one of {INITS}, got {self.init!r}")
        pairs = self.layouts.items() if isinstance(self.layouts, Mapping) else self.layouts
        pairs = tuple((str(p), str(lay)) for p, lay in pairs)
        if isinstance(self.layouts, Mapping):
            pairs = tuple(sorted(pairs))
        for pattern, layout in pairs:
            _compile(pattern, "layouts")
            if not _LAYOUT.fullmatch(layout):
                raise ValueError(f"LoraSpec.layouts[{pattern!r}] = {layout!r} must read "
                                 "s*i+o+ (stacked, input, output axes)")
        object.__setattr__(self, "layouts", pairs)

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layouts"] = [list(p) for p in self.layouts]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LoraSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown LoraSpec fields {sorted(unknown)}; known: {sorted(fields)}")
        missing = {"target", "rank", "alpha"} - set(d)
        if missing:
            raise ValueError(f"LoraSpec needs fields {sorted(missing)}; got {sorted(d)}")
        d = dict(d)
        d["layouts"] = tuple(tuple(p) for p in d.get("layouts", ()))
        return cls(**d)


class Target(NamedTuple):
    """One adapted kernel: its path, shape, layout and logical names (or None)."""

    path: str
    shape: tuple
    layout: str
    names: Optional[tuple]

    def dims(self, letter: str) -> tuple:
        return tuple(d for d, c in zip(self.shape, self.layout) if c == letter)

    @property
    def a_shape(self) -> tuple:
        """``[S..., in dims..., r]`` without ``r``."""
        return self.dims("s") + self.dims("i")

    @property
    def fan_in(self) -> int:
        return math.prod(self.dims("i"))

    @property
    def fan_out(self) -> int:
        return math.prod(self.dims("o"))


def path_str(path) -> str:
    """A ``jax.tree_util`` key path as ``a/b/kernel``."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flat_leaves(tree, *, is_leaf=None) -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` for every leaf of ``tree``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {path_str(p): leaf for p, leaf in flat}


def _axis_names(axes) -> dict[str, Optional[tuple]]:
    if axes is None:
        return {}
    from jax.sharding import PartitionSpec

    is_names = lambda x: x is None or isinstance(x, (tuple, PartitionSpec))  # noqa: E731
    out = {}
    for key, names in flat_leaves(axes, is_leaf=is_names).items():
        if names is not None and any(n is not None for n in names):
            out[key] = tuple(names)
    return out


def layout_from_names(names: tuple) -> Optional[str]:
    """The layout that logical axis ``names`` imply (module docstring rule 2), or None."""
    stacked = 0
    while stacked < len(names) and names[stacked] in STACK_AXES:
        stacked += 1
    groups: list[int] = []  # sizes of the axis groups after the stacked axes
    for i, name in enumerate(names[stacked:]):
        prev = names[stacked + i - 1] if i else None
        if i and name in HEAD_AXES and prev in HEAD_AXES:
            groups[-1] += 1
        else:
            groups.append(1)
    if len(groups) != 2:
        return None
    return "s" * stacked + "i" * groups[0] + "o" * groups[1]


def _layout(path: str, shape: tuple, names: Optional[tuple], spec: LoraSpec) -> str:
    for pattern, layout in spec.layouts:
        if re.fullmatch(pattern, path):
            if len(layout) != len(shape):
                raise ValueError(f"layout {layout!r} (from {pattern!r}) has {len(layout)} axes; "
                                 f"{path} has shape {shape}")
            return layout
    if names is not None:
        if len(names) != len(shape):
            raise ValueError(f"{path}: logical names {names} do not fit shape {shape}")
        layout = layout_from_names(names)
        if layout is None:
            raise ValueError(f"{path}: cannot split logical axes {names} into input and output "
                             "groups; give LoraSpec(layouts={regex: 'ioo', ...})")
        return layout
    if len(shape) == 2:
        return "io"
    raise ValueError(f"{path} has shape {shape} and no logical axis names: pass axes= (e.g. "
                     "Encoder.param_axes() or jaxembed.lora.module_axes(...)) or give "
                     "LoraSpec(layouts={regex: layout}) with a layout like 'ioo'")


def find_targets(params, spec: LoraSpec, *, axes=None) -> dict[str, Target]:
    """The kernels of ``params`` that ``spec.target`` selects, by path (sorted).

    ``params`` may hold arrays or ``jax.ShapeDtypeStruct``s; ``axes`` is an optional tree
    like ``params`` of logical-name tuples / ``PartitionSpec``s (``None`` leaves allowed).
    Raises ``ValueError`` when nothing matches (naming the first few matrix paths), when a
    matched leaf is not a floating matrix, when a ``layouts`` regex selects no target,
    or when ``rank > min(I, O)`` for a kernel.
    """
    leaves = flat_leaves(params)
    names = _axis_names(axes)
    pattern = re.compile(spec.target)
    found: dict[str, Target] = {}
    for path in sorted(leaves):
        if not pattern.fullmatch(path):
            continue
        leaf = leaves[path]
        shape = tuple(int(d) for d in leaf.shape)
        if len(shape) < 2 or not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"LoRA target {spec.target!r} matches {path} ({shape} "
                             f"{np.dtype(leaf.dtype).name}), which is not a floating matrix")
        target = Target(path, shape, _layout(path, shape, names.get(path), spec), names.get(path))
        if spec.rank > min(target.fan_in, target.fan_out):
            raise ValueError(f"LoRA rank {spec.rank} exceeds min(in, out) = "
                             f"min({target.fan_in}, {target.fan_out}) of {path} "
                             f"(shape {shape}, layout {target.layout!r})")
        found[path] = target
    if not found:
        matrices = [p for p in sorted(leaves) if len(leaves[p].shape) >= 2]
        shown = ", ".join(matrices[:_SHOWN_PATHS])
        more = f", ... ({len(matrices)} in all)" if len(matrices) > _SHOWN_PATHS else ""
        raise ValueError(f"LoRA target {spec.target!r} matches no parameter path; "
                         f"matrix paths are: {shown}{more}")
    for regex, _ in spec.layouts:
        if not any(re.fullmatch(regex, p) for p in found):
            raise ValueError(f"LoraSpec.layouts regex {regex!r} matches none of the targets "
                             f"{sorted(found)[:_SHOWN_PATHS]}")
    return found


def module_axes(module, *example_args, **example_kwargs):
    """Logical axis names of a Flax linen ``module``'s params (a tree of ``PartitionSpec``s),
    from an abstract ``init`` on example inputs (no FLOPs, no memory)::

        axes = module_axes(Decoder(cfg, scan_layers=True), ids, mask)
    """
    import flax.linen as nn

    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), *example_args, **example_kwargs))
    return nn.get_partition_spec(abstract)["params"]
