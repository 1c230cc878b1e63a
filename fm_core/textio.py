"""Opening text files that may be gzip-compressed (detected by magic bytes, not by name)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping; universal newlines (``\\n``, ``\\r\\n``, ``\\r``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    # undecodable bytes become U+FFFD, which tokenizers then report with their position
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)
