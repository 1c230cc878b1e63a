"""``fm-prep seqdb``: protein sequences (FASTA / BLAST DBs) -> one de-duplicated FASTA and an MMseqs2 database for retrieval.

The database the structure tasks search for homologues (``task.retrieval.database``): sequences
only, no labels. Input (``--input``, as
``fm-prep protein``): FASTA (plain / gzip), BLAST protein DB prefixes, or folders of them; the
default is Debian ``metastudent-data``'s UniProt sequences (its BPO / MFO / CCO BLAST DBs hold
many proteins more than once; each sequence is kept once).

Stages (resumable, ``data_prep.common``):

1. ``unique``: sequences normalised and checked as ``fm-prep protein`` does (``invalid_character``,
   ``too_short`` below ``--min-length``, ``duplicate_sequence``, ``duplicate_id``), one record per
   sequence.
2. ``fasta``: ``sequences.fasta``, header = the record's id (before ``--id-separator``).
3. ``createdb``: ``mmseqs createdb`` of that FASTA.

Writes ``<out>/sequences.fasta`` and ``<out>/msdb*`` (pass ``<out>/msdb`` as the database), with
``manifest.json`` (counts: read = kept + rejected) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_prep import common
from data_prep.protein import METASTUDENT, add_input_argument, expand_inputs, iter_unique, stage_unique

DB_NAME = "msdb"
FASTA_NAME = "sequences.fasta"


@dataclass
class SeqDBPrepConfig:
    inputs: list[str] = field(default_factory=lambda: [str(METASTUDENT)])
    out: str = "data/retrieval"
    min_length: int = 10  # the retrieval corpus keeps short fragments fm-prep protein drops (20)
    max_length: int | None = None
    id_separator: str | None = "|"  # metastudent headers are ACCESSION|GO:...; keep the accession


def stage_fasta(tmp: Path, unique_fa: Path) -> dict[str, Any]:
    """``sequences.fasta`` with the record ids as headers (the unique stage's keys dropped)."""
    n = 0
    with open(tmp / FASTA_NAME, "w") as fh:
        for _, name, seq in iter_unique(unique_fa):
            fh.write(f">{name}\n{seq}\n")
            n += 1
    return {"sequences": n}


def stage_createdb(tmp: Path, fasta: Path) -> dict[str, Any]:
    from bio_fm.mmseqs import mmseqs

    mmseqs("createdb", str(fasta), str(tmp / DB_NAME))
    return {"files": sorted(p.name for p in tmp.iterdir() if p.name.startswith(DB_NAME))}


@common.locks_out
def prepare(cfg: SeqDBPrepConfig) -> dict[str, Any]:
    from bio_fm.mmseqs import mmseqs_version

    out, stages = common.open_stages(cfg, "seqdb", ("data_prep.seqdb", "data_prep.protein", "data_prep.blastdb"),
                                     ignore=("out", "inputs"))
    inputs = expand_inputs(cfg.inputs)
    u = stages.run("unique", lambda t: stage_unique(t, cfg, inputs),
                   depends=common.input_signature([p for _, p in inputs]))
    stages.run("fasta", lambda t: stage_fasta(t, stages.dir("unique") / "unique.fa"),
               check=lambda info: (out / FASTA_NAME).is_file() or (stages.dir("fasta") / FASTA_NAME).is_file())
    common.publish(stages.dir("fasta"), out, [FASTA_NAME])
    # the stage fingerprints chain (inputs, parameters, code): the FASTA need not be hashed again
    db = stages.run("createdb", lambda t: stage_createdb(t, out / FASTA_NAME),
                    check=lambda info: all((out / f).is_file() or (stages.dir("createdb") / f).is_file()
                                           for f in info["files"]))
    common.publish(stages.dir("createdb"), out, db["files"])
    counts = common.Counts.from_dict(u["counts"])
    manifest = {"kind": "seqdb", "config": asdict(cfg), "inputs": u["inputs"], "tools": {"mmseqs": mmseqs_version()},
                "sequences": u["unique"], "residues": u["residues"], "fasta": FASTA_NAME,
                "database": DB_NAME, "database_files": db["files"],
                "splits": {"all": {"records": u["unique"], "residues": u["residues"]}}}
    return common.finish(out, manifest, counts, f"fm-prep seqdb {out}", stages)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SeqDBPrepConfig()
    add_input_argument(p, d.inputs)
    common.add_options(p, d, {"out": str, "min_length": int, "max_length": int,
                              "id_separator": (str, "keep the id before this character ('' = whole id)")})


def from_args(args: argparse.Namespace) -> SeqDBPrepConfig:
    return common.config_from_args(SeqDBPrepConfig, args, id_separator=args.id_separator or None)
