"""The shipped configs share their ``:tiny`` tail through ``configs/_common.py``."""

from __future__ import annotations

import pathlib
import runpy
import shutil

import pytest

from jaxembed.train.config import load_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
NAMES = sorted(p.stem for p in CONFIGS.glob("[a-z]*.py"))
COMMON = runpy.run_path(str(CONFIGS / "_common.py"))


def test_every_config_is_found():
    assert NAMES == ["dse_minilm", "quickstart", "qwen3_embedding_style", "simcse_sup_bert_base",
                     "simcse_unsup_bert_base", "whitenedcse_bert_base"]


@pytest.mark.parametrize("name", NAMES)
def test_tiny_is_the_paper_config_with_the_shared_tiny_settings(name):
    cfg, tiny = load_config(str(CONFIGS / f"{name}.py")), load_config(f"{CONFIGS / name}.py:tiny")
    changed = {k for k, v in cfg.to_dict().items() if tiny.to_dict()[k] != v}
    # every shared setting is applied (unless the file overrides it) ...
    assert tiny.model.startswith("tiny-random") and tiny.steps <= 6 and tiny.batch_size <= 16
    assert tiny.max_length == 16 and tiny.mixed_precision is False
    # ... and nothing else changes but what the file's own tiny overrides name
    source = (CONFIGS / f"{name}.py").read_text()
    tail = source[source.index("return variant(cfg, arg"):]
    allowed = set(COMMON["TINY"]) | {k for k in cfg.to_dict() if f"{k}=" in tail}
    assert changed <= allowed, changed - allowed
    with pytest.raises(ValueError, match="unknown config arg 'huge'"):
        load_config(f"{CONFIGS / name}.py:huge")


def test_configs_load_from_a_copied_folder_and_any_cwd(tmp_path, monkeypatch):
    """The sibling helper is found beside the config file, not on sys.path or the cwd."""
    copy = tmp_path / "my_configs"
    shutil.copytree(CONFIGS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_common.py").write_text(
        (copy / "_common.py").read_text().replace('model="tiny-random"', 'model="tiny-copied"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(str(copy / "quickstart.py:tiny")).model == "tiny-copied"
    assert load_config(str(CONFIGS / "quickstart.py:tiny")).model == "tiny-random"


def test_common_is_not_a_config():
    with pytest.raises(ValueError, match="defines no get_config"):
        load_config(str(CONFIGS / "_common.py"))
