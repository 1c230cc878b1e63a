"""``fm-prep code``: source trees -> filtered, de-duplicated, package-split token shards and a BPE tokenizer.

Stages:

1. ``scan``: walk the roots (default: the running interpreter's standard library) for files with
   the given extensions, skipping test folders and caches. Each file is kept or rejected and
   counted: ``binary`` (a NUL byte), ``non_utf8``, ``empty``, ``oversized`` (> ``max_bytes``),
   ``generated`` (a "generated"/"do not edit" marker in its first lines), ``minified`` (a line
   longer than ``max_line`` or a mean line length above ``max_mean_line``), ``exact_duplicate``
   (same bytes as a file seen before) and ``near_duplicate`` (MinHash Jaccard estimate >=
   ``near_dup_threshold`` with a kept file; ``datasketch`` LSH over 5-token shingles).
2. ``split``: files are grouped by package (their top folder below the root; a top-level module is
   its own group). Groups that hold near-twins (estimated Jaccard >= ``twin_threshold``, lower than
   the removal threshold) are merged, so no file's near-twin crosses splits. Whole groups go to
   train / valid / test (seeded order, filled by file count).
3. ``tokenizer``: a byte-level BPE (``code_fm.bpe``) trained on the train split only, or, with
   ``tokenizer=`` (a prepared directory), that tokenizer re-used so that a second corpus shares its ids.
4. ``shards``: token ids per file with ``path`` and ``group`` columns (``fm_core.shards``).

A pre-training corpus larger than the task's (e.g. the installed PyPI packages, ``--input
$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')``) is prepared with
``--tokenizer data/code --exclude data/code``: every file whose MinHash Jaccard estimate with a
``valid`` or ``test`` file of an excluded directory reaches ``twin_threshold`` is rejected as
``held_out_near_duplicate`` (a vendored copy of a held-out stdlib module, for instance), so the
evaluation files stay unseen in pre-training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import common

SPLITS = ("train", "valid", "test")
SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "testdata", ".git"}
GENERATED = re.compile(rb"(do not edit|auto-?generated|automatically generated|this file (is|was) generated|"
                       rb"generated (by|from) \S+\.(py|sh|c|pl|go)\b)", re.IGNORECASE)
TOKEN = re.compile(r"\w+|[^\w\s]")
SCHEME = "affine32"  # datasketch's MinHash permutation scheme (explicit: signatures are stored)


def default_roots() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


@dataclass
class CodePrepConfig:
    inputs: list[str] = field(default_factory=default_roots)
    out: str = "data/code"
    extensions: list[str] = field(default_factory=lambda: [".py"])
    max_bytes: int = 200_000
    max_line: int = 1000
    max_mean_line: float = 120.0
    near_dup_threshold: float = 0.85
    twin_threshold: float = 0.5
    num_perm: int = 128
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    vocab_size: int = 8192
    seed: int = 0
    tokenizer: str | None = None  # a prepared directory (or tokenizer.json) to re-use instead of training one
    exclude: list[str] = field(default_factory=list)  # prepared code directories whose valid/test stay unseen


def iter_files(root: Path, extensions: list[str]) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part in SKIP_DIRS or part.startswith("test_") and part != rel[-1] for part in rel[:-1]):
            continue
        if p.is_file() and p.suffix in extensions and not p.name.startswith("test_"):
            out.append(p)
    return out


def shingles(text: str, k: int = 5) -> set[bytes]:
    toks = TOKEN.findall(text)
    return {" ".join(toks[i : i + k]).encode() for i in range(max(len(toks) - k + 1, 1))}


def _minhash(text: str, num_perm: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1, scheme=SCHEME)
    m.update_batch(list(shingles(text)))
    return m


def held_out_index(cfg: CodePrepConfig) -> tuple[Any, list[str]]:
    """MinHash LSH (``twin_threshold``) over the valid and test files of every ``exclude`` directory."""
    from datasketch import MinHashLSH

    from fm_core.shards import ShardDataset, load_tokenizer

    lsh = MinHashLSH(threshold=cfg.twin_threshold, num_perm=cfg.num_perm)
    names: list[str] = []
    for d in cfg.exclude:
        missing = [x for x in ("valid", "test", "tokenizer.json") if not (Path(d) / x).exists()]
        if missing:
            raise FileNotFoundError(f"--exclude {d}: no {', '.join(missing)} (is it an fm-prep code directory?)")
        tok = load_tokenizer(d)
        for split in ("valid", "test"):
            ds = ShardDataset(Path(d) / split)
            for i, path in enumerate(ds.column("path")):
                lsh.insert(str(len(names)), _minhash(tok.decode(ds.array(i)), cfg.num_perm))
                names.append(f"{split}:{path}")
    return lsh, names


def stage_scan(tmp: Path, cfg: CodePrepConfig) -> dict[str, Any]:
    from datasketch import MinHashLSH

    counts = common.Counts()
    held_out, held_names = held_out_index(cfg) if cfg.exclude else (None, [])
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    seen: dict[bytes, str] = {}
    kept: list[dict[str, Any]] = []
    for root_s in cfg.inputs:
        root = Path(root_s)
        if not root.is_dir():
            raise FileNotFoundError(f"no such source folder: {root}")
        for p in common.progress(iter_files(root, cfg.extensions), desc=f"scan {root.name}", unit=" file"):
            counts.read += 1
            rel = f"{root.name}/{p.relative_to(root).as_posix()}"
            try:  # size first: a 50 MB minified bundle is rejected without being read
                if p.stat().st_size > cfg.max_bytes:
                    counts.reject("oversized", f"{rel}: {p.stat().st_size} bytes")
                    continue
                raw = p.read_bytes()
            except OSError as err:  # unreadable (permissions, vanished, a FIFO...): counted, named
                counts.reject("unreadable", f"{rel}: {err.strerror or err}")
                continue
            if b"\0" in raw:
                counts.reject("binary", rel)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                counts.reject("non_utf8", f"{rel}: byte {err.start}")
                continue
            lines = text.splitlines()
            if not text.strip():
                counts.reject("empty", rel)
            elif len(raw) > cfg.max_bytes:
                counts.reject("oversized", f"{rel}: {len(raw)} bytes")
            elif GENERATED.search(b"\n".join(raw.splitlines()[:10])):
                counts.reject("generated", rel)
            elif max(len(x) for x in lines) > cfg.max_line or len(text) / len(lines) > cfg.max_mean_line:
                counts.reject("minified", rel)
            elif (digest := hashlib.sha256(raw).digest()) in seen:
                counts.reject("exact_duplicate", f"{rel} = {seen[digest]}")
            else:
                mh = _minhash(text, cfg.num_perm)
                twins = lsh.query(mh)
                if twins:
                    counts.reject("near_duplicate", f"{rel} ~ {kept[int(twins[0])]['path']}")
                    continue
                if held_out is not None and (twins := held_out.query(mh)):
                    counts.reject("held_out_near_duplicate", f"{rel} ~ {held_names[int(twins[0])]}")
                    continue
                seen[digest] = rel
                lsh.insert(str(len(kept)), mh)
                parts = p.relative_to(root).parts
                group = f"{root.name}/{parts[0]}" if len(parts) > 1 else rel
                kept.append({"path": rel, "file": str(p), "group": group, "bytes": len(raw),
                             "minhash": mh.hashvalues.tolist()})
                counts.kept += 1
    counts.check("code scan stage")
    (tmp / "files.json").write_text(json.dumps(kept))
    return {"counts": counts.as_dict(), "files": len(kept), "bytes": sum(f["bytes"] for f in kept)}


def stage_split(tmp: Path, cfg: CodePrepConfig, files: list[dict[str, Any]]) -> dict[str, Any]:
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    groups = sorted({f["group"] for f in files})
    parent = {g: g for g in groups}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    lsh = MinHashLSH(threshold=cfg.twin_threshold, num_perm=cfg.num_perm)
    hashes = []
    for i, f in enumerate(files):
        mh = LeanMinHash(MinHash(num_perm=cfg.num_perm, seed=1, scheme=SCHEME,
                                 hashvalues=np.asarray(f["minhash"], dtype=np.uint64)))
        hashes.append(mh)
        lsh.insert(str(i), mh)
    merged = 0
    for i, f in enumerate(files):
        for j in lsh.query(hashes[i]):
            a, b = find(f["group"]), find(files[int(j)]["group"])
            if a != b:
                parent[max(a, b)] = min(a, b)
                merged += 1
    units: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        units.setdefault(find(f["group"]), []).append(i)
    order = sorted(units)
    order = [order[k] for k in np.random.default_rng(cfg.seed).permutation(len(order))]
    n = len(files)
    targets = {"valid": cfg.valid_fraction * n, "test": cfg.test_fraction * n}
    split = np.zeros(n, dtype=np.int8)
    filled = {"valid": 0, "test": 0}
    for unit in order:
        idx = units[unit]
        for k, name in ((1, "valid"), (2, "test")):
            if filled[name] + len(idx) <= targets[name] + 0.5 * len(idx) and filled[name] < targets[name]:
                split[idx] = k
                filled[name] += len(idx)
                break
    np.save(tmp / "split.npy", split)
    return {"groups": len(groups), "units": len(units), "group_merges": merged,
            "files": {name: int((split == k).sum()) for k, name in enumerate(SPLITS)}}


def stage_tokenizer(tmp: Path, cfg: CodePrepConfig, files: list[dict[str, Any]], split: np.ndarray) -> dict[str, Any]:
    from code_fm.bpe import train_bpe
    from code_fm.fim_format import FIMTokenizer
    from fm_core.shards import load_tokenizer, save_tokenizer

    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
        if not isinstance(tok, FIMTokenizer):
            raise ValueError(f"--tokenizer {cfg.tokenizer}: not a code BPE tokenizer ({tok.to_dict().get('kind')})")
        save_tokenizer(tmp, tok)
        return {"vocab_size": tok.vocab_size, "reused": str(cfg.tokenizer)}
    texts = (Path(f["file"]).read_text("utf-8") for f, s in zip(files, split, strict=True) if s == 0)
    tok = train_bpe(texts, vocab_size=cfg.vocab_size)
    save_tokenizer(tmp, tok)
    return {"vocab_size": tok.vocab_size}


def stage_shards(tmp: Path, cfg: CodePrepConfig, files: list[dict[str, Any]], split: np.ndarray,
                 tokenizer_dir: Path) -> dict[str, Any]:
    import pyarrow as pa

    from fm_core.shards import ShardWriter, load_tokenizer, save_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    writers = {name: ShardWriter(tmp / name, tok.vocab_size, {"path": pa.string(), "group": pa.string()})
               for name in SPLITS}
    stats = {name: {"bytes": 0} for name in SPLITS}
    for f, s in common.progress(list(zip(files, split, strict=True)), desc="encode", unit=" file"):
        text = Path(f["file"]).read_text("utf-8")
        name = SPLITS[int(s)]
        writers[name].add(tok.encode(text, record=f["path"]), path=f["path"], group=f["group"])
        stats[name]["bytes"] += f["bytes"]
    save_tokenizer(tmp, tok)
    out = {}
    for name, w in writers.items():
        summary = w.close()
        out[name] = {"records": summary["rows"], "tokens": summary["tokens"], "bytes": stats[name]["bytes"],
                     "shards": summary["shards"]}
    return {"splits": out}


@common.locks_out
def prepare(cfg: CodePrepConfig) -> dict[str, Any]:
    out, stages = common.open_stages(cfg, "code", ("data_prep.code", "code_fm.bpe", "fm_core.shards"))
    sc = stages.run("scan", lambda t: stage_scan(t, cfg), depends=common.input_signature([Path(p) for p in [*cfg.inputs, *cfg.exclude]]))
    files = json.loads((stages.dir("scan") / "files.json").read_text())
    sp = stages.run("split", lambda t: stage_split(t, cfg, files))
    split = np.load(stages.dir("split") / "split.npy")
    tk = stages.run("tokenizer", lambda t: stage_tokenizer(t, cfg, files, split),
                    depends=common.input_signature([Path(cfg.tokenizer)]) if cfg.tokenizer else None)
    sh = stages.run("shards", lambda t: stage_shards(t, cfg, files, split, stages.dir("tokenizer")),
                    check=lambda info: common.published(out, info))
    common.publish(stages.dir("shards"), out, [*SPLITS, "tokenizer.json"])
    counts = common.Counts.from_dict(sc["counts"])
    manifest = {"kind": "code", "config": asdict(cfg), "files": sc["files"], "bytes": sc["bytes"],
                "groups": sp["groups"], "split_units": sp["units"], "group_merges_for_twins": sp["group_merges"],
                "vocab_size": tk["vocab_size"], "splits": sh["splits"], "tokenizer": "tokenizer.json"}
    return common.finish(out, manifest, counts, f"fm-prep code {out}", stages)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CodePrepConfig()
    p.add_argument("--input", dest="inputs", nargs="+", default=d.inputs,
                   help="source folders (default: this interpreter's standard library)")
    common.add_options(p, d, {"out": str})
    p.add_argument("--extensions", nargs="+", default=d.extensions, help="e.g. .py .go .rs")
    common.add_options(p, d, {
        "max_bytes": int, "max_line": int, "max_mean_line": float, "near_dup_threshold": float,
        "twin_threshold": float, "num_perm": int, "valid_fraction": float, "test_fraction": float,
        "vocab_size": int, "seed": int,
        "tokenizer": (str, "re-use the tokenizer of this prepared directory (a second corpus with the same ids)")})
    p.add_argument("--exclude", nargs="+", default=d.exclude,
                   help="prepared code directories: files near-duplicating their valid/test files are rejected")


def from_args(args: argparse.Namespace) -> CodePrepConfig:
    return common.config_from_args(CodePrepConfig, args)
