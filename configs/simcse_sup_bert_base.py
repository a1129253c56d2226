"""Supervised SimCSE, BERT-base (Gao et al. 2021, arXiv 2104.08821, §4).

    jaxembed train configs/simcse_sup_bert_base.py --workdir /tmp/simcse_sup
    jaxembed train configs/simcse_sup_bert_base.py:tiny --workdir /tmp/t   # CPU smoke run

Paper settings: bert-base-uncased, SNLI+MNLI triplets (premise, entailment
as positive, contradiction as hard negative; ``nli_for_simcse.csv``, 275k
rows), 3 epochs, batch 512, lr 5e-5, max length 32, tau 0.05, hard-negative
weight alpha = 1, STS-B dev every 125 steps keeping the best, fp16 (here
bf16 compute, float32 params and losses).

Pooling: SimCSE keeps the [CLS] MLP at test time for the supervised model and
exports it as BERT's pooler; here the MLP *is* the encoder's pooler
(``train_pooling = eval_pooling = "cls"``, ``mlp=False``), initialised from
the pre-trained pooler instead of from scratch (a deliberate difference).

Expected: STS-B dev 86.2 (Table 6 / Eq. 8, alpha = 1); STS12-16 + STS-B +
SICK-R test average 81.57 (Table 5).
Hardware: the SimCSE supervised script launches 4 GPUs (torch.distributed).

Data: ``$JAXEMBED_DATA/nli_for_simcse.csv`` if present, else triplets built from
the SentEval-format SNLI dev split (``snli:DIR:dev``, 2,954 triplets).
"""

import pathlib
import runpy

from jaxembed.assets import QUICKSTART, shared_data
from jaxembed.train.config import TrainConfig

# configs are loaded by path, not as a package: the shared ``:tiny`` helper sits beside this file
variant = runpy.run_path(str(pathlib.Path(__file__).with_name("_common.py")))["variant"]

DATA = shared_data()


def nli() -> str:
    full = DATA / "nli_for_simcse.csv"
    return str(full) if full.exists() else f"snli:{DATA / 'corpora' / 'snli_senteval'}:dev"


def get_config(arg=None):
    cfg = TrainConfig(
        model="bert-base-uncased",
        objective="simcse_sup",
        train_pooling="cls",
        eval_pooling="cls",
        mlp=False,
        temperature=0.05,
        data=nli(),
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=32,
        batch_size=512,
        epochs=3,
        learning_rate=5e-5,
        mixed_precision=True,
        eval_every=125,
        save_every=125,
        keep=2,
        seed=42,
    )
    return variant(cfg, arg, data=f"snli:{DATA / 'corpora' / 'snli_senteval'}:dev")
