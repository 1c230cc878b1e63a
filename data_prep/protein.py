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
import itertools
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bio_fm.alphabet import RESIDUES, ProteinAlphabet
from data_prep import common
from data_prep.blastdb import BlastProteinDB, blastdb_prefix
from fm_core.shards import SPLIT_FILE, ShardWriter, save_tokenizer

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
    """(header, sequence) pairs. FASTA goes through Biopython's parser after gzip detection and
    universal newlines (``\\r\\n`` and ``\\r`` line ends are fine)."""
    if fmt == "blastdb":
        yield from BlastProteinDB(path)
        return
    from Bio.SeqIO.FastaIO import SimpleFastaParser

    from fm_core.textio import open_text

    with open_text(path) as handle:
        try:
            for lineno, line in enumerate(handle, start=1):  # nothing may precede the first header
                if line.strip():
                    if not line.startswith(">"):
                        raise ValueError(f"line {lineno}: text before the first '>' header: {line[:40]!r}")
                    break
            else:
                return
            yield from SimpleFastaParser(itertools.chain([line], handle))
        except (EOFError, OSError, ValueError) as err:
            raise ValueError(f"file {path}: cannot read FASTA ({type(err).__name__}: {err}); a truncated "
                             "gzip stops here: re-copy the file") from err


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
                if len(seq) < cfg.min_length:
                    counts.reject("too_short", f"{path} record {name!r}: {len(seq)} residues")
                    continue
                if cfg.max_length is not None and len(seq) > cfg.max_length:
                    counts.reject("too_long", f"{path} record {name!r}: {len(seq)} residues")
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
    if n == 0 or cfg.cluster_mode == "none":  # every sequence its own cluster (e.g. UniRef50 input)
        np.save(tmp / "clusters.npy", np.arange(n, dtype=np.int64))
        return {"clusters": n}
    tsv = common.mmseqs_cluster(unique_fa, tmp, identity=cfg.identity, coverage=cfg.coverage,
                                mode=cfg.cluster_mode, steps=cfg.cluster_steps, threads=cfg.threads)
    cluster, num = common.read_clusters(tsv, n)
    np.save(tmp / "clusters.npy", cluster)
    tsv.unlink()
    return {"clusters": num}


def stage_split(tmp: Path, cfg: ProteinPrepConfig, unique_fa: Path, clusters: np.ndarray, num: int) -> dict[str, Any]:
    fractions = {"train": 1.0 - cfg.valid_fraction - cfg.test_fraction, "valid": cfg.valid_fraction,
                 "test": cfg.test_fraction}
    split = common.split_of_clusters(num, fractions, cfg.seed)[clusters] if num else np.zeros(0, np.int8)
    dropped: dict[str, int] = {"valid": 0, "test": 0}
    if cfg.clean_heldout and (split > 0).any() and (split == 0).any():
        with open(tmp / "train.fa", "w") as tr, open(tmp / "heldout.fa", "w") as ho:
            for key, _, seq in iter_unique(unique_fa):
                (tr if split[key] == 0 else ho).write(f">{key}\n{seq}\n")
        hits = common.mmseqs_search(tmp / "heldout.fa", tmp / "train.fa", tmp, min_identity=cfg.identity,
                                    threads=cfg.threads)
        leaky = np.unique(np.array([int(q) for q, _, ident in hits if ident >= cfg.identity], dtype=np.int64))
        for k, name in ((1, "valid"), (2, "test")):
            dropped[name] = int((split[leaky] == k).sum())
        split = split.copy()
        split[leaky] = -1
        for f in ("train.fa", "heldout.fa", "hits.m8"):
            (tmp / f).unlink(missing_ok=True)
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


def publish(stage_dir: Path, out: Path, names: list[str]) -> None:
    """Move the final folders of a completed stage to ``out`` (atomic per folder)."""
    for name in names:
        src, dst = stage_dir / name, out / name
        if src.exists():
            if dst.exists():
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            src.rename(dst)


def published(out: Path, info: dict[str, Any]) -> bool:
    for name, split in info["splits"].items():
        meta = out / name / SPLIT_FILE
        if not meta.is_file() or json.loads(meta.read_text())["shards"] != split["shards"]:
            return False
    return (out / "tokenizer.json").is_file()


def prepare(cfg: ProteinPrepConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = expand_inputs(cfg.inputs)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("out", "threads", "inputs")}
    stages = common.Stages(out, {"kind": "protein", **params}, modules=("data_prep.protein", "data_prep.blastdb", "fm_core.shards"))
    sig = common.input_signature([p for _, p in inputs])
    u = stages.run("unique", lambda t: stage_unique(t, cfg, inputs), depends=sig)
    unique_fa = stages.dir("unique") / "unique.fa"
    c = stages.run("cluster", lambda t: stage_cluster(t, cfg, unique_fa, u["unique"]))
    clusters = np.load(stages.dir("cluster") / "clusters.npy")
    stages.run("split", lambda t: stage_split(t, cfg, unique_fa, clusters, c["clusters"]))
    split = np.load(stages.dir("split") / "split.npy")
    s = stages.run("shards", lambda t: stage_shards(t, cfg, unique_fa, clusters, split),
                   check=lambda info: published(out, info))
    publish(stages.dir("shards"), out, [*SPLITS, "tokenizer.json"])

    counts = common.Counts.from_dict(u["counts"])
    counts.kept = sum(v["records"] for v in s["splits"].values())
    dropped = int((split < 0).sum())
    if dropped:
        counts.reject("heldout_homolog_in_train", f"{dropped} valid/test sequences with a >= "
                      f"{cfg.identity:.0%}-identity hit in train", n=dropped)
    manifest = {
        "kind": "protein", "config": asdict(cfg), "inputs": u["inputs"],
        "tools": {"mmseqs": common.mmseqs_version() if c["clusters"] and (cfg.cluster_mode != "none"
                                                                          or cfg.clean_heldout) else None},
        "unique_sequences": u["unique"], "unique_residues": u["residues"], "clusters": c["clusters"],
        "splits": s["splits"], "tokenizer": "tokenizer.json",
        "stages": {"seconds": stages.seconds, "ran": stages.ran, "skipped": stages.skipped},
    }
    common.finish(out, manifest, counts, f"fm-prep protein {out}")
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ProteinPrepConfig()
    p.add_argument("--input", dest="inputs", nargs="+", default=d.inputs,
                   help="FASTA (plain/gzip), BLAST DB prefix, or folders of them (default: Debian metastudent-data)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--min-length", type=int, default=d.min_length)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--identity", type=float, default=d.identity, help="MMseqs2 clustering identity (0.5 = UniRef50)")
    p.add_argument("--coverage", type=float, default=d.coverage)
    p.add_argument("--cluster-mode", choices=["cluster", "linclust", "none"], default=d.cluster_mode)
    p.add_argument("--cluster-steps", type=int, default=d.cluster_steps)
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--no-clean-heldout", dest="clean_heldout", action="store_false",
                   help="keep held-out sequences that have a >= identity hit in train")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--id-separator", default=d.id_separator, help="keep the id before this character ('' = whole id)")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens)


def from_args(args: argparse.Namespace) -> ProteinPrepConfig:
    kw = {k: getattr(args, k) for k in ProteinPrepConfig.__dataclass_fields__}
    kw["id_separator"] = kw["id_separator"] or None
    return ProteinPrepConfig(**kw)

