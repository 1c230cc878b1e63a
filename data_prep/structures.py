"""``fm-prep structures``: protein chains with coordinates -> 30%-identity split, labelled shards.

Inputs: ProMod3's ``structure_db.dat`` (Debian ``promod3-data``: 21,119 PDB chains; read here
with numpy, layout below), or PDB / mmCIF files (Biopython; secondary structure from ``mkdssp``,
Debian ``dssp``). Per chain the shards hold: ``id``, ``sequence``, ``tokens`` (ESM-1b alphabet
ids), ``ca`` and ``cb`` (L x 3 float32, flattened; CB is the ideal C-beta from N, CA, C),
``ss8`` / ``ss3`` (DSSP 8 states and H/E/C), ``cluster`` (30% identity), ``train_max_identity``
(highest MMseqs2 identity of a held-out chain to any train chain, 0 when none), and for the
ProMod3 source ``profile`` (L x 20 sequence profile, int16 in 1e-4 units). Contact maps (CB-CB
< 8 A, CA for glycine) follow from the coordinates: ``bio_fm.structure.contact_map``.

Stages: ``read`` (filter and count), ``cluster`` (MMseqs2, default 30% identity, 80% coverage),
``split`` (whole clusters to train / valid / test, then the leakage report: held-out chains
searched against train; kept and flagged by default, dropped with ``--drop-homologs``), ``shards``.

``structure_db.dat`` layout (little-endian, read off the file): a 0x4d-byte header (magic 1234,
version 2, ...), a uint64 chain count, one table entry per chain (uint32 length + id, uint32
length + chain name, uint32 first residue, uint16 residue count, int16 first residue number,
three float32 shifts), then eight sections, each a uint64 residue count R and an array:
sequence (R bytes), backbone N/CA/C/O int16 [R,4,3] in 0.01 A, phi/psi int16 [R,2] in 0.001 rad,
accessibility uint16 [R], depth uint16 [R] in 0.1 A, DSSP (R bytes), sequence profile int16
[R,20] in 1e-4, structure profile int16 [R,20] in 1e-4. The sections end exactly at the file end.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
import struct
import subprocess
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bio_fm.alphabet import STANDARD, ProteinAlphabet
from bio_fm.mmseqs import mmseqs_version
from bio_fm.structure import dssp8_to_3, ideal_cb, normalise_dssp8
from data_prep import common
from fm_core.shards import ShardWriter, save_tokenizer
from fm_core.textio import is_gzip

log = logging.getLogger(__name__)

PROMOD3_DB = Path("/usr/share/promod3/loop_data/structure_db.dat")
# `fm-prep structures --slice`: the 320-chain slice committed in bio_fm/data, split as the structure
# tasks read it by default (their task.data_dir)
SLICE = Path(str(files("bio_fm").joinpath("data/structure_slice/structure_db.dat.gz")))
SLICE_DEFAULTS = {"input": str(SLICE), "out": "data/structure_slice", "test_fraction": 0.3, "valid_fraction": 0.05}
SPLITS = ("train", "valid", "test")
HEADER_BYTES = 0x4D
MAGIC, VERSION = 1234, 2
# (name, numpy dtype, values per residue) of the eight residue sections, in file order
SECTIONS = (("sequence", "u1", 1), ("backbone", "<i2", 12), ("phipsi", "<i2", 2), ("accessibility", "<u2", 1),
            ("depth", "<u2", 1), ("dssp", "u1", 1), ("seq_profile", "<i2", 20), ("struct_profile", "<i2", 20))


# --- ProMod3 structure_db.dat ------------------------------------------------------------------------
class StructureDB:
    """All chains of a ``structure_db.dat`` (plain or gzip): a chain table and residue arrays."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such structure DB: {self.path}")
        raw = np.frombuffer(gzip.decompress(self.path.read_bytes()), dtype=np.uint8) if is_gzip(self.path) \
            else np.memmap(self.path, dtype=np.uint8, mode="r")
        mv = memoryview(raw)
        try:
            magic, version = struct.unpack_from("<ii", mv, 0)
            if magic != MAGIC or version != VERSION:
                raise ValueError(f"magic/version {magic}/{version}, expected {MAGIC}/{VERSION}")
            self.header = bytes(mv[:HEADER_BYTES])
            (n,) = struct.unpack_from("<Q", mv, HEADER_BYTES)
            pos = HEADER_BYTES + 8
            ids, names, offsets, sizes, first, shifts = [], [], [], [], [], []
            for _ in range(n):
                (k,) = struct.unpack_from("<I", mv, pos)
                ids.append(bytes(mv[pos + 4 : pos + 4 + k]).decode("ascii"))
                pos += 4 + k
                (k,) = struct.unpack_from("<I", mv, pos)
                names.append(bytes(mv[pos + 4 : pos + 4 + k]).decode("ascii"))
                pos += 4 + k
                off, size, res0 = struct.unpack_from("<IHh", mv, pos)
                shifts.append(struct.unpack_from("<3f", mv, pos + 8))
                offsets.append(off)
                sizes.append(size)
                first.append(res0)
                pos += 20
            self.ids, self.chains = ids, names
            self.offsets = np.asarray(offsets, dtype=np.int64)
            self.sizes = np.asarray(sizes, dtype=np.int64)
            self.first_resnum = np.asarray(first, dtype=np.int64)
            self.shifts = np.asarray(shifts, dtype=np.float32).reshape(-1, 3)
            self.arrays: dict[str, np.ndarray] = {}
            total = None
            for name, dtype, width in SECTIONS:
                (r,) = struct.unpack_from("<Q", mv, pos)
                if total is None:
                    total = r
                elif r != total:
                    raise ValueError(f"section {name} has {r} residues, the first has {total}")
                itemsize = np.dtype(dtype).itemsize * width
                arr = np.frombuffer(raw, dtype=dtype, count=r * width, offset=pos + 8) if r else np.zeros(0, dtype)
                self.arrays[name] = arr.reshape(r, width) if width > 1 else arr
                pos += 8 + r * itemsize
            if pos != len(raw):
                raise ValueError(f"sections end at byte {pos}, the file has {len(raw)}")
            if len(self.sizes) and (self.offsets + self.sizes).max() > total:
                raise ValueError("a chain extends past the residue arrays")
        except (struct.error, ValueError) as err:
            raise ValueError(f"file {self.path}: not a readable ProMod3 structure_db (version 2): {err}") from err
        self.num_residues = int(total or 0)

    def __len__(self) -> int:
        return len(self.ids)

    def residue_index(self, chains: np.ndarray) -> np.ndarray:
        """Residue rows of the given chains, concatenated in chain order."""
        sizes = self.sizes[chains]
        starts = np.repeat(self.offsets[chains] - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return starts + np.arange(int(sizes.sum()))

    def sequence(self, i: int) -> str:
        o, s = self.offsets[i], self.sizes[i]
        return self.arrays["sequence"][o : o + s].tobytes().decode("ascii")

    def write(self, path: str | Path, chains: list[int] | np.ndarray, zero: tuple[str, ...] = ()) -> None:
        """Write the given chains as a new ``structure_db.dat`` of the same layout (for slices);
        sections named in ``zero`` are written as zeros (smaller gzip, for unused sections)."""
        chains = np.asarray(chains, dtype=np.int64)
        rows = self.residue_index(chains)
        sizes = self.sizes[chains]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        parts = [self.header, struct.pack("<Q", len(chains))]
        for k, i in enumerate(chains):
            for s in (self.ids[i], self.chains[i]):
                parts += [struct.pack("<I", len(s)), s.encode("ascii")]
            parts.append(struct.pack("<IHh", offsets[k], sizes[k], self.first_resnum[i]))
            parts.append(struct.pack("<3f", *self.shifts[i]))
        for name, dtype, _ in SECTIONS:
            arr = np.ascontiguousarray(self.arrays[name][rows]).astype(dtype)
            if name in zero:
                arr[...] = 0
            parts += [struct.pack("<Q", len(rows)), arr.tobytes()]
        data = b"".join(parts)
        path = Path(path)
        if path.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)


