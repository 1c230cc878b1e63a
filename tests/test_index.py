"""The retrieval engine (fm_core.index) and fm-index / fm-search: exact search against brute-force
numpy, save/load round trips, approximate recall against exact, refusal of another model's vectors,
and the CLIs end to end on a tiny ESM-2 and real UniProt sequences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from esm_fixtures import random_esm2, write_released_layout

from fm_core.errors import UserError
from fm_core.index import Index, IndexMismatchError, build_from_shards, read_shards, recall_at_k

PARAMS = {"m": 16, "ef_construction": 64, "ef_search": 64, "nlist": 32, "nprobe": 8, "train_size": 4096}


def clustered(n: int, dim: int, seed: int, centres: int = 50) -> np.ndarray:
    """Vectors around ``centres`` random centres (embeddings cluster by family, not uniformly)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    return (c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(3000, 32, seed=0)
    q = clustered(40, 32, seed=1)
    return x, [f"v{i}" for i in range(len(x))], q


def brute_force(x: np.ndarray, q: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ x.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_exact_search_equals_brute_force(data, metric):
    x, ids, q = data
    index = Index.build(x, ids, metric=metric, kind="exact", meta={"layer": 1})
    scores, hits = index.search(q, 10)
    want_scores, want_rows = brute_force(x, q, metric, 10)
    assert hits == [[ids[r] for r in row] for row in want_rows]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    assert scores.dtype == np.float32 and scores.shape == (40, 10)


def test_add_in_parts_equals_one_build(data):
    x, ids, q = data
    whole = Index.build(x, ids, metric="cosine", kind="exact", meta={})
    parts = Index(x.shape[1], metric="cosine", kind="exact", meta={}, params={})
    for start in range(0, len(x), 700):
        parts.add(x[start : start + 700], ids[start : start + 700])
    assert parts.search(q, 5)[1] == whole.search(q, 5)[1]
    assert whole.search(q, 10_000)[0].shape == (40, len(x))  # k beyond the size: every vector, once


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(data, tmp_path, kind, mmap):
    x, ids, q = data
    index = Index.build(x, ids, metric="cosine", kind=kind, meta={"model_fingerprint": "w:1", "layer": 2},
                        params=PARAMS)
    scores, hits = index.search(q, 10)
    index.save(tmp_path / "idx")
    back = Index.load(tmp_path / "idx", mmap=mmap)
    assert len(back) == len(x) and back.meta["layer"] == 2 and back.kind == kind
    scores2, hits2 = back.search(q, 10)
    assert hits2 == hits
    np.testing.assert_array_equal(scores2, scores)
    if mmap:  # mapped pages are read-only: growing the index is refused (faiss would abort)
        with pytest.raises(UserError, match="read-only"):
            back.add(x[:1], ["new"])
    else:
        back.add(x[:1], ["new"])
        assert back.search(x[:1], 2)[1][0][1] in ("new", ids[0]) and len(back) == len(x) + 1


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_at_10(data, kind):
    x, ids, q = data
    exact = Index.build(x, ids, metric="cosine", kind="exact", meta={}).search(q, 10)[1]
    approx = Index.build(x, ids, metric="cosine", kind=kind, meta={}, params=PARAMS).search(q, 10)[1]
    recall = recall_at_k(approx, exact, 10)
    assert recall >= 0.9, f"{kind} recall@10 {recall:.3f}"
    assert recall_at_k(exact, exact, 10) == 1.0
    assert recall_at_k([h[:5] for h in exact], exact, 10) == 0.5


def test_another_model_or_dimension_is_refused(data):
    x, ids, q = data
    meta = {"model_fingerprint": "weights:aaa", "layer": 6, "model_name": "esm2_8m"}
    index = Index.build(x, ids, metric="cosine", kind="exact", meta=meta)
    index.search(q, 3, meta={**meta, "dim": 32})  # same model, layer and dim: accepted
    with pytest.raises(IndexMismatchError, match="model_fingerprint"):
        index.search(q, 3, meta={**meta, "model_fingerprint": "weights:bbb", "dim": 32})
    with pytest.raises(IndexMismatchError, match="layer"):
        index.search(q, 3, meta={**meta, "layer": 5, "dim": 32})
    with pytest.raises(IndexMismatchError, match="dimension 16"):
        index.search(q[:, :16], 3)
    assert issubclass(IndexMismatchError, UserError)


def test_empty_index_and_bad_input_are_user_errors(tmp_path):
    empty = Index(8, metric="ip", kind="exact", meta={}, params={})
    with pytest.raises(UserError, match="empty"):
        empty.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(UserError, match="NaN"):
        empty.add(np.full((1, 8), np.nan, np.float32), ["a"])
    with pytest.raises(UserError, match="needs params.m"):
        Index(8, metric="ip", kind="hnsw", meta={}, params={})
    with pytest.raises(UserError, match="not an fm-index"):
        Index.load(tmp_path)


# --- fm-embed shards and the CLIs ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory, valid_records):
    root = tmp_path_factory.mktemp("search")
    ckpt = write_released_layout(random_esm2("tiny", seed=5), root / "tiny.pt")
    other = write_released_layout(random_esm2("tiny", seed=6), root / "other.pt")
    db = root / "db.fasta"
    db.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in valid_records[:40]))
    queries = root / "q.fasta"  # each query: a database sequence without its first 5 residues
    queries.write_text("".join(f">q_{rid}\n{seq[5:]}\n" for rid, seq in valid_records[:6]))
    return root, ckpt, other, db, queries


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """fm-index over the 40-sequence database (embedded in shards of <= 16), built once."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def compose(overrides, config_name):
        with initialize_config_module("fm_conf", version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)

    root, ckpt, _, db, _ = tiny
    out = tmp_path_factory.mktemp("built") / "idx"
    metrics = run_index(compose, f"input={db}", f"checkpoint={ckpt}", f"out={out}")
    return out, metrics


def run_index(compose, *overrides):
    from bio_fm.search import build_index

    return build_index(compose(["progress=false", "chunk_records=16", "max_tokens=4096", *overrides],
                               config_name="index"))


def run_search(compose, *overrides):
    from bio_fm.search import search

    return search(compose(["progress=false", "max_tokens=4096", *overrides], config_name="search"))


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def test_fm_index_and_fm_search_end_to_end(tiny, built, compose, tmp_path):
    from fm_core.embed import read_embeddings

    root, ckpt, other, db, queries = tiny
    idx, m = built
    assert m["index/vectors"] == 40 and m["index/kind"] == "exact"
    assert json.loads((idx / "metrics.json").read_text())["index/vectors"] == 40
    # the index streamed from the shards holds exactly fm-embed's vectors (3 shards of <= 16)
    ids, vectors = read_embeddings(idx / "embeddings")
    assert [len(i) for i, _ in read_shards(idx / "embeddings", None)] == [16, 16, 8]
    ref = Index.build(vectors, ids, metric="cosine", kind="exact", meta={})

    out = tmp_path / "hits"
    metrics = run_search(compose, f"index={idx}", f"queries={queries}", f"out={out}", "k=5",
                         "keep_query_embeddings=true")
    rows = read_tsv(out / "hits.tsv")
    assert len(rows) == 6 * 5 and metrics["search/queries"] == 6
    qids, qvec = read_embeddings(out / "query_embeddings")
    want_scores, want_hits = ref.search(qvec, 5)
    for qi, qid in enumerate(qids):
        mine = [r for r in rows if r[0] == qid]
        assert [r[1] for r in mine] == want_hits[qi] and [int(r[2]) for r in mine] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([float(r[3]) for r in mine], want_scores[qi], rtol=1e-5)
        assert mine[0][1] == qid[2:]  # a truncated sequence finds its full self first
    # queries embedded with another model are refused
    with pytest.raises(IndexMismatchError, match="another embedding space"):
        run_search(compose, f"index={idx}", f"queries={queries}", f"out={tmp_path / 'bad'}",
                   f"checkpoint={other}")
    # the same index rebuilt from the shards (fm-embed output) gives the same hits
    run_index(compose, f"embeddings=[{idx / 'embeddings'}]", f"sequences={db}",
              f"out={tmp_path / 'idx2'}", "kind=hnsw")
    assert Index.load(tmp_path / "idx2").search(qvec, 1)[1] == [h[:1] for h in want_hits]


def test_missing_shard_and_empty_input_are_user_errors(tiny, built, compose, tmp_path):
    import shutil

    root, ckpt, _, db, _ = tiny
    emb = shutil.copytree(built[0] / "embeddings", tmp_path / "embeddings")
    (emb / "shards" / "shard-00001.safetensors").unlink()
    with pytest.raises(UserError, match="shard-00001.safetensors: shard missing"):
        build_from_shards([emb], None, metric="cosine", kind="exact", params={})
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    with pytest.raises(UserError, match="no vectors"):
        run_index(compose, f"input={empty}", f"checkpoint={ckpt}", f"out={tmp_path / 'e'}")


@pytest.mark.slow
def test_fm_search_mmseqs_mode_and_identity(tiny, built, compose, tmp_path):
    root, ckpt, _, db, queries = tiny
    out = tmp_path / "both"
    metrics = run_search(compose, f"index={built[0]}", f"queries={queries}", f"out={out}", "k=3",
                         "mode=both", "identity=true", "threads=1")
    mm = read_tsv(out / "mmseqs_hits.tsv")
    top = {r[0]: r for r in mm if r[2] == "1"}
    assert len(top) == 6 and all(r[1] == q[2:] and float(r[4]) == 1.0 for q, r in top.items())
    hits = read_tsv(out / "hits.tsv")
    assert all(float(r[4]) == 1.0 for r in hits if r[2] == "1")  # the embedding top hit: itself, 100% identity
    assert metrics["compare/mmseqs_top1_in_embedding_topk"] == 1.0


def test_auto_kind_is_exact_for_small_sets_and_hnsw_above(compose):
    from bio_fm.search import index_params

    cfg = compose(["out=unused"], config_name="index")
    assert index_params(cfg, cfg.exact_below - 1)[0] == "exact"
    kind, params = index_params(cfg, 428_000)
    assert kind == "hnsw" and params["m"] == 32 and params["ef_search"] == 128
    # ivf when asked for: nlist defaults to 4 sqrt(N)
    kind, params = index_params(compose(["out=unused", "kind=ivf"], config_name="index"), 10_000)
    assert kind == "ivf" and params["nlist"] == 400
