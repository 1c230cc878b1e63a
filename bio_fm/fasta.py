"""FASTA (plain or gzip) -> ``SequenceDataset`` of protein token ids, with an explicit bad-input policy."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from Bio.SeqIO.FastaIO import SimpleFastaParser

from fm_core.batching import ReadStats, SequenceDataset
from fm_core.errors import InputFileError
from fm_core.textio import gunzipped, open_text, text_stream
from fm_core.tokenizer import InvalidRecordError, Tokenizer

log = logging.getLogger(__name__)
Policy = Literal["error", "skip"]


def _record_id(title: str) -> str:
    """The record id: the header's first word (as Biopython's ``SeqRecord.id``)."""
    return title.split(None, 1)[0] if title.strip() else ""


def _checked_lines(lines: Iterator[str]) -> Iterator[str]:
    """The lines of a FASTA file; text before the first ``>`` header (which the parser would drop
    silently) is an error naming the line. Blank leading lines are fine."""
    it = iter(lines)
    for number, line in enumerate(it, start=1):
        if line.startswith(">"):
            yield line
            break
        if line.strip():
            raise ValueError(f"line {number} comes before the first '>' header ({line.strip()[:40]!r}); "
                             "not a FASTA file?")
    yield from it


# Biopython's SimpleFastaParser yields plain strings: a sequence with non-ASCII characters (e.g.
# U+FFFD from undecodable bytes) reaches the tokenizer, which names the record and position,
# instead of failing the whole file inside ``Seq``.
def _parse(handle: io.TextIOBase, path: str | Path) -> Iterator[tuple[str, str]]:
    """(header, sequence) pairs of an open FASTA text stream. Errors name the file."""
    try:
        yield from SimpleFastaParser(_checked_lines(handle))
    except (ValueError, EOFError, OSError) as err:  # malformed layout, truncated gzip
        raise InputFileError(f"file {path}: cannot parse FASTA: {err}") from err


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(full header line without ``>``, sequence) of a FASTA file (plain or gzip, any line ends):
    the one FASTA reader of the toolkit. Errors name the file."""
    with open_text(path, what="FASTA file") as handle:
        yield from _parse(handle, path)


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(record id, sequence) pairs, read with Biopython. Errors name the file."""
    for title, seq in read_fasta(path):
        yield _record_id(title), seq


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
            for title, seq in _parse(text_stream(gunzipped(raw)), self.path):
                yield _record_id(title), seq


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
