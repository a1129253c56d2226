"""Qwen3-Embedding-style supervised stage: a decoder embedder trained on instructed queries
with mined hard negatives (Zhang et al. 2025, "Qwen3 Embedding", arXiv 2506.05176).

    jaxembed train configs/qwen3_embedding_style.py --workdir /tmp/q3e \\
        --set model=/models/Qwen3-0.6B --set data=train_mined.jsonl --set num_negatives=7
    jaxembed train configs/qwen3_embedding_style.py:tiny --workdir /tmp/t   # CPU smoke run

What it sets, from what we could check:

* backbone: a Qwen3 decoder loaded through ``Encoder.from_pretrained`` by ``model_type``
  (any folder with ``model_type: qwen3``; Qwen2, Llama, Mistral, Gemma 2/3 load the same
  way), causal attention, no dropout;
* pooling: the last token (``last_token``, for training and export); Qwen3-Embedding's
  tokenizer appends ``<|endoftext|>`` and the embedding is its final hidden state;
* instructions on queries only: ``Instruct: {task}\\nQuery:{query}``
  (``query_template``; the task is a row's ``"instruction"`` or ``query_instruction``);
  documents get none;
* InfoNCE (cosine) at ``temperature`` 0.02 with in-batch documents, each row's hard negatives
  (``num_negatives`` per row of the retrieval JSONL, ``{"query", "positive",
  "negatives": [..], "instruction"?}``, e.g. written by hard-negative mining), the other
  queries and the positive-vs-documents terms of the paper's partition function
  (``query_query_negatives``, ``document_document_negatives``), and its false-negative mask:
  a negative scoring above the positive's score + 0.1 is dropped (``false_negative_margin``),
  and so is the row's positive text where it recurs as another row's document
  (``mask_duplicate_documents``: ids per distinct text from the reader);
* Matryoshka: the loss is summed over the prefix dimensions ``matryoshka_dims`` (the
  released models accept output dimensions from 32 up; the dims trained on are our choice
  here: the powers of two from 32 to 1024, the 0.6B model's width);
* bf16 compute with float32 parameters; L2-normalised exported embeddings.

Sources: the paper itself could not be read here (no network). What is above comes from
``shared/docs/decoders-and-gpu.md`` (pooling, causal attention, the query-only template, the
0.1 margin and the recipe's 0.01-0.02 temperatures) and secondary summaries of the paper
(the partition function with hard, query-query, document-document and in-batch terms masked
by ``s > s(q, d+) + 0.1`` or string equality with the positive; LoRA rank 64 on the 0.6B-8B
backbones; 150M synthetic weak pairs for pre-training, then 12M high-quality pairs for
supervised fine-tuning; slerp model merging as the last stage). Not from a source we read:
temperature 0.02 (issue #17's recipe; the paper's value is not in our notes), learning rate,
batch size, steps, negatives per row and the hardware: Qwen3-Embedding's training hardware
and batch are not stated in anything we read. As a sizing guide, not a paper setting: a
0.6B full fine-tune at batch 1024 x (2 + 7 negatives) x 256 tokens fits a v5p-64 slice
with ``mesh_fsdp=64``; use ``jaxembed plan`` for your slice, and ``lora`` (rank 64, the
paper's) or ``grad_cache_chunk`` above 4B.

Deviations: a query repeated in the batch is dropped as a query-query negative by the margin
(its score is 1), not by string equality; the weakly supervised pre-training stage, model
merging and the reranker are out of scope.

``:tiny``: a random 2-layer Qwen3 (``tiny-random-qwen3``, hidden 32, MiniLM's WordPiece
vocabulary, whose final [SEP] stands in for the EOS) on 256 SNLI dev triplets bundled in
``jaxembed/assets/quickstart`` (premise -> query with an NLI instruction, entailment ->
positive, contradiction -> the one hard negative), 3 steps on CPU.
"""

import pathlib
import runpy

from jaxembed.assets import QUICKSTART
from jaxembed.train.config import TrainConfig

# configs are loaded by path, not as a package: the shared ``:tiny`` helper sits beside this file
variant = runpy.run_path(str(pathlib.Path(__file__).with_name("_common.py")))["variant"]

NLI_TASK = "Given a premise, retrieve a hypothesis that is entailed by the premise"


def get_config(arg=None):
    cfg = TrainConfig(
        model="Qwen3-0.6B",
        objective="simcse_sup",
        train_pooling="last_token",
        eval_pooling="last_token",
        normalize=True,
        mlp=False,
        temperature=0.02,
        false_negative_margin=0.1,
        query_query_negatives=True,
        document_document_negatives=True,
        mask_duplicate_documents=True,
        matryoshka_dims=(1024, 512, 256, 128, 64, 32),
        data="train_mined.jsonl",
        data_format="retrieval_jsonl",
        num_negatives=7,
        query_instruction=NLI_TASK,
        query_template="Instruct: {task}\nQuery:",
        eval_data=str(QUICKSTART / "sts-dev.csv"),
        max_length=256,
        batch_size=1024,
        epochs=1,
        learning_rate=2e-5,
        warmup_ratio=0.05,
        mixed_precision=True,
        eval_every=500,
        save_every=500,
        keep=2,
        seed=42,
    )
    return variant(cfg, arg, model="tiny-random-qwen3",
                   data=str(QUICKSTART / "snli_dev_retrieval_first256.jsonl"), num_negatives=1,
                   matryoshka_dims=(32, 16, 8), steps=3, eval_every=3, save_every=3)
