"""Small data files shipped with the package (see each folder's ATTRIBUTION.md),
and where the larger real data lives."""

import os
import pathlib

ASSETS = pathlib.Path(__file__).resolve().parent
QUICKSTART = ASSETS / "quickstart"


def shared_data() -> pathlib.Path:
    """The real-data folder: ``$JAXEMBED_DATA``, else ``../shared/data`` beside a source checkout."""
    return pathlib.Path(os.environ.get("JAXEMBED_DATA", ASSETS.parents[2] / "shared" / "data"))


def wiki1m_corpus() -> str:
    """SimCSE's ``wiki1m_for_simcse.txt`` if present, else its 11,914-line prefix."""
    full = shared_data() / "corpora" / "wiki1m" / "wiki1m_for_simcse.txt"
    return str(full if full.exists() else full.with_name("wiki1m_for_simcse.prefix.txt"))
