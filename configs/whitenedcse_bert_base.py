"""WhitenedCSE, BERT-base (Zhuo et al., ACL 2023, arXiv 2305.17746).

    jaxembed train configs/whitenedcse_bert_base.py --workdir /tmp/whitenedcse
    jaxembed train configs/whitenedcse_bert_base.py:tiny --workdir /tmp/t   # CPU smoke run

Settings of the official ``run_unsup_example.sh`` (SupstarZh/WhitenedCSE):
bert-base-uncased, wiki1m, 1 epoch, batch 128, lr 1e-5, max length 32,
tau 0.05, 128 groups (6 channels each), 3 dropout views, [CLS] -> shuffled
group whitening -> Linear+tanh MLP -> InfoNCE at training only (evaluated as
``cls_before_pooler``), no whitening epsilon, STS-B dev every 125 steps
keeping the best, fp16 (here bf16 compute, float32 params and losses).

One deliberate difference: which rows are whitened together. jaxembed
whitens each view on its own, ``views[:, k]`` of the ``[B, P, D]`` views, with
its own channel shuffle (``jaxembed/losses/whitened_cse.py``), as the paper's
Fig. 1 draws it: one shuffled group whitening per positive. The released code
(``whitenedcse/models.py`` and ``whitenedcse/shuffled_group_whitening.py`` in
SupstarZh/WhitenedCSE) stacks the batch sentence-major, rows
``(sentence, view)``, and whitens three contiguous thirds of those ``3B``
rows: each third holds all three views of ``B/3`` sentences, so its
covariances mix the views, where jaxembed's cover one view of all ``B``.

Expected: STS12-16 + STS-B + SICK-R test average 78.78 (README: STS-B 81.14).
Hardware: the script makes 2 GPUs visible without DDP (effective batch may be 256).

Data: ``$JAXEMBED_DATA/corpora/wiki1m/wiki1m_for_simcse.txt``, or the local
11,914-line prefix when the full file is absent.
"""

import pathlib
import runpy

from jaxembed.assets import QUICKSTART, wiki1m_corpus
from jaxembed.train.config import TrainConfig

# configs are loaded by path, not as a package: the shared ``:tiny`` helper sits beside this file
variant = runpy.run_path(str(pathlib.Path(__file__).with_name("_common.py")))["variant"]


def get_config(arg=None):
    cfg = TrainConfig(
        model="bert-base-uncased",
        objective="whitenedcse",
        train_pooling="cls_before_pooler",
        eval_pooling="cls_before_pooler",
        mlp=True,
        num_views=3,
        num_groups=128,
        whitening_eps=0.0,
        whitening_method="eigh",
        temperature=0.05,
        data=wiki1m_corpus(),
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=32,
        batch_size=128,
        epochs=1,
        learning_rate=1e-5,
        mixed_precision=True,
        eval_every=125,
        save_every=125,
        keep=2,
        seed=42,
    )
    return variant(cfg, arg, data=str(QUICKSTART / "wiki1m_first2500.txt"), num_groups=4)
