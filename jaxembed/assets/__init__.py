"""Small data files shipped with the package (see each folder's ATTRIBUTION.md)."""

import pathlib

ASSETS = pathlib.Path(__file__).resolve().parent
QUICKSTART = ASSETS / "quickstart"
