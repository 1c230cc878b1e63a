"""``fm-index`` / ``fm-search``: protein retrieval by embedding (``fm_core.index``) and, on the
same queries and database, by sequence (MMseqs2).

- ``fm-index input=db.fasta checkpoint=... out=idx/`` embeds the FASTA (``fm-embed``'s resumable
  shards, in ``idx/embeddings``) and indexes the mean vectors of one layer; ``embeddings=[emb/]``
  indexes existing ``fm-embed`` output instead (``sequences=db.fasta`` for the MMseqs2 side).
- ``fm-search index=idx/ queries=q.fasta out=hits/`` embeds the queries with the index's model and
  embedding settings (recorded in the index) and writes ``hits.tsv`` (query, target, rank, score;
  with ``identity=true`` the MMseqs2 alignment identity of each hit); ``mode=mmseqs`` searches the
  index's sequences with MMseqs2 instead (``mmseqs_hits.tsv``), ``mode=both`` does both and
  reports how often they agree. Both write a flat ``metrics.json``.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from fm_core.errors import UserError
from fm_core.index import Index, build_from_shards, read_shards, shard_meta

MODES = ("embedding", "mmseqs", "both")
EMBED_KEYS = ("max_length", "window_overlap", "precision")


def _embed_fasta(fasta: str | Path, checkpoint: str, out_dir: Path, layer: int, settings: dict[str, Any],
                 cfg: DictConfig) -> Path:
    """fm-embed ``fasta`` (mean vectors of ``layer``) into ``out_dir``; resumes an unfinished job."""
    from hydra.utils import instantiate

    from fm_core.embed import run_embedding
    from fm_core.export import load_pretrained

    if cfg.threads:
        import torch

        torch.set_num_threads(int(cfg.threads))
    fasta = Path(fasta)
    if not fasta.is_file():
        raise UserError(f"{fasta}: no such FASTA file")
    net, tokenizer = load_pretrained(checkpoint)
    signature = {"input": str(fasta.resolve()), "input_bytes": fasta.stat().st_size,
                 "checkpoint": str(Path(checkpoint).resolve())}
    run_embedding(instantiate(cfg.reader)(str(fasta)), str(fasta), net, tokenizer, out_dir, layers=[layer],
                  on_invalid=cfg.on_invalid, max_tokens=cfg.max_tokens, chunk_records=cfg.chunk_records,
                  chunk_residues=cfg.chunk_residues, progress=cfg.progress, signature=signature,
                  max_length=settings["max_length"], window_overlap=settings["window_overlap"],
                  precision=settings["precision"], inplace=True)  # loaded for this job alone
    return out_dir


def _count_rows(embed_dirs: list[Path]) -> int:
    total = 0
    for d in embed_dirs:
        tsv = d / "index.tsv"
        if not tsv.is_file():
            raise UserError(f"{d}: no index.tsv: not an fm-embed output directory (or it wrote nothing yet)")
        with open(tsv, "rb") as fh:
            total += max(0, sum(1 for _ in fh) - 1)
    return total


def index_params(cfg: DictConfig, n: int) -> tuple[str, dict[str, Any]]:
    """The index kind for ``n`` vectors (``kind=auto``: exact below ``exact_below``, else hnsw: in
    bench/search.json, 2 idle threads, hnsw kept recall@10 0.995-1.0 at 100k and 428k vectors at
    2.4k / 1.5k queries/s, while ivf with the default lists and nprobe fell to 0.84 at 428k) and its
    parameters (``nlist=null``: 4 sqrt(n) lists, for ``kind=ivf``)."""
    kind = cfg.kind if cfg.kind != "auto" else ("exact" if n < cfg.exact_below else "hnsw")
    params = dict(cfg.params)
    if params.get("nlist") is None:
        params["nlist"] = max(1, int(4 * math.sqrt(max(n, 1))))
    return kind, params


def build_index(cfg: DictConfig) -> dict[str, Any]:
    """The ``fm-index`` job (config ``index.yaml``)."""
    from tqdm.auto import tqdm

    from fm_core.summary import write_metrics

    out = Path(cfg.out)
    if (cfg.input is None) == (not cfg.embeddings):
        raise UserError("fm-index: give either input=<FASTA> (with checkpoint=...) or embeddings=[<fm-embed dir>, ...]")
    t0 = time.perf_counter()
    if cfg.input is not None:
        if cfg.checkpoint is None:
            raise UserError("fm-index: input=<FASTA> needs checkpoint=<model> to embed it")
        settings = {k: cfg[k] for k in EMBED_KEYS}
        embed_dirs = [_embed_fasta(cfg.input, cfg.checkpoint, out / "embeddings", cfg.layer, settings, cfg)]
        sequences = cfg.input
    else:
        embed_dirs = [Path(d) for d in cfg.embeddings]
        sequences = cfg.sequences
    t_embed = time.perf_counter() - t0
    n = _count_rows(embed_dirs)
    if n == 0:
        raise UserError(f"fm-index: {', '.join(map(str, embed_dirs))} hold no vectors: nothing to index")
    kind, params = index_params(cfg, n)
    bar = tqdm(total=n, unit="seq", desc=f"fm-index {kind}", disable=not cfg.progress)
    index = build_from_shards(embed_dirs, _stored_layer(embed_dirs[0], cfg.layer), metric=cfg.metric, kind=kind, params=params, on_shard=bar.update)
    bar.close()
    index.meta["embed"] = _embed_settings(embed_dirs[0])
    index.meta["sequences"] = str(Path(sequences).resolve()) if sequences else None
    index.save(out)
    seconds = time.perf_counter() - t0
    metrics = {"index/vectors": len(index), "index/dim": index.dim, "index/kind": kind, "index/metric": cfg.metric,
               "index/build_seconds": seconds - t_embed, "index/embed_seconds": t_embed,
               "index/bytes": (out / "index.faiss").stat().st_size, "model/name": index.meta["model_name"],
               "model/layer": index.meta["layer"], "index/peak_rss_mb": _peak_rss_mb()}
    write_metrics(out, metrics)
    print(f"index: {out} ({len(index)} vectors, {kind}, {cfg.metric})")
    return metrics


def _stored_layer(embed_dir: Path, layer: int) -> int:
    import json

    if not (embed_dir / "manifest.json").is_file():
        raise UserError(f"{embed_dir}: no manifest.json: not an fm-embed output directory")
    manifest = json.loads((embed_dir / "manifest.json").read_text())
    n_layers = manifest["model"]["num_layers"]
    return n_layers + 1 + layer if layer < 0 else layer


def _embed_settings(embed_dir: Path) -> dict[str, Any]:
    import json

    manifest = json.loads((embed_dir / "manifest.json").read_text())
    return {k: manifest["signature"].get(k) for k in EMBED_KEYS}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def embedding_hits(index: Index, query_dir: Path, k: int, progress: bool) -> tuple[list[tuple], float]:
    """(query, target, rank, score) rows for every query of an fm-embed directory, and search seconds."""
    from tqdm.auto import tqdm

    meta = shard_meta(query_dir, index.meta["layer"])
    rows, seconds = [], 0.0
    bar = tqdm(total=_count_rows([query_dir]), unit="query", desc="fm-search", disable=not progress)
    for qids, vectors in read_shards(query_dir, index.meta["layer"]):
        t0 = time.perf_counter()
        scores, hits = index.search(vectors, k, meta=meta, where=str(query_dir))
        seconds += time.perf_counter() - t0
        for qid, srow, hrow in zip(qids, scores, hits, strict=True):
            rows.extend((qid, t, r + 1, float(s)) for r, (t, s) in enumerate(zip(hrow, srow, strict=False)))  # empty slots: trailing
        bar.update(len(qids))
    bar.close()
    return rows, seconds


def mmseqs_hits(queries: Path, database: Path, work: Path, k: int, cfg: DictConfig) -> tuple[list[tuple], float]:
    """(query, target, rank, bits, identity) of MMseqs2's best ``k`` hits per query, and seconds."""
    from bio_fm.mmseqs import mmseqs

    work.mkdir(parents=True, exist_ok=True)
    out = work / "mmseqs.m8"
    t0 = time.perf_counter()
    mmseqs("easy-search", str(queries), str(database), str(out), str(work / "tmp"), "-s", str(cfg.mmseqs.sensitivity),
           "--max-seqs", str(max(k, cfg.mmseqs.max_seqs)), "-e", str(cfg.mmseqs.evalue),
           "--format-output", "query,target,bits,fident", threads=cfg.threads)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work / "tmp", ignore_errors=True)
    rows, rank = [], {}
    for line in out.read_text().splitlines():
        q, t, bits, ident = line.split("\t")
        rank[q] = rank.get(q, 0) + 1
        if rank[q] <= k:
            rows.append((q, t, rank[q], float(bits), float(ident)))
    return rows, seconds


