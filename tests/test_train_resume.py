"""Checkpoints: corrupt-latest fallback and quarantine, refused foreign or non-finite states,
and SIGKILL + restart giving bit-identical losses."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxembed.train import sharding as shd
from jaxembed.train.checkpoint import Checkpointer, IncompatibleCheckpointError, abstract_like
from jaxembed.train.errors import NonFiniteError
from jaxembed.train.state import TrainState, make_optimizer

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parent.parent


def _state(rng, seed):
    params = {"w": rng.normal(size=(8, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    tx, _ = make_optimizer(learning_rate=1e-3, total_steps=10)
    mesh = shd.make_mesh(data=2, fsdp=4)
    sh = TrainState(step=shd.replicated(mesh), params=shd.param_shardings(params, mesh, hidden_size=4),
                    opt_state=None, rng=shd.replicated(mesh))
    st = TrainState.create(params, tx, seed=seed)
    sh = sh.replace(opt_state=jax.tree.map(lambda _: shd.replicated(mesh), st.opt_state))
    return shd.place(st, sh), sh


def _data_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """Orbax/OCDBT array data files (under ``d/`` folders), not metadata."""
    return [p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"]


def _damage(step_dir: pathlib.Path, damage: str) -> None:
    state = step_dir / "state"
    if damage == "flip_bytes":  # silent corruption: the file still parses
        files = _data_files(state)
        assert files
        for target in files:
            data = bytearray(target.read_bytes())
            for i in range(len(data) // 2, min(len(data), len(data) // 2 + 16)):
                data[i] ^= 0x5A
            target.write_bytes(bytes(data))
    elif damage == "delete_dir_contents":  # an incomplete checkpoint: its array data gone
        for p in state.rglob("*"):
            if p.is_file():
                p.unlink()
    elif damage in ("truncate_data", "zero_data"):
        files = _data_files(state)
        assert files
        for target in files:
            data = target.read_bytes()
            target.write_bytes(data[:len(data) // 2] if damage == "truncate_data"
                               else bytes(len(data)))
    elif damage == "delete_manifests":
        manifests = list(state.rglob("manifest.ocdbt"))
        assert manifests
        for p in manifests:
            p.unlink()
    elif damage == "invalid_meta":
        (step_dir / "meta" / "metadata").write_text('{"data_position": 2, ')
    elif damage == "missing_meta":
        (step_dir / "meta" / "metadata").unlink()
    elif damage == "delete_state":
        shutil.rmtree(state)
    elif damage == "empty_step_dir":
        shutil.rmtree(step_dir)
        step_dir.mkdir()
    else:
        raise AssertionError(damage)


DAMAGE = ["flip_bytes", "delete_dir_contents", "truncate_data", "zero_data", "delete_manifests",
          "invalid_meta", "missing_meta", "delete_state", "empty_step_dir"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, module_rng):
    """Steps 1 and 2 saved once (``ckpt`` folder, states, shardings); each damage case below
    works on its own copy of the folder."""
    s1, sh = _state(module_rng, 1)
    s2 = s1.replace(step=s1.step + 1, params=jax.tree.map(lambda x: x * 2.0 + 1.0, s1.params))
    folder = tmp_path_factory.mktemp("two_checkpoints") / "ckpt"
    reports = []
    with Checkpointer(folder, keep=3, report=reports.append) as ckpt:
        ckpt.save(1, s1, meta={"data_position": 11})
        ckpt.save(2, s2, meta={"data_position": 22})
        assert ckpt.all_steps() == [1, 2]
    assert reports == []
    return folder, s1, s2, sh


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", DAMAGE)
def test_corrupt_latest_checkpoint_falls_back(tmp_path, two_checkpoints, damage, capfd):
    """Fall back to the previous step, move the damaged one aside (so saving that step again
    works: no StepAlreadyExistsError crash loop), and say so in one line, without Orbax's
    asyncio noise."""
    template, s1, s2, sh = two_checkpoints
    shutil.copytree(template, tmp_path / "ckpt")
    reports = []
    step_dir = tmp_path / "ckpt" / "2"
    _damage(step_dir, damage)
    capfd.readouterr()
    abstract = abstract_like(s1, sh)
    with Checkpointer(tmp_path / "ckpt", keep=3, report=reports.append) as ckpt:
        restored, meta = ckpt.restore_latest(abstract)
        assert meta["data_position"] == 11 and int(restored.step) == int(s1.step)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s1)):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        assert len(reports) == 1 and "step 2" in reports[0] and "unusable" in reports[0], reports
        moved = sorted((tmp_path / "ckpt_quarantine").iterdir())
        assert [p.name.split("-")[0] for p in moved] == ["2"] and str(moved[0]) in reports[0]
        assert not step_dir.exists() and ckpt.all_steps() == [1]
        ckpt.save(2, s2, meta={"data_position": 22})  # the run goes on past the bad step
    with Checkpointer(tmp_path / "ckpt", keep=3, report=reports.append) as ckpt:
        restored, meta = ckpt.restore_latest(abstract)
    assert meta["data_position"] == 22 and len(reports) == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s2)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    out, err = capfd.readouterr()
    assert len((out + err).splitlines()) <= 2, out + err


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path, rng):
    """A state tree that differs from the saved one (another model/objective, e.g. after
    resume=force with mlp=false) raises naming the leaves; nothing is moved or deleted."""
    s1, sh = _state(rng, 1)
    with Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
        ckpt.save(1, s1, meta={"data_position": 1})
        ckpt.save(2, s1, meta={"data_position": 2})
    other = s1.replace(params={"w": s1.params["w"], "head": s1.params["b"]})
    other_sh = sh.replace(params={"w": sh.params["w"], "head": sh.params["b"]})
    reports = []
    with Checkpointer(tmp_path / "ckpt", keep=3, report=reports.append) as ckpt:
        with pytest.raises(IncompatibleCheckpointError, match=r"params\.b.*params\.head"):
            ckpt.restore_latest(abstract_like(other, other_sh))
        assert ckpt.all_steps() == [1, 2] and reports == []
    assert not (tmp_path / "ckpt_quarantine").exists()
    wide = s1.replace(params=dict(s1.params, b=np.zeros((5,), np.float32)))
    with Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
        with pytest.raises(IncompatibleCheckpointError,
                           match=r"params\.b: \(\(4,\), 'float32'\) vs"):
            ckpt.restore_latest(abstract_like(wide, jax.tree.map(lambda _: sh.step, wide)))


def test_non_finite_state_is_never_saved(tmp_path, rng):
    s1, sh = _state(rng, 1)
    bad = s1.replace(step=s1.step + 1, params=dict(s1.params, w=s1.params["w"] * np.nan))
    with Checkpointer(tmp_path / "ckpt", keep=3) as ckpt:
        ckpt.save(1, s1, meta={"data_position": 1})
        with pytest.raises(NonFiniteError, match=r"step 2: 1 arrays .*\(params\.w\); not saved\. "
                                                 r"The last checkpoint \(step 1\) is finite"):
            ckpt.save(2, bad, meta={"data_position": 2})
        assert ckpt.all_steps() == [1]
        assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]
        restored, meta = ckpt.restore_latest(abstract_like(s1, sh))
    assert meta["data_position"] == 1


def test_intact_checkpoint_restores_exactly(tmp_path, rng):
    s1, sh = _state(rng, 3)
    with Checkpointer(tmp_path / "ckpt", keep=1) as ckpt:
        ckpt.save(5, s1, meta={"data_position": 5})
        restored, meta = ckpt.restore_latest(abstract_like(s1, sh))
    assert meta["data_position"] == 5
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s1)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding == b.sharding


# --------------------------------------------------------------------------- subprocess runs

def write_config(tmp_path: pathlib.Path, tiny_bert_dir, rng, *, steps=7, objective="whitenedcse") -> pathlib.Path:
    words = "the a man woman dog cat runs sits on red blue big house car tree river plays".split()
    lines = [" ".join(rng.choice(words, size=rng.integers(2, 14))) for _ in range(120)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n\n")
    sts = tmp_path / "sts-dev.csv"
    pairs = [(" ".join(rng.choice(words, size=5)), " ".join(rng.choice(words, size=6))) for _ in range(40)]
    sts.write_text("".join(f"genre\tfile\tyear\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}\n"
                           for i, (a, b) in enumerate(pairs)))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "from jaxembed.train.config import TrainConfig\n"
        "def get_config(arg=None):\n"
        f"    return TrainConfig(model={str(tiny_bert_dir)!r}, data={str(corpus)!r}, objective={objective!r},\n"
        f"        num_views=3, num_groups=4, batch_size=16, max_length=16, steps={steps}, learning_rate=5e-4,\n"
        f"        eval_every=3, eval_data={str(sts)!r}, save_every=2, keep=2, seed={int(rng.integers(1000))},\n"
        f"        progress=False)\n")
    return cfg


def train_env(tmp_path: pathlib.Path, devices: int = 8) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_cmd(cfg, workdir, *extra) -> list[str]:
    return [sys.executable, "-m", "jaxembed.train.cli", str(cfg), "--workdir", str(workdir), *extra]


def step_losses(workdir, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_bert_dir, module_rng):
    """One uninterrupted 8-device run (shared by the resume and multi-host tests)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp, tiny_bert_dir, module_rng)
    out = subprocess.run(train_cmd(cfg, tmp / "work"), env=train_env(tmp), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"tmp": tmp, "cfg": cfg, "losses": step_losses(tmp / "work"), "stdout": out.stdout}