def _list_array(flat: np.ndarray, lengths: np.ndarray, width: int) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths * width, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(flat).reshape(-1)))


def _string_array(flat: bytes, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets.tobytes()), pa.py_buffer(flat))


def read_promod3(db: StructureDB, cfg: StructurePrepConfig, counts: common.Counts) -> pa.Table:
    """Filter chains (counted) and build one table of all kept chains."""
    standard = np.zeros(256, dtype=bool)
    standard[[ord(c) for c in STANDARD]] = True
    keep = []
    for i in common.progress(range(len(db)), desc="chains", unit=" chain"):
        counts.read += 1
        name = f"{db.ids[i]}_{db.chains[i]}"
        o, s = db.offsets[i], db.sizes[i]
        if why := common.length_rejection(s, cfg.min_length, cfg.max_length):
            counts.reject(why, f"{name}: {s} residues")
        elif not standard[db.arrays["sequence"][o : o + s]].all():
            counts.reject("nonstandard_residue", name)
        else:
            keep.append(i)
            counts.kept += 1
    keep = np.asarray(keep, dtype=np.int64)
    rows = db.residue_index(keep)
    lengths = db.sizes[keep]
    bb = db.arrays["backbone"][rows].reshape(-1, 4, 3).astype(np.float32) / 100.0
    cb = ideal_cb(bb[:, 0], bb[:, 1], bb[:, 2])
    ss8 = normalise_dssp8(db.arrays["dssp"][rows].tobytes().decode("ascii"))
    return pa.table({
        "id": pa.array([f"{db.ids[i]}_{db.chains[i]}" for i in keep], pa.string()),
        "sequence": _string_array(db.arrays["sequence"][rows].tobytes(), lengths),
        "ca": _list_array(bb[:, 1], lengths, 3),
        "cb": _list_array(cb, lengths, 3),
        "ss8": _string_array(ss8.encode("ascii"), lengths),
        "ss3": _string_array(dssp8_to_3(ss8).encode("ascii"), lengths),
        "profile": _list_array(db.arrays["seq_profile"][rows], lengths, 20),
        "first_resnum": pa.array(db.first_resnum[keep], pa.int32()),
    })


