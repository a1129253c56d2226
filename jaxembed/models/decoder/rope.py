"""Rotary position embeddings (RoPE): one ``RopeConfig`` per Hugging Face ``rope_type``,
its inverse-frequency table, and its application to queries and keys.

For head dimension ``D`` and position ``p`` (an integer, from ``position_ids``) RoPE
rotates the pairs ``(x_j, x_{j + D/2})`` of every query and key head by the angle
``p * inv_freq_j`` (the "rotate half" layout of Hugging Face Llama)::

    angle = p * inv_freq                               # [D/2], float32
    cos, sin = a * cos(angle|angle), a * sin(angle|angle)   # [D]
    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half(x) = (-x2, x1)

``inv_freq_j = theta ** (-2j / D)`` ("default"), rescaled per ``rope_type``:

* ``linear``  ``inv_freq / factor`` (position interpolation).
* ``dynamic`` NTK scaling that only changes the table for inputs longer than
  ``max_position_embeddings``; below that it is "default" (the model refuses longer inputs).
* ``llama3``  wavelengths above ``original_max / low_freq_factor`` divided by ``factor``, below
  ``original_max / high_freq_factor`` kept, smoothly interpolated in between (Llama 3.1).
* ``yarn``    interpolation / extrapolation blended by a linear ramp over the dimensions, and
  ``a = 0.1 ln(factor) + 1`` (or the ``mscale`` ratio / explicit ``attention_factor``).

The angles, cos/sin and the rotation are computed in float32 (a float32 island) and the
result is cast back to the activation dtype.

Example::

    rope = RopeConfig(rope_type="llama3", theta=5e5, factor=8.0, low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_position_embeddings=8192)
    inv_freq, scale = inverse_frequencies(rope, head_dim=128, max_position_embeddings=131072)
    cos, sin = rope_tables(position_ids, inv_freq, scale)       # [B, T, 128] each
    q = apply_rope(q, cos, sin)                                  # q [B, T, N, 128]

References: Su et al. 2021 (RoFormer, arXiv 2104.09864); Chen et al. 2023 (position
interpolation, arXiv 2306.15595); Peng et al. 2023 (YaRN, arXiv 2309.00071);
``transformers/modeling_rope_utils.py`` (the exact formulas matched here).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

# RopeConfig field <-> key inside an HF rope_parameters / rope_scaling dict
_HF_KEYS = {
    "factor": "factor",
    "low_freq_factor": "low_freq_factor",
    "high_freq_factor": "high_freq_factor",
    "original_max_position_embeddings": "original_max_position_embeddings",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "attention_factor": "attention_factor",
    "mscale": "mscale",
    "mscale_all_dim": "mscale_all_dim",
}
_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
}
# the fields each rope_type reads (transformers ignores, with a warning, any other key)
_READS = dict(_REQUIRED, yarn=_REQUIRED["yarn"] + (
    "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"))


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """One RoPE variant (hashable, so it can sit in a linen module's config).

    ``theta`` is HF ``rope_theta``; the other fields are the keys of HF's
    ``rope_parameters`` (transformers v5) / ``rope_scaling`` (v4) dict that ``rope_type``
    reads; ``truncate`` is YaRN's rounding of the correction range (HF default True).
    """

    rope_type: str = "default"
    theta: float = 10000.0
    factor: Optional[float] = None
    low_freq_factor: Optional[float] = None
    high_freq_factor: Optional[float] = None
    original_max_position_embeddings: Optional[int] = None
    beta_fast: Optional[float] = None
    beta_slow: Optional[float] = None
    attention_factor: Optional[float] = None
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    truncate: bool = True

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")
        if not (isinstance(self.theta, (int, float)) and self.theta > 0):
            raise ValueError(f"rope_theta must be a positive number, got {self.theta!r}")
        missing = [k for k in _REQUIRED[self.rope_type] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"rope_type {self.rope_type!r} needs {missing} in rope_parameters")
        if self.factor is not None and not self.factor > 0:
            raise ValueError(f"rope factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3" and self.low_freq_factor == self.high_freq_factor:
            raise ValueError("llama3 rope needs low_freq_factor != high_freq_factor")

    @classmethod
    def from_hf(cls, params: dict[str, Any], *, theta: float,
                max_position_embeddings: int) -> "RopeConfig":
        """From one HF rope dict (``rope_type``, else legacy ``type``); ``theta`` is used when
        the dict has no ``rope_theta``, ``max_position_embeddings`` when llama3/yarn have no
        ``original_max_position_embeddings`` (as transformers). Keys the rope type does not
        read are ignored, as transformers does."""
        rope_type = params.get("rope_type") or params.get("type") or "default"
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {ROPE_TYPES}")
        partial = params.get("partial_rotary_factor")
        if partial not in (None, 1, 1.0):
            raise ValueError(f"partial_rotary_factor {partial} is not supported (only 1.0)")
        kwargs = {f: params[_HF_KEYS[f]] for f in _READS[rope_type] if _HF_KEYS[f] in params}
        if "original_max_position_embeddings" in _READS[rope_type]:
            kwargs.setdefault("original_max_position_embeddings", max_position_embeddings)
        if rope_type == "yarn":
            kwargs["truncate"] = bool(params.get("truncate", True))
        theta = params.get("rope_theta") or theta
        return cls(rope_type=rope_type, theta=float(theta), **kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The transformers-v5 ``rope_parameters`` dict (``rope_type``, ``rope_theta``, ...)."""
        d = {"rope_type": self.rope_type, "rope_theta": self.theta}
        d.update({k: getattr(self, f) for f, k in _HF_KEYS.items() if getattr(self, f) is not None})
        if self.rope_type == "yarn" and not self.truncate:
            d["truncate"] = False
        return d


def _yarn(rope: RopeConfig, base: np.ndarray, dim: int) -> tuple[np.ndarray, float]:
    factor = rope.factor
    original = rope.original_max_position_embeddings

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention = mscale(factor)

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast or 32), correction_dim(rope.beta_slow or 1)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as HF: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1.0 - ramp  # weight of the unscaled frequency per pair
    inv = (1.0 / (factor * base)) * (1.0 - extrapolation) + (1.0 / base) * extrapolation
    return inv, float(attention)


