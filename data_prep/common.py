"""Shared machinery of ``fm-prep``: resumable stages, manifests that balance, hashing (MMseqs2:
``bio_fm.mmseqs``).

A preparation is a chain of stages. Each stage writes into ``<out>/.work/<stage>.tmp`` and is
renamed into place when complete, then records ``done.json`` with a fingerprint of everything it
depends on (parameters, input sizes and times, the previous stage). A rerun skips stages whose
fingerprint matches (idempotent); a killed run leaves at most one ``*.tmp`` folder, which the
restart discards (resumable). Outputs are written deterministically, so a restarted run produces
byte-identical files, whose SHA-256 the manifest lists.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fm_core.locks import DirectoryLock
from fm_core.summary import REJECTED_FILE, print_summary, write_rejected

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


def locks_out(prepare: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """``prepare(cfg)`` holding the lock of ``cfg.out`` (one writer: a second run fails at once)."""

    @functools.wraps(prepare)
    def locked(cfg: Any) -> dict[str, Any]:
        with DirectoryLock(cfg.out, what="fm-prep output"):
            return prepare(cfg)

    return locked


class Counts:
    """Records read, kept, and rejected by reason: ``kept + sum(rejected) == read`` is checked.
    Every rejection given a message (which names the record) is listed (``rejected.tsv``)."""

    def __init__(self) -> None:
        self.read = 0
        self.kept = 0
        self.rejected: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.listed: list[tuple[str, str, int]] = []  # (message, reason, records)

    def reject(self, reason: str, message: str = "", n: int = 1) -> None:
        self.rejected[reason] += n
        if message:
            self.listed.append((message, reason, n))
            ex = self.examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(message)

    def rejected_rows(self) -> list[tuple[str, str, str]]:
        """(record, reason, detail) per listed rejection, then one row per reason for the records
        counted without a message (e.g. exact duplicate sequences)."""
        rows = [(m, why, f"{n} records" if n > 1 else "") for m, why, n in self.listed]
        listed = Counter()
        for _, why, n in self.listed:
            listed[why] += n
        rows += [("-", why, f"{n - listed[why]} records, not listed one by one")
                 for why, n in sorted(self.rejected.items()) if n > listed[why]]
        return rows

    def check(self, what: str) -> None:
        total = self.kept + sum(self.rejected.values())
        if total != self.read:
            raise AssertionError(f"{what}: kept {self.kept} + rejected {sum(self.rejected.values())} "
                                 f"({dict(self.rejected)}) != read {self.read}")

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "rejected": dict(sorted(self.rejected.items())),
                "reject_examples": self.examples, "rejected_listed": [list(r) for r in self.listed]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counts:
        c = cls()
        c.read, c.kept = d["read"], d["kept"]
        c.rejected.update(d["rejected"])
        c.examples = {k: list(v) for k, v in d.get("reject_examples", {}).items()}
        c.listed = [(str(m), str(why), int(n)) for m, why, n in d.get("rejected_listed", [])]
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


def length_rejection(n: int, min_length: int, max_length: int | None) -> str | None:
    """The reject reason (``too_short`` / ``too_long``) of a record of ``n`` residues, or None."""
    if n < min_length:
        return "too_short"
    if max_length is not None and n > max_length:
        return "too_long"
    return None


def open_stages(cfg: Any, kind: str, modules: tuple[str, ...], ignore: tuple[str, ...] = ("out",)) -> tuple[Path, Stages]:
    """The output directory of a prep config (created) and its resumable stages, fingerprinted by
    every field of ``cfg`` but ``ignore`` (paths and thread counts that do not change the result)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ignore}
    return out, Stages(out, {"kind": kind, **params}, modules=modules)


def finish(out: Path, manifest: dict[str, Any], counts: Counts, what: str, stages: Stages) -> dict[str, Any]:
    """Check the balance, write ``manifest.json`` (with the stages' timings) and a flat
    ``metrics.json``; print their paths. Returns the manifest."""
    counts.check(what)
    manifest["stages"] = {"seconds": stages.seconds, "ran": stages.ran, "skipped": stages.skipped}
    manifest["counts"] = {k: v for k, v in counts.as_dict().items() if k != "rejected_listed"}
    manifest["counts"]["rejected_file"] = REJECTED_FILE
    write_rejected(out / REJECTED_FILE, counts.rejected_rows())
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
    # what: "fm-prep <kind> <out>"
    print_summary(" ".join(what.split(" ")[:2]), counts.read, counts.kept, counts.rejected, out / REJECTED_FILE)
    return manifest


