"""Adapters that let other evaluation and serving libraries use jaxembed encoders.

Each module wraps one outside package and imports it only when used, so that
``import jaxembed.integrations.<name>`` works (and its docs build) without it:

* ``mteb``: ``MTEBEncoder``, an encoder for the Massive Text Embedding
  Benchmark (``mteb.evaluate``), and ``sts_task``, an MTEB STS task built from
  local pairs (no dataset hub); ``jaxembed eval-mteb`` on the command line.
"""
