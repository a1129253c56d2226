"""TFDS source offline: a tiny ArrayRecord dataset built here, read without TensorFlow."""

from __future__ import annotations


import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")
pytest.importorskip("array_record")

from jaxembed.data.sources import read_source  # noqa: E402
from jaxembed.data.tfds_source import parse_spec  # noqa: E402


def _builder_class(rows):
    class JaxembedTinyPairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "sent0": tfds.features.Text(), "sent1": tfds.features.Text(), "score": np.float32}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (a, b, s) in enumerate(rows):
                yield i, {"sent0": a, "sent1": b, "score": s}

    return JaxembedTinyPairs


def test_tfds_array_record_source_without_tensorflow(tmp_path, rng):
    words = ["red", "cat", "sits", "blue", "dog", "runs"]
    rows = [(" ".join(rng.choice(words, 3)), " ".join(rng.choice(words, 4)), float(np.float32(rng.normal())))
            for _ in range(23)]
    rows.append(("   ", "empty first text", 0.5))  # skipped and counted
    rows.append(("a nan score", "is invalid", float("nan")))  # skipped, counted, named
    builder = _builder_class(rows)(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    with pytest.warns(UserWarning, match="'score' is nan, not finite"):
        corpus = read_source(f"tfds:{builder.name}:train", tfds_data_dir=str(tmp_path))
    assert corpus.columns == ("sent0", "sent1", "score") and corpus.num_text_columns == 2
    assert sorted(corpus.rows) == sorted(rows[:-2])  # TFDS shuffles on write; content identical
    assert corpus.stats["read"] == 25 and corpus.stats["skipped_empty"] == 1
    assert corpus.stats["skipped_invalid"] == 1
    only = read_source(f"tfds:{builder.name}:train#sent1", tfds_data_dir=str(tmp_path))
    assert sorted(r[0] for r in only.rows) == sorted(r[1] for r in rows)


def test_parse_spec():
    assert parse_spec("tfds:glue/stsb:validation#sentence1,sentence2,label") == (
        "glue/stsb", "validation", ["sentence1", "sentence2", "label"])
    assert parse_spec("tfds:foo") == ("foo", "train", None)
    with pytest.raises(ValueError):
        parse_spec("tfds::train")
