"""The run guard: one trainer per workdir (flock, released by a kill), and a resume refused
under a different config without touching the previous run."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from jaxembed.train import cli as train_cli
from jaxembed.train.config import RESUMABLE_KEYS, TrainConfig, config_changes, load_config
from jaxembed.train.workdir import (CONFIG_FILE, ConfigMismatchError, WorkdirBusyError,
                                    WorkdirLock, claim_config)

REPO = pathlib.Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.py"
# the quick-start reproduction of issue #13, every step saved
TINY = [f"{QUICKSTART}:tiny", "--set", "batch_size=8", "--set", "eval_every=0", "--set",
        "save_every=1", "--set", "progress=false"]

_HOLDER = r"""
import sys, time
from jaxembed.train.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _hold(workdir) -> subprocess.Popen:
    """Another process holding the workdir lock (it sleeps until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_refuses_second_holder_and_dies_with_its_process(tmp_path):
    with WorkdirLock(tmp_path):
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
            WorkdirLock(tmp_path).acquire()  # flock is per open file: refused in-process too
    with WorkdirLock(tmp_path):  # released on exit
        pass
    holder = _hold(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError,
                           match=f"in use by another trainer \\(pid {holder.pid} "):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with WorkdirLock(tmp_path) as lock:  # a killed holder leaves no stale lock
        assert f"pid {os.getpid()}" in lock.path.read_text()


def _parse(argv):
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    return p.parse_args(argv)


def test_cli_refuses_a_workdir_in_use(tmp_path, capsys):
    holder = _hold(tmp_path)
    try:
        assert train_cli.run(_parse([*TINY, "--workdir", str(tmp_path)])) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"in use by another trainer (pid {holder.pid}" in err[0], err
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / CONFIG_FILE).exists()


def test_config_changes_ignore_only_resumable_keys(rng):
    cfg = load_config(*TINY[:1], overrides=TINY[2::2])
    rec = json.loads(json.dumps(cfg.to_dict()))
    assert config_changes(rec, cfg) == []
    harmless = cfg.replace(progress=True, log_every=7, eval_every=5, eval_before=False, keep=9,
                           save_every=3, prefetch=1, peak_flops_per_device=1e12, collapse_steps=0,
                           resume="force", mesh_data=4, mesh_fsdp=2, tfds_data_dir="/x",
                           info_nce_chunk=4)
    assert config_changes(rec, harmless) == []
    lr = float(rng.uniform(1e-6, 1e-4))
    changed = cfg.replace(batch_size=16, learning_rate=lr, steps=9, seed=7, mlp=False,
                          model="other", m2d_dims=(8, 16))
    assert config_changes(rec, changed) == [
        ("model", "tiny-random", "other"), ("mlp", True, False), ("m2d_dims", [], [8, 16]),
        ("batch_size", 8, 16), ("steps", 6, 9), ("learning_rate", cfg.learning_rate, lr),
        ("seed", 0, 7)]
    # a record written before a field existed compares that field at its default
    older = {k: v for k, v in rec.items() if k != "grad_cache_chunk"}
    assert config_changes(older, cfg) == []
    assert config_changes(older, cfg.replace(grad_cache_chunk=4)) == [("grad_cache_chunk", 0, 4)]
    # ... except where runs behaved otherwise before it: DSE had no pooled-vector dropout
    dse = TrainConfig(objective="dse", model="m", data="d")
    before_dropout = {k: v for k, v in json.loads(json.dumps(dse.to_dict())).items()
                      if k != "dse_dropout"}
    assert config_changes(before_dropout, dse) == [("dse_dropout", 0.0, 0.1)]
    assert config_changes(before_dropout, dse.replace(dse_dropout=0.0)) == []
    # the loss settings that change what is computed are not resumable
    assert {"whitening_stop_gradient", "whitening_iterations", "dse_dropout"}.isdisjoint(
        RESUMABLE_KEYS)
    assert RESUMABLE_KEYS < set(cfg.to_dict())


def test_claim_config_records_refuses_and_forces(tmp_path):
    cfg = TrainConfig(model="m", data="d.txt", batch_size=8, steps=10)
    msgs = []
    claim_config(tmp_path, cfg, has_checkpoints=False, say=msgs.append)
    record = tmp_path / CONFIG_FILE
    assert json.loads(record.read_text()) == json.loads(json.dumps(cfg.to_dict()))
    claim_config(tmp_path, cfg.replace(progress=False, log_every=5), has_checkpoints=True,
                 say=msgs.append)
    assert msgs == []
    before = record.read_bytes()
    with pytest.raises(ConfigMismatchError) as info:
        claim_config(tmp_path, cfg.replace(batch_size=16, seed=3), has_checkpoints=True)
    assert "batch_size 8 -> 16, seed 42 -> 3" in str(info.value)
    assert "resume=force" in str(info.value) and "\n" not in str(info.value)
    assert record.read_bytes() == before
    claim_config(tmp_path, cfg.replace(batch_size=16, resume="force"), has_checkpoints=True,
                 say=msgs.append)
    assert len(msgs) == 1 and "batch_size 8 -> 16" in msgs[0]
    assert json.loads(record.read_text())["batch_size"] == 16
    # nothing to resume (no checkpoint yet): a new config is simply recorded
    claim_config(tmp_path, cfg.replace(seed=1), has_checkpoints=False, say=msgs.append)
    assert json.loads(record.read_text())["seed"] == 1 and len(msgs) == 1


def _snapshot(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", [["--set", "mlp=false"], ["--set", "batch_size=16"],
                                    ["--set", "learning_rate=0.001"], ["--set", "steps=12"],
                                    ["--set", "seed=5"]])
def test_resume_under_another_config_is_refused_and_destroys_nothing(tmp_path, capsys, change):
    """A workdir holding checkpoints, metrics and exports (stand-ins: the refusal comes before
    anything reads them) is left byte-identical, with one line naming the changed key."""
    work = tmp_path / "work"
    cfg = load_config(TINY[0], overrides=TINY[2::2])
    claim_config(work, cfg, has_checkpoints=False)
    for step in (5, 6):
        (work / "ckpt" / str(step) / "state").mkdir(parents=True)
        (work / "ckpt" / str(step) / "meta").write_text(json.dumps({"step": step}))
    (work / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n"
                                                for s in range(7)))
    (work / "export").mkdir()
    (work / "export" / "model.safetensors").write_bytes(b"weights")
    before = _snapshot(work)
    assert train_cli.run(_parse([*TINY, "--workdir", str(work), *change])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    key = change[1].split("=")[0]
    assert len(err) == 1 and "different config" in err[0] and f"{key} " in err[0], err
    after = _snapshot(work)
    after.pop("train.lock")
    assert after == before
