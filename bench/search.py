"""fm-search performance: queries per second and recall@10 against exact search, build time and
RAM, for faiss (exact, HNSW, IVF: what ``fm_core.index`` offers) beside usearch's HNSW, at 10k,
100k and 428k vectors; MMseqs2 on the same real queries and database for comparison.

Vectors (428k sequences cannot be embedded on two cores in minutes: about 50 proteins/s with the
README's ``protein_quick`` model):
- ``real_10k``: 10,000 real UniProt-slice train sequences and the 600 valid ones as queries,
  embedded by ``fm-embed``'s pipeline with ``--model`` (an ``fm-pretrain`` export, e.g.
  ``runs/protein_quick/export``: D=192) or, without it, a *random-weight* model of the ``tiny``
  shape (D=64: real sequences and pipeline, not a trained model's geometry);
- ``synthetic_*``: clearly synthetic float32 vectors of ESM-2 8M's dimension (D=320), a Gaussian
  mixture of n/20 clusters (the slice has ~20 unique sequences per 30%-identity cluster), the
  queries drawn from the same mixture.
Every method runs on the same vectors and queries in one process, ``--threads`` each (build and
search); search times are medians of ``--rounds`` interleaved rounds.

    nice -n 10 .venv/bin/python bench/search.py --model runs/protein_quick/export --threads 2   # -> bench/search.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, interleaved, machine, median, print_table, write_json  # noqa: E402

from fm_core.index import Index, recall_at_k  # noqa: E402

SLICE = Path(str(files("bio_fm").joinpath("data/uniprot_slice")))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def real_vectors(work: Path, n: int, model: str | None) -> dict[str, Any]:
    """Embed ``n`` slice train sequences (database) and the valid ones (queries) with the export
    ``model`` (``None``: a random-weight tiny model)."""
    import torch

    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.fasta import FastaStream, iter_fasta
    from fm_core.embed import read_embeddings, run_embedding
    from fm_core.model import build_model

    db = work / "db.fasta"
    queries = work / "queries.fasta"
    db.write_text("".join(f">{r}\n{s}\n" for r, s in list(iter_fasta(SLICE / "train.fasta.gz"))[:n]))
    queries.write_text("".join(f">{r}\n{s}\n" for r, s in iter_fasta(SLICE / "valid.fasta.gz")))
    if model:
        from fm_core.export import load_pretrained

        net, tok = load_pretrained(model)
        source = f"real UniProt-slice sequences, the trained export {model} (D={net.config.embed_dim})"
    else:
        torch.manual_seed(0)
        tok = ProteinAlphabet()
        net = build_model("tiny", tok)
        source = "real UniProt-slice sequences, random-weight tiny model (D=64)"
    seconds = {}
    for name, path in (("db", db), ("queries", queries)):
        # an embedding finished by an earlier run in the same --work is reused (its seconds kept)
        metrics = run_embedding(FastaStream(path), str(path), net, tok, work / f"emb_{name}", layers=[-1], progress=False,
                      max_tokens=16384, chunk_records=4096, chunk_residues=1_000_000)
        seconds[name] = metrics["embed/seconds"]
    ids, x = read_embeddings(work / "emb_db")
    qids, q = read_embeddings(work / "emb_queries")
    return {"x": x, "ids": ids, "q": q, "qids": qids, "db": db, "queries": queries,
            "embed_seconds": seconds, "source": source}


def synthetic_vectors(n: int, n_queries: int, dim: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 50_000):  # bounded temporaries
        m = min(50_000, n - s)
        x[s : s + m] = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, dim), dtype=np.float32)
    q = centres[rng.integers(0, len(centres), n_queries)] + rng.standard_normal((n_queries, dim), dtype=np.float32)
    return {"x": x, "ids": [f"s{i}" for i in range(n)], "q": q,
            "source": f"SYNTHETIC Gaussian mixture, {len(centres)} clusters, D={dim}"}


def measure_build(make) -> tuple[Any, float, float]:
    before = rss_mb()
    t = time.perf_counter()
    index = make()
    return index, time.perf_counter() - t, rss_mb() - before


def usearch_index(x: np.ndarray, params: dict[str, Any], threads: int):
    from usearch.index import Index as UIndex

    u = UIndex(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=params["m"],
               expansion_add=params["ef_construction"], expansion_search=params["ef_search"])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    u.add(np.arange(len(x), dtype=np.uint64), xn.astype(np.float32), threads=threads)
    return u


def usearch_search(u, q: np.ndarray, ids: list[str], k: int, threads: int) -> list[list[str]]:
    qn = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    keys = u.search(qn, k, threads=threads).keys
    return [[ids[int(j)] for j in row] for row in keys]


def bench_size(name: str, data: dict[str, Any], params: dict[str, Any], rounds: int, work: Path,
               methods: list[str], threads: int) -> dict[str, Any]:
    x, ids, q, k = data["x"], data["ids"], data["q"], 10
    out: dict[str, Any] = {"vectors": len(x), "dim": int(x.shape[1]), "queries": len(q), "source": data["source"],
                           "vector_mb": x.nbytes / 2**20, "methods": methods,
                           "params": params, "machine": machine()}
    built: dict[str, Any] = {}
    kinds = [m.split("_")[1] for m in methods if m.startswith("faiss_")]
    for kind in kinds:
        p = {"nlist": max(1, int(4 * np.sqrt(len(x)))), **params}
        built[f"faiss_{kind}"], secs, ram = measure_build(
            lambda kind=kind, p=p: Index.build(x, ids, metric="cosine", kind=kind, meta={}, params=p))
        out[f"faiss_{kind}"] = {"build_seconds": secs, "build_rss_delta_mb": ram}
        print(f"{name}: faiss {kind} built in {secs:.1f}s", flush=True)
    if "usearch_hnsw" in methods:
        built["usearch_hnsw"], secs, ram = measure_build(lambda: usearch_index(x, params, threads))
        out["usearch_hnsw"] = {"build_seconds": secs, "build_rss_delta_mb": ram,
                               "memory_mb": built["usearch_hnsw"].memory_usage / 2**20}
        print(f"{name}: usearch hnsw built in {secs:.1f}s", flush=True)
    truth = built["faiss_exact"].search(q, k)[1]
    found: dict[str, list[list[str]]] = {}

    def runner(key):
        if key == "usearch_hnsw":
            return lambda: found.__setitem__(key, usearch_search(built[key], q, ids, k, threads))
        return lambda: found.__setitem__(key, built[key].search(q, k)[1])

    times = interleaved({key: runner(key) for key in built}, rounds=rounds, progress=lambda s: None)
    for key in built:
        t = median(times[key])
        out[key].update(search_seconds=t, queries_per_second=len(q) / t, recall_at_10=recall_at_k(found[key], truth, k))
    for kind in kinds:  # the saved index, memory-mapped on load
        d = work / f"{name}_{kind}"
        built[f"faiss_{kind}"].save(d)
        before = rss_mb()
        t = time.perf_counter()
        loaded = Index.load(d, mmap=True)
        out[f"faiss_{kind}"].update(file_mb=(d / "index.faiss").stat().st_size / 2**20,
                                    mmap_load_seconds=time.perf_counter() - t, mmap_load_rss_delta_mb=rss_mb() - before,
                                    mmap_same_hits=loaded.search(q, k)[1] == found[f"faiss_{kind}"])
        del loaded
        shutil.rmtree(d)
    return out


def bench_mmseqs(data: dict[str, Any], work: Path, emb_search_qps: float, threads: int) -> dict[str, Any]:
    """MMseqs2 easy-search of the same real queries against the same 10k database (``threads``)."""
    from bio_fm.mmseqs import mmseqs, mmseqs_version

    hits = work / "mm.m8"
    t = time.perf_counter()
    mmseqs("easy-search", str(data["queries"]), str(data["db"]), str(hits), str(work / "mmtmp"), "-s", "7.5",
           "--format-output", "query,target,bits,fident", threads=threads)
    seconds = time.perf_counter() - t
    best: dict[str, str] = {}
    for line in hits.read_text().splitlines():
        qid, tid, *_ = line.split("\t")
        best.setdefault(qid, tid)
    n = len(data["qids"])
    return {"version": mmseqs_version(), "sensitivity": 7.5, "threads": threads, "queries": n, "seconds": seconds,
            "queries_per_second": n / seconds, "queries_with_hit": len(best),
            "embedding_query_seconds": data["embed_seconds"]["queries"], "embedding_model": data["source"],
            "embedding_search_qps_exact": emb_search_qps,
            "note": "MMseqs2 time includes indexing the 10k database (easy-search); embedding search time excludes "
                    "embedding the queries (reported apart as embedding_query_seconds)"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 428_000], help="synthetic sizes")
    ap.add_argument("--real", type=int, default=10_000, help="real-sequence database size (0: skip)")
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--queries", type=int, default=200, help="synthetic queries")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--methods", nargs="*", default=["faiss_exact", "faiss_hnsw", "faiss_ivf", "usearch_hnsw"],
                    help="faiss_exact is always run (the reference)")
    ap.add_argument("--nlist", type=int, default=None, help="ivf lists (default 4 sqrt(N))")
    ap.add_argument("--train-size", type=int, default=65536)
    ap.add_argument("--merge", action="store_true", help="update the existing JSON instead of replacing it")
    ap.add_argument("--work", default=None, help="keep the real embeddings here (reused by a rerun)")
    ap.add_argument("--model", default=None, help="fm-pretrain export embedding the real sequences (default: random tiny)")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    params = {"m": 32, "ef_construction": 80, "ef_search": 128, "nprobe": 32, "train_size": args.train_size,
              **({"nlist": args.nlist} if args.nlist else {})}
    methods = ["faiss_exact", *[m for m in args.methods if m != "faiss_exact"]]
    old = json.loads(Path(args.out or RESULTS / "search.json").read_text()) if args.merge else {}
    results: dict[str, Any] = {**old, "runs": [*old.get("runs", []), " ".join(argv or sys.argv[1:])],
                               "machine": machine(), "faiss": faiss.__version__, "params": params,
                               "threads": args.threads, "command": "nice -n 10 .venv/bin/python bench/search.py " + " ".join(argv or sys.argv[1:])}
    import usearch

    results["usearch"] = usearch.__version__
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.real:
            data = real_vectors(work, args.real, args.model)
            results["real_10k"] = bench_size("real_10k", data, params, args.rounds, work, methods, args.threads)
            results["mmseqs_real_10k"] = bench_mmseqs(data, work, results["real_10k"]["faiss_exact"]["queries_per_second"],
                                                      args.threads)
            write_json("search", {**results, "partial": True}, args.out)  # what is done survives a cut-off run
        for n in args.sizes:
            results[f"synthetic_{n}"] = bench_size(f"synthetic_{n}", synthetic_vectors(n, args.queries, args.dim, n),
                                                   params, args.rounds, work, methods, args.threads)
            write_json("search", {**results, "partial": True}, args.out)
    results["peak_rss_mb"] = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024
    rows = [[size, m, r["build_seconds"], r["queries_per_second"], r["recall_at_10"]]
            for size, v in results.items() if isinstance(v, dict) and "vectors" in v
            for m, r in v.items() if isinstance(r, dict) and "recall_at_10" in r]
    print_table(f"search ({args.threads} threads)", ["set", "method", "build s", "queries/s", "recall@10"], rows)
    write_json("search", {**results, "partial": False}, args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
