"""Read and write the sentence-transformers side of a model folder.

A sentence-transformers folder is an HF folder plus ``modules.json`` listing a
pipeline. We understand the pipelines jaxembed itself can express:

    Transformer -> Pooling(cls | mean | max | lasttoken) [-> Dense(H, H, tanh) after cls]
                [-> Normalize]

``Pooling(cls)`` in ST is the raw [CLS] token (ST's Transformer returns token
embeddings), i.e. our ``cls_before_pooler``; ``Pooling(cls) -> Dense(tanh)`` is
our ``cls`` with the HF pooler, the Dense weights being the pooler's;
``Pooling(lasttoken)`` is our ``last_token`` (decoder embedders such as
Qwen3-Embedding). The Pooling config is read in both spellings: the ``pooling_mode_*``
flags (every version; what we write) and sentence-transformers 6's ``pooling_mode``
string; its ``include_prompt`` says whether prompt tokens count in the pooling.
``config_sentence_transformers.json`` holds ``prompts`` (name -> prefix) and
``default_prompt_name``.

Example::

    settings = read_st_settings(folder)   # None for a plain HF folder
    settings.pooling, settings.normalize, settings.max_length, settings.prompts

Reference: sentence-transformers ``modules.json`` / ``1_Pooling/config.json`` /
``config_sentence_transformers.json`` format (v2-6).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional

import numpy as np

from jaxembed.models.model_files import read_json, read_state_dict, safe_join, write_safetensors
from jaxembed.models.prompts import check_prompts

_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls_before_pooler",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last_token",
}
_UNSUPPORTED_FLAGS = (
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
# sentence-transformers 6's ``pooling_mode`` names
_POOLING_MODES = {"cls": "cls_before_pooler", "mean": "mean", "max": "max",
                  "lasttoken": "last_token"}
ST_CONFIG = "config_sentence_transformers.json"


@dataclasses.dataclass
class STSettings:
    """What a sentence-transformers folder says about pooling, preprocessing and prompts.

    ``pooler``: ``(weight [H, H] torch layout, bias [H])`` of a ``Dense(tanh)``
    after cls pooling, else None.
    """

    pooling: str
    normalize: bool
    max_length: Optional[int]
    do_lower_case: bool
    pooler: Optional[tuple] = None
    include_prompt: bool = True
    prompts: dict = dataclasses.field(default_factory=dict)
    default_prompt_name: Optional[str] = None


def _modules(folder: pathlib.Path) -> list[tuple[str, pathlib.Path, dict]]:
    """``modules.json`` as ``[(kind, sub-folder, entry)]`` in ``idx`` order; each entry's
    ``path`` must stay inside ``folder``."""
    source = folder / "modules.json"
    entries = read_json(source, kind=list)
    out = []
    for i, m in enumerate(entries):
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            raise ValueError(f"{source}: entry {i} must be an object with a string 'type': {m!r}")
        idx = m.get("idx", 0)
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise ValueError(f"{source}: entry {i} has a non-integer 'idx' {idx!r}")
        sub = safe_join(folder, m.get("path", ""), source=source)
        out.append((idx, m["type"].rsplit(".", 1)[-1], sub, m))
    return [(kind, sub, m) for _, kind, sub, m in sorted(out, key=lambda t: t[0])]


def read_st_settings(folder: str | pathlib.Path) -> Optional[STSettings]:
    """Parse ``modules.json`` and friends; None when the folder has no ``modules.json``.

    Every path they name must stay inside ``folder``; malformed files raise a
    ``ValueError`` naming the file."""
    folder = pathlib.Path(folder)
    if not (folder / "modules.json").is_file():
        return None
    modules = _modules(folder)
    kinds = [kind for kind, _, _ in modules]
    if not kinds or kinds[0] != "Transformer" or modules[0][1].resolve() != folder.resolve():
        raise ValueError(
            f"{folder}/modules.json must start with a Transformer module stored at the "
            f"folder root, got {kinds}"
        )
    pooling, normalize, pooler, include_prompt = None, False, None, True
    for kind, sub, m in modules[1:]:
        if kind == "Pooling" and pooling is None:
            pooling, include_prompt = _read_pooling(sub, root=folder)
        elif (
            kind == "Dense" and pooling == "cls_before_pooler" and pooler is None and not normalize
        ):
            pooler = _read_dense_tanh(sub, root=folder)
            pooling = "cls"
        elif kind == "Normalize" and pooling is not None:
            normalize = True
        else:
            raise ValueError(
                f"unsupported sentence-transformers pipeline {kinds} in {folder} "
                f"(module {m['type']!r} at position {m.get('idx')})"
            )
    if pooling is None:
        raise ValueError(f"{folder}/modules.json has no Pooling module: {kinds}")
    max_length, lower = None, False
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        sb = read_json(safe_join(folder, sbert.name, source=folder))
        max_length = sb.get("max_seq_length")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"{sbert}: max_seq_length must be a positive int, got {max_length!r}")
        lower = sb.get("do_lower_case", False)
        if not isinstance(lower, bool):
            raise ValueError(f"{sbert}: do_lower_case must be a bool, got {lower!r}")
    prompts, default_prompt_name = {}, None
    if (folder / ST_CONFIG).is_file():
        source = safe_join(folder, ST_CONFIG, source=folder)
        st_config = read_json(source)
        prompts, default_prompt_name = check_prompts(
            st_config.get("prompts"), st_config.get("default_prompt_name"), source=str(source)
        )
    return STSettings(
        pooling=pooling,
        normalize=normalize,
        max_length=max_length,
        do_lower_case=lower,
        pooler=pooler,
        include_prompt=include_prompt,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
    )


def _read_pooling(sub: pathlib.Path, *, root: pathlib.Path) -> tuple[str, bool]:
    """``(pooling, include_prompt)`` of a Pooling module's config, in either spelling."""
    config_file = safe_join(sub, "config.json", source=sub, root=root)
    cfg = read_json(config_file)
    mode = cfg.get("pooling_mode")
    if mode is not None:  # sentence-transformers 6
        modes = [mode] if isinstance(mode, str) else mode
        chosen = [_POOLING_MODES.get(m) for m in modes] if isinstance(modes, list) else [None]
    else:
        bad = [k for k in _UNSUPPORTED_FLAGS if cfg.get(k)]
        chosen = [v for k, v in _POOLING_FLAGS.items() if cfg.get(k)] + [None] * len(bad)
    if len(chosen) != 1 or chosen[0] is None:
        raise ValueError(
            f"{config_file}: unsupported sentence-transformers pooling {cfg} (one of "
            f"{sorted(_POOLING_MODES)} is supported)"
        )
    include_prompt = cfg.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise ValueError(f"{config_file}: include_prompt must be a bool, got {include_prompt!r}")
    return chosen[0], include_prompt


