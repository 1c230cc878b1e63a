"""``fm-finetune task=go_transfer``: GO terms transferred from the nearest annotated train proteins.

Reads an ``fm-prep go`` output (``task.data_dir``): ``train`` proteins with propagated GO terms
per ontology (BPO, MFO, CCO) are the annotated database; ``test`` proteins have no >= 30%-identity
MMseqs2 hit in train, ``test_near`` ones do (reported apart). Methods, all in the same run, per
ontology (the database is the train proteins annotated in that ontology):

- ``knn``: goPredSim-style transfer over the backbone's mean embeddings (layer ``layer``), exact
  cosine search with ``fm_core.index.Index`` (vectors centred on the train mean when
  ``knn.center``); ``knn.rule``: ``max`` (a term's score is the highest similarity of the ``k``
  neighbours carrying it) or ``vote`` (the similarity-weighted fraction of them carrying it);
- ``random_init_knn``: the same over the random-init twin's embeddings (``run.random_backbone``);
- ``mmseqs``: MMseqs2 best-hit transfer (a term's score is the identity of the best hit carrying
  it; CAFA's BLAST baseline), searched with ``mmseqs`` (sensitivity, e-value, iterations); a
  protein without hits gets no prediction;
- ``mmseqs+naive``: the same, with the naive prediction for a protein without a hit (how a BLAST
  annotation pipeline falls back to the prior);
- ``naive``: every protein gets each term's frequency among the train proteins (CAFA's naive).

Metrics (flat): ``<group>/<method>/<ontology>/{fmax,threshold,coverage,precision,recall}`` and
``<group>/<ontology>/proteins`` for ``test``, ``test_near`` and the bins by the identity of the
best MMseqs2 train hit over both (``bin_no_hit``, ``bin_lt30``, ``bin_30to50``, ``bin_ge50`` for
``identity_bins: [0.3, 0.5]``); ``summary/<ontology>/...`` margins over the naive baseline on test.
A bar chart of test Fmax per method and ontology: ``fmax.png``.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.fasta import read_fasta
from bio_fm.mmseqs import mmseqs_search
from fm_core.embed import Embedder
from fm_core.finetune import FinetuneRun
from fm_core.index import Index
from fm_core.label_budget import label_budget
from fm_core.model import MaskedLM
from tasks.go_transfer.metrics import (
    Prediction,
    bootstrap_counts,
    cafa_thresholds,
    fmax,
    paired_difference,
    resampled_fmax,
)

log = logging.getLogger(__name__)
ONTOLOGIES = ("BPO", "MFO", "CCO")
EVAL_SPLITS = ("test", "test_near")
Annotations = dict[str, dict[str, set[str]]]  # accession -> ontology -> propagated terms


# --- data ---------------------------------------------------------------------------------------------
def prepared(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").is_file() or not (data_dir / "annotations.tsv").is_file():
        raise FileNotFoundError(
            f"{data_dir}: no prepared GO data (fm-prep go output) there. Make it with `fm-prep go --input "
            f"bio_fm/data/go_slice --out {data_dir}` (the committed slice) or `fm-prep go --input "
            f"<metastudent-data dataset_201401> --out {data_dir}`, or point task.data_dir at one")
    return data_dir


def load_annotations(path: Path) -> Annotations:
    out: Annotations = {}
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        if header[1:] != list(ONTOLOGIES):
            raise ValueError(f"file {path}: header {header} is not accession<TAB>{'<TAB>'.join(ONTOLOGIES)}")
        for number, line in enumerate(fh, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 4:
                raise ValueError(f"file {path} line {number}: expected 4 tab-separated columns, got {len(cols)}")
            out[cols[0]] = {o: set(c.split(",")) for o, c in zip(ONTOLOGIES, cols[1:], strict=True) if c}
    return out


def load_split(data_dir: Path, split: str, limit: int | None, seed: int) -> list[tuple[str, str]]:
    """(accession, sequence) of one split; ``limit`` draws that many at random (seeded), in file order."""
    records = [(h.split(None, 1)[0], s) for h, s in read_fasta(data_dir / f"{split}.fasta")]
    if limit is not None and limit < len(records):
        keep = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
        records = [records[k] for k in keep]
    return records


def best_hits(query: list[tuple[str, str]], target: list[tuple[str, str]], threads: int | None,
              search: dict[str, Any]) -> dict[int, list[tuple[int, float]]]:
    """MMseqs2 hits of ``query`` against ``target``: query row -> [(target row, identity)], best first;
    ``search``: ``sensitivity``, ``evalue``, ``iterations`` (``task.mmseqs``)."""
    with tempfile.TemporaryDirectory(prefix="fm_go_search_") as tmp:
        q, t = Path(tmp) / "query.fa", Path(tmp) / "target.fa"
        q.write_text("".join(f">{k}\n{s}\n" for k, (_, s) in enumerate(query)))
        t.write_text("".join(f">{k}\n{s}\n" for k, (_, s) in enumerate(target)))
        raw = mmseqs_search(q, t, Path(tmp), threads=threads, sensitivity=search["sensitivity"],
                            evalue=search["evalue"], iterations=search["iterations"])
    hits: dict[int, list[tuple[int, float]]] = {}
    for qk, tk, ident in raw:
        hits.setdefault(int(qk), []).append((int(tk), ident))
    return {k: sorted(v, key=lambda h: -h[1]) for k, v in hits.items()}


# --- transfer rules -----------------------------------------------------------------------------------
def transfer(neighbours: list[tuple[int, float]], terms: list[set[str]], rule: str) -> Prediction:
    """Scores of the terms of ``neighbours`` (row, similarity): ``max`` or similarity-weighted ``vote``."""
    scores: dict[str, float] = {}
    if rule == "max":
        for row, sim in neighbours:
            for t in terms[row]:
                scores[t] = max(scores.get(t, 0.0), sim)
        return scores
    if rule != "vote":
        raise ValueError(f"knn.rule {rule!r}: choose max or vote")
    total = sum(sim for _, sim in neighbours)
    for row, sim in neighbours:
        for t in terms[row]:
            scores[t] = scores.get(t, 0.0) + sim / total if total > 0 else 0.0
    return scores


def naive_prediction(terms: list[set[str]], floor: float) -> Prediction:
    """Each term's frequency among ``terms`` (terms below ``floor``, the lowest threshold, dropped)."""
    freq = Counter(t for ts in terms for t in ts)
    n = len(terms)
    return {t: c / n for t, c in freq.items() if c / n >= floor}