# --- PDB / mmCIF files ------------------------------------------------------------------------------
def mkdssp_binary(name: str = "mkdssp") -> str:
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: secondary structure of PDB/mmCIF files needs DSSP "
                                "(Debian: apt-get install dssp)")
    return found


def read_structure_file(path: Path, dssp: str | None, counts: common.Counts, cfg: StructurePrepConfig) -> list[dict]:
    """Chains of the first model of one PDB/mmCIF file: standard residues with N, CA, C; DSSP
    states from ``mkdssp`` (run by Biopython)."""
    import warnings

    from Bio.PDB import MMCIFParser, PDBParser
    from Bio.PDB.Polypeptide import index_to_one, is_aa, three_to_index

    cif = any(path.name.lower().endswith(s) for s in (".cif", ".mmcif", ".cif.gz"))
    parser = MMCIFParser(QUIET=True) if cif else PDBParser(QUIET=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            structure = parser.get_structure(path.stem, str(path))
        except Exception as err:  # Biopython raises many types for malformed files
            raise ValueError(f"file {path}: cannot parse {'mmCIF' if cif else 'PDB'}: {err}") from err
    model = next(iter(structure), None)
    if model is None:
        raise ValueError(f"file {path}: no model")
    states: dict[tuple, str] = {}
    if dssp is not None:
        from Bio.PDB.DSSP import DSSP

        try:
            result = DSSP(model, str(path), dssp=dssp)
        except Exception as err:
            raise ValueError(f"file {path}: mkdssp failed: {err}") from err
        states = {k: result[k][2] for k in result.keys()}
    out = []
    for chain in model:
        counts.read += 1
        name = f"{path.stem}_{chain.id}"
        seq, ncac, ss = [], [], []
        for res in chain:
            if not is_aa(res, standard=True) or not all(a in res for a in ("N", "CA", "C")):
                continue
            seq.append(index_to_one(three_to_index(res.get_resname())))
            ncac.append([res[a].coord for a in ("N", "CA", "C")])
            ss.append(states.get((chain.id, res.id), "-"))
        if why := common.length_rejection(len(seq), cfg.min_length, cfg.max_length):
            counts.reject(why, f"{name}: {len(seq)} residues")
            continue
        if dssp is not None and all(s == "-" for s in ss):
            counts.reject("no_dssp", f"{name}: mkdssp assigned no residue")
            continue
        bb = np.asarray(ncac, dtype=np.float32)
        ss8 = normalise_dssp8("".join(ss))
        out.append({"id": name, "sequence": "".join(seq), "ca": bb[:, 1].reshape(-1),
                    "cb": ideal_cb(bb[:, 0], bb[:, 1], bb[:, 2]).reshape(-1), "ss8": ss8, "ss3": dssp8_to_3(ss8),
                    "profile": None, "first_resnum": int(chain.child_list[0].id[1]) if len(chain) else 0})
        counts.kept += 1
    return out


def read_structure_files(paths: list[Path], cfg: StructurePrepConfig, counts: common.Counts) -> pa.Table:
    dssp = mkdssp_binary(cfg.mkdssp) if cfg.dssp else None
    rows: list[dict] = []
    for p in common.progress(paths, desc="structures", unit=" file"):
        rows += read_structure_file(p, dssp, counts, cfg)
    return pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "sequence": pa.array([r["sequence"] for r in rows], pa.large_string()),
        "ca": pa.array([r["ca"] for r in rows], pa.large_list(pa.float32())),
        "cb": pa.array([r["cb"] for r in rows], pa.large_list(pa.float32())),
        "ss8": pa.array([r["ss8"] for r in rows], pa.large_string()),
        "ss3": pa.array([r["ss3"] for r in rows], pa.large_string()),
        "profile": pa.array([r["profile"] for r in rows], pa.large_list(pa.int16())),
        "first_resnum": pa.array([r["first_resnum"] for r in rows], pa.int32()),
    })


