"""A full disk: one clear error naming the path and ENOSPC, and no partial checkpoint left.

Where the tests may mount a small tmpfs (root, as in the project's containers) the disk
is really full; elsewhere those tests skip and the portable ones inject the error text
Orbax raises on a real full disk (recorded on a 2 MB tmpfs, see ``_ORBAX_ENOSPC``).
"""

from __future__ import annotations

import argparse
import errno
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest

from jaxembed.train import cli as train_cli
from jaxembed.train import sharding as shd
from jaxembed.train.checkpoint import Checkpointer, abstract_like
from jaxembed.train.errors import DiskFullError, disk_full
from jaxembed.train.metrics import MetricsWriter
from jaxembed.train.state import TrainState, make_optimizer

pytestmark = pytest.mark.slow  # a long file: runs first under -n 2 (tests/conftest.py)

REPO = pathlib.Path(__file__).resolve().parent.parent

# what orbax-checkpoint 0.12 / TensorStore raise when a save hits a full tmpfs
_ORBAX_ENOSPC = ('RESOURCE_EXHAUSTED: Error writing "params.w/0.0" in OCDBT database at local '
                 'file "{d}/1.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": '
                 'Failed to write 1823859 bytes to file 14: No space left on device '
                 "[os_error_code='28']")


@pytest.fixture
def small_fs(tmp_path):
    """``make(megabytes) -> folder`` on a tmpfs of that size (skips where mounting is denied)."""
    mounts = []

    def make(megabytes: float) -> pathlib.Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k",
                              "tmpfs", str(where)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _state(rng, n: int):
    """A replicated TrainState of ``n`` random float32 (incompressible) plus Adam moments."""
    params = {"w": rng.normal(size=(n,)).astype(np.float32)}
    tx, _ = make_optimizer(learning_rate=1e-3, total_steps=10)
    mesh = shd.make_mesh(data=8, fsdp=1)
    st = TrainState.create(params, tx, seed=0)
    sh = jax.tree.map(lambda _: shd.replicated(mesh), st)
    return shd.place(st, sh), sh


def test_disk_full_is_recognised_in_any_form():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(ValueError(_ORBAX_ENOSPC.format(d="/x")))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("DATA_LOSS: Error reading"))


def test_checkpoint_save_on_full_disk_removes_partial_save(tmp_path, rng, monkeypatch):
    s1, _ = _state(rng, 64)
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, keep=3) as ckpt:
        ckpt.save(1, s1, meta={"data_position": 1})

        def full(step, **_kw):  # Orbax's own order: write into <step>.orbax-checkpoint-tmp, fail
            partial = directory / f"{step}.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"
            partial.mkdir(parents=True)
            (partial / "chunk").write_bytes(b"\0" * 1000)
            raise ValueError(_ORBAX_ENOSPC.format(d=directory))

        monkeypatch.setattr(ckpt.manager, "save", full)
        with pytest.raises(DiskFullError) as info:
            ckpt.save(2, s1, meta={"data_position": 2})
    assert str(info.value) == (f"no space left on device (ENOSPC) while writing {directory / '2'}; "
                               "the partial checkpoint was removed")
    assert sorted(p.name for p in directory.iterdir()) == ["1"]


def test_full_tmpfs_checkpoint_and_metrics(small_fs, rng):
    """Real ENOSPC: the partial save's space is given back at once, the last checkpoint stays
    restorable, and metrics writes name their file."""
    fs = small_fs(1.0)
    small, sh = _state(rng, 1000)
    big, _ = _state(rng, 400_000)  # 1.6 MB of random weights (Adam's zero moments compress away)
    with Checkpointer(fs / "ckpt", keep=3) as ckpt:
        ckpt.save(1, small, meta={"data_position": 1})
        free = shutil.disk_usage(fs).free
        with pytest.raises(DiskFullError, match=f"ENOSPC.*{fs / 'ckpt' / '2'}"):
            ckpt.save(2, big, meta={"data_position": 2})
        assert sorted(p.name for p in (fs / "ckpt").iterdir()) == ["1"]
        assert shutil.disk_usage(fs).free == free
        restored, meta = ckpt.restore_latest(abstract_like(small, sh))
        assert meta["data_position"] == 1
    (fs / "filler").write_bytes(b"\0" * (shutil.disk_usage(fs).free - 4096))
    metrics = MetricsWriter(fs, tensorboard=False)
    with pytest.raises(OSError) as info:
        for step in range(1000):
            metrics.write({"step": step, "note": "x" * 500})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(fs / "metrics.jsonl")


def _parse(argv):
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    return p.parse_args(argv)


def test_cli_reports_disk_full_in_one_line(tmp_path, capsys, monkeypatch):
    """Whatever write hits ENOSPC, ``jaxembed train`` prints one line naming it, exit 1."""
    from jaxembed.train import trainer

    def full(*_a, **_kw):
        with open(os.devnull, "w"):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.jsonl"))

    monkeypatch.setattr(trainer, "_train", full)
    args = _parse([f"{REPO / 'configs' / 'quickstart.py'}:tiny", "--workdir", str(tmp_path)])
    assert train_cli.run(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxembed train: no space left on device (ENOSPC) while writing "
                   f"{tmp_path / 'metrics.jsonl'}"]


def test_training_into_a_full_disk_stops_in_one_line(small_fs, capfd):
    """The quick-start reproduction on a 3 MB disk: the first checkpoint (~12 MB) cannot be
    written; exit 1 with one line, no partial checkpoint, no traceback or exit-time noise."""
    work = small_fs(3.0) / "work"
    args = _parse([f"{REPO / 'configs' / 'quickstart.py'}:tiny", "--workdir", str(work),
                   "--set", "batch_size=8", "--set", "eval_every=0", "--set", "save_every=1",
                   "--set", "progress=false", "--set", "steps=2"])
    assert train_cli.run(args) == 1
    out, err = capfd.readouterr()
    assert err.strip().splitlines() == [
        f"jaxembed train: no space left on device (ENOSPC) while writing {work / 'ckpt' / '1'}; "
        f"the partial checkpoint was removed"], err
    assert sorted(p.name for p in (work / "ckpt").iterdir()) == []
    assert not (work / "export").exists()
