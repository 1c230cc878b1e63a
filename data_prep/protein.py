"""``fm-prep protein``: FASTA / gzip FASTA / BLAST protein DBs -> clustered, leakage-free token shards.

Stages (each resumable, see ``data_prep.common``):

1. ``unique``: read every input (BLAST DB volumes are decoded with numpy, no ``blastdbcmd``);
   normalise (upper case, whitespace and a terminal ``*`` removed); reject and count empty
   records, invalid characters, lengths outside the bounds, exact duplicate sequences and reused
   ids with a different sequence; stream the survivors to one FASTA keyed ``0..n-1``.
2. ``cluster``: MMseqs2 at ``identity`` (0.5, as UniRef50) and ``coverage`` (0.8).
3. ``split``: whole clusters go to train / valid / test (seeded permutation). Then valid and test
   are searched against train with MMseqs2 and every held-out sequence with a hit at
   >= ``identity`` is dropped (counted as ``heldout_homolog_in_train``): clustering is greedy, so
   a held-out sequence can resemble a train sequence of another cluster.
4. ``shards``: ESM-1b alphabet ids in Arrow shards per split with ``id`` and ``cluster`` columns
   (``fm_core.shards``), the tokenizer beside them.

``manifest.json``: inputs, counts (read = kept + rejected by reason, checked), clusters, splits,
per-shard SHA-256, MMseqs2 version, seconds per stage. ``metrics.json``: the same counts, flat.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bio_fm.alphabet import RESIDUES, ProteinAlphabet
from bio_fm.mmseqs import mmseqs_version
from data_prep import common
from data_prep.blastdb import BlastProteinDB, blastdb_prefix
from fm_core.shards import ShardWriter, save_tokenizer

log = logging.getLogger(__name__)

METASTUDENT = Path("/usr/share/metastudent-data/dataset_201401")
SPLITS = ("train", "valid", "test")
# letters of the ESM alphabet that are residues (20 standard + X B U Z O); '.', '-' are gaps
ALLOWED = "".join(r for r in RESIDUES if r.isalpha())
_NOT_ALLOWED = str.maketrans("", "", ALLOWED)


@dataclass
class ProteinPrepConfig:
    inputs: list[str] = field(default_factory=lambda: [str(METASTUDENT)])
    out: str = "data/protein"
    min_length: int = 20
    max_length: int | None = None
    identity: float = 0.5
    coverage: float = 0.8
    cluster_mode: str = "cluster"  # linclust: linear time, less sensitive; none: input already non-redundant
    cluster_steps: int | None = None  # MMseqs2 cascade steps (None: its default; 1 is faster on small sets)
    valid_fraction: float = 0.01
    test_fraction: float = 0.01
    clean_heldout: bool = True
    seed: int = 0
    threads: int | None = None
    id_separator: str | None = "|"  # metastudent headers are ACCESSION|GO:...; keep the accession
    shard_tokens: int = 1 << 26


# --- reading ----------------------------------------------------------------------------------------
def expand_inputs(inputs: list[str]) -> list[tuple[str, Path]]:
    """(format, path) per input: a BLAST DB prefix (or its .pin), a FASTA file (plain or gzip), or a
    folder holding either (searched recursively, sorted)."""
    out: list[tuple[str, Path]] = []
    for item in inputs:
        p = Path(item)
        prefix = blastdb_prefix(p)
        if prefix is not None:
            out.append(("blastdb", prefix))
        elif p.is_file():
            out.append(("fasta", p))
        elif p.is_dir():
            found = sorted({q.with_suffix("") for q in p.rglob("*.pin")})
            found_fa = sorted(q for q in p.rglob("*") if q.is_file() and
                              any(q.name.endswith(s) for s in (".fa", ".fasta", ".faa", ".fa.gz", ".fasta.gz", ".faa.gz")))
            if not found and not found_fa:
                raise FileNotFoundError(f"{p}: no BLAST protein DB (*.pin) or FASTA file inside")
            out += [("blastdb", q) for q in found] + [("fasta", q) for q in found_fa]
        elif p == METASTUDENT or str(p).startswith(str(METASTUDENT)):
            raise FileNotFoundError(
                f"{p} not found. The default corpus is Debian's metastudent-data: `apt-get install "
                "metastudent-data`, or `apt-get download metastudent-data && dpkg-deb -x metastudent-data_*.deb "
                "ms` and pass --input ms/usr/share/metastudent-data/dataset_201401")
        else:
            raise FileNotFoundError(f"no such input: {p} (FASTA, gzip FASTA, BLAST DB prefix or folder)")
    return out


def iter_records(fmt: str, path: Path) -> Iterator[tuple[str, str]]:
    """(header, sequence) pairs: a BLAST DB decoded with numpy, or a FASTA file through
    ``bio_fm.fasta.read_fasta`` (gzip detection, universal newlines)."""
    from bio_fm.fasta import read_fasta  # at use: `fm-prep protein --help` imports no torch

    return iter(BlastProteinDB(path)) if fmt == "blastdb" else read_fasta(path)


def _id_of(header: str, sep: str | None) -> str:
    name = header.split(None, 1)[0] if header.strip() else ""
    if sep:
        name = name.split(sep, 1)[0]
    return name


def stage_unique(tmp: Path, cfg: ProteinPrepConfig, inputs: list[tuple[str, Path]]) -> dict[str, Any]:
    counts = common.Counts()
    per_input = []
    seen: set[bytes] = set()
    ids: set[str] = set()
    residues = 0
    with open(tmp / "unique.fa", "w") as out, common.progress(desc="read", unit=" seq") as bar:
        for fmt, path in inputs:
            before = counts.read
            for header, raw in iter_records(fmt, path):
                counts.read += 1
                bar.update()
                name = _id_of(header, cfg.id_separator) or f"{path.name}:{counts.read - before}"
                seq = raw.upper()
                if seq.endswith("*"):
                    seq = seq[:-1]
                if not seq:
                    counts.reject("empty", f"{path} record {name!r}")
                    continue
                bad = seq.translate(_NOT_ALLOWED)
                if bad:
                    counts.reject("invalid_character", f"{path} record {name!r}: {bad[0]!r} at position "
                                  f"{seq.index(bad[0]) + 1}")
                    continue
                if why := common.length_rejection(len(seq), cfg.min_length, cfg.max_length):
                    counts.reject(why, f"{path} record {name!r}: {len(seq)} residues")
                    continue
                digest = hashlib.blake2b(seq.encode("ascii"), digest_size=16).digest()
                if digest in seen:
                    counts.reject("duplicate_sequence")
                    continue
                if name in ids:
                    counts.reject("duplicate_id", f"{path} record {name!r}: id seen before with another sequence")
                    continue
                seen.add(digest)
                ids.add(name)
                out.write(f">{counts.kept} {name}\n{seq}\n")
                counts.kept += 1
                residues += len(seq)
            per_input.append({"path": str(path), "format": fmt, "read": counts.read - before})
    counts.check("unique stage")
    return {"counts": counts.as_dict(), "inputs": per_input, "unique": counts.kept, "residues": residues}


def iter_unique(path: Path) -> Iterator[tuple[int, str, str]]:
    with open(path) as fh:
        for header in fh:
            seq = fh.readline().rstrip("\n")
            key, name = header[1:].rstrip("\n").split(" ", 1)
            yield int(key), name, seq


def stage_cluster(tmp: Path, cfg: ProteinPrepConfig, unique_fa: Path, n: int) -> dict[str, Any]:
    return common.cluster_stage(tmp, unique_fa, n, identity=cfg.identity, coverage=cfg.coverage,
                                mode=cfg.cluster_mode, steps=cfg.cluster_steps, threads=cfg.threads)


def stage_split(tmp: Path, cfg: ProteinPrepConfig, unique_fa: Path, clusters: np.ndarray, num: int) -> dict[str, Any]:
    split = common.cluster_splits(clusters, num, valid_fraction=cfg.valid_fraction,
                                  test_fraction=cfg.test_fraction, seed=cfg.seed)
    dropped: dict[str, int] = {"valid": 0, "test": 0}
    if cfg.clean_heldout and (split > 0).any() and (split == 0).any():
        hits = common.heldout_hits(tmp, split, ((key, seq) for key, _, seq in iter_unique(unique_fa)),
                                   min_identity=cfg.identity, threads=cfg.threads)
        leaky = np.unique(np.array([int(q) for q, _, ident in hits if ident >= cfg.identity], dtype=np.int64))
        for k, name in ((1, "valid"), (2, "test")):
            dropped[name] = int((split[leaky] == k).sum())
        split = split.copy()
        split[leaky] = -1
    np.save(tmp / "split.npy", split)
    return {"heldout_dropped": dropped}


def stage_shards(tmp: Path, cfg: ProteinPrepConfig, unique_fa: Path, clusters: np.ndarray,
                 split: np.ndarray, batch: int = 8192) -> dict[str, Any]:
    import pyarrow as pa

    alphabet = ProteinAlphabet()
    writers = {name: ShardWriter(tmp / name, alphabet.vocab_size, {"id": _str(), "cluster": _i64()},
                                 shard_tokens=cfg.shard_tokens) for name in SPLITS}
    residues = dict.fromkeys(SPLITS, 0)
    pending: dict[str, list[tuple[str, int, str]]] = {name: [] for name in SPLITS}

    def flush(name: str) -> None:
        rows = pending[name]
        if not rows:
            return
        seqs = [r[2] for r in rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(q) for q in seqs], out=offsets[1:])
        ids = alphabet.encode("".join(seqs))  # one vectorised lookup for the whole batch
        writers[name].add_table(pa.table({
            "tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ids)),
            "id": pa.array([r[0] for r in rows], pa.string()),
            "cluster": pa.array([r[1] for r in rows], pa.int64())}))
        residues[name] += int(offsets[-1])
        pending[name] = []

    with common.progress(total=len(split), desc="shards", unit=" seq") as bar:
        for key, name, seq in iter_unique(unique_fa):
            bar.update()
            k = int(split[key])
            if k < 0:
                continue
            dest = SPLITS[k]
            pending[dest].append((name, int(clusters[key]), seq))
            if len(pending[dest]) >= batch:
                flush(dest)
    for name in SPLITS:
        flush(name)
    save_tokenizer(tmp, alphabet)
    splits = {}
    for name, w in writers.items():
        summary = w.close(residues=residues[name])
        members = clusters[split == SPLITS.index(name)]
        splits[name] = {"records": summary["rows"], "residues": residues[name], "tokens": summary["tokens"],
                        "clusters": int(len(np.unique(members))), "shards": summary["shards"]}
    return {"splits": splits}


def _str():
    import pyarrow as pa

    return pa.string()


def _i64():
    import pyarrow as pa

    return pa.int64()


@common.locks_out
def prepare(cfg: ProteinPrepConfig) -> dict[str, Any]:
    out, stages = common.open_stages(cfg, "protein", ("data_prep.protein", "data_prep.blastdb", "fm_core.shards"),
                                     ignore=("out", "threads", "inputs"))
    inputs = expand_inputs(cfg.inputs)
    sig = common.input_signature([p for _, p in inputs])
    u = stages.run("unique", lambda t: stage_unique(t, cfg, inputs), depends=sig)
    unique_fa = stages.dir("unique") / "unique.fa"
    c = stages.run("cluster", lambda t: stage_cluster(t, cfg, unique_fa, u["unique"]))
    clusters = np.load(stages.dir("cluster") / "clusters.npy")
    stages.run("split", lambda t: stage_split(t, cfg, unique_fa, clusters, c["clusters"]))
    split = np.load(stages.dir("split") / "split.npy")
    s = stages.run("shards", lambda t: stage_shards(t, cfg, unique_fa, clusters, split),
                   check=lambda info: common.published(out, info))
    common.publish(stages.dir("shards"), out, [*SPLITS, "tokenizer.json"])

    counts = common.Counts.from_dict(u["counts"])
    counts.kept = sum(v["records"] for v in s["splits"].values())
    dropped = int((split < 0).sum())
    if dropped:
        counts.reject("heldout_homolog_in_train", f"{dropped} valid/test sequences with a >= "
                      f"{cfg.identity:.0%}-identity hit in train", n=dropped)
    manifest = {
        "kind": "protein", "config": asdict(cfg), "inputs": u["inputs"],
        "tools": {"mmseqs": mmseqs_version() if c["clusters"] and (cfg.cluster_mode != "none"
                                                                   or cfg.clean_heldout) else None},
        "unique_sequences": u["unique"], "unique_residues": u["residues"], "clusters": c["clusters"],
        "splits": s["splits"], "tokenizer": "tokenizer.json",
    }
    return common.finish(out, manifest, counts, f"fm-prep protein {out}", stages)


def add_input_argument(p: argparse.ArgumentParser, default: list[str]) -> None:
    """``--input``: the sequence inputs ``expand_inputs`` reads (also ``fm-prep seqdb``'s)."""
    p.add_argument("--input", dest="inputs", nargs="+", default=default,
                   help="FASTA (plain/gzip), BLAST DB prefix, or folders of them (default: Debian metastudent-data)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ProteinPrepConfig()
    add_input_argument(p, d.inputs)
    common.add_options(p, d, {"out": str, "min_length": int, "max_length": int,
                              "identity": (float, "MMseqs2 clustering identity (0.5 = UniRef50)"),
                              "coverage": float})
    p.add_argument("--cluster-mode", choices=["cluster", "linclust", "none"], default=d.cluster_mode)
    common.add_options(p, d, {"cluster_steps": int, "valid_fraction": float, "test_fraction": float})
    p.add_argument("--no-clean-heldout", dest="clean_heldout", action="store_false",
                   help="keep held-out sequences that have a >= identity hit in train")
    common.add_options(p, d, {"seed": int, "threads": int,
                              "id_separator": (str, "keep the id before this character ('' = whole id)"),
                              "shard_tokens": int})


def from_args(args: argparse.Namespace) -> ProteinPrepConfig:
    return common.config_from_args(ProteinPrepConfig, args, id_separator=args.id_separator or None)
