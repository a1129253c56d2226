"""Unsupervised SimCSE, BERT-base (Gao et al. 2021, arXiv 2104.08821).

    jaxembed train configs/simcse_unsup_bert_base.py --workdir /tmp/simcse_unsup
    jaxembed train configs/simcse_unsup_bert_base.py:tiny --workdir /tmp/t   # CPU smoke run

Paper settings (README + Table A.1, run_unsup_example.sh): bert-base-uncased,
wiki1m (10^6 sentences), 1 epoch, batch 64, lr 3e-5, max length 32, tau 0.05,
[CLS] with a Linear+tanh MLP at training only (evaluated as
``cls_before_pooler``), STS-B dev every 125 steps keeping the best, fp16
(here: ``mixed_precision`` = bf16 compute, float32 params and losses).

Expected: STS-B dev 82.5 (Table 6, "w/ MLP (train)"); STS12-16 + STS-B +
SICK-R test average 76.25 (Table 5, "all" aggregation).
Hardware in the paper: not restated in our notes (the SimCSE scripts run
unsupervised training on one GPU).

Data: ``$JAXEMBED_DATA/corpora/wiki1m/wiki1m_for_simcse.txt`` (the full
1M-line file); when only the 11,914-line prefix is present it is used instead.
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
        objective="simcse_unsup",
        train_pooling="cls_before_pooler",
        eval_pooling="cls_before_pooler",
        mlp=True,
        num_views=2,
        temperature=0.05,
        data=wiki1m_corpus(),
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=32,
        batch_size=64,
        epochs=1,
        learning_rate=3e-5,
        mixed_precision=True,
        eval_every=125,
        save_every=125,
        keep=2,
        seed=42,
    )
    return variant(cfg, arg, data=str(QUICKSTART / "wiki1m_first2500.txt"))