def pair_identities(pairs: list[tuple[str, str]], queries: Path, database: Path, work: Path,
                    cfg: DictConfig) -> dict[tuple[str, str], float]:
    """MMseqs2 alignment identity of given (query, target) pairs: each batch of queries is aligned
    exhaustively (no prefilter) to the union of its targets; an unaligned pair is absent."""
    from bio_fm.fasta import iter_fasta
    from bio_fm.mmseqs import mmseqs

    wanted_t = {t for _, t in pairs}
    targets = {rid: seq for rid, seq in iter_fasta(database) if rid in wanted_t}
    qseqs = dict(iter_fasta(queries))
    by_query: dict[str, list[str]] = {}
    for q, t in pairs:
        by_query.setdefault(q, []).append(t)
    found: dict[tuple[str, str], float] = {}
    names = list(by_query)
    work.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(names), cfg.identity_batch):
        batch = names[start : start + cfg.identity_batch]
        ts = sorted({t for q in batch for t in by_query[q] if t in targets})
        _write_fasta(work / "q.fa", [(q, qseqs[q]) for q in batch])
        _write_fasta(work / "t.fa", [(t, targets[t]) for t in ts])
        mmseqs("easy-search", str(work / "q.fa"), str(work / "t.fa"), str(work / "pairs.m8"), str(work / "tmp"),
               "--exhaustive-search", "1", "-e", "1e9", "--format-output", "query,target,fident", threads=cfg.threads)
        for line in (work / "pairs.m8").read_text().splitlines():
            q, t, ident = line.split("\t")
            found.setdefault((q, t), float(ident))
    shutil.rmtree(work, ignore_errors=True)
    return found


