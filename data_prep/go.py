"""``fm-prep go``: proteins with GO annotations (metastudent-data) -> an identity-clustered split for GO transfer.

Input (``--input``): Debian ``metastudent-data``'s ``dataset_201401`` folder, one folder per
ontology (``BPO``, ``MFO``, ``CCO``) with a BLAST protein DB ``goasp.fasta.*`` (decoded with numpy,
``data_prep.blastdb``) and the annotations ``goasp_annot.dat`` (``ACCESSION<TAB>GO:...<TAB>GO:...``),
and the GO graph ``goGraph.txt`` (``parent<TAB>child<TAB>1<TAB>relation``) beside them; or the
committed slice's flat layout (``bio_fm/data/go_slice``: ``sequences.fasta.gz``,
``annotations.dat.gz`` = ``ACCESSION<TAB>ONTOLOGY<TAB>GO:...``, ``go_graph.dat.gz`` in goGraph's format).

Stages (resumable, ``data_prep.common``):

1. ``unique``: one record per accession (a repeat in another ontology's DB is counted as
   ``repeat_in_other_ontology``); sequences normalised and checked as ``fm-prep protein`` does;
   identical sequences under several accessions are merged (annotations united,
   ``duplicate_sequence_merged``); annotations propagated to every ancestor over ``relations``
   (is_a, part_of: CAFA's rule) within the term's ontology, the root removed; proteins left with
   no term are ``no_annotation``; ``max_proteins`` draws a seeded sample (``not_sampled``).
2. ``cluster``: MMseqs2 at ``identity`` (0.3) and ``coverage`` (0.8).
3. ``split``: whole clusters to train / test; test is searched against train with MMseqs2 and a
   test protein with a >= ``identity`` hit moves to ``test_near`` (reported apart by the task), so
   ``test`` has no train mate at >= 30% identity.
4. ``write``: ``{train,test,test_near}.fasta`` (header = accession) and ``annotations.tsv``
   (``accession<TAB>BPO<TAB>MFO<TAB>CCO``, propagated terms, comma-separated).

``manifest.json``: counts (read = kept + rejected), splits, terms per ontology, MMseqs2 version.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bio_fm.mmseqs import mmseqs_version
from data_prep import common
from data_prep.protein import ALLOWED, METASTUDENT, iter_records

ONTOLOGIES = ("BPO", "MFO", "CCO")
ROOTS = {"BPO": "GO:0008150", "MFO": "GO:0003674", "CCO": "GO:0005575"}
SPLITS = ("train", "test", "test_near")
_NOT_ALLOWED = str.maketrans("", "", ALLOWED)


@dataclass
class GoPrepConfig:
    input: str = str(METASTUDENT)
    out: str = "data/go"
    max_proteins: int | None = None  # a seeded random sample of the unique annotated proteins
    min_length: int = 20
    max_length: int | None = None
    relations: list[str] = field(default_factory=lambda: ["is_a", "part_of"])  # propagated over (CAFA)
    identity: float = 0.3
    coverage: float = 0.8
    cluster_steps: int | None = None
    test_fraction: float = 0.1
    seed: int = 0
    threads: int | None = None


# --- the GO graph ---------------------------------------------------------------------------------
def read_graph(path: Path, relations: Iterable[str]) -> dict[str, list[str]]:
    """child -> parents over the given relations, from goGraph's ``parent<TAB>child<TAB>n<TAB>relation``."""
    keep = set(relations)
    parents: dict[str, list[str]] = {}
    with _open(path) as fh:
        for number, line in enumerate(fh, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 4:
                raise ValueError(f"file {path} line {number}: expected 4 tab-separated columns, got {len(cols)}")
            parent, child, _, rel = cols
            if rel in keep and parent.startswith("GO:"):  # obsolete terms hang under non-GO pseudo roots
                parents.setdefault(child, []).append(parent)
    return parents


class GoGraph:
    """Ancestors (memoised) and the ontology of each term, from child -> parents edges."""

    def __init__(self, parents: dict[str, list[str]], roots: dict[str, str]):
        self.parents = parents
        self.roots = roots
        self._up: dict[str, frozenset[str]] = {}
        self._root_of = {root: ont for ont, root in roots.items()}

    def ancestors(self, term: str) -> frozenset[str]:
        """``term`` and every term above it (iterative: deep graphs do not hit the recursion limit)."""
        stack = [term]
        while stack:  # post-order: a term is closed once all its parents are
            t = stack[-1]
            if t in self._up:
                stack.pop()
                continue
            todo = [p for p in self.parents.get(t, ()) if p not in self._up and p not in stack]
            if todo:
                stack += todo
                continue
            stack.pop()
            up = {t}
            for p in self.parents.get(t, ()):
                up |= self._up.get(p, {p})  # a parent still open is on a cycle: keep it alone
            self._up[t] = frozenset(up)
        return self._up[term]

    def ontology(self, term: str) -> str | None:
        found = [self._root_of[t] for t in self.ancestors(term) if t in self._root_of]
        return found[0] if len(found) == 1 else None

    def propagate(self, terms: Iterable[str], ontology: str) -> set[str]:
        """Annotated terms of ``ontology`` with all their ancestors in it, the root removed; terms of
        another ontology or unknown to the graph (obsolete) are dropped."""
        out: set[str] = set()
        for t in terms:
            if self.ontology(t) == ontology:
                out |= self.ancestors(t)
        out.discard(self.roots[ontology])
        return out


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


# --- the two input layouts ------------------------------------------------------------------------
def layout(root: Path) -> dict[str, Any]:
    """Paths of the inputs under ``root`` (metastudent's or the slice's layout)."""
    if (root / "annotations.dat.gz").is_file():
        return {"kind": "slice", "graph": root / "go_graph.dat.gz", "annotations": root / "annotations.dat.gz",
                "sequences": [("fasta", root / "sequences.fasta.gz")]}
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found. The default corpus is Debian's metastudent-data: `apt-get download "
            "metastudent-data && dpkg-deb -x metastudent-data_*.deb ms` and pass "
            "--input ms/usr/share/metastudent-data/dataset_201401 (or the committed slice bio_fm/data/go_slice)")
    missing = [str(p) for p in [root / "goGraph.txt", *(root / o / "goasp_annot.dat" for o in ONTOLOGIES),
                                *(root / o / "goasp.fasta.pin" for o in ONTOLOGIES)] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a metastudent dataset folder, missing {', '.join(missing)}")
    return {"kind": "metastudent", "graph": root / "goGraph.txt",
            "annotations": {o: root / o / "goasp_annot.dat" for o in ONTOLOGIES},
            "sequences": [("blastdb", root / o / "goasp.fasta") for o in ONTOLOGIES]}


def read_annotations(paths: dict[str, Path] | Path) -> dict[str, dict[str, list[str]]]:
    """accession -> ontology -> raw annotated terms (metastudent's per-ontology files or the slice's one)."""
    out: dict[str, dict[str, list[str]]] = {}
    items = paths.items() if isinstance(paths, dict) else [(None, paths)]
    for ont, path in items:
        with _open(path) as fh:
            for number, line in enumerate(fh, start=1):
                cols = line.split()
                if not cols:
                    continue
                acc, rest = cols[0], cols[1:]
                if ont is None:
                    if not rest or rest[0] not in ONTOLOGIES:
                        raise ValueError(f"file {path} line {number}: second column must be one of {ONTOLOGIES}")
                    here, rest = rest[0], rest[1:]
                else:
                    here = ont
                out.setdefault(acc, {}).setdefault(here, []).extend(rest)
    return out


def iter_sequences(sources: list[tuple[str, Path]]) -> Iterator[tuple[str, str, str]]:
    """(source, accession, sequence); headers are ``ACCESSION|GO:...`` (metastudent) or ``ACCESSION``."""
    for fmt, path in sources:
        records = iter_records(fmt, path)
        for header, seq in records:
            yield str(path), header.split(None, 1)[0].split("|", 1)[0] if header.strip() else "", seq


# --- stages -----------------------------------------------------------------------------------------
def _check_sequence(raw: str, cfg: GoPrepConfig) -> tuple[str, str | None]:
    seq = raw.upper().removesuffix("*")
    if not seq:
        return seq, "empty"
    if seq.translate(_NOT_ALLOWED):
        return seq, "invalid_character"
    return seq, common.length_rejection(len(seq), cfg.min_length, cfg.max_length)


def stage_unique(tmp: Path, cfg: GoPrepConfig, paths: dict[str, Any]) -> dict[str, Any]:
    graph = GoGraph(read_graph(paths["graph"], cfg.relations), ROOTS)
    raw = read_annotations(paths["annotations"])
    counts = common.Counts()
    seen_acc: set[str] = set()
    by_digest: dict[bytes, int] = {}
    rows: list[tuple[str, str, dict[str, set[str]]]] = []
    for source, acc, seq_raw in common.progress(iter_sequences(paths["sequences"]), desc="read", unit=" seq"):
        counts.read += 1
        if acc in seen_acc:
            counts.reject("repeat_in_other_ontology")
            continue
        seen_acc.add(acc)
        seq, why = _check_sequence(seq_raw, cfg)
        if why:
            counts.reject(why, f"{source} record {acc!r}")
            continue
        terms = {o: graph.propagate(t, o) for o, t in raw.get(acc, {}).items()}
        terms = {o: t for o, t in terms.items() if t}
        if not terms:
            counts.reject("no_annotation", f"{source} record {acc!r}: no GO term below an ontology root")
            continue
        digest = hashlib.blake2b(seq.encode("ascii"), digest_size=16).digest()
        if digest in by_digest:
            first = rows[by_digest[digest]][2]
            for o, t in terms.items():
                first.setdefault(o, set()).update(t)
            counts.reject("duplicate_sequence_merged", f"{source} record {acc!r} = {rows[by_digest[digest]][0]!r}")
            continue
        by_digest[digest] = len(rows)
        rows.append((acc, seq, terms))
    if cfg.max_proteins is not None and cfg.max_proteins < len(rows):
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), cfg.max_proteins, replace=False))
        counts.reject("not_sampled", f"{len(rows) - len(keep)} of {len(rows)} proteins", n=len(rows) - len(keep))
        rows = [rows[k] for k in keep]
    counts.kept = len(rows)
    counts.check("go unique stage")
    with open(tmp / "unique.fa", "w") as fa, open(tmp / "unique_terms.tsv", "w") as tt:
        for key, (acc, seq, terms) in enumerate(rows):
            fa.write(f">{key} {acc}\n{seq}\n")
            tt.write("\t".join([acc, *(",".join(sorted(terms.get(o, ()))) for o in ONTOLOGIES)]) + "\n")
    per_ont = {o: sum(o in r[2] for r in rows) for o in ONTOLOGIES}
    return {"counts": counts.as_dict(), "unique": len(rows), "annotated": per_ont}


