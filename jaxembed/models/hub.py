"""Resolve a model reference to a local folder.

A path to an existing folder is used as is; anything else is taken as a Hugging
Face hub id and fetched with ``huggingface_hub.snapshot_download`` (config,
safetensors weights, tokenizer and sentence-transformers files only; honours
``HF_HUB_OFFLINE``).

Example::

    folder = resolve("sentence-transformers/all-MiniLM-L6-v2")
"""

from __future__ import annotations

import pathlib

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_*/*", "3_*/*"]


def resolve(path_or_id: str | pathlib.Path, *, revision: str | None = None) -> pathlib.Path:
    """Local folder for ``path_or_id`` (downloading a hub snapshot if needed)."""
    path = pathlib.Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; expected a model folder or a hub id")
    if str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") > 1:
        raise FileNotFoundError(f"model folder {path_or_id} does not exist")
    from huggingface_hub import snapshot_download

    return pathlib.Path(
        snapshot_download(str(path_or_id), revision=revision, allow_patterns=ALLOW_PATTERNS)
    )