def _read_dense_tanh(sub: pathlib.Path, *, root: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    config_file = safe_join(sub, "config.json", source=sub, root=root)
    cfg = read_json(config_file)
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if (
        not isinstance(act, str)
        or not act.endswith("Tanh")
        or cfg.get("in_features") != cfg.get("out_features")
        or not cfg.get("bias", True)
    ):
        raise ValueError(
            f"{config_file}: only a square Dense(tanh) with bias after cls pooling is "
            f"supported, got {cfg}"
        )
    state = read_state_dict(sub, root=root)
    if set(state) != {"linear.weight", "linear.bias"}:
        raise ValueError(
            f"{sub}: expected tensors linear.weight and linear.bias, got {sorted(state)}"
        )
    return state["linear.weight"], state["linear.bias"]


def write_st_files(
    folder: str | pathlib.Path,
    *,
    pooling: str,
    normalize: bool,
    max_length: int,
    hidden_size: int,
    pooler: Optional[tuple] = None,
    do_lower_case: bool = False,
    include_prompt: bool = True,
    prompts: Optional[dict] = None,
    default_prompt_name: Optional[str] = None,
) -> None:
    """Write ``modules.json``, ``1_Pooling``, optional ``2_Dense`` and ``Normalize`` folders,
    ``sentence_bert_config.json`` and ``config_sentence_transformers.json`` (prompts) so that
    ``SentenceTransformer(folder)`` computes what ``Encoder.embed`` computes. ``pooler``
    (torch-layout weight, bias) is required for ``cls``."""
    folder = pathlib.Path(folder)
    flag = {"cls": "cls_token", "cls_before_pooler": "cls_token", "mean": "mean_tokens",
            "max": "max_tokens", "last_token": "lasttoken"}.get(pooling)
    if flag is None:
        raise ValueError(f"pooling {pooling!r} has no sentence-transformers equivalent")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]

    def add(path, kind):
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": path,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
        (folder / path).mkdir(parents=True, exist_ok=True)
        return folder / path

    def dump(path, value):
        with open(path, "w") as f:
            json.dump(value, f, indent=2)

    flags = {k: False for k in (*_POOLING_FLAGS, *_UNSUPPORTED_FLAGS)}
    flags["pooling_mode_" + flag] = True
    sub = add("1_Pooling", "Pooling")
    dump(sub / "config.json",
         {"word_embedding_dimension": hidden_size, **flags, "include_prompt": include_prompt})
    if pooling == "cls" and pooler is not None:
        sub = add("2_Dense", "Dense")
        dump(sub / "config.json", {
            "in_features": hidden_size,
            "out_features": hidden_size,
            "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        })
        write_safetensors(
            {"linear.weight": pooler[0], "linear.bias": pooler[1]}, sub / "model.safetensors"
        )
    if normalize:
        add(f"{len(modules)}_Normalize", "Normalize")
    dump(folder / "modules.json", modules)
    dump(folder / "sentence_bert_config.json",
         {"max_seq_length": max_length, "do_lower_case": do_lower_case})
    dump(folder / ST_CONFIG, {"prompts": dict(prompts or {}),
                              "default_prompt_name": default_prompt_name})
