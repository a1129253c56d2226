"""End to end: a collapsed run (the quick-start with learning_rate=1e6, whose gradient is
exactly zero from step 2) stops with one line and exit status 1 instead of exporting."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from jaxembed.train import cli as train_cli

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_collapsed_run_is_an_error_not_an_export(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    work = tmp_path / "work"
    args = parser.parse_args([
        f"{REPO / 'configs' / 'quickstart.py'}:tiny", "--workdir", str(work),
        "--set", "batch_size=8", "--set", "eval_every=0", "--set", "save_every=1",
        "--set", "progress=false",
        "--set", "steps=4", "--set", "learning_rate=1e6", "--set", "collapse_steps=2"])
    assert train_cli.run(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly zero for steps 2-3 (collapse_steps=2)" in err[0], err
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    norms = {r["step"]: r["grad_norm"] for r in rows if "grad_norm" in r}
    assert norms[1] > 0 and norms[2] == norms[3] == 0.0 and 4 not in norms
    assert not (work / "export").exists()
