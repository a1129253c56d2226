"""Embed a whole corpus file from the command line (``jaxembed encode``), resumably.

* :mod:`~jaxembed.bulk.inputs`: stream texts from plain-text or JSONL lines,
  naming every bad line;
* :mod:`~jaxembed.bulk.shards`: the output folder -- numbered ``.npy`` shards,
  an atomically written manifest, resume state, :func:`load_embeddings`,
  :func:`row_lines`;
* :mod:`~jaxembed.bulk.encode`: :func:`encode_file`, the loop joining them
  around ``Encoder.encode`` on all local devices;
* :mod:`~jaxembed.bulk.cli`: the ``jaxembed encode`` subcommand;
* :mod:`~jaxembed.bulk.mine` / :mod:`~jaxembed.bulk.mine_cli`: ``jaxembed mine``, hard
  negatives for retrieval training.

Example::

    jaxembed encode --model all-MiniLM-L6-v2/ --input corpus.txt --output emb/
    python -c "from jaxembed.bulk import load_embeddings; print(load_embeddings('emb/').shape)"
"""

from jaxembed.bulk.encode import encode_file
from jaxembed.bulk.inputs import stream_lines
from jaxembed.bulk.shards import load_embeddings, read_manifest, row_lines

__all__ = ["encode_file", "stream_lines", "load_embeddings", "read_manifest", "row_lines"]