def _write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))


def _write_tsv(path: Path, header: list[str], rows: list[tuple]) -> None:
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\t".join(header) + "\n")
        fh.writelines("\t".join(cell(v) for v in row) + "\n" for row in rows)


def _database(index: Index, cfg: DictConfig) -> Path:
    db = cfg.sequences or index.meta.get("sequences")
    if not db or not Path(db).is_file():
        raise UserError(f"fm-search: the MMseqs2 side needs the database sequences: {db or 'none recorded'} "
                        "is not a file; give sequences=<the FASTA the index was built from>")
    return Path(db)


def search(cfg: DictConfig) -> dict[str, Any]:
    """The ``fm-search`` job (config ``search.yaml``)."""
    from fm_core.summary import write_metrics

    if cfg.mode not in MODES:
        raise UserError(f"fm-search: mode={cfg.mode!r}: choose one of {', '.join(MODES)}")
    out, queries = Path(cfg.out), Path(cfg.queries)
    if not queries.is_file():
        raise UserError(f"fm-search: {queries}: no such query FASTA")
    index = Index.load(cfg.index, mmap=cfg.mmap)
    if len(index) == 0:
        raise UserError(f"fm-search: the index {cfg.index} is empty (rebuild it from a non-empty input)")
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"model/name": index.meta.get("model_name"), "model/layer": index.meta.get("layer"),
                               "index/vectors": len(index), "index/kind": index.kind, "search/k": cfg.k}
    emb_rows: list[tuple] = []
    if cfg.mode in ("embedding", "both"):
        emb_rows = _embedding_side(index, queries, out, cfg, metrics)
    if cfg.mode in ("mmseqs", "both"):
        mm_rows, seconds = mmseqs_hits(queries, _database(index, cfg), out / "mmseqs_work", cfg.k, cfg)
        _write_tsv(out / "mmseqs_hits.tsv", ["query", "target", "rank", "bits", "identity"], mm_rows)
        metrics.update(_side_metrics("mmseqs", mm_rows, seconds, metrics.get("search/queries")))
        if emb_rows:
            metrics["compare/mmseqs_top1_in_embedding_topk"] = _agreement(mm_rows, emb_rows)
    write_metrics(out, metrics)
    return metrics


