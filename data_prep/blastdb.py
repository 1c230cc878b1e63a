"""Read NCBI BLAST protein databases (format version 4: ``.pin`` / ``.psq`` / ``.phr``) with numpy.

No ``blastdbcmd`` needed: the three files of a volume are memory-mapped and decoded here. Layout
(NCBI C++ toolkit, ``seqdbfile``): the index ``.pin`` holds big-endian int32 fields (version,
sequence type, title and date as length-prefixed strings, the sequence count N), the total residue
count as a *little-endian* int64, the longest length, then N+1 header offsets and N+1 sequence
offsets (big-endian uint32). Sequence ``i`` is ``psq[seq[i] : seq[i+1] - 1]`` in NCBIstdaa codes
(a NUL byte separates sequences). Header ``i`` is ``phr[hdr[i] : hdr[i+1]]``, an ASN.1 BER
``Blast-def-line-set`` whose first definition line starts with its title (a VisibleString).

Version 5 databases (LMDB accession index) and nucleotide databases are refused with a clear
error: convert them with ``blastdbcmd -entry all > all.fasta`` and give the FASTA instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# NCBIstdaa code -> residue letter (codes 0..27)
NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"
_DECODE = bytes(NCBISTDAA.encode()) + b"?" * (256 - len(NCBISTDAA))
# the start of a Blast-def-line-set whose first def-line has a title: SEQUENCE, SEQUENCE, [0], VisibleString
_TITLE_PREFIX = b"\x30\x80\x30\x80\xa0\x80\x1a"


def blastdb_prefix(path: str | Path) -> Path | None:
    """The volume prefix if ``path`` names a BLAST protein DB (``x`` with ``x.pin``, or ``x.pin``)."""
    path = Path(path)
    if path.suffix == ".pin" and path.is_file():
        return path.with_suffix("")
    if Path(f"{path}.pin").is_file():
        return path
    return None


class BlastProteinDB:
    """One volume of a BLAST protein database, read lazily from memory maps."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        pin = Path(f"{self.prefix}.pin")
        if not pin.is_file():
            raise FileNotFoundError(f"no BLAST index {pin}")
        raw = pin.read_bytes()
        try:
            version, seqtype = struct.unpack_from(">ii", raw, 0)
            if version != 4:
                raise ValueError(f"BLAST DB format version {version} (only version 4 is read; "
                                 f"export with `blastdbcmd -db {self.prefix} -entry all` and give the FASTA)")
            if seqtype != 1:
                raise ValueError(f"not a protein database (sequence type {seqtype})")
            pos = 8
            (n,) = struct.unpack_from(">i", raw, pos)
            self.db_title = raw[pos + 4 : pos + 4 + n].decode("latin-1")
            pos += 4 + n
            (n,) = struct.unpack_from(">i", raw, pos)
            self.date = raw[pos + 4 : pos + 4 + n].rstrip(b"\0").decode("latin-1")
            pos += 4 + n
            (self.num_sequences,) = struct.unpack_from(">i", raw, pos)
            (self.total_residues,) = struct.unpack_from("<q", raw, pos + 4)
            (self.max_length,) = struct.unpack_from(">i", raw, pos + 12)
            pos += 16
            count = self.num_sequences + 1
            if len(raw) != pos + 8 * count:
                raise ValueError(f"index size {len(raw)} does not match {self.num_sequences} sequences")
            self.hdr_offsets = np.frombuffer(raw, dtype=">u4", count=count, offset=pos).astype(np.int64)
            self.seq_offsets = np.frombuffer(raw, dtype=">u4", count=count, offset=pos + 4 * count).astype(np.int64)
        except (struct.error, ValueError) as err:
            raise ValueError(f"file {pin}: not a readable BLAST protein index: {err}") from err
        self.psq = np.memmap(f"{self.prefix}.psq", dtype=np.uint8, mode="r")
        self.phr = np.memmap(f"{self.prefix}.phr", dtype=np.uint8, mode="r")
        if len(self.psq) < self.seq_offsets[-1] or len(self.phr) < self.hdr_offsets[-1]:
            raise ValueError(f"BLAST DB {self.prefix}: .psq/.phr shorter than the index says (truncated copy?)")

    def __len__(self) -> int:
        return self.num_sequences

    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets) - 1

    def sequence(self, i: int) -> str:
        start, end = self.seq_offsets[i], self.seq_offsets[i + 1] - 1
        return self.psq[start:end].tobytes().translate(_DECODE).decode("ascii")

    def title(self, i: int) -> str:
        """The first definition line's title, or ``oid<i>`` when the header carries none."""
        h = self.phr[self.hdr_offsets[i] : self.hdr_offsets[i + 1]].tobytes()
        if h.startswith(_TITLE_PREFIX) and len(h) > len(_TITLE_PREFIX):
            pos = len(_TITLE_PREFIX)
            n = h[pos]
            pos += 1
            if n & 0x80:  # BER long form: the low bits give the number of length bytes
                k = n & 0x7F
                n = int.from_bytes(h[pos : pos + k], "big")
                pos += k
            return h[pos : pos + n].decode("latin-1")
        return f"oid{i}"

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(title, sequence) for every sequence, in database order (like ``blastdbcmd -entry all``)."""
        for i in range(self.num_sequences):
            yield self.title(i), self.sequence(i)
