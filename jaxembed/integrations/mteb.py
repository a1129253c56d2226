"""MTEB, the Massive Text Embedding Benchmark, for jaxembed encoders.

``MTEBEncoder`` puts an ``Encoder`` behind the encoder protocol of the ``mteb``
package (2.x, ``mteb.models.EncoderProtocol``): for each side of each task
``mteb.evaluate`` hands it a ``DataLoader`` of text batches and gets back a
float32 array [N, D]; mteb then scores the task with the model's similarity
function. ``sts_task`` builds an MTEB STS task from pairs held in memory, so a
local file is scored by mteb's own evaluator without the dataset hub.

Prompts. A sentence-transformers folder may store prompts in
``config_sentence_transformers.json`` (``"prompts": {"query": "query: ", ...}``
and ``"default_prompt_name"``); ``prompts=`` adds to and overrides them. The
text of the first key found is prepended to every input (``select_prompt``),
as mteb's sentence-transformers wrapper does, side = ``query`` or ``document``
(mteb's ``prompt_type``; none for symmetric tasks such as STS):

    1. "{task name}-{side}"   2. "{task name}"   3. "{task type}-{side}"
    4. "{task type}"          5. "{side}"
    6. document side: "passage", then "corpus" (sentence-transformers' encode_document)
    7. no side: the folder's default_prompt_name

Similarity: the folder's ``similarity_fn_name`` (``cosine`` when absent, or
``dot``), computed by mteb's own functions. Normalisation, pooling,
lower-casing and max length are the ``Encoder``'s, read from the folder as
``Encoder.from_pretrained`` does, so a sentence-transformers folder scores as
``SentenceTransformer`` does in mteb (tests: all-MiniLM-L6-v2 on STS Benchmark
pairs, every metric within 1e-4).

Example::

    import mteb
    from jaxembed.integrations.mteb import MTEBEncoder, sts_task

    model = MTEBEncoder("runs/wcse/export", name="me/wcse")
    result = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark"]), cache=None,
                           encode_kwargs={"batch_size": 64})
    result.task_results[0].get_score()                    # cosine Spearman in [-1, 1]

    task = sts_task(["a man plays", ...], ["a man is playing", ...], [4.2, ...])
    mteb.evaluate(model, task, cache=None)                # local pairs, no hub

References: Muennighoff et al., "MTEB: Massive Text Embedding Benchmark" (EACL
2023); mteb ``models/models_protocols.py``, ``models/abs_encoder.py``
(``get_prompt_name``) and ``models/sentence_transformer_wrapper.py``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import pathlib
import warnings
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["MTEBEncoder", "select_prompt", "sts_task", "import_mteb"]

# similarity_fn_name of a sentence-transformers folder -> mteb.similarity_functions
# (matrix, pairwise); mteb's ModelMeta takes no other of sentence-transformers' names
_SIMILARITIES = {
    "cosine": ("cos_sim", "pairwise_cos_sim"),
    "dot": ("dot_score", "pairwise_dot_score"),
}
_DOCUMENT_ALIASES = ("passage", "corpus")


def import_mteb(module: str = "mteb"):
    """``importlib.import_module(module)``, with an install hint if ``mteb`` is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != "mteb":
            raise
        raise ImportError(
            "the MTEB integration needs the `mteb` package (2.x): "
            "pip install 'jaxembed[mteb]' (or pip install mteb)"
        ) from e


def select_prompt(
    prompts: Mapping[str, str],
    *,
    task_name: str,
    task_type: str,
    side: Optional[str] = None,
    default_prompt_name: Optional[str] = None,
) -> str:
    """The prompt text for one task side: the first key found in the order of the module doc.

    Args:
        prompts: prompt key -> text (keys: task names, task types, ``query``,
            ``document``, ``passage``, ``corpus``, or ``"{task}-{side}"``); the first
            key present wins, so ``""`` switches a prompt off.
        task_name, task_type: ``task_metadata.name`` and ``.type`` (e.g. ``"STS"``).
        side: ``"query"``, ``"document"`` or None (symmetric tasks).
        default_prompt_name: key used when nothing matched and ``side`` is None.

    Returns:
        The prompt text, ``""`` for none.

    Example:
        >>> p = {"query": "query: ", "passage": "passage: ", "STS": "sim: "}
        >>> select_prompt(p, task_name="NFCorpus", task_type="Retrieval", side="document")
        'passage: '
        >>> select_prompt(p, task_name="STSBenchmark", task_type="STS")
        'sim: '
        >>> select_prompt(p, task_name="Banking77", task_type="Classification")
        ''
    """
    keys = [task_name, task_type] if side is None else [
        f"{task_name}-{side}", task_name, f"{task_type}-{side}", task_type, side,
    ]
    if side == "document":
        keys += _DOCUMENT_ALIASES
    if side is None and default_prompt_name is not None:
        keys.append(default_prompt_name)
    for key in keys:
        if key in prompts:  # present wins, even "" (that is how a prompt is switched off)
            return prompts[key] or ""
    return ""