@torch.no_grad()
def mean_embeddings(net: MaskedLM, tokenizer: ProteinAlphabet, records: list[tuple[str, str]], *, layer: int,
                    max_tokens: int, chunk: int, desc: str = "embed") -> np.ndarray:
    """(N, D) mean embeddings of ``layer`` (``fm_core.embed.Embedder``: long proteins in windows)."""
    embedder = Embedder(net, tokenizer, [layer], max_tokens=max_tokens)
    key = embedder.layers[0]
    out = []
    with tqdm(total=len(records), desc=desc, unit="protein", leave=False) as bar:
        for start in range(0, len(records), chunk):
            part = [(a, tokenizer.encode(s, record=a)) for a, s in records[start : start + chunk]]
            out += [e.mean[key] for e in embedder.embed(part)]
            bar.update(len(part))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, net.config.embed_dim), np.float32)


def bin_names(edges: list[float]) -> list[str]:
    pct = [round(100 * e) for e in edges]
    return ["no_hit", f"lt{pct[0]}", *(f"{a}to{b}" for a, b in zip(pct, pct[1:], strict=False)), f"ge{pct[-1]}"]


def identity_bin(identity: float, edges: list[float]) -> str:
    names = bin_names(edges)
    return names[0] if identity <= 0 else names[1 + int(np.searchsorted(edges, identity, side="right"))]


