"""``configs/qwen3_embedding_style.py:tiny`` trains end to end on CPU: a random Qwen3 decoder,
last-token pooling, instructed SNLI queries with a hard negative, margin-masked InfoNCE at
tau 0.02 over Matryoshka dims; its export is a decoder folder that loads back and trains on."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxembed.train.config import load_config
from jaxembed.train.trainer import train

CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "qwen3_embedding_style.py"

pytestmark = pytest.mark.scripts  # two compiled decoder runs: ~35 s on 2 CPU cores


def test_tiny_recipe_trains_and_its_export_is_a_decoder_folder(tmp_path):
    from jaxembed.models.encoder import Encoder

    quiet = ["progress=false", "eval_every=0", "steps=2", "save_every=2"]
    cfg = load_config(f"{CONFIG}:tiny", overrides=quiet)
    assert (cfg.model, cfg.train_pooling, cfg.temperature, cfg.false_negative_margin) == (
        "tiny-random-qwen3", "last_token", 0.02, 0.1)
    said = []
    summary = train(cfg, tmp_path / "run", echo=said.append)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and summary["steps"] == 2
    assert "read 256, kept 256" in said[0]

    export = tmp_path / "run" / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "qwen3"
    enc = Encoder.from_pretrained(export)
    assert enc.pooling == "last_token" and enc.normalize
    z = enc.encode(["Instruct: t\nQuery:a dog runs", "a dog runs"])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    assert np.abs(z[0] - z[1]).max() > 1e-3   # the instruction reaches the last token

    # the exported folder trains again through Encoder.from_pretrained (the paper-scale path)
    again = load_config(f"{CONFIG}:tiny", overrides=quiet + [f"model={export}", "steps=1",
                                                              "save_every=1"])
    assert np.isfinite(train(again, tmp_path / "again", echo=said.append)["last"]["loss"])
