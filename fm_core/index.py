"""A vector index over ids (the retrieval engine), domain-free, backed by faiss.

``Index.build(vectors, ids, metric=..., kind=..., meta=..., params=...)`` -> ``add`` ->
``search(queries, k, meta=...)`` -> ``save(dir)`` / ``Index.load(dir, mmap=True)``.

- metric ``cosine`` (rows L2-normalised, then inner product) or ``ip`` (raw inner product);
  scores are similarities: higher is closer.
- kind ``exact`` (``IndexFlatIP``: brute force, for small sets and as the reference), ``hnsw``
  (``IndexHNSWFlat``: graph, no training, for millions of vectors) or ``ivf`` (``IndexIVFFlat``:
  trained on the first ``params.train_size`` vectors added; ``nlist`` lists, ``nprobe`` probed).
- ``meta`` records where the vectors came from; the keys of ``MODEL_KEYS`` (model fingerprint,
  layer, dim) identify the embedding space: a query whose meta differs on any of them is refused
  (``IndexMismatchError``), so vectors of another model or layer never meet the index.
- A saved index is a directory: ``index.faiss`` (faiss's own format, memory-mapped on load:
  ``IO_FLAG_MMAP_IFC`` for flat codes, ``IO_FLAG_MMAP`` for IVF lists; pages are read on demand
  and shared between processes; a mapped index is read-only), ``ids.txt`` (one id a
  line, row order) and ``index.json`` (format, metric, kind, params, count, meta).

``read_shards`` / ``shard_meta`` read ``fm-embed`` output directories (``manifest.json``,
``index.tsv``, ``shards/*.safetensors``) one shard at a time, so building from shards holds one
shard plus the index in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fm_core.errors import UserError

FORMAT = "fm-index/1"
METRICS = ("cosine", "ip")
KINDS = ("exact", "hnsw", "ivf")
MODEL_KEYS = ("model_fingerprint", "layer", "dim")


class IndexError_(UserError):
    """A user's mistake with an index (empty, missing file, bad shapes)."""


class IndexMismatchError(IndexError_):
    """Query vectors come from another model, layer or dimension than the index."""


def _faiss():
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    import faiss

    return faiss


def check_compatible(index_meta: dict[str, Any], query_meta: dict[str, Any], where: str) -> None:
    """Refuse a query whose embedding space (``MODEL_KEYS``) differs from the index's."""
    diff = [k for k in MODEL_KEYS if k in index_meta and query_meta.get(k) != index_meta.get(k)]
    if diff:
        shown = ", ".join(f"{k}: index {index_meta.get(k)!r} vs query {query_meta.get(k)!r}" for k in diff)
        raise IndexMismatchError(
            f"{where}: the queries come from another embedding space ({shown}); embed the queries "
            f"with the index's model {index_meta.get('model_name', '?')!r}, layer {index_meta.get('layer')}")