def iter_unique(tmp: Path) -> Iterator[tuple[int, str, str, str]]:
    """(key, accession, sequence, annotation line) of the unique stage's output."""
    with open(tmp / "unique.fa") as fa, open(tmp / "unique_terms.tsv") as tt:
        for header, terms in zip(fa, tt, strict=False):
            seq = fa.readline().rstrip("\n")
            key, acc = header[1:].rstrip("\n").split(" ", 1)
            yield int(key), acc, seq, terms


def stage_split(tmp: Path, cfg: GoPrepConfig, unique: Path, clusters: np.ndarray, num: int) -> dict[str, Any]:
    """0 train, 1 test, 2 test_near (a test protein with a >= identity MMseqs2 hit in train)."""
    split = common.cluster_splits(clusters, num, valid_fraction=cfg.test_fraction, test_fraction=0.0, seed=cfg.seed)
    split = split.astype(np.int8)
    best = np.zeros(len(split), np.float32)
    if (split == 1).any() and (split == 0).any():
        hits = common.heldout_hits(tmp, split, ((k, s) for k, _, s, _ in iter_unique(unique)),
                                   threads=cfg.threads)
        for q, _, ident in hits:
            best[int(q)] = max(best[int(q)], ident)
        split[(split == 1) & (best >= cfg.identity)] = 2
    np.save(tmp / "split.npy", split)
    held = split > 0
    return {"test_with_train_hit": int(((best > 0) & held).sum()), "moved_to_test_near": int((split == 2).sum())}


