r"""LoRA (low-rank adaptation) as a pure transform of a parameter tree -- no model surgery.

* ``spec``      :class:`LoraSpec` (regex target, rank, alpha, dropout, init, layouts),
  :func:`find_targets`, how multi-axis kernels map to ``(in, out)`` matrices
* ``transform`` :func:`init`, :func:`apply`, :func:`merge`, :func:`adapter_axes`
* ``io``        :func:`save_adapters` / :func:`load_adapters` (adapter-only files tied to
  their base model)

Any Flax model becomes a LoRA model by transforming its params before ``apply``::

    from jaxembed import lora
    spec = lora.LoraSpec(target=r"layer_\d+/attention/(query|value)/kernel", rank=8, alpha=16)
    adapters = lora.init(enc.params, spec, jax.random.key(0), axes=enc.param_axes())
    z = enc.embed(lora.apply(enc.params, adapters, spec), batch)      # adapted forward
    grads = jax.grad(lambda a: loss(enc.embed(lora.apply(enc.params, a, spec), batch)))(adapters)
    opt_state = optax.adamw(1e-4).init(adapters)                        # adapter-sized only
    enc.save_pretrained("merged/", params=lora.merge(enc.params, adapters, spec))

For a decoder (``jaxembed.models.decoder``) the targets read e.g.
``r"layer_\d+/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"`` (with
``scan_layers``: ``r"layers/layer/attn/..."``), the axes come from
``lora.module_axes(Decoder(config), ids, mask)`` and the merged params go to
``save_decoder(dir, ckpt.config, merged, extra=ckpt.extra, hf_config=ckpt.hf_config,
prefix=ckpt.prefix)``.

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"
(arXiv 2106.09685).
"""

from jaxembed.lora.io import load_adapters, save_adapters
from jaxembed.lora.spec import (
    RANK_AXIS,
    LoraSpec,
    Target,
    find_targets,
    module_axes,
)
from jaxembed.lora.transform import adapter_axes, apply, init, merge

__all__ = [
    "LoraSpec",
    "Target",
    "RANK_AXIS",
    "find_targets",
    "module_axes",
    "init",
    "apply",
    "merge",
    "adapter_axes",
    "save_adapters",
    "load_adapters",
]
