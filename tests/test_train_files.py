"""Atomic file and folder writes (jaxembed.files) and the metrics file rewritten on resume,
checked against real SIGKILLs and injected write failures."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import pytest

from jaxembed import files
from jaxembed.files import atomic_dir, atomic_write_bytes, atomic_write_text
from jaxembed.train.metrics import MetricsWriter, read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent


def _siblings(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path, rng):
    target = tmp_path / "sub" / "f.bin"
    for _ in range(3):
        data = rng.bytes(int(rng.integers(0, 5000)))
        atomic_write_bytes(target, data)
        assert target.read_bytes() == data
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"
    assert _siblings(target) == []


def test_atomic_write_honours_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_failed_write_keeps_old_content(tmp_path, monkeypatch):
    """A write that fails half-way (here: ENOSPC at fsync) leaves the old file and no temp."""
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old content\n")

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "new content that will not fit\n")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_text() == "old content\n"
    assert _siblings(target) == []


def test_atomic_dir_swaps_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
        (tmp / "b.txt").write_text("v1")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("v2")
            raise RuntimeError("export failed half-way")
    assert (target / "a.txt").read_text() == "v1" and (target / "b.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert _siblings(target) == []


def test_atomic_dir_without_exchange_uses_two_renames(tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is unavailable the swap still ends complete."""
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "export"
    for v in ("v1", "v2"):
        with atomic_dir(target) as tmp:
            (tmp / "x.txt").write_text(v)
        assert (target / "x.txt").read_text() == v
    assert _siblings(target) == []


# A child that rewrites one file or folder and SIGKILLs itself `delay` seconds after it opens
# a file to write it (found by an audit hook on "open"), i.e. in the middle of the write or
# of the rename after it. What is on disk afterwards must be one complete version.
_WRITER = r"""
import os, pathlib, signal, sys, threading
from jaxembed.files import atomic_dir, atomic_write_text
from jaxembed.train.metrics import MetricsWriter
kind, target, trigger = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
delay = float(sys.argv[4])
armed = [True]

def hook(event, args):
    if event != "open" or not armed[0] or trigger not in str(args[0]):
        return
    if (args[2] or 0) & (os.O_WRONLY | os.O_RDWR):  # (path, mode, flags): opened to write
        armed[0] = False
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

sys.addaudithook(hook)
line = "x" * 2000
for i in range(1, 1000):
    if kind == "file":
        atomic_write_text(target, f"v{i}\n" + line * 10_000 + "\nend\n")
    elif kind == "dir":
        with atomic_dir(target) as tmp:
            for j in range(20):
                (tmp / f"part{j}").write_text(f"v{i}\n" + line * 500 + "\nend\n")
    else:  # metrics.jsonl rewritten on resume, dropping nothing
        MetricsWriter(target, tensorboard=False).truncate_after(10**9)
"""


def _complete_file(text: str) -> bool:
    head, _, rest = text.partition("\n")
    return head.startswith("v") and rest.endswith("\nend\n")


@pytest.mark.parametrize("kind", ["file", "dir", "metrics"])
def test_sigkill_mid_write_leaves_a_complete_version(tmp_path, rng, kind):
    target = tmp_path / {"file": "f.txt", "dir": "export", "metrics": "work"}[kind]
    trigger = {"file": "f.txt", "dir": ".export.tmp-", "metrics": "metrics.jsonl"}[kind]
    if kind == "file":
        atomic_write_text(target, "v0\n" + "x" * 10 + "\nend\n")
    elif kind == "dir":
        with atomic_dir(target) as tmp:
            for j in range(20):
                (tmp / f"part{j}").write_text("v0\nx\nend\n")
    else:  # 8 MB: rewriting it in place takes milliseconds, longer than most kill delays
        rows = [{"step": s, "loss": 1.0 / (s + 1), "pad": "y" * 40_000} for s in range(200)]
        target.mkdir()
        (target / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for delay in [0.0, *rng.uniform(0.0002, 0.005 if kind == "metrics" else 0.02, size=4)]:
        out = subprocess.run([sys.executable, "-c", _WRITER, kind, str(target), trigger,
                              str(delay)], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
        if kind == "file":
            assert _complete_file(target.read_text())
        elif kind == "dir":
            parts = sorted(target.iterdir())
            assert [p.name for p in parts] == sorted(f"part{j}" for j in range(20))
            versions = {p.read_text().partition("\n")[0] for p in parts}
            assert len(versions) == 1 and all(_complete_file(p.read_text()) for p in parts)
        else:
            got = read_metrics(target)
            assert len(got) == 200 and got[-1]["step"] == 199
    # the next write clears what the killed writers left behind
    if kind == "file":
        atomic_write_text(target, "v9\nx\nend\n")
    elif kind == "dir":
        with atomic_dir(target) as tmp:
            (tmp / "part0").write_text("v9\nx\nend\n")
    else:
        MetricsWriter(target, tensorboard=False).truncate_after(5)
        target = target / "metrics.jsonl"
    assert [n for n in _siblings(target) if n.startswith(".")] == []


def test_metrics_truncate_keeps_rows_up_to_step(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for s in range(6):
            w.write({"step": s, "loss": float(s)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a line cut by a kill
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        w.truncate_after(3)
        w.write({"step": 4, "loss": 40.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_loss_is_printed_with_four_significant_digits():
    """The progress bar and the CLI's last line show a small loss moving (``.4f`` printed
    ``0.0000`` for most quick-start steps)."""
    from jaxembed.train.metrics import format_loss

    assert format_loss(0.69314718) == "0.6931" and format_loss(12.3456) == "12.35"
    assert format_loss(3.2107e-05) == "3.211e-05" != format_loss(2.9e-05) == "2.9e-05"
    assert format_loss(float("nan")) == "nan"
