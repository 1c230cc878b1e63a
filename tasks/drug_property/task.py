"""``fm-finetune task=drug_property dataset=<name>``: molecular property heads on scaffold splits.

The dataset (``conf/dataset/*.yaml``) is read from ``data_dir/<name>``, prepared beforehand by
``fm-prep molecules`` (canonical SMILES, rejects and label conflicts counted, scaffold and random
splits); the task never prepares it: a missing or differently prepared directory is an error
naming the command that makes it. Representations (``task.features``, each chosen by ``_target_``;
one that needs a backbone gets fm-finetune's, ``model.init_from=``) are fitted on the training
molecules only and concatenated; an MLP head per seed (Lightning) is trained with early
stopping on the validation split; the seeds' test metrics give mean and std, their mean
prediction is the ensemble (its member spread is the uncertainty). A RandomForest on Morgan bits is
trained in the same run on the same split as the in-run baseline. The trained ensemble is saved in
``<run_dir>/scorer`` for ``fm-score``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from chem_fm.features import Features, MorganFeatures, featurize
from chem_fm.smiles import SmilesTokenizer
from fm_core.finetune import FinetuneRun
from fm_core.plots import save_figure
from tasks.drug_property.heads import HeadConfig, fit_mlp, predict
from tasks.drug_property.metrics import mean_std, property_metrics
from tasks.drug_property.scorer import Scorer, build_features

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


def prep_command(dataset: dict[str, Any], out: Path) -> str:
    """The ``fm-prep molecules`` command that prepares ``dataset`` into ``out``."""
    cmd = (f"fm-prep molecules --source {dataset['source']} --out {out} --on-conflict {dataset['on_conflict']} "
           f"--seed {dataset['split_seed']}")
    if dataset["inputs"]:
        cmd += " --input " + " ".join(str(p) for p in dataset["inputs"])
    if dataset["max_rows"] is not None:
        cmd += f" --max-rows {dataset['max_rows']}"
    return cmd + ("" if dataset["largest_fragment"] else " --keep-fragments")


def read_manifest(dataset: dict[str, Any], out: Path) -> dict[str, Any]:
    """``out/manifest.json`` of ``fm-prep molecules``, checked against the dataset config; a clear
    error naming the command when it is missing or was prepared with other settings."""
    import json

    manifest_path = out / "manifest.json"
    if not (manifest_path.is_file() and (out / "molecules.parquet").is_file()):
        missing = manifest_path if not manifest_path.is_file() else out / "molecules.parquet"
        raise FileNotFoundError(f"dataset {dataset['name']!r}: {missing} not found; prepare it first with "
                                f"`{prep_command(dataset, out)}`")
    manifest = json.loads(manifest_path.read_text())
    want = {"source": dataset["source"], "largest_fragment": dataset["largest_fragment"],
            "on_conflict": dataset["on_conflict"], "seed": dataset["split_seed"], "max_rows": dataset["max_rows"]}
    got = {k: manifest["config"].get(k) for k in want}
    if got != want:
        raise ValueError(f"dataset {dataset['name']!r}: {out} was prepared with {got}, the config asks for "
                         f"{want}; prepare it again with `{prep_command(dataset, out)}`")
    return manifest


def load_dataset(dataset: dict[str, Any], data_dir: str | Path, split: str) -> dict[str, Any]:
    """SMILES, labels and split names of ``fm-prep molecules`` output, restricted to a seeded
    ``subset`` of each split when the dataset config asks for one."""
    import pyarrow.parquet as pq

    if split not in ("scaffold", "random"):
        raise ValueError(f"split must be 'scaffold' or 'random', got {split!r}")
    out = Path(data_dir) / str(dataset["name"])
    counts = read_manifest(dataset, out)["counts"]
    table = pq.read_table(out / "molecules.parquet").to_pydict()
    smiles = np.array(table["smiles"], dtype=object)
    y = np.array(table[dataset["label"]], dtype=np.float64)
    names = np.array(table[f"split_{split}"])
    subset = dataset["subset"]
    keep = np.ones(len(smiles), dtype=bool)
    if subset and subset < len(smiles):  # the same fraction of every split, seeded
        rng = np.random.default_rng(int(dataset["split_seed"]))
        keep[:] = False
        for s in SPLITS:
            idx = np.flatnonzero(names == s)
            keep[rng.choice(idx, size=int(round(len(idx) * subset / len(smiles))), replace=False)] = True
    info = {"data/read": counts["read"], "data/kept": counts["kept"],
            **{f"data/rejected_{k}": v for k, v in sorted(counts["rejected"].items())},
            "data/dir": str(out)}
    parts = {s: np.flatnonzero(keep & (names == s)) for s in SPLITS}
    info.update({f"data/{s}": len(parts[s]) for s in SPLITS})
    return {"smiles": smiles, "y": y, "parts": parts, "info": info}


def plain(node: Any) -> Any:
    """A config node as plain Python containers (a dict/list given directly is returned as is)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


