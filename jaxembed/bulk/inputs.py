"""Stream the texts of a corpus file, one per line, naming every line that is not usable.

Two layouts: plain text (the line is the text) and JSONL (``field=NAME``: each
line is a JSON object and the text is its string ``NAME``). A line is *bad*, and
comes back with ``text=None`` and a reason, when it

* does not decode as UTF-8 (or holds a NUL byte): ``"not UTF-8"``;
* is empty or only whitespace (after taking the field): ``"empty"``;
* (JSONL) is not JSON, not an object, lacks ``NAME`` or holds a non-string (or a
  string with a lone surrogate escape) there.

A file that is not UTF-8 text at all (a UTF-16/32 byte-order mark, NUL bytes
at the start) is refused with :class:`~jaxembed.data.textfile.NotUtf8Error`.
Every record carries the byte offset just past its line, so a reader can stop
and continue there later (``offset=``, ``first_line=``). Nothing is read ahead:
memory does not grow with the file.

Example::

    for rec in stream_lines("corpus.jsonl", field="text"):
        if rec.text is None:
            print(f"line {rec.line}: {rec.reason}")
"""

from __future__ import annotations

import json
from typing import Iterator, NamedTuple, Optional

from jaxembed.data.textfile import utf8_lines_at

__all__ = ["Line", "stream_lines", "parse_line", "check_input"]


class Line(NamedTuple):
    """One input line: ``line`` (number from 1), ``text`` (None if bad), ``reason``
    (why it is bad, else None), ``end`` (byte offset just past the line)."""

    line: int
    text: Optional[str]
    reason: Optional[str]
    end: int


def parse_line(raw: Optional[str], *, field: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """``(text, None)`` for a usable line, ``(None, reason)`` for a bad one (see the module
    docstring); ``raw`` is the decoded line, None if it did not decode."""
    if raw is None:
        return None, "not UTF-8"
    text = raw
    if field is not None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return (None, "empty") if not raw.strip() else (None, "not valid JSON")
        if not isinstance(obj, dict):
            return None, f"not a JSON object ({type(obj).__name__})"
        if field not in obj:
            return None, f"no field {field!r}"
        text = obj[field]
        if not isinstance(text, str):
            return None, f"field {field!r} is {type(text).__name__}, not a string"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\udc80"
            return None, f"field {field!r} is not valid Unicode"
    if not text.strip():
        return None, "empty"
    return text, None


def stream_lines(
    path, *, field: Optional[str] = None, offset: int = 0, first_line: int = 1
) -> Iterator[Line]:
    """Yield a :class:`Line` for every line of ``path`` from byte ``offset`` (the start of
    line ``first_line``); ``field``: read JSONL and take that field."""
    for lineno, raw, end in utf8_lines_at(path, offset=offset, first_line=first_line):
        text, reason = parse_line(raw, field=field)
        yield Line(lineno, text, reason, end)


def check_input(path) -> None:
    """Raise now, not mid-run, if ``path`` cannot be read as text: ``FileNotFoundError``,
    ``IsADirectoryError``, ``PermissionError``, or ``NotUtf8Error`` (UTF-16/32, binary)."""
    next(utf8_lines_at(path), None)
