"""Retrieval for the structure heads (``task.retrieval``): each chain's homologues from a sequence
database (MMseqs2), a position profile and a coupling map from their alignment.

The database carries sequences only (a FASTA or an MMseqs2 database: ``task.retrieval.database``),
never structure labels. Per chain: the number of homologues kept, their best and mean identity,
and whether one is identical to the chain (identity >= 0.99 over >= 95% of it: the leakage the
metrics report apart, ``*_no_identical_hit`` subsets). Alignments are cached under ``cache_dir``
per sequence, database and search settings: a chain is searched once.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bio_fm import profiles
from bio_fm.mmseqs import mmseqs_align, read_alignments
from tasks.structure.data import Chain

STRATA = {"0": (0, 0), "1-9": (1, 9), "10+": (10, None)}


@dataclass
class Retrieved:
    msa: np.ndarray  # (1 + homologues, L) states, the query first
    features: np.ndarray  # (L, 22) profile, coverage, log(1 + Neff)
    homologues: int
    max_identity: float
    mean_identity: float
    identical: bool


def sequence_key(sequence: str) -> str:
    return hashlib.sha1(sequence.encode()).hexdigest()[:20]


def search(chains: list[Chain], cfg: dict[str, Any], threads: int | None) -> list[tuple[str, str, float, int, str, str]]:
    """MMseqs2 alignments of ``chains`` against ``cfg['database']``, the query id being
    ``sequence_key`` of the chain's sequence. With ``cache_dir``, the alignments of every sequence
    ever searched against this database with these settings are kept there (``<key>.m8`` and the
    searched keys in ``<key>.queries``) and only sequences not yet searched are searched."""
    database = Path(cfg["database"])
    if not (database.is_file() or Path(f"{database}.dbtype").is_file()):
        raise FileNotFoundError(f"retrieval database {database} not found (task.retrieval.database: a FASTA "
                                "or an MMseqs2 database of sequences)")
    settings = {k: cfg[k] for k in ("sensitivity", "max_seqs", "evalue", "iterations")}
    stat = (database if database.is_file() else Path(f"{database}.dbtype")).stat()
    key = hashlib.sha1(json.dumps([str(database.resolve()), stat.st_size, settings]).encode()).hexdigest()[:16]
    with tempfile.TemporaryDirectory(prefix="fm_retrieval_") as tmp:
        cache = Path(cfg["cache_dir"] or tmp)
        cache.mkdir(parents=True, exist_ok=True)
        m8, done_file = cache / f"{key}.m8", cache / f"{key}.queries"
        done = set(done_file.read_text().split()) if done_file.is_file() else set()
        wanted = {sequence_key(c.sequence): c.sequence for c in chains}
        missing = {k: v for k, v in wanted.items() if k not in done}
        if missing:
            query = Path(tmp) / "query.fa"
            query.write_text("".join(f">{k}\n{v}\n" for k, v in missing.items()))
            mmseqs_align(query, database, Path(tmp), threads=threads, **settings)
            with open(m8, "a") as out:
                out.write((Path(tmp) / "alignments.m8").read_text())
            with open(done_file, "a") as out:
                out.write("".join(f"{k}\n" for k in missing))
        return [r for r in read_alignments(m8) if r[0] in wanted] if m8.is_file() else []


def retrieve(chains: list[Chain], cfg: dict[str, Any], threads: int | None) -> list[Retrieved]:
    """Search ``chains`` and build each one's ``Retrieved`` (also kept in ``chain.cache['retrieval']``)."""
    hits = profiles.alignments_by_query(search(chains, cfg, threads))
    out = []
    for chain in chains:
        mine = hits.get(sequence_key(chain.sequence), [])[: cfg["max_hits"]]
        msa = profiles.query_anchored(chain.sequence, [(qs, qa, ta) for _, _, qs, qa, ta in mine])
        idents = np.array([ident for _, ident, *_ in mine])
        aligned = [sum(ch != "-" for ch in qa) for *_, qa, _ in mine]
        identical = any(i >= 0.99 and a >= 0.95 * len(chain) for i, a in zip(idents, aligned, strict=True))
        feats = profiles.profile_features(msa, identity=cfg["identity"], pseudocount=cfg["pseudocount"])
        r = Retrieved(msa, feats, len(mine), float(idents.max()) if len(mine) else 0.0,
                      float(idents.mean()) if len(mine) else 0.0, bool(identical))
        chain.cache["retrieval"] = r
        out.append(r)
    return out


