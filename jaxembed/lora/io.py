"""Adapter-only files: ``lora_adapters.safetensors`` + ``lora_config.json``, tied to a base.

``save_adapters(dir, adapters, spec, base_params=...)`` writes

* ``lora_adapters.safetensors``: float32 tensors ``<kernel path>/lora_a`` and ``/lora_b``
  (e.g. ``layer_0/attention/query/kernel/lora_a``);
* ``lora_config.json``: ``format``/``version``, the :class:`LoraSpec`, per kernel its shape
  and layout, and the base model's identity -- the path and shape of *every* base leaf,
  and a fingerprint of the adapted kernels' values: SHA-256 over each adapted kernel's
  path, shape and 1024 evenly spaced entries rounded to bfloat16 (so a float32 and a
  bfloat16 copy of one checkpoint agree, while any other weights differ). Hashing a sample
  keeps saving cheap for billion-parameter bases.

``load_adapters(dir, base_params)`` refuses, with a ``ValueError`` that says what differs,
a base whose parameter paths or shapes differ, and (unless ``check_weights=False``) one
whose adapted kernels hold other values.

Example::

    save_adapters("run/adapters", adapters, spec, base_params=enc.params)
    adapters, spec = load_adapters("run/adapters", enc.params)
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxembed.lora.spec import LoraSpec, flat_leaves
from jaxembed.lora.transform import A_KEY, B_KEY, adapter_pairs, nest, split_dims

WEIGHTS_FILE = "lora_adapters.safetensors"
CONFIG_FILE = "lora_config.json"
FORMAT, VERSION = "jaxembed-lora", 1
SAMPLES = 1024
_SHOWN = 5


@jax.jit
def _gather(arrays: list, indices: list) -> list:
    return [w.reshape(-1)[i] for w, i in zip(arrays, indices)]


def base_fingerprint(params, paths) -> str:
    """SHA-256 (hex) of the kernels at ``paths``: path, shape and ``SAMPLES`` evenly spaced
    entries rounded to bfloat16 each (gathered on device for ``jax.Array`` leaves)."""
    leaves = flat_leaves(params)
    paths = sorted(paths)
    kernels = [leaves[p] for p in paths]
    indices = [np.unique(np.linspace(0, math.prod(w.shape) - 1, SAMPLES).round().astype(np.int64))
               for w in kernels]
    samples = [None if isinstance(w, jax.Array) else np.asarray(w).reshape(-1)[i]
               for w, i in zip(kernels, indices)]
    on_device = [k for k, sample in enumerate(samples) if sample is None]
    if on_device:
        got = _gather([kernels[k] for k in on_device], [indices[k] for k in on_device])
        for k, sample in zip(on_device, got):
            samples[k] = sample
    digest = hashlib.sha256()
    for path, w, sample in zip(paths, kernels, samples):
        digest.update(f"{path}{tuple(w.shape)}".encode())
        digest.update(np.asarray(sample, np.float32).astype(ml_dtypes.bfloat16).tobytes())
    return digest.hexdigest()


def _shapes(params) -> dict[str, list]:
    return {path: [int(d) for d in leaf.shape] for path, leaf in flat_leaves(params).items()}


def save_adapters(directory, adapters, spec: LoraSpec, *, base_params) -> pathlib.Path:
    """Write ``adapters`` (float32) and their config for ``base_params``; returns the folder."""
    pairs = adapter_pairs(adapters)
    base = _shapes(base_params)
    targets, tensors = {}, {}
    for path, (a, b) in pairs.items():
        if path not in base:
            raise ValueError(f"adapter {path} has no parameter at that path in base_params")
        s, i, o = split_dims(path, tuple(base[path]), a.shape, b.shape)
        targets[path] = {"shape": base[path], "layout": "s" * s + "i" * i + "o" * o}
        tensors[f"{path}/{A_KEY}"] = np.asarray(a, np.float32)
        tensors[f"{path}/{B_KEY}"] = np.asarray(b, np.float32)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "targets": targets,
        "base": {"fingerprint": base_fingerprint(base_params, pairs), "shapes": base},
    }
    from safetensors.numpy import save_file

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    with open(directory / CONFIG_FILE, "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    return directory


def _read_config(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path.parent}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"{path}: format {config.get('format')!r} version "
                         f"{config.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    return config


def _check_shapes(path: pathlib.Path, saved: dict, base: dict) -> None:
    if saved == base:
        return
    parts = []
    missing, extra = sorted(set(saved) - set(base)), sorted(set(base) - set(saved))
    if missing:
        parts.append(f"missing in this base: {missing[:_SHOWN]}")
    if extra:
        parts.append(f"not in the original base: {extra[:_SHOWN]}")
    changed = [f"{p} {saved[p]} -> {base[p]}" for p in sorted(set(saved) & set(base))
               if saved[p] != base[p]]
    if changed:
        parts.append(f"shapes differ: {changed[:_SHOWN]}")
    raise ValueError(f"{path}: these adapters belong to a different base model ("
                     + "; ".join(parts) + ")")


def load_adapters(directory, base_params, *, check_weights: bool = True, dtype=jnp.float32):
    """``(adapters, spec)`` read from ``directory`` for ``base_params`` (see module doc);
    ``check_weights=False`` skips the weight fingerprint (never the paths and shapes)."""
    from safetensors.numpy import load_file

    directory = pathlib.Path(directory)
    config_path = directory / CONFIG_FILE
    config = _read_config(config_path)
    spec = LoraSpec.from_dict(config["spec"])
    _check_shapes(config_path, config["base"]["shapes"], _shapes(base_params))
    if check_weights:
        got = base_fingerprint(base_params, config["targets"])
        if got != config["base"]["fingerprint"]:
            raise ValueError(
                f"{config_path}: these adapters were trained on other base weights "
                f"(fingerprint {config['base']['fingerprint'][:12]}..., this base "
                f"{got[:12]}...); pass check_weights=False to load them anyway")
    tensors = load_file(str(directory / WEIGHTS_FILE))
    expected = {f"{p}/{k}" for p in config["targets"] for k in (A_KEY, B_KEY)}
    if set(tensors) != expected:
        raise ValueError(f"{directory / WEIGHTS_FILE}: tensors {sorted(set(tensors))[:_SHOWN]} "
                         f"do not match the targets in {CONFIG_FILE}")
    flat = {}
    for path, info in config["targets"].items():
        a, b = tensors[f"{path}/{A_KEY}"], tensors[f"{path}/{B_KEY}"]
        s, i, o = split_dims(path, tuple(info["shape"]), a.shape, b.shape)
        if "s" * s + "i" * i + "o" * o != info["layout"]:
            raise ValueError(f"{directory / WEIGHTS_FILE}: {path} A {a.shape} B {b.shape} do "
                             f"not have layout {info['layout']!r}")
        flat[path] = {A_KEY: jnp.asarray(a, dtype), B_KEY: jnp.asarray(b, dtype)}
    return nest(flat), spec
