"""PyTorch as an optional test reference.

The torch-free install (``pip install -e '.[test]'``, CI's Python 3.12 lane) runs every
test that does not compare against PyTorch; the others skip, saying why. Test modules
write ``from _optional import torch`` instead of ``import torch``: with torch installed
that is the real module (nothing changes), without it a stand-in whose first use skips
the running test. Tests that need torch before touching it (a ``transformers`` model,
``sentence_transformers``) call :func:`needs_torch` first.
"""

from __future__ import annotations

import importlib.util
import types

import pytest

TORCH_MISSING = importlib.util.find_spec("torch") is None
REASON = "needs PyTorch, a test-only reference (pip install -e '.[dev]')"


def needs_torch() -> None:
    """Skip the running test (or fixture) when PyTorch is not installed."""
    if TORCH_MISSING:
        pytest.skip(REASON)


class _MissingTorch(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):  # introspection (doctest, pytest collection), not a use
            raise AttributeError(name)
        pytest.skip(f"{REASON}: uses torch.{name}")


if TORCH_MISSING:
    torch = _MissingTorch("torch")
else:
    import torch  # noqa: F401