class GoTransferTask:
    """Arguments: see ``conf/task/go_transfer.yaml`` (the defaults live there only)."""

    def __init__(self, *, data_dir: str, layer: int, knn: dict, identity_bins: list[float], threshold_steps: int,
                 max_train: int | None, max_test: int | None, embed: dict, mmseqs: dict, mmseqs_threads: int | None,
                 num_threads: int | None, train_size: int | float | None, bootstrap: int):
        self.train_size = train_size  # label budget over the annotated train proteins (fm_core.label_budget)
        self.data_dir, self.layer, self.knn = data_dir, int(layer), dict(knn)
        self.edges = sorted(float(e) for e in identity_bins)
        self.thresholds = cafa_thresholds(int(threshold_steps))
        self.max_train, self.max_test, self.embed = max_train, max_test, dict(embed)
        self.mmseqs, self.mmseqs_threads, self.num_threads = dict(mmseqs), mmseqs_threads, num_threads
        self.bootstrap = int(bootstrap)

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        data_dir = prepared(self.data_dir)
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        ann = load_annotations(data_dir / "annotations.tsv")
        train = load_split(data_dir, "train", self.max_train, run.seed)
        # fm-prep go writes no clusters beside the FASTA: each train protein is its own group
        budget = label_budget([a for a, _ in train], self.train_size, run.seed)
        train = budget.take(train)
        evals = [(s, *r) for s in EVAL_SPLITS for r in load_split(data_dir, s, self.max_test, run.seed)]
        queries = [(a, q) for _, a, q in evals]
        alphabet = ProteinAlphabet()
        net = run.backbone(alphabet)
        nets = {"knn": net, "random_init_knn": run.random_backbone(net, alphabet)}
        hits = best_hits(queries, train, self.mmseqs_threads, self.mmseqs)
        nearest = [hits[k][0][1] if k in hits else 0.0 for k in range(len(evals))]
        vectors = {m: (mean_embeddings(n, alphabet, train, layer=self.layer, desc=f"{m}: train", **self.embed),
                       mean_embeddings(n, alphabet, queries, layer=self.layer, desc=f"{m}: evaluated", **self.embed))
                   for m, n in nets.items()}
        groups = {s: [k for k, e in enumerate(evals) if e[0] == s] for s in EVAL_SPLITS}
        for name in bin_names(self.edges):
            groups[f"bin_{name}"] = [k for k, i in enumerate(nearest) if identity_bin(i, self.edges) == name]
        metrics: dict[str, Any] = {"data/dir": str(data_dir), "data/train_proteins": len(train),
                                   **{f"data/{g}_proteins": len(idx) for g, idx in groups.items()},
                                   "knn/k": int(self.knn["k"]), "knn/rule": self.knn["rule"], **budget.metrics}
        for ont in ONTOLOGIES:
            preds = self.predict(ont, train, evals, ann, hits, vectors)
            metrics.update(self.score(ont, evals, ann, preds, groups))
            metrics.update(self.margins(ont, evals, ann, preds, groups["test"], run.seed))
        self.plot(run, metrics)
        return metrics

    def predict(self, ont: str, train: list[tuple[str, str]], evals: list[tuple[str, str, str]], ann: Annotations,
                hits: dict[int, list[tuple[int, float]]], vectors: dict[str, tuple[np.ndarray, np.ndarray]]
                ) -> dict[str, list[Prediction]]:
        """Predictions of every method for every evaluated protein in ontology ``ont``."""
        rows = [k for k, (a, _) in enumerate(train) if ont in ann.get(a, {})]
        terms = [ann.get(a, {}).get(ont, set()) for a, _ in train]
        if not rows:
            return {m: [{} for _ in evals] for m in ("naive", "mmseqs", "mmseqs+naive", *vectors)}
        naive = naive_prediction([terms[r] for r in rows], float(self.thresholds[0]))
        useful = set(rows)
        preds: dict[str, list[Prediction]] = {"naive": [naive] * len(evals)}
        preds["mmseqs"] = [transfer([h for h in hits.get(k, []) if h[0] in useful], terms, "max")
                           for k in range(len(evals))]
        preds["mmseqs+naive"] = [p or naive for p in preds["mmseqs"]]
        for method, (db, query) in vectors.items():
            preds[method] = self.knn_predictions(db[rows], query, rows, terms, method)
        return preds

    def knn_predictions(self, db: np.ndarray, query: np.ndarray, rows: list[int], terms: list[set[str]],
                        method: str) -> list[Prediction]:
        if self.knn["center"]:
            centre = db.mean(0, keepdims=True)
            db, query = db - centre, query - centre
        meta = {"model_fingerprint": method, "layer": self.layer, "dim": int(db.shape[1])}
        index = Index.build(db, [str(r) for r in rows], metric="cosine", kind="exact", meta=meta)
        sims, ids = index.search(query, int(self.knn["k"]), meta=meta)
        return [transfer([(int(i), max(0.0, float(s))) for i, s in zip(row_ids, row_sims, strict=False)], terms,
                         self.knn["rule"]) for row_ids, row_sims in zip(ids, sims, strict=True)]

    def score(self, ont: str, evals: list[tuple[str, str, str]], ann: Annotations,
              preds: dict[str, list[Prediction]], groups: dict[str, list[int]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group, idx in groups.items():
            mine = [k for k in idx if ont in ann.get(evals[k][1], {})]
            out[f"{group}/{ont}/proteins"] = len(mine)
            if not mine:
                continue
            truth = [ann[evals[k][1]][ont] for k in mine]
            for method, p in preds.items():
                res = fmax(truth, [p[k] for k in mine], self.thresholds)
                out.update({f"{group}/{method}/{ont}/{key}": v for key, v in res.items()})
        return out

    def margins(self, ont: str, evals: list[tuple[str, str, str]], ann: Annotations,
                preds: dict[str, list[Prediction]], test: list[int], seed: int) -> dict[str, Any]:
        """``summary/<ont>/<a>_minus_<b>``: test Fmax differences, with a paired bootstrap interval."""
        mine = [k for k in test if ont in ann.get(evals[k][1], {})]
        if not mine:
            return {}
        truth = [ann[evals[k][1]][ont] for k in mine]
        counts = bootstrap_counts(len(mine), self.bootstrap, seed)  # the same resamples for every method
        scored = {m: resampled_fmax(truth, [p[k] for k in mine], self.thresholds, counts) for m, p in preds.items()}
        pairs = [(m, "naive") for m in ("knn", "random_init_knn", "mmseqs", "mmseqs+naive")]
        out: dict[str, Any] = {}
        for a, b in [*pairs, ("knn", "random_init_knn"), ("knn", "mmseqs")]:
            res = paired_difference(scored[a], scored[b])
            key = f"summary/{ont}/{a}_minus_{b}"
            out[key] = res["diff"]
            if self.bootstrap:
                out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = res["ci95_low"], res["ci95_high"]
        return out

    def plot(self, run: FinetuneRun, metrics: dict[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        methods = ("naive", "mmseqs", "mmseqs+naive", "random_init_knn", "knn")
        onts = [o for o in ONTOLOGIES if f"test/naive/{o}/fmax" in metrics]
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            vals = [metrics[f"test/{m}/{o}/fmax"] for o in onts]
            ax.bar(np.arange(len(onts)) + (j - (len(methods) - 1) / 2) * width, vals, width, label=m)
        ax.set_xticks(range(len(onts)), [f"{o} (n={metrics[f'test/{o}/proteins']})" for o in onts])
        ax.set_ylabel("Fmax (CAFA, protein-centric)")
        ax.set_title(f"GO transfer, test proteins without a >= {round(100 * self.edges[0])}% train hit", fontsize=9)
        ax.legend(fontsize=8)
        run.save_figure(fig, "fmax.png", "go_transfer/fmax")


__all__ = ["GoTransferTask", "bin_names", "identity_bin", "load_annotations", "naive_prediction", "transfer"]
