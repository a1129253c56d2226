"""Encode a corpus file into shards, resumably: :func:`encode_file`.

The input is streamed (:mod:`jaxembed.bulk.inputs`): good lines are gathered
until ``rows_per_shard`` of them are waiting, encoded with ``Encoder.encode``
on all the given devices (data-parallel, see :mod:`jaxembed.models.inference`),
and committed as the next shard (:mod:`jaxembed.bulk.shards`); bad lines are
recorded in the manifest with their line numbers and reasons. Memory holds one
shard's texts and embeddings, whatever the size of the input.

Each shard is encoded by one ``encode`` call on exactly its texts, so its
batches -- and therefore its bytes -- do not depend on where a previous run
stopped: a resumed run's output is byte-identical to an uninterrupted one.

Example::

    enc = Encoder.from_pretrained("all-MiniLM-L6-v2/")
    manifest = encode_file(enc, "corpus.txt", "out/", model="all-MiniLM-L6-v2/")
    manifest["total_rows"], manifest["bad_lines"][:3]
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Optional, Sequence, TextIO

from jaxembed.bulk import shards
from jaxembed.bulk.inputs import stream_lines

__all__ = ["encode_file", "Throughput"]

SHOW_BAD = 5  # bad lines named on stderr at the end (all of them are in the manifest)


class Throughput:
    """Progress on a text stream: rows done and sentences/s, rewritten in place on a
    terminal (every ``interval`` s), one line per ``interval`` otherwise.
    ``update(n)`` is what ``Encoder.encode(progress=...)`` calls."""

    def __init__(self, stream: TextIO, *, done: int = 0, interval: Optional[float] = None):
        self.stream, self.done, self.new = stream, done, 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.start = self.last = time.perf_counter()

    def rate(self) -> float:
        """Sentences per second encoded by this run so far."""
        return self.new / max(time.perf_counter() - self.start, 1e-9)

    def update(self, n: int) -> None:
        self.done += n
        self.new += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.say(f"{self.done} rows, {self.rate():.1f} sentences/s", transient=True)

    def say(self, text: str, *, transient: bool = False) -> None:
        """Print ``text``; on a terminal a ``transient`` line is overwritten by the next."""
        if self.tty:
            end = "" if transient else "\n"
            self.stream.write(f"\r\033[K{text}{end}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def settings_of(enc, input_path: pathlib.Path, *, model: str, field, prompt, rows_per_shard,
                batch_size, max_length, devices) -> dict:
    """What a run depends on; a resume must match it exactly (see :mod:`shards`).
    ``prompt`` is recorded as applied: ``--prompt``, else the model's default prompt."""
    from jaxembed.models.inference import chosen_prompt

    stat = input_path.stat()
    return {
        "model": model, "model_type": enc.config.model_type, "pooling": enc.pooling,
        "normalize": enc.normalize, "max_length": max_length, "dim": enc.dim,
        "dtype": "float32", "prompt": chosen_prompt(enc, prompt=prompt),
        "input": {"path": str(input_path.resolve()), "field": field, "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns},
        "rows_per_shard": rows_per_shard, "batch_size": batch_size,
        "devices": f"{len(devices)} x {devices[0].platform}",
    }


def encode_file(
    enc,
    input_path,
    output,
    *,
    model: str,
    field: Optional[str] = None,
    prompt: Optional[str] = None,
    rows_per_shard: int = 65536,
    batch_size: int = 128,
    max_length: Optional[int] = None,
    devices: Optional[Sequence] = None,
    log: Optional[TextIO] = None,
) -> dict:
    """Encode every good line of ``input_path`` into shards in folder ``output``.

    ``model`` names the model in the manifest; ``field``: JSONL input, text in that
    field; ``prompt``: ``Encoder.encode``'s ``prompt=`` (a prefix as
    ``SentenceTransformer.encode(..., prompt=)``, or a template with ``{text}``; ``None``:
    the model's default prompt, if any); ``devices``: default ``jax.local_devices()``.
    Continues from the last complete shard when ``output`` holds an unfinished run of the
    same settings (and does nothing when it is finished); raises ``shards.ResumeError`` for
    other settings. Progress and a summary go to ``log`` (default stderr). Returns the
    final manifest (``total_rows``, ``bad_lines``, ...).
    """
    import jax

    log = sys.stderr if log is None else log
    input_path, output = pathlib.Path(input_path), pathlib.Path(output)
    devices = list(devices or jax.local_devices())
    max_length = max_length or enc.max_length
    settings = settings_of(enc, input_path, model=model, field=field, prompt=prompt,
                           rows_per_shard=rows_per_shard, batch_size=batch_size,
                           max_length=max_length, devices=devices)
    manifest = shards.start_manifest(output, settings)
    progress = Throughput(log, done=manifest["total_rows"])
    if manifest["complete"]:
        progress.say(f"{output} is already complete: {manifest['total_rows']} rows")
        return manifest
    if manifest["shards"]:
        progress.say(f"resuming after shard {len(manifest['shards']) - 1} "
                     f"(line {manifest['lines_read']}, {manifest['total_rows']} rows)")
    progress.say(f"encoding {input_path} on {settings['devices']} device(s), "
                 f"{rows_per_shard} rows per shard")

    def commit(texts, bad, first_line, last_line, end):
        rows = enc.encode(texts, prompt=prompt, batch_size=batch_size, max_length=max_length,
                          progress=progress, devices=devices)
        new = shards.commit_shard(output, manifest, rows, first_line=first_line,
                                  last_line=last_line, input_offset=end, bad_lines=bad)
        progress.say(f"{new['shards'][-1]['file']}: {new['total_rows']} rows "
                     f"(line {last_line}), {progress.rate():.1f} sentences/s")
        return new

    texts, bad = [], []
    first_line = last_line = manifest["lines_read"]
    first_line += 1
    end = manifest["input_offset"]
    for rec in stream_lines(input_path, field=field, offset=end, first_line=first_line):
        last_line, end = rec.line, rec.end
        if rec.text is None:
            bad.append({"line": rec.line, "reason": rec.reason})
            continue
        texts.append(rec.text)
        if len(texts) == rows_per_shard:
            manifest = commit(texts, bad, first_line, last_line, end)
            texts, bad, first_line = [], [], last_line + 1
    if texts:
        manifest = commit(texts, bad, first_line, last_line, end)
        bad = []
    manifest = shards.finish(output, manifest, lines_read=last_line, input_offset=end,
                             bad_lines=bad)
    n_bad = len(manifest["bad_lines"])
    progress.say(f"done: {manifest['total_rows']} rows in {len(manifest['shards'])} shard(s), "
                 f"{progress.rate():.1f} sentences/s; {n_bad} bad line(s) skipped"
                 + (f", listed in {output / shards.MANIFEST}" if n_bad else ""))
    for b in manifest["bad_lines"][:SHOW_BAD]:
        progress.say(f"  {input_path}:{b['line']}: {b['reason']}")
    if n_bad > SHOW_BAD:
        progress.say(f"  ... and {n_bad - SHOW_BAD} more")
    return manifest