def _embedding_side(index: Index, queries: Path, out: Path, cfg: DictConfig, metrics: dict[str, Any]) -> list[tuple]:
    checkpoint = cfg.checkpoint or index.meta.get("checkpoint")
    if not checkpoint:
        raise UserError("fm-search: the index records no checkpoint: give checkpoint=<the index's model>")
    if not index.meta.get("embed"):
        raise UserError(f"fm-search: {cfg.index} records no embedding settings (not built by fm-index); rebuild it")
    qdir = _embed_fasta(queries, checkpoint, out / "query_embeddings", index.meta["layer"], index.meta["embed"], cfg)
    rows, seconds = embedding_hits(index, qdir, cfg.k, cfg.progress)
    header = ["query", "target", "rank", "score"]
    if cfg.identity:
        ident = pair_identities([(q, t) for q, t, *_ in rows], queries, _database(index, cfg), out / "identity_work", cfg)
        rows = [(*row, ident.get((row[0], row[1]))) for row in rows]
        header.append("identity")
    _write_tsv(out / "hits.tsv", header, rows)
    n_queries = _count_rows([qdir])
    metrics["search/queries"] = n_queries
    metrics.update(_side_metrics("search", rows, seconds, n_queries))
    if not cfg.keep_query_embeddings:
        shutil.rmtree(qdir, ignore_errors=True)
    return rows


def _side_metrics(side: str, rows: list[tuple], seconds: float, n_queries: int | None) -> dict[str, Any]:
    top1 = [r for r in rows if r[2] == 1]
    m: dict[str, Any] = {f"{side}/seconds": seconds, f"{side}/hits": len(rows),
                         f"{side}/queries_with_hit": len(top1),
                         f"{side}/mean_top1_score": float(np.mean([r[3] for r in top1])) if top1 else float("nan")}
    if n_queries:
        m[f"{side}/queries_per_second"] = n_queries / max(seconds, 1e-9)
    idents = [r[4] for r in top1 if len(r) > 4 and r[4] is not None]
    if idents:
        m[f"{side}/mean_top1_identity"] = float(np.mean(idents))
    return m


def _agreement(mm_rows: list[tuple], emb_rows: list[tuple]) -> float:
    """Fraction of the queries with an MMseqs2 hit whose best MMseqs2 hit is among the embedding top k."""
    emb: dict[str, set[str]] = {}
    for q, t, *_ in emb_rows:
        emb.setdefault(q, set()).add(t)
    best = [(q, t) for q, t, rank, *_ in mm_rows if rank == 1]
    return float(np.mean([t in emb.get(q, set()) for q, t in best])) if best else float("nan")


def index_main() -> None:
    """``fm-index`` (console entry point: ``fm_core.cli.run_app`` runs ``build_index``)."""
    from fm_core.cli import run_app

    run_app("index", "fm-index", resumes=True)


def search_main() -> None:
    """``fm-search`` (console entry point: ``fm_core.cli.run_app`` runs ``search``)."""
    from fm_core.cli import run_app

    run_app("search", "fm-search", resumes=False)
