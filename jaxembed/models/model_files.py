"""The files of a model folder, read as untrusted input.

A model folder names other files: ``model.safetensors.index.json`` maps tensors
to shard files, ``modules.json`` names sentence-transformers sub-module folders.
Every such name goes through :func:`safe_join`, which refuses absolute paths,
``..`` components and anything -- symlinks included -- that resolves outside the
folder, so a downloaded folder cannot make the loader read ``/etc/...`` or
another user's files. The one exception is the Hugging Face hub cache, whose
snapshot folders are symlinks into the same repository's ``blobs/`` folder.

Tensors come from safetensors (``bfloat16`` included, as ``ml_dtypes.bfloat16``
NumPy arrays, no torch needed) or, only when no safetensors file exists, from
``pytorch_model.bin`` through ``torch.load(weights_only=True)``, which never
unpickles arbitrary objects.

Example::

    state = read_state_dict(folder)             # {hf_key: np.ndarray}
    shard = safe_join(folder, "model-00001-of-00002.safetensors", source=index_file)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import numpy as np


def _allowed_roots(root: pathlib.Path) -> list[pathlib.Path]:
    """``root`` resolved, plus the repository's ``blobs/`` folder for a hub snapshot
    (``.../models--org--name/snapshots/<revision>``, whose files link there)."""
    real = root.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return roots


def safe_join(
    folder: str | pathlib.Path,
    name: Any,
    *,
    source: str | pathlib.Path,
    root: Optional[str | pathlib.Path] = None,
) -> pathlib.Path:
    """``folder / name`` for an untrusted ``name`` that must stay inside ``root``.

    ``root`` (default ``folder``) is the model folder; ``source`` is the file that
    named ``name``, quoted in the ``ValueError`` raised for a non-string, an absolute
    path, a ``..`` component, or a path (or symlink) that resolves outside ``root``.
    """
    folder = pathlib.Path(folder)
    root = folder if root is None else pathlib.Path(root)
    if not isinstance(name, str):
        raise ValueError(f"{source}: path {name!r} must be a string")
    relative = pathlib.PurePath(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"{source}: path {name!r} must be relative to the model folder {root} "
            "without '..' components"
        )
    path = folder / name
    target = path.resolve()
    if not any(target.is_relative_to(r) for r in _allowed_roots(root)):
        raise ValueError(
            f"{source}: {name!r} resolves to {target}, outside the model folder {root} "
            "(a symlink out of the folder?)"
        )
    return path


def check_links(folder: str | pathlib.Path) -> None:
    """Refuse a folder whose top-level entries (tokenizer files, config.json, weights)
    are symlinks that resolve outside it."""
    folder = pathlib.Path(folder)
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            safe_join(folder, entry.name, source=folder)


def read_json(path: str | pathlib.Path, *, kind: type = dict) -> Any:
    """Parse a JSON file whose top level must be ``kind``; ``ValueError`` names the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, kind):
        raise ValueError(
            f"{path}: expected a JSON {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401  (registers "bfloat16" with NumPy for safetensors' reader)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:  # truncated file, bad header, unknown dtype, ...
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def _weight_map(index: pathlib.Path) -> dict[str, str]:
    weight_map = read_json(index).get("weight_map")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(v, str) for v in weight_map.values())
    ):
        raise ValueError(f"{index}: 'weight_map' must be a non-empty object of tensor -> file")
    return weight_map


def read_state_dict(
    folder: str | pathlib.Path, *, root: Optional[str | pathlib.Path] = None
) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder (``{name: array}`` in the stored dtype).

    Order: ``model.safetensors``; ``model.safetensors.index.json`` (sharded);
    ``pytorch_model.bin`` / ``pytorch_model.bin.index.json`` (float32). Every file
    must resolve inside ``root`` (default ``folder``; the model folder when ``folder``
    is a sentence-transformers sub-module). A file that is not valid safetensors, or an
    index listing a tensor its shard lacks, is a ``ValueError`` naming the file.
    """
    folder = pathlib.Path(folder)
    root = folder if root is None else pathlib.Path(root)
    for name, reader in (
        ("model.safetensors", _read_safetensors),
        ("pytorch_model.bin", _read_torch_bin),
    ):
        single = folder / name
        if single.is_file():
            return reader(safe_join(folder, name, source=folder, root=root))
        index = folder / f"{name}.index.json"
        if index.is_file():
            index = safe_join(folder, index.name, source=folder, root=root)
            weight_map = _weight_map(index)
            state = {}
            for shard in sorted(set(weight_map.values())):
                state.update(reader(safe_join(folder, shard, source=index, root=root)))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise ValueError(f"{index}: tensors listed but absent from their shards: {missing}")
            return state
    raise FileNotFoundError(f"no model.safetensors(.index.json) or pytorch_model.bin in {folder}")


def write_safetensors(state: dict[str, np.ndarray], path: str | pathlib.Path) -> None:
    """Write a state dict with the ``{"format": "pt"}`` metadata transformers expects."""
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata={"format": "pt"}
    )