def test_sigkill_and_resume_is_bit_identical(reference_run):
    tmp, cfg, ref = reference_run["tmp"], reference_run["cfg"], reference_run["losses"]
    assert sorted(ref) == list(range(1, 8)) and len(set(ref.values())) > 1
    rows = [json.loads(line) for line in (tmp / "work" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/stsb_dev_spearman"] for r in rows if "eval/stsb_dev_spearman" in r}
    assert sorted(evals) == [0, 3, 6, 7]
    assert "STS-B dev Spearman: before" in reference_run["stdout"]
    assert (tmp / "work" / "export_best" / "config.json").is_file()
    assert rows[0]["data/skipped_empty"] == 1  # the corpus ends with an empty line
    work = tmp / "killed"
    proc = subprocess.Popen(train_cmd(cfg, work), env=train_env(tmp), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    try:  # kill as soon as step 5 is logged (checkpoints exist at 2 and 4)
        while time.time() < deadline and proc.poll() is None:
            if (work / "metrics.jsonl").exists() and 5 in step_losses(work):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = step_losses(work)
    assert 5 in before and 7 not in before
    out = subprocess.run(train_cmd(cfg, work), env=train_env(tmp), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout
    got = step_losses(work)
    assert got == ref  # exact float equality, every step
    assert step_losses(work, "eval/stsb_dev_spearman") == step_losses(tmp / "work", "eval/stsb_dev_spearman")
    assert (work / "export" / "config.json").is_file()


def test_damaged_latest_checkpoint_resumes_bit_identical(reference_run):
    """The finished reference workdir with its newest checkpoint zeroed: the rerun moves it
    aside, redoes the last step from the previous one and ends exactly where the reference
    did (losses, exported bytes); before the quarantine it died with StepAlreadyExistsError."""
    tmp, cfg, ref = reference_run["tmp"], reference_run["cfg"], reference_run["losses"]
    work = tmp / "damaged"
    shutil.copytree(tmp / "work", work)
    last = max(int(p.name) for p in (work / "ckpt").iterdir())
    _damage(work / "ckpt" / str(last), "zero_data")
    out = subprocess.run(train_cmd(cfg, work), env=train_env(tmp), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    moved = [p.name for p in (work / "ckpt_quarantine").iterdir()]
    assert [m.split("-")[0] for m in moved] == [str(last)]
    assert f"checkpoint at step {last}" in out.stdout
    assert f"ckpt_quarantine/{moved[0]}" in out.stdout
    assert len((out.stdout + out.stderr).splitlines()) < 12, out.stdout + out.stderr
    assert step_losses(work) == ref
    for name in ("export", "export_best"):
        assert ((work / name / "model.safetensors").read_bytes()
                == (tmp / "work" / name / "model.safetensors").read_bytes())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_x4_devices_match_one_process_x8(reference_run):
    """jax.distributed on 127.0.0.1 (gloo CPU collectives): each process reads its half of
    every batch; per-step losses equal the 1-process x 8-device run up to reduction order."""
    tmp, cfg, ref = reference_run["tmp"], reference_run["cfg"], reference_run["losses"]
    work, port = tmp / "two_proc", _free_port()
    procs = [subprocess.Popen(train_cmd(cfg, work, "--coordinator", f"127.0.0.1:{port}",
                                        "--num-processes", "2", "--process-id", str(i)),
                              env=train_env(tmp, devices=4), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    got = step_losses(work)
    assert sorted(got) == sorted(ref)
    steps = sorted(ref)
    # Step 1 sees identical parameters: only the all-reduce order differs (logits / tau
    # amplify it ~20x). Later steps add Adam, whose g / sqrt(v) magnifies tiny gradient
    # differences in near-zero coordinates, so the runs drift apart slowly (seen: 1.1e-4
    # after 7 steps). A wrong data split or label offset moves step 1 by far more than 1e-4.
    np.testing.assert_allclose(got[steps[0]], ref[steps[0]], rtol=1e-4)
    np.testing.assert_allclose([got[s] for s in steps], [ref[s] for s in steps], rtol=1e-3)
    assert (work / "export" / "model.safetensors").is_file()