def publish(stage_dir: Path, out: Path, names: list[str]) -> None:
    """Move the final folders of a completed stage to ``out`` (atomic per folder)."""
    for name in names:
        src, dst = stage_dir / name, out / name
        if src.exists():
            if dst.exists():
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            src.rename(dst)


def published(out: Path, info: dict[str, Any]) -> bool:
    """Whether the split folders a shards stage reported (and ``tokenizer.json``) are in ``out``."""
    from fm_core.shards import SPLIT_FILE

    for name, split in info["splits"].items():
        meta = out / name / SPLIT_FILE
        if not meta.is_file() or json.loads(meta.read_text())["shards"] != split["shards"]:
            return False
    return (out / "tokenizer.json").is_file()


# --- sequence clustering and leakage-free splits (MMseqs2 through bio_fm.mmseqs) --------------------
def cluster_stage(tmp: Path, fasta: Path, n: int, *, identity: float, coverage: float, mode: str = "cluster",
                  steps: int | None, threads: int | None) -> dict[str, Any]:
    """Cluster the ``n`` records (keys ``0..n-1``) of ``fasta``; writes ``clusters.npy``. ``mode="none"``
    (or no record): every sequence its own cluster (e.g. UniRef50 input)."""
    import numpy as np

    from bio_fm.mmseqs import mmseqs_cluster, read_clusters

    if n == 0 or mode == "none":
        np.save(tmp / "clusters.npy", np.arange(n, dtype=np.int64))
        return {"clusters": n}
    tsv = mmseqs_cluster(fasta, tmp, identity=identity, coverage=coverage, mode=mode, steps=steps, threads=threads)
    cluster, num = read_clusters(tsv, n)
    np.save(tmp / "clusters.npy", cluster)
    tsv.unlink()
    return {"clusters": num}


def cluster_splits(clusters: Any, num: int, *, valid_fraction: float, test_fraction: float, seed: int) -> Any:
    """Split id (0 train, 1 valid, 2 test) per record: whole clusters go to one split."""
    import numpy as np

    fractions = {"train": 1.0 - valid_fraction - test_fraction, "valid": valid_fraction, "test": test_fraction}
    return split_of_clusters(num, fractions, seed)[clusters] if num else np.zeros(0, np.int8)


def heldout_hits(tmp: Path, split: Any, records: Iterable[tuple[int, str]], *, min_identity: float = 0.0,
                 threads: int | None) -> list[tuple[str, str, float]]:
    """MMseqs2 hits of the held-out (``split > 0``) records against the train ones, as (query key,
    target key, identity); ``records`` are (key, sequence). The work files are removed."""
    from bio_fm.mmseqs import mmseqs_search

    with open(tmp / "train.fa", "w") as tr, open(tmp / "heldout.fa", "w") as ho:
        for key, seq in records:
            (tr if split[key] == 0 else ho).write(f">{key}\n{seq}\n")
    hits = mmseqs_search(tmp / "heldout.fa", tmp / "train.fa", tmp, min_identity=min_identity, threads=threads)
    for f in ("train.fa", "heldout.fa", "hits.m8"):
        (tmp / f).unlink(missing_ok=True)
    return hits


# --- command line ---------------------------------------------------------------------------------------
def add_options(p: Any, defaults: Any, options: dict[str, type | tuple[type, str]]) -> None:
    """``--name-with-dashes`` of the given type, defaulting to ``defaults.name``, per option (value:
    a type, or (type, help))."""
    for name, spec in options.items():
        kind, text = spec if isinstance(spec, tuple) else (spec, None)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name), help=text)


def config_from_args(cls: type, args: Any, **overrides: Any) -> Any:
    """The config dataclass ``cls`` from the parsed arguments of its fields."""
    return cls(**{**{k: getattr(args, k) for k in cls.__dataclass_fields__}, **overrides})
