"""FASTA (plain or gzip) -> ``SequenceDataset`` of protein token ids, with an explicit bad-input policy."""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from Bio.SeqIO.FastaIO import SimpleFastaParser

from fm_core.data import ReadStats, SequenceDataset
from fm_core.tokenizer import InvalidRecordError, Tokenizer

log = logging.getLogger(__name__)
Policy = Literal["error", "skip"]


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping (detected by magic bytes, not by name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such FASTA file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    raw = gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")
    # undecodable bytes become U+FFFD, which the tokenizer then reports with its position
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=None)


def _record_id(title: str) -> str:
    """The record id: the header's first word (as Biopython's ``SeqRecord.id``)."""
    return title.split(None, 1)[0] if title.strip() else ""


def _checked_lines(lines: Iterator[str], path: str | Path) -> Iterator[str]:
    """The lines of a FASTA file; text before the first ``>`` header (which the parser would drop
    silently) is an error naming the file and line. Blank leading lines are fine."""
    it = iter(lines)
    for number, line in enumerate(it, start=1):
        if line.startswith(">"):
            yield line
            break
        if line.strip():
            raise ValueError(f"file {path}: cannot parse FASTA: line {number} comes before the first '>' header "
                             f"({line.strip()[:40]!r}); not a FASTA file?")
    yield from it


# Biopython's SimpleFastaParser yields plain strings: a sequence with non-ASCII characters (e.g.
# U+FFFD from undecodable bytes) reaches the tokenizer, which names the record and position,
# instead of failing the whole file inside ``Seq``.
class FastaStream:
    """Iterate (record id, sequence) of a FASTA file (plain or gzip) of any size, with the bytes
    read so far (``position``, of the file on disk) for a progress bar. Errors name the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such FASTA file: {self.path}")
        self.total_bytes = self.path.stat().st_size
        self._raw = None

    @property
    def position(self) -> int:
        return self._raw.tell() if self._raw is not None and not self._raw.closed else 0

    def __iter__(self) -> Iterator[tuple[str, str]]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            magic = raw.read(2)
            raw.seek(0)
            binary = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
            handle = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=None)
            try:
                for title, seq in SimpleFastaParser(_checked_lines(handle, self.path)):
                    yield _record_id(title), seq
            except (ValueError, EOFError, OSError) as err:  # malformed layout, truncated gzip
                raise ValueError(f"file {self.path}: cannot parse FASTA: {err}") from err


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(record id, sequence) pairs, read with Biopython. Errors name the file."""
    with open_text(path) as handle:
        try:
            for title, seq in SimpleFastaParser(_checked_lines(handle, path)):
                yield _record_id(title), seq
        except (ValueError, EOFError, OSError) as err:  # malformed layout, truncated gzip
            raise ValueError(f"file {path}: cannot parse FASTA: {err}") from err


def fasta_dataset(path: str | Path, tokenizer: Tokenizer, *, on_invalid: Policy = "error",
                  min_length: int = 1, max_records: int | None = None) -> SequenceDataset:
    """Read and tokenize every record. Empty/short records are skipped and counted; a record
    with an invalid character raises (``on_invalid="error"``) or is skipped and counted."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    stats = ReadStats(str(path))
    arrays, names = [], []
    for name, seq in iter_fasta(path):
        if max_records is not None and stats.read >= max_records:
            break
        stats.read += 1
        try:
            ids = tokenizer.encode(seq, record=name, source=str(path))
        except InvalidRecordError as err:
            if on_invalid == "error":
                raise
            stats.reject("invalid", str(err))
            continue
        if len(ids) < max(min_length, 1):
            stats.reject("empty" if len(ids) == 0 else "too_short", f"record {name!r}: {len(ids)} residues")
            continue
        arrays.append(ids)
        names.append(name)
        stats.kept += 1
    duplicates = len(names) - len(set(names))
    if duplicates:  # kept (ids are labels, not keys here) but counted and reported
        stats.notes["duplicate_ids"] = duplicates
        log.warning("%s: %d records reuse an earlier record's id", path, duplicates)
    stats.check()
    if stats.rejected:
        log.warning("%s: kept %d of %d records, rejected %s; e.g. %s", path, stats.kept, stats.read,
                    dict(stats.rejected), "; ".join(stats.examples))
    return SequenceDataset(arrays, names, stats)
