"""The jit-compiled, sharded train step (state donated) and sharded state creation.

``train_step(state, batch) -> (state', metrics)``::

    key            = fold_in(state.rng, state.step)
    (loss, aux), g = value_and_grad(objective.loss)(state.params, batch, key)
    updates, opt'  = tx.update(g, state.opt_state, state.params)   # clip + AdamW
    params'        = params + updates

``metrics``: ``loss``, ``grad_norm`` (before clipping), ``lr`` (the rate this
update used) and the objective's aux values, all float32 scalars.

Placement: ``in_shardings``/``out_shardings`` come from
:mod:`jaxembed.train.sharding` (params and optimiser moments FSDP-sharded by
logical axes, small ones replicated, batch over ``data`` x ``fsdp``); the step
is traced under :func:`~jaxembed.train.sharding.logical_axis_context`, so the
encoder's activation constraints (``nn.with_logical_constraint``) are part of
the compiled program; the state argument is donated so the update happens in
place.

Example::

    params, logical = initial_params(enc, objective, head_key=jax.random.PRNGKey(1))
    shardings = state_shardings(params, tx, mesh, logical=logical)
    state = create_state(params, tx, shardings, seed=0)
    step = make_train_step(objective.loss, tx, schedule, shardings, mesh)
    state, metrics = step(state, shard_batch(batch, mesh))

or, the same in one call (what the benchmarks time)::

    state, step = build_train_step(enc, objective, tx, schedule, mesh)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxembed.train import sharding as shd
from jaxembed.train.state import TrainState


def state_shardings(params, tx: optax.GradientTransformation, mesh, *, logical=None,
                    hidden_size: int | None = None,
                    min_shard_bytes: int = shd.MIN_SHARD_BYTES) -> TrainState:
    """A ``TrainState`` of ``NamedSharding``s: optimiser leaves that mirror a
    parameter get that parameter's sharding; the rest (counts, step, rng) replicate.
    ``params`` may be arrays or ``ShapeDtypeStruct``s."""
    p_sh = shd.param_shardings(params, mesh, logical=logical, hidden_size=hidden_size,
                               min_shard_bytes=min_shard_bytes)
    abstract_opt = jax.eval_shape(tx.init, params)
    rep = shd.replicated(mesh)
    # optax.masked / multi_transform states (LoRA: jaxembed.train.adapters) hold MaskedNode
    # where a parameter is not theirs: it stays, the other leaves get the param's sharding
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_sh = optax.tree_map_params(tx, lambda v, s: v if masked(v) else s, abstract_opt, p_sh,
                                   transform_non_params=lambda _: rep, is_leaf=masked)
    return TrainState(step=rep, params=p_sh, opt_state=opt_sh, rng=rep)


def create_state(params, tx: optax.GradientTransformation, shardings: TrainState, *,
                 seed: int) -> TrainState:
    """Place host ``params`` and initialise the optimiser directly in its shardings."""
    placed = shd.place(params, shardings.params)
    init = jax.jit(lambda p: TrainState.create(p, tx, seed=seed), out_shardings=shardings)
    return init(placed)


def make_train_step(loss_fn, tx: optax.GradientTransformation, schedule, shardings: TrainState,
                    mesh, *, value_and_grad=None):
    """Compile ``train_step`` for ``shardings``; batch leaves sharded on their first axis.

    ``value_and_grad(params, batch, key) -> ((loss, aux), grads)`` replaces
    ``jax.value_and_grad(loss_fn, has_aux=True)`` when given (GradCache).
    """

    def train_step(state: TrainState, batch: dict):
        grad_fn = value_and_grad or jax.value_and_grad(loss_fn, has_aux=True)
        with shd.logical_axis_context(mesh):
            (loss, aux), grads = grad_fn(state.params, batch, state.step_key())
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss.astype(jnp.float32), "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(schedule(state.step), jnp.float32),
                   **{k: v.astype(jnp.float32) for k, v in aux.items()}}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    rep = shd.replicated(mesh)
    return jax.jit(train_step, in_shardings=(shardings, shd.batch_sharding(mesh)),
                   out_shardings=(shardings, rep), donate_argnums=(0,))


def encoder_logical_axes(enc):
    """Logical axis names (tuples) of ``enc.params``, from ``enc.param_axes()``."""
    from jax.sharding import PartitionSpec

    return jax.tree.map(lambda spec: tuple(spec), enc.param_axes(),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def initial_params(enc, objective, *, head_key: jax.Array) -> tuple[dict, dict | None]:
    """Host parameters ``{"encoder", "head"}`` (NumPy leaves) and their logical axis
    names (``None`` when the encoder carries none); heads initialised from ``head_key``."""
    heads, head_names = shd._unbox(objective.init_heads(head_key))
    params = {"encoder": jax.tree.map(np.asarray, enc.params),
              "head": jax.tree.map(np.asarray, heads)}
    enc_axes = encoder_logical_axes(enc)
    logical = None if enc_axes is None else {"encoder": enc_axes, "head": head_names}
    return params, logical


def build_train_step(enc, objective, tx: optax.GradientTransformation, schedule, mesh, *,
                     seed: int = 0):
    """``(state, step)``: a fresh sharded ``TrainState`` and its compiled step, built as
    the trainer builds them for ``seed`` (heads from ``PRNGKey(seed + 1)``)."""
    params, logical = initial_params(enc, objective, head_key=jax.random.PRNGKey(seed + 1))
    shardings = state_shardings(params, tx, mesh, logical=logical, hidden_size=enc.hidden_size)
    state = create_state(params, tx, shardings, seed=seed)
    step = make_train_step(objective.loss, tx, schedule, shardings, mesh,
                           value_and_grad=objective.value_and_grad)
    return state, step
