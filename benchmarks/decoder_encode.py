"""Sentences/s of ``Encoder.encode`` on a decoder vs a PyTorch ``transformers`` loop.

A random Qwen3 of about 100M parameters (``--size base``: hidden 768, 12 layers, 12 query
and 4 key/value heads of 64, MLP 2048, vocabulary 32768 -- 100.1M) is saved with a
byte-level BPE tokenizer trained on the corpus (EOS appended, left padding, as
Qwen3-Embedding); both sides embed the same real sentences (the SimCSE wiki1m prefix, or
the bundled first 2,500 lines) with last-token pooling and L2 normalisation, float32 on
CPU. The reference is the usual transformers recipe: sort by length, tokenise each batch
with ``padding=True`` on the left, ``AutoModel`` forward under ``torch.inference_mode``,
read position ``-1``, normalise. jaxembed first compiles every batch shape of the run
(``Encoder.precompile``; ``compile_s``), both sides warm up on the first slice, then
``--rounds`` interleaved rounds (who goes first alternates) each time both on a fresh
slice; medians are reported, with the process-CPU-time ratio (less sensitive to a shared
machine) and the two sides' max |difference|.

    python -m benchmarks.decoder_encode [--size base|tiny] [--n 256] [--rounds 5]
                                        [--batch-size 32] [--out FILE]

Prints one JSON line per round and one for the result (``benchmark: decoder_encode``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

from benchmarks.harness import emit, encode_ab, machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = pathlib.Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "data" / "corpora" / "wiki1m" / "wiki1m_for_simcse.prefix.txt"
BUNDLED = REPO / "jaxembed" / "assets" / "quickstart" / "wiki1m_first2500.txt"

SIZES = {
    "base": dict(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4, head_dim=64),
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--corpus", default=None, help="one sentence a line (default: wiki1m prefix, "
                    "else the bundled 2,500 lines)")
    ap.add_argument("--n", type=int, default=256, help="sentences per timed pass")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return ap.parse_args(argv)


def write_model(folder: pathlib.Path, size: str, sentences: list[str], *, seed: int) -> int:
    """A random Qwen3 of ``SIZES[size]`` and a BPE tokenizer trained on ``sentences`` in
    ``folder``; returns the parameter count."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    cfg = SIZES[size]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(cfg["vocab_size"], 8192),
                                  special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sentences, trainer)
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        padding_side="left").save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.Qwen3Config(**cfg, max_position_embeddings=512,
                                      eos_token_id=eos, pad_token_id=eos)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def torch_encoder(folder: pathlib.Path, *, batch_size: int, max_length: int):
    """The transformers reference: ``texts -> [N, D]`` float32, input order."""
    import numpy as np
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)

    def run(texts):
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
                z = model(**batch).last_hidden_state[:, -1]
                out[idx] = torch.nn.functional.normalize(z, dim=-1).numpy()
        return out

    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    from jaxembed.models.encoder import Encoder

    corpus = pathlib.Path(args.corpus) if args.corpus else (CORPUS if CORPUS.is_file()
                                                              else BUNDLED)
    need = args.n * (args.rounds + 1)
    with open(corpus, encoding="utf-8") as f:
        sents = [s for s in (line.strip() for _, line in zip(range(need), f)) if s]
    if len(sents) < need:
        raise SystemExit(f"{corpus}: {len(sents)} sentences, need {need}")
    slices = [sents[i * args.n : (i + 1) * args.n] for i in range(args.rounds + 1)]

    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "qwen3"
        n_params = write_model(folder, args.size, sents, seed=args.seed)
        enc = Encoder.from_pretrained(folder, normalize=True, max_length=args.max_length)
        run_torch = torch_encoder(folder, batch_size=args.batch_size, max_length=args.max_length)

        def run_jax(texts):
            return enc.encode(texts, batch_size=args.batch_size)

        summary = encode_ab(enc, run_jax, run_torch, slices, batch_size=args.batch_size,
                            ref="transformers", out=args.out)
        emit({
            "benchmark": "decoder_encode",
            "model": f"random qwen3 {args.size}",
            "params": int(n_params),
            "corpus": corpus.name,
            "n_per_round": args.n,
            "rounds": args.rounds,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            **summary,
            **machine(),
        }, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