class DrugPropertyTask:
    """Every argument is required: the defaults live in conf/task/drug_property.yaml."""

    def __init__(self, *, dataset: DictConfig, features: DictConfig, head: DictConfig, seeds: list[int], split: str,
                 data_dir: str, rf_baseline: DictConfig | None, threads: int):
        self.dataset = dict(plain(dataset))
        self.feature_configs = {k: dict(plain(v)) for k, v in features.items() if v is not None}
        self.head = HeadConfig(**plain(head))
        self.seeds = list(seeds)
        if len(self.seeds) < 1:
            raise ValueError("task.seeds: give at least one seed (3 or more for mean and std)")
        self.split, self.data_dir, self.threads = split, data_dir, threads
        self.rf = plain(rf_baseline)
        if self.dataset["kind"] not in ("classification", "regression"):
            raise ValueError(f"dataset.kind must be classification or regression, got {self.dataset['kind']!r}")

    def build_features(self, run: FinetuneRun, train: list[Any]) -> dict[str, Features]:
        """The configured representations, fitted on the training molecules; those that need a
        backbone share fm-finetune's (``run.backbone``, built once)."""
        features = build_features(self.feature_configs)
        users = [f for f in features.values() if f.needs_backbone]
        if users:
            tokenizer = SmilesTokenizer()
            net = run.backbone(tokenizer)
            for f in users:
                f.use_backbone(net, tokenizer)
        for f in features.values():
            f.fit(train)
        return features

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        import torch
        from rdkit import Chem

        torch.set_num_threads(self.threads)
        kind, label = self.dataset["kind"], self.dataset["label"]
        data = load_dataset(self.dataset, self.data_dir, self.split)
        parts, smiles, y = data["parts"], data["smiles"], data["y"]
        mols = {s: [Chem.MolFromSmiles(smi) for smi in smiles[parts[s]]] for s in SPLITS}
        ys = {s: y[parts[s]] for s in SPLITS}
        metrics: dict[str, Any] = {"dataset": self.dataset["name"], "split": self.split, **data["info"]}

        started = time.perf_counter()
        features = self.build_features(run, mols["train"])
        x = {s: featurize(features, mols[s]) for s in SPLITS}
        metrics["features/dim"] = int(x["train"].shape[1])
        metrics["features/seconds"] = time.perf_counter() - started

        y_mean, y_std = (float(ys["train"].mean()), float(ys["train"].std()) or 1.0) if kind == "regression" else (0.0, 1.0)
        target = {s: (ys[s] - y_mean) / y_std for s in SPLITS}
        heads, per_seed = [], {"valid": [], "test": []}
        losses = []
        from tqdm import tqdm

        for seed in tqdm(self.seeds, desc=f"{self.dataset['name']} heads", unit="seed"):
            fit = fit_mlp(x["train"], target["train"], x["valid"], target["valid"], kind, self.head, seed)
            heads.append(fit.model)
            losses.append({"train_loss": fit.train_loss, "valid_loss": fit.valid_loss, "best_epoch": fit.best_epoch})
            for s in ("valid", "test"):
                pred = predict([fit.model], x[s], kind, y_mean, y_std)[0]
                per_seed[s].append(property_metrics(kind, ys[s], pred))
        for s in ("valid", "test"):
            metrics.update(mean_std(per_seed[s], f"{s}/"))
        metrics.update(mean_std(losses, "head/"))
        members = predict(heads, x["test"], kind, y_mean, y_std)
        ens, unc = members.mean(0), members.std(0)
        metrics.update({f"test/ensemble_{k}": v for k, v in property_metrics(kind, ys["test"], ens).items()})
        metrics["test/uncertainty_mean"] = float(unc.mean())
        if kind == "regression" and len(ens) > 2:
            from scipy.stats import spearmanr

            metrics["test/uncertainty_error_spearman"] = float(spearmanr(unc, np.abs(ens - ys["test"])).statistic)
        metrics["members"] = len(heads)

        if self.rf:
            metrics.update(rf_baseline(kind, mols, ys, self.seeds, **self.rf))
        scorer = Scorer(kind, label, self.feature_configs, features, heads, self.head.hidden, y_mean, y_std)
        metrics["scorer"] = str(scorer.save(run.run_dir / "scorer"))
        png = plot_test(kind, label, ys["test"], ens, unc, run.run_dir / "test_predictions.png")
        run.log_image("test/predictions", png)
        return metrics


def rf_baseline(kind: str, mols: dict[str, list], ys: dict[str, np.ndarray], seeds: list[int], *,
                n_estimators: int, radius: int, size: int, n_jobs: int) -> dict[str, float]:
    """scikit-learn RandomForest on Morgan bits (the standard baseline), one forest per seed
    (``task.rf_baseline``: the defaults in conf/task/drug_property.yaml)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    fp = MorganFeatures(radius=radius, size=size, counts=False, log_counts=False, chirality=False)
    x = {s: fp.transform(mols[s]) for s in SPLITS}
    per_seed = []
    for seed in seeds:
        forest = RandomForestClassifier if kind == "classification" else RandomForestRegressor
        rf = forest(n_estimators=n_estimators, n_jobs=n_jobs, random_state=seed).fit(x["train"], ys["train"])
        pred = rf.predict_proba(x["test"])[:, 1] if kind == "classification" else rf.predict(x["test"])
        per_seed.append(property_metrics(kind, ys["test"], pred))
    return mean_std(per_seed, "rf/test/")


def plot_test(kind: str, label: str, y: np.ndarray, pred: np.ndarray, unc: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if kind == "classification":
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, pred)
        ax.plot(fpr, tpr, label="ensemble")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{label}: test ROC")
        ax.legend()
    else:
        ax.errorbar(y, pred, yerr=unc, fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xlabel=f"measured {label}", ylabel=f"predicted {label} (± member std)", title=f"{label}: test set")
    return save_figure(fig, path, dpi=120)