# --- the pipeline ------------------------------------------------------------------------------------
@dataclass
class StructurePrepConfig:
    input: str = str(PROMOD3_DB)
    out: str = "data/structures"
    min_length: int = 20
    max_length: int | None = None
    identity: float = 0.3
    coverage: float = 0.8
    cluster_steps: int | None = None
    valid_fraction: float = 0.05
    test_fraction: float = 0.08
    drop_homologs: bool = False
    homolog_identity: float = 0.0  # a held-out chain is flagged when its best train hit is >= this
    dssp: bool = True  # PDB/mmCIF input: run mkdssp (False: ss8/ss3 are all 'C')
    mkdssp: str = "mkdssp"
    seed: int = 0
    threads: int | None = None
    shard_tokens: int = 1 << 24


STRUCTURE_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz")


def stage_read(tmp: Path, cfg: StructurePrepConfig) -> dict[str, Any]:
    src = Path(cfg.input)
    counts = common.Counts()
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.name.lower().endswith(STRUCTURE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"{src}: no PDB/mmCIF files ({', '.join(STRUCTURE_SUFFIXES)}) inside")
        table, fmt = read_structure_files(files, cfg, counts), "pdb/mmcif"
    elif src.is_file() and src.name.lower().endswith(STRUCTURE_SUFFIXES):
        table, fmt = read_structure_files([src], cfg, counts), "pdb/mmcif"
    elif src.is_file():
        table, fmt = read_promod3(StructureDB(src), cfg, counts), "promod3 structure_db"
    elif src == PROMOD3_DB:
        raise FileNotFoundError(
            f"{src} not found. The default corpus is Debian's promod3-data: `apt-get download promod3-data && "
            "dpkg-deb --fsys-tarfile promod3-data_*.deb | tar -x ./usr/share/promod3/loop_data/structure_db.dat` "
            "then --input usr/share/promod3/loop_data/structure_db.dat")
    else:
        raise FileNotFoundError(f"no such input: {src} (structure_db.dat, a PDB/mmCIF file or a folder of them)")
    counts.check("read stage")
    with pa.OSFile(str(tmp / "chains.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with open(tmp / "chains.fa", "w") as fh:
        for k, seq in enumerate(table.column("sequence").to_pylist()):
            fh.write(f">{k}\n{seq}\n")
    return {"counts": counts.as_dict(), "format": fmt, "chains": table.num_rows,
            "residues": int(pa.compute.sum(pa.compute.utf8_length(table.column("sequence"))).as_py() or 0)}


def stage_cluster(tmp: Path, cfg: StructurePrepConfig, fasta: Path, n: int) -> dict[str, Any]:
    return common.cluster_stage(tmp, fasta, n, identity=cfg.identity, coverage=cfg.coverage,
                                steps=cfg.cluster_steps, threads=cfg.threads)


def stage_split(tmp: Path, cfg: StructurePrepConfig, fasta: Path, clusters: np.ndarray, num: int) -> dict[str, Any]:
    split = common.cluster_splits(clusters, num, valid_fraction=cfg.valid_fraction,
                                  test_fraction=cfg.test_fraction, seed=cfg.seed)
    best = np.zeros(len(split), dtype=np.float32)
    if (split > 0).any() and (split == 0).any():
        seqs = [line.rstrip("\n") for k, line in enumerate(open(fasta)) if k % 2 == 1]
        for q, _, ident in common.heldout_hits(tmp, split, enumerate(seqs), threads=cfg.threads):
            best[int(q)] = max(best[int(q)], ident)
    report = {}
    for k, name in ((1, "valid"), (2, "test")):
        mine = split == k
        hit = mine & (best > 0) & (best >= cfg.homolog_identity)
        report[name] = {"chains": int(mine.sum()), "with_train_hit": int(hit.sum()),
                        "with_train_hit_ge50": int((mine & (best >= 0.5)).sum()),
                        "fraction_with_train_hit": round(float(hit.sum() / max(mine.sum(), 1)), 4)}
    if cfg.drop_homologs:
        split = np.where((split > 0) & (best > 0) & (best >= cfg.homolog_identity), -1, split).astype(np.int8)
    np.save(tmp / "split.npy", split)
    np.save(tmp / "best.npy", best)
    return {"leakage": report}


def stage_shards(tmp: Path, cfg: StructurePrepConfig, chains: Path, clusters: np.ndarray, split: np.ndarray,
                 best: np.ndarray) -> dict[str, Any]:
    alphabet = ProteinAlphabet()
    table = pa.ipc.open_file(pa.memory_map(str(chains), "r")).read_all()
    extra = {c: table.schema.field(c).type for c in table.column_names}
    extra.update(cluster=pa.int64(), train_max_identity=pa.float32())
    writers = {name: ShardWriter(tmp / name, alphabet.vocab_size, extra, shard_tokens=cfg.shard_tokens,
                                 batch_rows=512) for name in SPLITS}
    seqs = table.column("sequence").to_pylist()
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(q) for q in seqs], out=offsets[1:])
    ids = alphabet.encode("".join(seqs))  # every letter is one of the 20 standard residues
    tokens = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(ids))
    table = table.append_column("tokens", tokens)
    table = table.append_column("cluster", pa.array(clusters, pa.int64()))
    table = table.append_column("train_max_identity", pa.array(best, pa.float32()))
    for k, name in enumerate(SPLITS):
        writers[name].add_table(table.take(pa.array(np.flatnonzero(split == k))))
    save_tokenizer(tmp, alphabet)
    out = {}
    for name, w in writers.items():
        summary = w.close()
        out[name] = {"records": summary["rows"], "residues": summary["tokens"],
                     "clusters": int(len(np.unique(clusters[split == SPLITS.index(name)]))),
                     "shards": summary["shards"]}
    return {"splits": out}


