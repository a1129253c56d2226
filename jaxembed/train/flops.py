"""Training FLOPs of a BERT-style encoder step, and peak FLOP/s per device.

FLOPs per training step (forward + backward = 3 x forward, the usual count;
Kaplan et al. 2020, Chowdhery et al. 2022 App. B)::

    tokens  = sequences * seq_len            (sequences = batch x views/columns)
    dense   = 6 * N * tokens                 (N = non-embedding parameters:
                                              every weight is one multiply-add
                                              per token forward, 2 backward)
    attn    = 12 * layers * seq_len * hidden * tokens
                                             (QK^T and AV: 2 * 2 * seq * hidden
                                              per token per layer forward, x3)
    flops   = dense + attn

Embedding look-ups are gathers, not matmuls, so the embedding tables are
excluded from N. Heads (projection MLP, pair head) count as dense weights.

MFU = flops / step_time / (n_devices * peak_flops_per_device). The peak is a
stated number, not a measurement: :data:`PEAK_FLOPS` holds the vendors' dense
(no sparsity) peaks; override with ``peak_flops_per_device`` in the config.
On CPU the default is per *simulated* device and only nominal (2.8 GHz x 32
float32 FLOP/cycle = one AVX-512 FMA unit per core, 1 core): report your own.

Example::

    encoder_train_flops(n_params=22.7e6 - 12.0e6, layers=6, hidden=384, seq_len=32, sequences=128)
"""

from __future__ import annotations

# device-kind substring (lower case) -> (bf16 peak, float32 peak) FLOP/s, dense; the
# first match wins, so "v5 lite" (v5e) comes before "tpu v5" (v5p reports "TPU v5").
PEAK_FLOPS: dict[str, tuple[float, float]] = {
    "h200": (989e12, 67e12),     # NVIDIA H200 SXM: bf16 tensor 989 TF, fp32 67 TF
    "h100": (989e12, 67e12),     # NVIDIA H100 SXM
    "a100": (312e12, 19.5e12),   # NVIDIA A100
    # TPUs (cloud.google.com/tpu/docs/<version>); f32 matmuls run as bf16 passes by default
    "v6 lite": (918e12, 918e12),  # TPU v6e (Trillium), device kind "TPU v6 lite"
    "v6e": (918e12, 918e12),
    "v5 lite": (197e12, 197e12),  # TPU v5e, device kind "TPU v5 lite"
    "v5e": (197e12, 197e12),
    "v5p": (459e12, 459e12),     # TPU v5p, device kind "TPU v5"
    "tpu v5": (459e12, 459e12),
    "v4": (275e12, 275e12),      # TPU v4
    "cpu": (89.6e9, 89.6e9),     # nominal: 2.8 GHz x 32 FLOP/cycle, one core
}


def peak_flops_per_device(device_kind: str, *, bf16: bool) -> float:
    """Default peak FLOP/s of one device of ``device_kind`` (e.g. ``jax.devices()[0].device_kind``)."""
    kind = device_kind.lower()
    for key, (p_bf16, p_f32) in PEAK_FLOPS.items():
        if key in kind:
            return p_bf16 if bf16 else p_f32
    return PEAK_FLOPS["cpu"][0]


def encoder_train_flops(*, n_params: float, layers: int, hidden: int, seq_len: int,
                        sequences: int) -> float:
    """FLOPs of one forward+backward step over ``sequences`` sequences of ``seq_len`` tokens."""
    tokens = sequences * seq_len
    return 6.0 * n_params * tokens + 12.0 * layers * seq_len * hidden * tokens


def train_step_flops(n_total: int, config, *, seq_len: int, sequences: int) -> float:
    """:func:`encoder_train_flops` for a model of ``n_total`` parameters (encoder + heads)
    with the shapes of ``config`` (an ``EncoderConfig``, or a ``DecoderConfig``:
    :func:`jaxembed.train.plan_decoder.decoder_step_flops`); the embedding tables are excluded."""
    if hasattr(config, "head_dim"):  # a decoder: one token table, attention heads x head_dim
        from jaxembed.train.plan_decoder import decoder_step_flops

        return decoder_step_flops(n_total, config, seq_len=seq_len, sequences=sequences)
    n = non_embedding_params(n_total, vocab_size=config.vocab_size,
                             max_positions=config.max_position_embeddings,
                             type_vocab_size=config.type_vocab_size, hidden=config.hidden_size)
    return encoder_train_flops(n_params=n, layers=config.num_hidden_layers,
                               hidden=config.hidden_size, seq_len=seq_len, sequences=sequences)


def non_embedding_params(n_total: int, *, vocab_size: int, max_positions: int,
                         type_vocab_size: int, hidden: int) -> int:
    """Parameters minus the three BERT embedding tables."""
    return int(n_total - (vocab_size + max_positions + type_vocab_size) * hidden)
