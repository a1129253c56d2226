"""TFDS datasets without TensorFlow: ArrayRecord files, ``builder.as_data_source()``, grain.

``tfds:NAME[/CONFIG][:SPLIT][#col1,col2,...]`` (split default ``train``). The
dataset must already be prepared in ``data_dir`` with
``file_format="array_record"`` (TFDS writes and reads ArrayRecord with no
TensorFlow installed; ``tfds.builder`` finds either a registered builder class
or, for data prepared elsewhere, the files in ``data_dir``). Records are
random-access (``as_data_source``) and read through ``grain.MapDataset``.

Columns: the ``#``-listed features in that order, else every ``Text`` feature
(in the dataset's feature order) followed by every scalar float feature.
Texts are decoded as UTF-8; a record with an undecodable or empty text, or a
non-finite float, is skipped and counted (and named ``SPEC[index]``), and a
dataset whose records are mostly invalid is refused, exactly as the file
readers do (:mod:`jaxembed.data.corpus`).

Needs the optional extra ``jaxembed[tfds]`` (``tensorflow-datasets``, ``grain``,
``array_record``).

Example::

    corpus = read_tfds("tfds:my_sentences:train", data_dir="/data/tfds")
"""

from __future__ import annotations

import math

import numpy as np

from jaxembed.data.corpus import Corpus, Tally, clean_texts


def parse_spec(spec: str) -> tuple[str, str, list[str] | None]:
    """``tfds:NAME[/CONFIG][:SPLIT][#a,b]`` -> (name, split, columns or None)."""
    if not spec.startswith("tfds:"):
        raise ValueError(f"TFDS spec must start with 'tfds:', got {spec!r}")
    body, _, cols = spec[len("tfds:"):].partition("#")
    name, _, split = body.partition(":")
    if not name:
        raise ValueError(f"TFDS spec {spec!r} names no dataset")
    return name, split or "train", [c.strip() for c in cols.split(",") if c.strip()] or None


def _default_columns(features) -> tuple[list[str], list[str]]:
    import tensorflow_datasets as tfds

    texts, floats = [], []
    for key, feature in features.items():
        if isinstance(feature, tfds.features.Text):
            texts.append(key)
        elif isinstance(feature, tfds.features.Tensor) and feature.shape == () and \
                np.issubdtype(np.dtype(feature.np_dtype), np.floating):
            floats.append(key)
    return texts, floats


def read_tfds(spec: str, *, data_dir: str | None = None, max_chars: int = 2000) -> Corpus:
    import grain
    import tensorflow_datasets as tfds

    name, split, columns = parse_spec(spec)
    builder = tfds.builder(name, data_dir=data_dir)
    source = builder.as_data_source(split=split)
    features = builder.info.features
    if columns is None:
        texts, floats = _default_columns(features)
    else:
        missing = [c for c in columns if c not in features]
        if missing:
            raise ValueError(f"{spec}: no feature(s) {missing}; features: {list(features)}")
        texts = [c for c in columns if isinstance(features[c], tfds.features.Text)]
        floats = [c for c in columns if c not in texts]
        if columns != texts + floats:
            raise ValueError(f"{spec}: list text columns before numeric ones, got {columns}")
    if not texts:
        raise ValueError(f"{spec}: no text feature among {list(features)}")
    tally, rows = Tally(spec), []
    for i, record in enumerate(grain.MapDataset.source(source)):
        tally.read()
        try:
            values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in (record[c] for c in texts)]
        except UnicodeDecodeError:
            tally.not_utf8(f"{spec}[{i}]")
            continue
        numbers = [float(record[c]) for c in floats]
        bad = [c for c, x in zip(floats, numbers) if not math.isfinite(x)]
        if bad:
            tally.invalid(f"{spec}[{i}]", f"{bad[0]!r} is {record[bad[0]]}, not finite")
            continue
        cleaned, truncated = clean_texts(values, max_chars=max_chars)
        if cleaned is None:
            tally.empty()
            continue
        tally.keep(truncated=truncated)
        rows.append((*cleaned, *numbers))
    return tally.corpus(texts + floats, rows, num_text_columns=len(texts))