@common.locks_out
def prepare(cfg: StructurePrepConfig) -> dict[str, Any]:
    out, stages = common.open_stages(cfg, "structures", ("data_prep.structures", "bio_fm.structure", "fm_core.shards"),
                                     ignore=("out", "threads"))
    r = stages.run("read", lambda t: stage_read(t, cfg), depends=common.input_signature([Path(cfg.input)]))
    fasta, chains = stages.dir("read") / "chains.fa", stages.dir("read") / "chains.arrow"
    c = stages.run("cluster", lambda t: stage_cluster(t, cfg, fasta, r["chains"]))
    clusters = np.load(stages.dir("cluster") / "clusters.npy")
    sp = stages.run("split", lambda t: stage_split(t, cfg, fasta, clusters, c["clusters"]))
    split = np.load(stages.dir("split") / "split.npy")
    best = np.load(stages.dir("split") / "best.npy")
    s = stages.run("shards", lambda t: stage_shards(t, cfg, chains, clusters, split, best),
                   check=lambda info: common.published(out, info))
    common.publish(stages.dir("shards"), out, [*SPLITS, "tokenizer.json"])

    counts = common.Counts.from_dict(r["counts"])
    dropped = int((split < 0).sum())
    counts.kept -= dropped
    if dropped:
        counts.reject("heldout_homolog_in_train", f"{dropped} held-out chains with a train hit", n=dropped)
    manifest = {
        "kind": "structures", "config": asdict(cfg), "input_format": r["format"],
        "tools": {"mmseqs": mmseqs_version() if c["clusters"] else None},
        "chains": r["chains"], "residues": r["residues"], "clusters": c["clusters"],
        "leakage": sp["leakage"], "splits": s["splits"], "tokenizer": "tokenizer.json",
    }
    if sum(v["records"] for v in s["splits"].values()) != counts.kept:
        raise AssertionError("shards hold a different number of chains than were kept")
    return common.finish(out, manifest, counts, f"fm-prep structures {out}", stages)