def _as_matrix(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2:
        raise IndexError_(f"{what}: expected a (N, D) matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise IndexMismatchError(f"{what}: vectors of dimension {x.shape[1]}, the index holds dimension {dim}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise IndexError_(f"{what}: row {bad} holds NaN or infinite values")
    return x


class Index:
    """Vectors with string ids; see the module docstring. Construct with ``Index.build`` or
    ``Index.load``; ``Index(dim, metric=..., kind=..., meta=..., params=...)`` makes an empty one."""

    def __init__(self, dim: int, *, metric: str, kind: str, meta: dict[str, Any], params: dict[str, Any]):
        if metric not in METRICS:
            raise IndexError_(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
        if kind not in KINDS:
            raise IndexError_(f"index kind {kind!r}: choose one of {', '.join(KINDS)}")
        self.dim, self.metric, self.kind = int(dim), metric, kind
        self.meta = {**meta, "dim": int(dim)}
        self.params = dict(params)
        self.ids: list[str] = []
        self.mapped = False
        self._pending: list[np.ndarray] = []  # ivf: vectors held until train_size are seen
        self.faiss = self._new_faiss()

    def _param(self, name: str) -> int:
        if name not in self.params:
            raise IndexError_(f"a {self.kind} index needs params.{name} (see conf/index.yaml for the defaults)")
        return int(self.params[name])

    def _new_faiss(self):
        faiss = _faiss()
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self._param("m"), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self._param("ef_construction")
            return index
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self._param("nlist"),
                                   faiss.METRIC_INNER_PRODUCT)
        return index

    @classmethod
    def build(cls, vectors: Any, ids: Sequence[str], *, metric: str, kind: str, meta: dict[str, Any],
              params: dict[str, Any] | None = None) -> Index:
        """A new index holding ``vectors`` (N, D) with ``ids`` (N)."""
        x = _as_matrix(vectors, None, "build")
        index = cls(x.shape[1], metric=metric, kind=kind, meta=meta, params=params or {})
        index.add(x, ids)
        index.flush()
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            x = x.copy()
            _faiss().normalize_L2(x)
        return x

    def add(self, vectors: Any, ids: Sequence[str]) -> None:
        """Append rows; ids must be new. An ivf index trains once ``train_size`` rows are seen
        (``flush()`` trains on what there is; ``save`` and ``search`` flush)."""
        if self.mapped:  # faiss aborts the process when a mapped (read-only) index grows
            raise IndexError_("add: this index was loaded memory-mapped (read-only); load it with mmap=False to add")
        x = _as_matrix(vectors, self.dim, "add")
        ids = [str(i) for i in ids]
        if len(ids) != len(x):
            raise IndexError_(f"add: {len(x)} vectors but {len(ids)} ids")
        bad = [i for i in ids if not i or "\n" in i]
        if bad:
            raise IndexError_(f"add: invalid id {bad[0]!r} (empty or with a newline)")
        self.ids.extend(ids)
        x = self._prepare(x)
        if self.kind == "ivf" and not self.faiss.is_trained:
            self._pending.append(x)
            if sum(len(p) for p in self._pending) >= self._param("train_size"):
                self.flush()
            return
        self.faiss.add(x)

    def flush(self) -> None:
        """Train an ivf index on the rows held so far and add them (a no-op otherwise)."""
        if not self._pending:
            return
        x = np.concatenate(self._pending)
        self._pending = []
        nlist = self.faiss.nlist
        if len(x) < nlist:  # too few rows for the lists asked: fewer lists (39 rows a list is faiss's floor)
            self.params["nlist"] = max(1, len(x) // 39)
            self.faiss = self._new_faiss()
        self.faiss.train(x)
        self.faiss.add(x)

    def _set_search_params(self) -> None:
        if self.kind == "hnsw":
            self.faiss.hnsw.efSearch = self._param("ef_search")
        elif self.kind == "ivf":
            self.faiss.nprobe = self._param("nprobe")

    def search(self, queries: Any, k: int, *, meta: dict[str, Any] | None = None,
               where: str = "search") -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` neighbours of each query row: (scores (Q, k') float32, ids), k' = min(k, len).
        ``meta`` (the queries' provenance) is checked against the index's; a slot the
        approximate index leaves empty has score -inf and no id."""
        if meta is not None:
            check_compatible(self.meta, meta, where)
        q = _as_matrix(queries, self.dim, where)
        self.flush()
        if not self.ids:
            raise IndexError_(f"{where}: the index is empty (build it from a non-empty input)")
        k = min(int(k), len(self.ids))
        if k < 1:
            raise IndexError_(f"{where}: k must be at least 1")
        self._set_search_params()
        scores, rows = self.faiss.search(self._prepare(q), k)
        scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
        return scores, [[self.ids[r] for r in row if r >= 0] for row in rows]

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss``, ``ids.txt`` and ``index.json`` into ``directory`` (each atomically)."""
        self.flush()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "index.faiss.tmp"
        _faiss().write_index(self.faiss, str(tmp))
        os.replace(tmp, out / "index.faiss")
        _write_atomic(out / "ids.txt", "".join(f"{i}\n" for i in self.ids))
        info = {"format": FORMAT, "metric": self.metric, "kind": self.kind, "dim": self.dim,
                "count": len(self.ids), "params": self.params, "meta": self.meta,
                "ids_sha256": hashlib.sha256("\n".join(self.ids).encode()).hexdigest()}
        _write_atomic(out / "index.json", json.dumps(info, indent=2, sort_keys=True))
        return out

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> Index:
        """Read a saved index; ``mmap`` maps the vectors from disk instead of reading them."""
        d = Path(directory)
        info_path = d / "index.json"
        if not info_path.is_file():
            raise IndexError_(f"{d}: no index.json: not an fm-index directory (build one with fm-index)")
        info = json.loads(info_path.read_text())
        if info.get("format") != FORMAT:
            raise IndexError_(f"{info_path}: format {info.get('format')!r}, expected {FORMAT!r}")
        for name in ("index.faiss", "ids.txt"):
            if not (d / name).is_file():
                raise IndexError_(f"{d}: {name} is missing (the index was not saved completely; rebuild it)")
        index = cls.__new__(cls)
        index.dim, index.metric, index.kind = int(info["dim"]), info["metric"], info["kind"]
        index.meta, index.params, index._pending = info["meta"], info["params"], []
        index.ids = (d / "ids.txt").read_text(encoding="utf-8").splitlines()
        faiss = _faiss()
        index.mapped = bool(mmap)
        index.faiss = faiss.read_index(str(d / "index.faiss"), _mmap_flag(index.kind) if mmap else 0)
        if index.faiss.ntotal != len(index.ids) or len(index.ids) != info["count"]:
            raise IndexError_(f"{d}: index.faiss holds {index.faiss.ntotal} vectors, ids.txt {len(index.ids)}, "
                              f"index.json {info['count']}: the files do not belong together; rebuild")
        return index


def _mmap_flag(kind: str) -> int:
    """faiss 1.15: ``IO_FLAG_MMAP`` maps an IVF index's inverted lists but still reads a flat
    (exact, hnsw storage) index into memory; ``IO_FLAG_MMAP_IFC`` maps flat codes (measured: +0.06
    MB RSS instead of +122 MB for a 122 MB flat index); the two combined fail on IVF."""
    faiss = _faiss()
    return faiss.IO_FLAG_MMAP if kind == "ivf" else faiss.IO_FLAG_MMAP_IFC


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- fm-embed shards -------------------------------------------------------------------------------

def _manifest(embed_dir: Path) -> dict[str, Any]:
    path = embed_dir / "manifest.json"
    if not path.is_file():
        raise IndexError_(f"{embed_dir}: no manifest.json: not an fm-embed output directory")
    return json.loads(path.read_text())


def config_fingerprint(model_config: dict[str, Any]) -> str:
    """A stable hash of a model config (the fallback identity when no weights fingerprint exists)."""
    return "config:" + hashlib.sha256(json.dumps(model_config, sort_keys=True).encode()).hexdigest()[:16]


def shard_meta(embed_dir: str | Path, layer: int | None) -> dict[str, Any]:
    """Provenance of the vectors of ``layer`` (None = the last stored) in an fm-embed directory:
    model name, model fingerprint (of the weights when fm-embed recorded one), layer, dim."""
    embed_dir = Path(embed_dir)
    manifest = _manifest(embed_dir)
    layers = manifest["layers"]
    layer = layers[-1] if layer is None else int(layer)
    if layer not in layers:
        raise IndexError_(f"{embed_dir}: layer {layer} was not embedded (stored layers: {layers})")
    model = manifest.get("model", {})
    return {"model_name": model.get("name", "?"),
            "model_fingerprint": manifest.get("model_fingerprint") or config_fingerprint(model),
            "checkpoint": manifest.get("signature", {}).get("checkpoint"),
            "layer": layer, "dim": int(manifest["dim"]), "source": str(embed_dir.resolve())}


def read_shards(embed_dir: str | Path, layer: int | None) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, mean vectors) of one shard at a time, in ``index.tsv`` order; a shard named in
    ``index.tsv`` but absent is an error naming it."""
    from safetensors import safe_open

    embed_dir = Path(embed_dir)
    layer = shard_meta(embed_dir, layer)["layer"]
    tsv = embed_dir / "index.tsv"
    if not tsv.is_file():
        raise IndexError_(f"{embed_dir}: no index.tsv (the fm-embed job wrote no shard yet)")
    groups: dict[str, tuple[list[str], list[int]]] = {}
    with open(tsv, encoding="utf-8") as fh:
        next(fh, None)
        for line in fh:
            rid, shard, row, *_ = line.rstrip("\n").split("\t")
            groups.setdefault(shard, ([], []))
            groups[shard][0].append(rid)
            groups[shard][1].append(int(row))
    for shard, (ids, rows) in groups.items():
        path = embed_dir / "shards" / shard
        if not path.is_file():
            raise IndexError_(f"{path}: shard missing (listed in {tsv}); rerun fm-embed on the same output")
        with safe_open(str(path), framework="numpy") as f:
            key = f"mean.layer{layer}"
            if key not in f.keys():
                raise IndexError_(f"{path}: holds no {key}")
            yield ids, f.get_tensor(key)[np.asarray(rows)].astype(np.float32)


def build_from_shards(embed_dirs: Sequence[str | Path], layer: int | None, *, metric: str, kind: str,
                      params: dict[str, Any], on_shard: Any = None) -> Index:
    """An index over the mean vectors of ``layer`` of one or more fm-embed directories (all of the
    same model and layer), read shard by shard. ``on_shard(n_rows)`` is called after each shard."""
    if not embed_dirs:
        raise IndexError_("no embedding directory given")
    meta = shard_meta(embed_dirs[0], layer)
    index = Index(meta["dim"], metric=metric, kind=kind, meta=meta, params=params)
    for d in embed_dirs:
        check_compatible(meta, shard_meta(d, layer), str(d))
        for ids, vectors in read_shards(d, meta["layer"]):
            index.add(vectors, ids)
            if on_shard is not None:
                on_shard(len(ids))
    index.flush()
    return index


def recall_at_k(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    """Mean fraction of the true top-``k`` ids found in the returned top-``k``."""
    if not truth:
        return float("nan")
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / max(1, len(t[:k])) for f, t in zip(found, truth, strict=True)]))
