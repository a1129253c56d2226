"""argparse value types shared by the ``jaxembed`` subcommands.

A bad value is reported by argparse itself (``error: argument --max-length:
must be an integer >= 1, got -3``, exit status 2) instead of failing deep inside
a run.

Example::

    parser.add_argument("--batch-size", type=positive_int, default=64)
"""

from __future__ import annotations

import argparse

__all__ = ["int_at_least", "positive_int", "nonnegative_int"]


def int_at_least(minimum: int):
    """An argparse ``type`` accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
