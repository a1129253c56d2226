"""UTF-8 text files read with every problem named by file and line.

Every reader of a text file in jaxembed (training corpora, STS sets, ``.vec``
files, bilingual dictionaries) goes through these helpers, so that a file that
is not UTF-8 is refused with one message instead of being half-read:

* a UTF-16 or UTF-32 byte-order mark at the start, or a NUL byte in the first
  64 KiB (UTF-16/32 text without a BOM, or a binary file), refuses the file at
  once (:class:`NotUtf8Error`, naming the file and what was found, and
  suggesting ``iconv``);
* a UTF-8 byte-order mark is dropped (the file is UTF-8);
* a later line that does not decode (or holds a NUL byte) is reported to the
  caller, which skips and counts it or raises with the line number.

Lines are split on ``\\n`` only (a trailing ``\\r`` is dropped), never on the
other characters ``str.splitlines`` breaks at (U+2028, U+0085, ...), which
occur inside fastText words and Wikipedia sentences.

Example::

    for lineno, text in utf8_lines("corpus.txt"):
        if text is None:          # line `lineno` is not UTF-8
            ...
"""

from __future__ import annotations

import pathlib
from typing import Iterator

__all__ = [
    "NotUtf8Error", "not_utf8_error", "utf8_lines", "utf8_lines_at", "strict_utf8_lines",
    "read_utf8",
]

SNIFF_BYTES = 1 << 16
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
_UTF8_BOM = b"\xef\xbb\xbf"


class NotUtf8Error(ValueError):
    """A file that is not UTF-8 text (its message names the file and suggests ``iconv``)."""


def not_utf8_error(path, why: str, *, encoding: str = "ENCODING") -> NotUtf8Error:
    """The error for ``path`` (``why``: what shows it is not UTF-8), with the ``iconv`` fix."""
    return NotUtf8Error(
        f"{path} is not UTF-8 text ({why}); convert it first, e.g. "
        f"`iconv -f {encoding} -t UTF-8 {path} > {path}.utf8`"
    )


def _check_head(path, head: bytes) -> None:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            raise not_utf8_error(path, f"it starts with a {encoding} byte-order mark",
                                 encoding=encoding)
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise not_utf8_error(
            path, f"NUL byte on line {line}: UTF-16/UTF-32 text or a binary file",
            encoding="UTF-16")


def utf8_lines(path) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number from 1, text without its line break)`` for every line.

    ``text`` is ``None`` for a line that is not valid UTF-8 or holds a NUL byte.
    Raises :class:`NotUtf8Error` before the first line when the file starts
    with a UTF-16/32 byte-order mark or has a NUL byte in its first 64 KiB.
    """
    for lineno, text, _end in utf8_lines_at(path):
        yield lineno, text


def utf8_lines_at(
    path, *, offset: int = 0, first_line: int = 1
) -> Iterator[tuple[int, str | None, int]]:
    """:func:`utf8_lines` from byte ``offset`` (a line start, numbered ``first_line``),
    yielding ``(line number, text or None, byte offset just past the line)``, so a
    reader can stop after any line and later continue exactly there.

    The head of the file is checked (BOM, NUL bytes) whatever the offset.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        _check_head(path, f.read(SNIFF_BYTES))
        f.seek(offset)
        end = offset
        for lineno, raw in enumerate(f, start=first_line):
            end += len(raw)
            if end == len(raw) and raw.startswith(_UTF8_BOM):  # the file's first line
                raw = raw[len(_UTF8_BOM):]
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            if b"\x00" in raw:
                yield lineno, None, end
                continue
            try:
                yield lineno, raw.decode("utf-8"), end
            except UnicodeDecodeError:
                yield lineno, None, end


def strict_utf8_lines(path) -> Iterator[tuple[int, str]]:
    """:func:`utf8_lines`, raising :class:`NotUtf8Error` (``FILE:LINE``) at the first bad line."""
    for lineno, text in utf8_lines(path):
        if text is None:
            raise not_utf8_error(f"{path}:{lineno}", "this line does not decode as UTF-8")
        yield lineno, text


def read_utf8(path) -> str:
    """The whole file decoded as UTF-8 (a UTF-8 BOM dropped, newlines kept as they are).

    Raises :class:`NotUtf8Error` naming ``FILE:LINE`` of the first byte that
    does not decode, or the BOM / NUL byte that shows another encoding.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    _check_head(path, data[:SNIFF_BYTES])
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise not_utf8_error(
            f"{path}:{line}", f"byte 0x{data[e.start]:02x} does not decode as UTF-8") from None
