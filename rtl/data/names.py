"""Names that the dataset files can hold, and one-line printing of any name (no dependencies).

File names on Linux are bytes: Python keeps bytes that are not UTF-8 as lone surrogates (PEP 383), which
cannot be written to the UTF-8 `labels.csv` nor printed on a strict UTF-8 terminal; a line break in a name
splits a line of the one-path-per-line split files. `name_problem` says why a name is refused,
`printable` renders any name on one line for messages.
"""

from __future__ import annotations

import os
import unicodedata

__all__ = ["name_problem", "printable"]

_BREAKS = {"Cc", "Zl", "Zp"}  # control characters and the line/paragraph separators str.splitlines() uses


def printable(text: str | os.PathLike) -> str:
    """`text` on one line: undecodable bytes as `\\xNN`, control characters and line breaks escaped."""
    s = os.fspath(text)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if unicodedata.category(c) not in _BREAKS else repr(c)[1:-1] for c in s)


def name_problem(text: str) -> str | None:
    """Why `text` (a path or a label) cannot go into labels.csv / split files, or None when it can."""
    if any(unicodedata.category(c) == "Cs" for c in text):
        return "name is not valid UTF-8"
    if any(unicodedata.category(c) in _BREAKS for c in text):
        return "name contains a line break or control character"
    return None
