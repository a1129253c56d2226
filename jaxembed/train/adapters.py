r"""LoRA in the trainer: ``TrainConfig.lora = {"target": ..., "rank": ..., "alpha": ...}``.

The keys are :class:`jaxembed.lora.LoraSpec`'s fields (validated when the config is
built). With LoRA on, the train state's params are ``{"encoder": frozen base, "head":
heads, "lora": adapters}`` and

* the objective sees ``{"encoder": lora.apply(base, adapters), "head": heads}`` (adapter
  dropout keyed by the step key); its gradient with respect to those params -- plain or
  GradCache -- is pulled back through ``lora.apply`` to the adapters (``jax.vjp``), so
  every objective and ``grad_cache_chunk`` work unchanged;
* the optimizer is ``optax.multi_transform``: the configured one on ``lora`` and
  ``head``, ``set_to_zero`` (no state) on the encoder, whose zero gradient is never used;
* evaluation and export see the merged encoder; the export folder also holds the
  adapter-only files in ``lora/`` (:func:`jaxembed.lora.save_adapters`).

Without LoRA (``cfg.lora is None``) :func:`setup` returns everything unchanged.

Example::

    cfg = TrainConfig(..., lora={"target": r"layer_\d+/attention/(query|value)/kernel",
                                 "rank": 8, "alpha": 16, "dropout": 0.05})
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxembed import lora
from jaxembed.train import sharding as shd

ADAPTERS_DIR = "lora"
_DROPOUT_SALT = 0x10BA  # adapter dropout key: fold_in(step key, salt), apart from the encoder's


@dataclasses.dataclass(frozen=True)
class LoraRun:
    """What the trainer needs from LoRA: ``encoder(params)`` -> the encoder params to
    evaluate and export (merged); ``to_host(params)`` (collective: every process calls)
    and ``save(host, directory)`` write the adapter files into an export folder."""

    spec: Optional[lora.LoraSpec]

    def encoder(self, params):
        if self.spec is None:
            return params["encoder"]
        return _merged(params["encoder"], params["lora"], self.spec)

    def to_host(self, params):
        if self.spec is None:
            return None
        return shd.to_host({"encoder": params["encoder"], "lora": params["lora"]})

    def save(self, host, directory) -> None:
        if self.spec is not None:
            lora.save_adapters(pathlib.Path(directory) / ADAPTERS_DIR, host["lora"], self.spec,
                               base_params=host["encoder"])


_merged = jax.jit(lora.apply, static_argnums=2)


def setup(cfg, objective, tx: optax.GradientTransformation, params: dict, logical, *,
          key: jax.Array, abstract: bool = False):
    """``(objective, tx, params, logical, run)`` for ``cfg.lora`` (module docstring);
    ``params``/``logical`` are :func:`jaxembed.train.step.initial_params`' host trees, or
    with ``abstract`` trees of ``ShapeDtypeStruct``s (``jaxembed plan``: the adapters are
    ``jax.eval_shape``'d too, nothing is allocated)."""
    if cfg.lora is None:
        return objective, tx, params, logical, LoraRun(None)
    spec = lora.LoraSpec.from_dict(cfg.lora)
    enc_axes = None if logical is None else logical["encoder"]
    make = functools.partial(lora.init, params["encoder"], spec, key, axes=enc_axes)
    adapters = jax.eval_shape(make) if abstract else jax.tree.map(np.asarray, make())
    params = {**params, "lora": adapters}
    if logical is not None:
        names = lora.adapter_axes(params["encoder"], spec, axes=enc_axes)
        logical = {**logical, "lora": jax.tree.map(
            tuple, names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
    # a label tree, not a function of the params: optax.tree_map_params (the trainer's
    # state shardings) calls init with a placeholder
    labels = {k: jax.tree.map(lambda _, k=k: "frozen" if k == "encoder" else "train", v)
              for k, v in params.items()}
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return _adapted(objective, spec), tx, params, logical, LoraRun(spec)


def _adapted(objective, spec: lora.LoraSpec):
    """``objective`` on ``{"encoder", "head", "lora"}`` params (module docstring)."""
    inner = objective.value_and_grad or jax.value_and_grad(objective.loss, has_aux=True)

    def forward(params, key):
        """trainable ``{"lora", "head"}`` -> the objective's ``{"encoder", "head"}``."""
        def fwd(trainable):
            enc = lora.apply(params["encoder"], trainable["lora"], spec,
                             dropout_rng=jax.random.fold_in(key, _DROPOUT_SALT))
            return {"encoder": enc, "head": trainable["head"]}

        return fwd, {"lora": params["lora"], "head": params["head"]}

    def loss(params, batch, key):
        fwd, trainable = forward(params, key)
        return objective.loss(fwd(trainable), batch, key)

    def value_and_grad(params, batch, key):
        inputs, pullback = jax.vjp(*forward(params, key))
        out, grads = inner(inputs, batch, key)
        (trainable,) = pullback(grads)
        return out, {"encoder": jax.tree.map(jnp.zeros_like, params["encoder"]), **trainable}

    return dataclasses.replace(objective, loss=loss, value_and_grad=value_and_grad)