def _llama3(rope: RopeConfig, inv: np.ndarray) -> np.ndarray:
    old, lo, hi = rope.original_max_position_embeddings, rope.low_freq_factor, rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / rope.factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, smoothed, scaled)


def inverse_frequencies(
    rope: RopeConfig, *, head_dim: int, max_position_embeddings: int
) -> tuple[np.ndarray, float]:
    """``(inv_freq [head_dim // 2] float32, cos/sin scale)`` for ``rope`` (see module doc)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    base = rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    scale = 1.0
    if rope.rope_type == "yarn":
        inv, scale = _yarn(rope, base, head_dim)
    else:
        inv = 1.0 / base
        if rope.rope_type == "linear":
            inv = inv / rope.factor
        elif rope.rope_type == "llama3":
            inv = _llama3(rope, inv)
    del max_position_embeddings  # "dynamic" equals "default" within the trained length
    return np.asarray(inv, np.float32), scale


def rope_tables(position_ids: jax.Array, inv_freq: np.ndarray, scale: float = 1.0):
    """``position_ids`` [B, T] int -> ``(cos, sin)`` [B, T, D] float32, ``D = 2 len(inv_freq)``."""
    angle = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angle = jnp.concatenate([angle, angle], axis=-1)
    return jnp.cos(angle) * scale, jnp.sin(angle) * scale


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x`` [B, T, heads, D] rotated by ``cos, sin`` [B, T, D]; float32 inside, ``x.dtype`` out."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    y = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return y.astype(x.dtype)