def _st_json(folder: pathlib.Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _folder_settings(folder: Optional[pathlib.Path]) -> tuple[dict, Optional[str], str]:
    """``(prompts, default_prompt_name, similarity)`` stored in a sentence-transformers folder."""
    config = _st_json(folder, "config_sentence_transformers.json") if folder else {}
    prompts = {k: v for k, v in (config.get("prompts") or {}).items() if v is not None}
    similarity = config.get("similarity_fn_name") or "cosine"
    return prompts, config.get("default_prompt_name"), similarity


def _local_name(folder: pathlib.Path) -> str:
    """An mteb model name (``org/name``) for a local folder: its parent and its own name."""
    folder = folder.resolve()
    return f"{folder.parent.name or 'local'}/{folder.name}"


class MTEBEncoder:
    """An ``Encoder`` as an mteb encoder (``mteb.models.EncoderProtocol``).

    Args:
        model: a model folder, a hub id, or an ``Encoder``.
        revision: hub revision (a folder or ``Encoder`` has none).
        device: accepted for the protocol; JAX places the computation itself.
        name: the ``org/name`` mteb files results under; default: the hub id, or
            ``"<parent>/<folder>"`` for a folder, ``"jaxembed/encoder"`` for an ``Encoder``.
        prompts: prompt key -> text, over the folder's own (module doc).
        similarity: ``"cosine"`` or ``"dot"``; default: the folder's, else cosine.
        pooling, normalize, max_length: passed to ``Encoder.from_pretrained``.

    ``encode`` returns float32 [N, D]; ``similarity`` [N1, N2] and
    ``similarity_pairwise`` [N] (torch tensors, mteb's own functions).
    """

    def __init__(
        self,
        model,
        revision: Optional[str] = None,
        *,
        device: Optional[str] = None,
        name: Optional[str] = None,
        prompts: Optional[Mapping[str, str]] = None,
        similarity: Optional[str] = None,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_length: Optional[int] = None,
    ):
        model_meta = import_mteb("mteb.models.model_meta")
        from jaxembed import Encoder

        if name is not None and "/" not in name:
            raise ValueError(f"name must be ORG/NAME (mteb files results under it), got {name!r}")
        if device is not None:
            warnings.warn(f"device={device!r} is ignored: JAX places the computation itself")
        folder = None
        if isinstance(model, Encoder):
            if revision or pooling or normalize is not None or max_length:
                raise ValueError(
                    "revision, pooling, normalize and max_length apply when loading; "
                    "pass them to Encoder.from_pretrained (or Encoder.replace) instead"
                )
            default_name = "jaxembed/encoder"
        else:
            from jaxembed.models.hub import resolve

            folder = resolve(model, revision=revision)
            is_local = pathlib.Path(model).expanduser().is_dir()
            default_name = _local_name(folder) if is_local else str(model)
        # the folder's settings are checked before its weights load
        folder_prompts, self.default_prompt_name, folder_similarity = _folder_settings(folder)
        self.prompts = {**folder_prompts, **dict(prompts or {})}
        similarity = similarity or folder_similarity
        if similarity not in _SIMILARITIES:
            raise ValueError(
                f"similarity {similarity!r} is not supported; choose from {sorted(_SIMILARITIES)}"
            )
        self.encoder = model if folder is None else Encoder.from_pretrained(
            folder, pooling=pooling, normalize=normalize, max_length=max_length
        )
        self._similarity = similarity
        self.mteb_model_meta = model_meta.ModelMeta(
            loader=type(self),
            name=name or default_name,
            revision=revision or "no_revision_available",  # mteb's own placeholder
            release_date=None,
            languages=None,
            n_parameters=None,
            memory_usage_mb=None,
            max_tokens=getattr(self.encoder, "max_length", None),
            embed_dim=self.encoder.dim,
            license=None,
            open_weights=None,
            public_training_code=None,
            public_training_data=None,
            framework=["JAX"],
            similarity_fn_name=similarity,
            use_instructions=any(self.prompts.values()),
            training_datasets=None,
            modalities=["text"],
        )

    def prompt(self, task_metadata, prompt_type=None) -> str:
        """The prompt prepended to this task side's texts (``select_prompt``)."""
        return select_prompt(
            self.prompts,
            task_name=task_metadata.name,
            task_type=task_metadata.type,
            side=None if prompt_type is None else getattr(prompt_type, "value", prompt_type),
            default_prompt_name=self.default_prompt_name,
        )

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type=None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Texts of ``inputs`` (a DataLoader of ``{"text": [...]}`` batches) -> float32 [N, D].

        ``kwargs``: mteb's ``encode_kwargs``; ``batch_size`` (default 64) and
        ``show_progress_bar`` are used, the rest ignored.
        """
        texts = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(
                    f"task {task_metadata.name} gives {sorted(batch)} inputs; "
                    "jaxembed encoders embed text only"
                )
            texts.extend(batch["text"])
        # passed as Encoder.encode's prompt (``""``: none), so the encoder's own default
        # prompt is not put on top of it
        return self.encoder.encode(
            texts,
            prompt=self.prompt(task_metadata, prompt_type),
            batch_size=int(kwargs.get("batch_size") or 64),
            progress=bool(kwargs.get("show_progress_bar", False)),
        )

    def similarity(self, embeddings1, embeddings2):
        """[N1, D], [N2, D] -> [N1, N2] scores with the model's similarity."""
        functions = import_mteb("mteb.similarity_functions")
        return getattr(functions, _SIMILARITIES[self._similarity][0])(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """[N, D], [N, D] -> [N] scores of corresponding rows."""
        functions = import_mteb("mteb.similarity_functions")
        return getattr(functions, _SIMILARITIES[self._similarity][1])(embeddings1, embeddings2)

    def __repr__(self) -> str:
        return f"MTEBEncoder({self.mteb_model_meta.name!r}, {self.encoder!r})"


@functools.cache
def _local_sts_base():
    AbsTaskSTS = import_mteb("mteb.abstasks.sts").AbsTaskSTS

    class LocalSTS(AbsTaskSTS):
        """An ``AbsTaskSTS`` whose ``load_data`` builds its one split from memory.

        mteb reads ``metadata`` (and the score range) from the task's class, so
        ``sts_task`` makes one subclass per task.
        """

        def __init__(self, columns: dict):
            self._columns = columns
            super().__init__()

        def load_data(self, num_proc=None, **kwargs) -> None:
            from datasets import Dataset, DatasetDict

            if not self.data_loaded:
                split = self.metadata.eval_splits[0]
                self.dataset = DatasetDict({split: Dataset.from_dict(self._columns)})
                self.data_loaded = True

    return LocalSTS


def sts_task(
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    scores,
    *,
    name: str = "LocalSTS",
    split: str = "test",
    language: str = "eng-Latn",
    min_score: float = 0.0,
    max_score: float = 5.0,
):
    """An MTEB STS task over the given pairs; no dataset hub is touched.

    Scored by mteb's STS evaluator like its hub tasks: the main score is the
    Spearman correlation (in [-1, 1]) between gold scores and the cosine of the
    two sides' embeddings (``cosine_spearman``); Pearson, Manhattan and
    Euclidean variants and the model's own similarity are reported too. The
    dataset revision recorded with results is a hash of the pairs.

    Args:
        sentences1, sentences2: n texts each, pair i = ``(sentences1[i], sentences2[i])``.
        scores: n finite gold similarities in ``[min_score, max_score]``.
        name: task name in results and result files.
        split, language: the split name and the ISO 639-3 + script code.

    Example::

        s1, s2, y = read_stsb("sts_raw/STSBenchmark/sts-test.csv")   # jaxembed.eval.datasets
        task = sts_task(s1, s2, y, name="STSBenchmark-local")
    """
    metadata_module = import_mteb("mteb.abstasks.task_metadata")
    sentences1, sentences2 = list(sentences1), list(sentences2)
    scores = [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    n = len(sentences1)
    if len(sentences2) != n or len(scores) != n:
        raise ValueError(
            f"sentences1, sentences2 and scores must have one entry per pair, "
            f"got {n}, {len(sentences2)} and {len(scores)}"
        )
    if n < 2:
        raise ValueError(f"an STS task needs at least 2 pairs, got {n}")
    for field, texts in (("sentences1", sentences1), ("sentences2", sentences2)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"{field}[{bad}] is {type(texts[bad]).__name__}, not str")
    bad = next(
        (i for i, s in enumerate(scores) if not (math.isfinite(s) and min_score <= s <= max_score)),
        None,
    )
    if bad is not None:
        raise ValueError(f"scores[{bad}] = {scores[bad]} is not a number in "
                         f"[{min_score}, {max_score}]")
    columns = {"sentence1": sentences1, "sentence2": sentences2, "score": scores}
    digest = hashlib.sha256(json.dumps(columns).encode("utf-8")).hexdigest()[:16]
    metadata = metadata_module.TaskMetadata(
        name=name,
        description=f"{n} local sentence pairs scored in [{min_score}, {max_score}].",
        dataset={"path": f"local/{name}", "revision": digest},
        type="STS",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=[language],
        main_score="cosine_spearman",
    )
    task_class = type(
        "LocalSTSTask",
        (_local_sts_base(),),
        {"metadata": metadata, "min_score": min_score, "max_score": max_score},
    )
    return task_class(columns)