def stage_write(tmp: Path, unique: Path, split: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    handles = {name: open(tmp / f"{name}.fasta", "w") for name in SPLITS}
    counts = {name: {"proteins": 0, "residues": 0, **{o: 0 for o in ONTOLOGIES}} for name in SPLITS}
    with open(tmp / "annotations.tsv", "w") as ann:
        ann.write("accession\t" + "\t".join(ONTOLOGIES) + "\n")
        for key, acc, seq, terms in iter_unique(unique):
            name = SPLITS[int(split[key])]
            handles[name].write(f">{acc}\n{seq}\n")
            ann.write(terms)
            cols = terms.rstrip("\n").split("\t")[1:]
            c = counts[name]
            c["proteins"] += 1
            c["residues"] += len(seq)
            for o, col in zip(ONTOLOGIES, cols, strict=True):
                c[o] += bool(col)
    for h in handles.values():
        h.close()
    for name in SPLITS:
        counts[name]["clusters"] = int(len(np.unique(clusters[split == SPLITS.index(name)])))
        counts[name]["records"] = counts[name]["proteins"]
        counts[name]["sha256"] = common.sha256_file(tmp / f"{name}.fasta")
    return {"splits": counts}


@common.locks_out
def prepare(cfg: GoPrepConfig) -> dict[str, Any]:
    out, stages = common.open_stages(cfg, "go", ("data_prep.go", "data_prep.blastdb"), ignore=("out", "threads"))
    paths = layout(Path(cfg.input))
    files = [paths["graph"], *([paths["annotations"]] if isinstance(paths["annotations"], Path)
                               else paths["annotations"].values()), *(Path(f"{p}.psq") if f == "blastdb" else p
                                                                      for f, p in paths["sequences"])]
    u = stages.run("unique", lambda t: stage_unique(t, cfg, paths), depends=common.input_signature(files))
    unique = stages.dir("unique")
    c = stages.run("cluster", lambda t: common.cluster_stage(
        t, unique / "unique.fa", u["unique"], identity=cfg.identity, coverage=cfg.coverage,
        steps=cfg.cluster_steps, threads=cfg.threads))
    clusters = np.load(stages.dir("cluster") / "clusters.npy")
    sp = stages.run("split", lambda t: stage_split(t, cfg, unique, clusters, c["clusters"]))
    split = np.load(stages.dir("split") / "split.npy")
    w = stages.run("write", lambda t: stage_write(t, unique, split, clusters),
                   check=lambda info: all((out / f"{n}.fasta").is_file() for n in SPLITS))
    common.publish(stages.dir("write"), out, [*(f"{n}.fasta" for n in SPLITS), "annotations.tsv"])
    counts = common.Counts.from_dict(u["counts"])
    manifest = {"kind": "go", "config": asdict(cfg), "input_layout": paths["kind"],
                "tools": {"mmseqs": mmseqs_version() if u["unique"] else None},
                "unique_proteins": u["unique"], "annotated_per_ontology": u["annotated"],
                "clusters": c["clusters"], "split": sp, "splits": w["splits"], "roots_removed": ROOTS}
    return common.finish(out, manifest, counts, f"fm-prep go {out}", stages)


def make_slice(prepared_dir: Path, raw: Path, out: Path, *, sizes: dict[str, int], seed: int,
               threads: int | None) -> dict[str, int]:
    """The committed slice (``bio_fm/data/go_slice``) from an ``fm-prep go`` output of metastudent
    (``raw``): ``sizes`` proteins drawn per split (seeded), plus the best train hit of each drawn
    ``test_near`` protein (so that the slice holds close homologues); their raw annotations and the
    is_a / part_of edges above their terms, in the slice layout (see the module docstring)."""
    from bio_fm.mmseqs import mmseqs_search

    rng = np.random.default_rng(seed)
    seqs = {n: dict((h.split()[0], s) for h, s in iter_records("fasta", prepared_dir / f"{n}.fasta"))
            for n in SPLITS}
    pick = {n: sorted(rng.choice(sorted(seqs[n]), min(k, len(seqs[n])), replace=False)) for n, k in sizes.items()}
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    (work / "near.fa").write_text("".join(f">{a}\n{seqs['test_near'][a]}\n" for a in pick["test_near"]))
    best: dict[str, tuple[float, str]] = {}
    for q, t, ident in mmseqs_search(work / "near.fa", prepared_dir / "train.fasta", work, threads=threads):
        best[q] = max(best.get(q, (0.0, "")), (ident, t))
    chosen = sorted({*(a for n in pick for a in pick[n]), *(t for _, t in best.values())})
    every = {a: s for n in SPLITS for a, s in seqs[n].items()}
    paths = layout(raw)
    annotations = read_annotations(paths["annotations"])
    with gzip.open(out / "sequences.fasta.gz", "wt", compresslevel=9) as fh:
        fh.writelines(f">{a}\n{every[a]}\n" for a in chosen)
    with gzip.open(out / "annotations.dat.gz", "wt", compresslevel=9) as fh:
        for a in chosen:
            fh.writelines("\t".join([a, o, *terms]) + "\n" for o, terms in sorted(annotations[a].items()))
    graph = GoGraph(read_graph(paths["graph"], ("is_a", "part_of")), ROOTS)
    above = set().union(*(graph.ancestors(t) for a in chosen for ts in annotations[a].values() for t in ts))
    with _open(paths["graph"]) as src, gzip.open(out / "go_graph.dat.gz", "wt", compresslevel=9) as fh:
        fh.writelines(line for line in src if line.split("\t")[1] in above and line.split("\t")[3].strip()
                      in ("is_a", "part_of"))
    shutil.rmtree(work)
    return {"proteins": len(chosen), "terms_in_graph": len(above), **{n: len(p) for n, p in pick.items()}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = GoPrepConfig()
    p.add_argument("--input", default=d.input,
                   help="metastudent-data's dataset_201401 folder, or the committed slice bio_fm/data/go_slice")
    common.add_options(p, d, {"out": str, "min_length": int, "max_length": int,
                              "max_proteins": (int, "a seeded random sample of this many proteins"),
                              "identity": (float, "MMseqs2 clustering identity; no test protein keeps a train "
                                                  "hit at or above it"),
                              "coverage": float, "cluster_steps": int, "test_fraction": float})
    p.add_argument("--relations", nargs="+", default=d.relations, help="GO relations propagated over")
    common.add_options(p, d, {"seed": int, "threads": int})


def from_args(args: argparse.Namespace) -> GoPrepConfig:
    return common.config_from_args(GoPrepConfig, args)
