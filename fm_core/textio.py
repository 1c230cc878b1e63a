"""Opening files that may be gzip-compressed (detected by magic bytes, not by name): the one sniff."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(source: str | Path | BinaryIO) -> bool:
    """True when the file (a path, or a seekable binary file object, rewound after) starts with gzip's magic."""
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    at = source.tell()
    magic = source.read(2)
    source.seek(at)
    return magic == GZIP_MAGIC


def open_binary(path: str | Path) -> BinaryIO:
    """The decompressed bytes of a file, gunzipped when it is gzip."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def gunzipped(raw: BinaryIO) -> BinaryIO:
    """An open binary file object, wrapped in a decompressor when it holds gzip (``raw`` stays the
    caller's to close; its ``tell()`` is the position in the file on disk)."""
    return gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip(raw) else raw


def open_text(path: str | Path, *, newline: str | None = None, errors: str = "replace",
              what: str = "file") -> io.TextIOBase:
    """Open a text file, transparently gunzipping. ``newline=None``: universal newlines (``\\n``,
    ``\\r\\n``, ``\\r``); pass ``""`` for the csv module. With ``errors="replace"`` undecodable bytes
    become U+FFFD, which tokenizers then report with their position. ``what`` names the file kind
    in the error for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such {what}: {path}")
    return text_stream(open_binary(path), newline=newline, errors=errors)


def text_stream(binary: BinaryIO, *, newline: str | None = None, errors: str = "replace") -> io.TextIOBase:
    """UTF-8 text over a binary stream (see ``open_text`` for ``newline`` and ``errors``)."""
    return io.TextIOWrapper(binary, encoding="utf-8", errors=errors, newline=newline)