def retrieval_subsets(chains: list[Chain], groups: dict[str, list[int]]) -> dict[str, list[int]]:
    """``groups`` plus the homologue strata of the test chains, and every one of them again
    without the chains that found an identical sequence (``<name>_no_identical_hit``)."""
    found = [c.cache["retrieval"].homologues for c in chains]
    out = dict(groups)
    for name, (lo, hi) in STRATA.items():
        out[f"test_homologues_{name}"] = [k for k, n in enumerate(found) if n >= lo and (hi is None or n <= hi)]
    clean = {k for k, c in enumerate(chains) if not c.cache["retrieval"].identical}
    return {**out, **{f"{name}_no_identical_hit": [k for k in idx if k in clean] for name, idx in out.items()}}


def retrieval_report(run_dir: Path, split_chains: dict[str, list[Chain]]) -> dict[str, Any]:
    """``retrieval_per_chain.tsv`` in ``run_dir`` (chain, split, homologues, identities, identical)
    and the metrics that count them."""
    metrics: dict[str, Any] = {}
    lines = ["chain\tsplit\tlength\thomologues\tmax_identity\tmean_identity\tidentical"]
    for split, chains in split_chains.items():
        rs = [c.cache["retrieval"] for c in chains]
        lines += [f"{c.id}\t{split}\t{len(c)}\t{r.homologues}\t{r.max_identity:.3f}\t{r.mean_identity:.3f}\t"
                  f"{int(r.identical)}" for c, r in zip(chains, rs, strict=True)]
        n = np.array([r.homologues for r in rs])
        metrics[f"retrieval/{split}_chains_with_identical_hit"] = int(sum(r.identical for r in rs))
        metrics[f"retrieval/{split}_homologues_median"] = float(np.median(n)) if len(n) else 0.0
        metrics[f"retrieval/{split}_max_identity_median"] = float(np.median([r.max_identity for r in rs])) \
            if rs else 0.0
        for name, (lo, hi) in STRATA.items():
            metrics[f"retrieval/{split}_chains_homologues_{name}"] = int(((n >= lo) & (n <= (n.max(initial=0) if hi is None else hi))).sum())
    (run_dir / "retrieval_per_chain.tsv").write_text("\n".join(lines) + "\n")
    return metrics


def retrieval_summary(metrics: dict[str, Any], groups: dict[str, list[int]], methods: list[str], single: list[str],
                      keys: tuple[str, ...], references: dict[str, str]) -> dict[str, Any]:
    """The best of the retrieval-augmented ``methods`` (by ``test/<method>/<keys[0]>``) and, per subset
    and metric key, its margin over the best ``single``-sequence system
    (``<group>/margin_best_retrieval_vs_best_single_sequence/<key>``) and over each reference method
    (``references``: name -> method, ``<group>/margin_best_retrieval_vs_<name>/<key>``)."""
    best = max(methods, key=lambda m: metrics[f"test/{m}/{keys[0]}"])
    out: dict[str, Any] = {"summary/best_retrieval_method": best}
    for group, idx in groups.items():
        for key in keys:
            if f"{group}/{best}/{key}" not in metrics or not idx:
                continue
            mine = metrics[f"{group}/{best}/{key}"]
            out[f"{group}/margin_best_retrieval_vs_best_single_sequence/{key}"] = (
                mine - max(metrics[f"{group}/{m}/{key}"] for m in single))
            for name, ref in references.items():
                out[f"{group}/margin_best_retrieval_vs_{name}/{key}"] = mine - metrics[f"{group}/{ref}/{key}"]
    return out


__all__ = ["STRATA", "Retrieved", "retrieval_report", "retrieval_subsets", "retrieval_summary", "retrieve", "search",
           "sequence_key"]
