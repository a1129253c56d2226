"""The output folder of ``jaxembed encode``: numbered ``.npy`` shards and ``manifest.json``.

Layout::

    OUT/shard-00000.npy   float32 [rows_per_shard, dim]   (the last shard may be shorter)
    OUT/shard-00001.npy   ...
    OUT/manifest.json     what produced them, and how far the input has been read

A shard is *complete* when its file is in place (written whole, then renamed:
:func:`jaxembed.files.atomic_write_bytes`) **and** the manifest, rewritten the
same way after it, lists it. A run killed at any moment therefore leaves the
manifest of the last complete shard, at worst plus a shard file it does not
list (rewritten identically on resume). The manifest records the byte offset
and line number of the input just past the last complete shard, so a resumed
run seeks there and continues; it holds no times, so a resumed output folder
is byte-identical to an uninterrupted one.

Manifest keys: ``format``; the run's ``settings`` (model, pooling, normalize,
max_length, dim, dtype, prompt, input path/field/size/mtime, rows_per_shard,
batch_size, devices; a resume under other settings is refused, naming them);
``shards`` (``file``, ``rows``, ``first_row``, ``first_line``, ``last_line``);
``total_rows``; ``lines_read``; ``input_offset``; ``bad_lines`` (``line``,
``reason``: every skipped line up to ``lines_read``); ``complete``.

Row ``i`` of the concatenated shards is the ``i``-th good line of the input:
:func:`row_lines` gives each row's line number.

Example::

    manifest = read_manifest("out/")
    X = load_embeddings("out/")          # np.float32 [total_rows, dim]
    lines = row_lines(manifest)          # int64 [total_rows], 1-based input lines
"""

from __future__ import annotations

import io
import json
import pathlib
from typing import Optional

import numpy as np

from jaxembed.files import atomic_write_bytes, atomic_write_text

__all__ = [
    "MANIFEST", "FORMAT", "ResumeError", "shard_file", "read_manifest", "start_manifest",
    "commit_shard", "finish", "load_embeddings", "row_lines",
]

MANIFEST = "manifest.json"
FORMAT = "jaxembed-encode/1"


class ResumeError(ValueError):
    """The output folder holds another run (other settings) or something else entirely."""


def shard_file(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.npy``, ``shard-00001.npy``, ..."""
    return f"shard-{index:05d}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def read_manifest(output) -> Optional[dict]:
    """The manifest in folder ``output``, or None if there is none."""
    path = pathlib.Path(output) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ResumeError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a {FORMAT} manifest")
    return manifest


def _write_manifest(output: pathlib.Path, manifest: dict) -> None:
    atomic_write_text(output / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def start_manifest(output, settings: dict) -> dict:
    """The manifest to continue from in folder ``output`` (created if missing).

    A new or empty folder gets a fresh manifest; a folder with a manifest of the
    same ``settings`` gets that one back (to resume, or nothing left to do when it
    is ``complete``), after checking that the shards it lists exist. Raises
    :class:`ResumeError` for another run's folder (naming the settings that
    differ) and for a non-empty folder without a manifest.
    """
    output = pathlib.Path(output)
    if output.exists() and not output.is_dir():
        raise ResumeError(f"--output {output} exists and is not a folder")
    manifest = read_manifest(output)
    if manifest is None:
        if output.is_dir() and any(not p.name.startswith(".") for p in output.iterdir()):
            raise ResumeError(
                f"--output {output} is not empty and has no {MANIFEST}; "
                "choose a new or empty folder")
        manifest = {
            "format": FORMAT, "settings": settings, "shards": [], "total_rows": 0,
            "lines_read": 0, "input_offset": 0, "bad_lines": [], "complete": False,
        }
        output.mkdir(parents=True, exist_ok=True)
        _write_manifest(output, manifest)
        return manifest
    old = manifest.get("settings", {})
    changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ResumeError(
            f"--output {output} holds a run with other settings ({diffs}); "
            "use the same settings to resume, or a new folder")
    for shard in manifest["shards"]:
        if not (output / shard["file"]).is_file():
            raise ResumeError(f"{output / shard['file']} is listed in {MANIFEST} but missing")
    return manifest


def commit_shard(
    output, manifest: dict, rows: np.ndarray, *, first_line: int, last_line: int,
    input_offset: int, bad_lines: list,
) -> dict:
    """Write the next shard (``rows`` [n, dim]) atomically, then the manifest that lists
    it, the input read up to ``last_line`` (ending at byte ``input_offset``) and the
    ``bad_lines`` found since the previous shard. Returns the new manifest."""
    output = pathlib.Path(output)
    index = len(manifest["shards"])
    name = shard_file(index)
    atomic_write_bytes(output / name, _npy_bytes(rows))
    new = dict(manifest)
    new["shards"] = manifest["shards"] + [{
        "file": name, "rows": int(len(rows)), "first_row": manifest["total_rows"],
        "first_line": first_line, "last_line": last_line,
    }]
    new["total_rows"] = manifest["total_rows"] + int(len(rows))
    new["lines_read"], new["input_offset"] = last_line, input_offset
    new["bad_lines"] = manifest["bad_lines"] + list(bad_lines)
    _write_manifest(output, new)
    return new


def finish(output, manifest: dict, *, lines_read: int, input_offset: int, bad_lines: list) -> dict:
    """Mark the run complete: the input read to its end (``lines_read`` lines), with the
    ``bad_lines`` after the last shard. Returns the new manifest."""
    new = dict(manifest, lines_read=lines_read, input_offset=input_offset, complete=True)
    new["bad_lines"] = manifest["bad_lines"] + list(bad_lines)
    _write_manifest(pathlib.Path(output), new)
    return new


def load_embeddings(output) -> np.ndarray:
    """All rows of the shards listed in ``output``'s manifest, concatenated: [total_rows, dim]
    (for a corpus too large for memory, ``np.load(shard, mmap_mode="r")`` each shard)."""
    output = pathlib.Path(output)
    manifest = read_manifest(output)
    if manifest is None:
        raise FileNotFoundError(f"{output / MANIFEST} not found")
    parts = [np.load(output / s["file"], allow_pickle=False) for s in manifest["shards"]]
    if not parts:
        return np.zeros((0, manifest["settings"]["dim"]), np.float32)
    return np.concatenate(parts)


def row_lines(manifest: dict) -> np.ndarray:
    """int64 [total_rows]: the input line number (from 1) of every row, in row order."""
    bad = np.asarray(sorted(b["line"] for b in manifest["bad_lines"]), np.int64)
    last = manifest["shards"][-1]["last_line"] if manifest["shards"] else 0
    lines = np.arange(1, last + 1, dtype=np.int64)
    return np.setdiff1d(lines, bad, assume_unique=True)