def prepare_slice(out: str | Path, **overrides: Any) -> dict[str, Any]:
    """``fm-prep structures --slice --out <out>``: the committed slice (about 20 s; resumable)."""
    return prepare(StructurePrepConfig(**{**SLICE_DEFAULTS, "out": str(out), **overrides}))


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = StructurePrepConfig()
    p.add_argument("--slice", action="store_true",
                   help="the committed 320-chain slice; the flags not given come from "
                        + ", ".join(f"{k}={v}" for k, v in SLICE_DEFAULTS.items() if k != "input"))
    p.add_argument("--input", help=f"structure_db.dat (plain/gzip), a PDB/mmCIF file or a folder (default {d.input})")
    p.add_argument("--out", help=f"default {d.out}")
    common.add_options(p, d, {"min_length": int, "max_length": int, "identity": float, "coverage": float,
                              "cluster_steps": int})
    p.add_argument("--valid-fraction", type=float, help=f"default {d.valid_fraction}")
    p.add_argument("--test-fraction", type=float, help=f"default {d.test_fraction}")
    p.add_argument("--drop-homologs", action="store_true", help="drop held-out chains with any train hit")
    p.add_argument("--homolog-identity", type=float, default=d.homolog_identity)
    p.add_argument("--no-dssp", dest="dssp", action="store_false")
    p.add_argument("--mkdssp", default=d.mkdssp)
    common.add_options(p, d, {"seed": int, "threads": int, "shard_tokens": int})


def from_args(args: argparse.Namespace) -> StructurePrepConfig:
    """The flags given, then ``--slice``'s defaults (with ``--slice``), then StructurePrepConfig's."""
    given = {k: getattr(args, k) for k in StructurePrepConfig.__dataclass_fields__ if getattr(args, k) is not None}
    return StructurePrepConfig(**{**(SLICE_DEFAULTS if args.slice else {}), **given})


def mkdssp_version(binary: str = "mkdssp") -> str:
    proc = subprocess.run([mkdssp_binary(binary), "--version"], capture_output=True, text=True)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else ""

