"""Build the small committed slices of real data used by the tests (provenance in their README).

    python -m data_prep.slices blastdb <prefix> <out_prefix> <n>      # first n sequences of a BLAST DB
    python -m data_prep.slices structures <structure_db.dat> <out.dat.gz> <n> [seed]

A BLAST DB slice keeps the first ``n`` sequences of a volume byte for byte (index rewritten for
the shorter volume), so the reader is tested on NCBI-written headers and sequence encoding.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

from data_prep.blastdb import BlastProteinDB


def slice_blastdb(prefix: str | Path, out_prefix: str | Path, n: int) -> None:
    db = BlastProteinDB(prefix)
    n = min(n, len(db))
    raw = Path(f"{prefix}.pin").read_bytes()
    # keep version, type, title, date; rewrite count, residues, max length and offsets
    pos = 8
    (k,) = struct.unpack_from(">i", raw, pos)
    pos += 4 + k
    (k,) = struct.unpack_from(">i", raw, pos)
    pos += 4 + k
    lengths = db.lengths()[:n]
    head = raw[:pos] + struct.pack(">i", n) + struct.pack("<q", int(lengths.sum())) + struct.pack(">i", int(lengths.max()))
    hdr = db.hdr_offsets[: n + 1].astype(">u4").tobytes()
    seq = db.seq_offsets[: n + 1].astype(">u4").tobytes()
    Path(f"{out_prefix}.pin").write_bytes(head + hdr + seq)
    Path(f"{out_prefix}.psq").write_bytes(db.psq[: db.seq_offsets[n]].tobytes())
    Path(f"{out_prefix}.phr").write_bytes(db.phr[: db.hdr_offsets[n]].tobytes())


def slice_structures(path: str | Path, out: str | Path, n: int, seed: int = 0, min_len: int = 40,
                     max_len: int = 220) -> None:
    """``n`` random chains (seeded) of ``min_len``-``max_len`` residues; the structure-profile
    section (unused here) is zeroed so the gzip stays small."""
    from data_prep.structures import StructureDB

    db = StructureDB(path)
    ok = np.flatnonzero((db.sizes >= min_len) & (db.sizes <= max_len))
    pick = np.sort(np.random.default_rng(seed).choice(ok, n, replace=False))
    db.write(out, pick, zero=("struct_profile",))


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "blastdb":
        slice_blastdb(args[0], args[1], int(args[2]))
    elif kind == "structures":
        slice_structures(args[0], args[1], int(args[2]), *(int(a) for a in args[3:4]))
    else:
        raise SystemExit(__doc__)
