"""The sharded trainer: config, sharding rules, objectives, step, checkpoints, loop.

Modules: ``config`` (typed ``TrainConfig`` + loaders), ``sharding`` (the
logical-axis rules table and placement), ``state`` (TrainState, AdamW
schedule), ``objectives`` (SimCSE / WhitenedCSE / DSE / 2DMSE from
``jaxembed.losses``), ``step`` (the jit step), ``checkpoint`` (Orbax),
``metrics`` (JSONL + TensorBoard), ``flops`` (MFU), ``health`` (non-finite /
collapsed training), ``workdir`` (the workdir lock and recorded config),
``errors`` (what the CLI reports in one line), ``trainer`` (the loop),
``distributed`` (multi-process start-up), ``cli`` (``jaxembed train``), ``plan``
(compile the step for a TPU topology without one: ``jaxembed plan``).
Nothing is imported eagerly so ``jaxembed --help`` stays fast.
"""
