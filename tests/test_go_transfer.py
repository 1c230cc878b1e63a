"""GO transfer by retrieval: CAFA's Fmax, term propagation, fm-prep go and the task end to end."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from data_prep.go import ROOTS, GoGraph, GoPrepConfig, prepare, read_graph
from tasks.go_transfer.metrics import cafa_thresholds, fmax, fmax_difference
from tasks.go_transfer.task import bin_names, identity_bin, load_annotations, naive_prediction, transfer

GO_SLICE = Path(str(files("bio_fm").joinpath("data/go_slice")))


def test_fmax_hand_computed():
    """Thresholds 0.25, 0.5, 0.75, 1; protein C has no prediction (recall 0, not in precision).
    t=0.25: A {a,c,b,e} p 1/2 r 1, B {c,a,d} p 1/3 r 1 -> P 5/12, R 2/3, F 20/39
    t=0.50: A {a,c} p 1/2 r 1/2, B {c} (0.5 counts) p 1 r 1 -> P 3/4, R 1/2, F 3/5  <- Fmax
    t=0.75: A {a} p 1 r 1/2, B none -> P 1, R 1/6, F 2/7;  t=1: nothing predicted, F 0."""
    truth = [{"a", "b"}, {"c"}, {"a", "d"}]
    preds = [{"a": 0.9, "c": 0.6, "b": 0.3, "e": 0.26}, {"c": 0.5, "a": 0.4, "d": 0.3}, {}]
    res = fmax(truth, preds, cafa_thresholds(4))
    assert res["fmax"] == pytest.approx(3 / 5)
    assert res["threshold"] == 0.5
    assert res["coverage"] == pytest.approx(2 / 3)
    assert res["precision"] == pytest.approx(3 / 4) and res["recall"] == pytest.approx(1 / 2)
    # only the lowest threshold: F(0.25) = 20/39
    assert fmax(truth, preds, np.array([0.25]))["fmax"] == pytest.approx(20 / 39)
    perfect = fmax(truth, [{t: 1.0 for t in ts} for ts in truth], cafa_thresholds(100))
    assert perfect["fmax"] == pytest.approx(1.0) and perfect["coverage"] == 1.0
    assert fmax(truth, [{}, {}, {}], cafa_thresholds(100))["fmax"] == 0.0
    with pytest.raises(ValueError, match="at least one true term"):
        fmax([set()], [{}], cafa_thresholds(10))


def test_fmax_difference_equals_a_brute_force_bootstrap():
    """The vectorised paired bootstrap equals recomputing both Fmax on each resampled protein list
    (same counts: the seed's multinomial draws), and the point estimate is the plain difference."""
    rng = np.random.default_rng(3)
    terms = [f"t{i}" for i in range(8)]
    truth = [set(rng.choice(terms, size=rng.integers(1, 4), replace=False)) for _ in range(25)]
    a = [{t: float(rng.random()) for t in rng.choice(terms, size=3, replace=False)} for _ in truth]
    b = [{t: float(rng.random()) for t in rng.choice(terms, size=2, replace=False)} if k % 3 else {}
         for k, _ in enumerate(truth)]
    thr = cafa_thresholds(20)
    res = fmax_difference(truth, a, b, thr, resamples=50, seed=7)
    assert res["diff"] == pytest.approx(fmax(truth, a, thr)["fmax"] - fmax(truth, b, thr)["fmax"])
    n = len(truth)
    diffs = []
    for counts in np.random.default_rng(7).multinomial(n, np.full(n, 1.0 / n), size=50):
        rows = np.repeat(np.arange(n), counts)
        diffs.append(fmax([truth[k] for k in rows], [a[k] for k in rows], thr)["fmax"]
                     - fmax([truth[k] for k in rows], [b[k] for k in rows], thr)["fmax"])
    assert res["ci95_low"] == pytest.approx(np.percentile(diffs, 2.5))
    assert res["ci95_high"] == pytest.approx(np.percentile(diffs, 97.5))
    assert res["ci95_low"] < res["ci95_high"]
    same = fmax_difference(truth, a, a, thr, resamples=20, seed=0)
    assert same == {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    assert fmax_difference(truth, a, b, thr, resamples=0, seed=0) == {"diff": res["diff"]}


def _graph(tmp_path: Path, relations=("is_a", "part_of")) -> GoGraph:
    bp, mf = ROOTS["BPO"], ROOTS["MFO"]
    edges = [(bp, "GO:1", "is_a"), ("GO:1", "GO:2", "is_a"), (bp, "GO:3", "is_a"), ("GO:2", "GO:4", "is_a"),
             ("GO:3", "GO:4", "part_of"), ("GO:2", "GO:5", "regulates"), ("obsolete_biological_process", "GO:9", "is_a"),
             (mf, "GO:7", "is_a")]
    path = tmp_path / "goGraph.txt"
    path.write_text("".join(f"{p}\t{c}\t1\t{r}\n" for p, c, r in edges))
    return GoGraph(read_graph(path, relations), ROOTS)


def test_propagation_to_ancestors_on_a_hand_made_graph(tmp_path):
    g = _graph(tmp_path)
    assert g.ancestors("GO:4") == {"GO:4", "GO:2", "GO:1", "GO:3", ROOTS["BPO"]}
    # root removed; the obsolete term (under a non-GO pseudo root), the term only reached by
    # 'regulates' and the MFO term are dropped from a BPO annotation
    assert g.propagate(["GO:4", "GO:9", "GO:5", "GO:7"], "BPO") == {"GO:4", "GO:2", "GO:1", "GO:3"}
    assert g.propagate(["GO:7"], "MFO") == {"GO:7"}
    assert g.ontology("GO:5") is None and g.ontology("GO:7") == "MFO"
    assert _graph(tmp_path, ("is_a",)).propagate(["GO:4"], "BPO") == {"GO:4", "GO:2", "GO:1"}


def test_transfer_rules_and_bins():
    terms = [{"a", "b"}, {"a"}, {"c"}]
    assert transfer([(0, 0.9), (1, 0.5)], terms, "max") == {"a": 0.9, "b": 0.9}
    vote = transfer([(0, 0.6), (1, 0.2), (2, 0.2)], terms, "vote")
    assert vote == pytest.approx({"a": 0.8, "b": 0.6, "c": 0.2})
    assert naive_prediction([{"a"}, {"a", "b"}, {"c"}, {"a"}], 0.3) == {"a": 0.75}
    assert bin_names([0.3, 0.5]) == ["no_hit", "lt30", "30to50", "ge50"]
    assert [identity_bin(i, [0.3, 0.5]) for i in (0.0, 0.12, 0.3, 0.49, 0.5, 1.0)] == \
        ["no_hit", "lt30", "30to50", "30to50", "ge50", "ge50"]


@pytest.fixture(scope="module")
def go_data(tmp_path_factory):
    """``fm-prep go`` on the committed slice (tests may run data_prep; the task only reads its output)."""
    out = tmp_path_factory.mktemp("go")
    prepare(GoPrepConfig(input=str(GO_SLICE), out=str(out), cluster_steps=1, test_fraction=0.3, threads=1))
    return out


@pytest.mark.slow  # MMseqs2 clustering and searches: minutes on shared cores
def test_prep_go_on_the_slice_balances_and_leaves_no_test_homologue(go_data):
    from bio_fm.fasta import read_fasta
    from bio_fm.mmseqs import mmseqs_search

    manifest = json.loads((go_data / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["read"] == c["kept"] + sum(c["rejected"].values()) and manifest["balanced"]
    with gzip.open(GO_SLICE / "sequences.fasta.gz", "rt") as fh:
        assert c["read"] == sum(line.startswith(">") for line in fh)
    splits = manifest["splits"]
    assert sum(s["proteins"] for s in splits.values()) == c["kept"]
    assert splits["test"]["proteins"] > 10 and splits["test_near"]["proteins"] > 0
    ann = load_annotations(go_data / "annotations.tsv")
    assert len(ann) == c["kept"] and all(ann.values())
    assert not any(r in ts for a in ann.values() for o, ts in a.items() for r in ROOTS.values())
    # no test protein has a >= 30%-identity MMseqs2 hit in train; every test_near one has
    hits = {q: i for q, _, i in sorted(mmseqs_search(go_data / "test.fasta", go_data / "train.fasta", go_data / ".work",
                                                     min_identity=0.0), key=lambda h: h[2])}
    assert max(hits.values(), default=0.0) < 0.3
    near = {h.split()[0] for h, _ in read_fasta(go_data / "test_near.fasta")}
    near_hits = {q: i for q, _, i in mmseqs_search(go_data / "test_near.fasta", go_data / "train.fasta",
                                                   go_data / ".work", min_identity=0.3)}
    assert set(near_hits) == near


@pytest.mark.slow
def test_go_transfer_task_end_to_end_on_the_prepared_slice(compose, go_data, tmp_path):
    from fm_core.finetune import finetune

    cfg = compose(["task=go_transfer", "model=tiny", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
                   f"task.data_dir={go_data}", "task.knn.k=3"], config_name="finetune")
    m = finetune(cfg)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["test/knn/BPO/fmax"] == m["test/knn/BPO/fmax"]
    manifest = json.loads((go_data / "manifest.json").read_text())
    assert m["data/test_proteins"] == manifest["splits"]["test"]["proteins"]
    assert m["data/test_near_proteins"] == manifest["splits"]["test_near"]["proteins"]
    bins = [f"data/bin_{b}_proteins" for b in bin_names([0.3, 0.5])]
    assert sum(m[b] for b in bins) == m["data/test_proteins"] + m["data/test_near_proteins"]
    assert m["data/bin_30to50_proteins"] + m["data/bin_ge50_proteins"] == m["data/test_near_proteins"]
    for ont in ("BPO", "MFO", "CCO"):
        for method in ("naive", "mmseqs", "mmseqs+naive", "knn", "random_init_knn"):
            assert 0.0 <= m[f"test/{method}/{ont}/fmax"] <= 1.0
        assert m[f"test/naive/{ont}/coverage"] == 1.0  # the naive baseline predicts for everyone
        for a, b in (("knn", "naive"), ("mmseqs+naive", "naive"), ("knn", "random_init_knn")):
            key = f"summary/{ont}/{a}_minus_{b}"
            assert m[key] == pytest.approx(m[f"test/{a}/{ont}/fmax"] - m[f"test/{b}/{ont}/fmax"])
            assert m[f"{key}_ci95_low"] <= m[f"{key}_ci95_high"]
    # the naive baseline recomputed from the files
    ann = load_annotations(go_data / "annotations.tsv")
    train = [h.split()[0] for h in (go_data / "train.fasta").read_text().split("\n") if h.startswith(">")]
    test = [h.split()[0][1:] for h in (go_data / "test.fasta").read_text().split("\n") if h.startswith(">")]
    db = [ann[a[1:]]["MFO"] for a in train if "MFO" in ann[a[1:]]]
    truth = [ann[a]["MFO"] for a in test if "MFO" in ann[a]]
    naive = naive_prediction(db, 0.01)
    assert m["test/naive/MFO/fmax"] == pytest.approx(fmax(truth, [naive] * len(truth), cafa_thresholds(100))["fmax"])
    assert (tmp_path / "run" / "fmax.png").stat().st_size > 5_000


def _hand_made_split(out: Path) -> None:
    """Six real slice proteins as train (two annotation groups) and two test proteins, no MMseqs2."""
    from bio_fm.fasta import read_fasta

    seqs = [s for _, s in read_fasta(GO_SLICE / "sequences.fasta.gz")][:8]
    groups = [{"MFO": "GO:1,GO:2", "CCO": "GO:5"}, {"MFO": "GO:3", "BPO": "GO:4"}]
    rows = {f"tr{k}": groups[k % 2] for k in range(6)} | {"te0": {"MFO": "GO:1,GO:2"}, "te1": {"MFO": "GO:3,GO:6"}}
    names = list(rows)
    (out / "manifest.json").write_text("{}")
    (out / "annotations.tsv").write_text("accession\tBPO\tMFO\tCCO\n" + "".join(
        f"{a}\t{r.get('BPO', '')}\t{r.get('MFO', '')}\t{r.get('CCO', '')}\n" for a, r in rows.items()))
    for split, idx in (("train", range(6)), ("test", (6, 7)), ("test_near", ())):
        (out / f"{split}.fasta").write_text("".join(f">{names[k]}\n{seqs[k]}\n" for k in idx))


def test_go_transfer_task_end_to_end_fast(compose, tmp_path, monkeypatch):
    """The whole task with a tiny model on a hand-made split; MMseqs2 replaced by planted hits:
    te0's best hit is tr0 (MFO GO:1, GO:2) at 80%; te1 has no hit."""
    from fm_core.finetune import finetune
    from tasks.go_transfer import task as go_task

    _hand_made_split(tmp_path)
    monkeypatch.setattr(go_task, "best_hits", lambda query, target, threads, search: {0: [(0, 0.8), (1, 0.35)]})
    cfg = compose(["task=go_transfer", "model=tiny", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
                   f"task.data_dir={tmp_path}", "task.knn.k=2"], config_name="finetune")
    m = finetune(cfg)
    assert m["data/train_proteins"] == 6 and m["data/test_proteins"] == 2 and m["data/test_near_proteins"] == 0
    assert m["data/bin_ge50_proteins"] == 1 and m["data/bin_no_hit_proteins"] == 1
    # MFO, best-hit transfer: te0 gets {GO:1, GO:2} at 0.8 (tr0) and GO:3 at 0.35 (tr1), te1 nothing.
    # Fmax at t=0.36..0.80: te0 p 1 r 1, te1 r 0 -> P 1, R 1/2, F 2/3, coverage 1/2
    assert m["test/mmseqs/MFO/fmax"] == pytest.approx(2 / 3)
    assert m["test/mmseqs/MFO/coverage"] == pytest.approx(0.5)
    assert m["bin_no_hit/mmseqs/MFO/fmax"] == 0.0 and m["bin_ge50/mmseqs/MFO/fmax"] == pytest.approx(1.0)
    # mmseqs+naive: te1 (no hit) gets the naive prediction, te0 keeps its transfer
    assert m["bin_ge50/mmseqs+naive/MFO/fmax"] == pytest.approx(1.0)
    assert m["bin_no_hit/mmseqs+naive/MFO/fmax"] == pytest.approx(
        fmax([{"GO:3", "GO:6"}], [{"GO:1": 0.5, "GO:2": 0.5, "GO:3": 0.5}], cafa_thresholds(100))["fmax"])
    # naive: GO:1, GO:2, GO:3 each at 1/2 (three of six MFO train proteins)
    naive = {"GO:1": 0.5, "GO:2": 0.5, "GO:3": 0.5}
    truth = [{"GO:1", "GO:2"}, {"GO:3", "GO:6"}]
    expected = fmax(truth, [naive, naive], cafa_thresholds(100))["fmax"]
    assert m["test/naive/MFO/fmax"] == pytest.approx(expected)
    assert m["test/BPO/proteins"] == 0 and "test/knn/BPO/fmax" not in m
    for method in ("knn", "random_init_knn"):
        assert 0.0 <= m[f"test/{method}/MFO/fmax"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test/mmseqs/MFO/fmax"] == m["test/mmseqs/MFO/fmax"]
    assert (tmp_path / "run" / "fmax.png").stat().st_size > 5_000


def test_a_missing_data_dir_names_the_command_that_makes_it(compose, tmp_path):
    from fm_core.finetune import finetune

    cfg = compose(["task=go_transfer", "model=tiny", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
                   f"task.data_dir={tmp_path / 'nothing'}"], config_name="finetune")
    with pytest.raises(FileNotFoundError, match="fm-prep go --input"):
        finetune(cfg)
