"""``fm-finetune task=drug_property dataset=<name>``: molecular property heads on held-out splits.

The dataset (``conf/dataset/*.yaml``: a preset, or ``dataset=csv`` for own data with one or more
targets) is read from ``data_dir/<name>``, prepared beforehand by ``fm-prep molecules`` (canonical
SMILES, rejects and label conflicts counted, scaffold, random and cluster splits, and the given
split of own data); the task never prepares it: a missing or differently prepared directory is an
error naming the command that makes it. Representations (``task.features``, each chosen by
``_target_``; one that needs a backbone gets fm-finetune's, ``model.init_from=``) are fitted on the
training molecules only (computed in worker processes and cached, ``task.featurize``) and
concatenated; an MLP head per seed (Lightning; one output per target, missing labels masked) is
trained with early stopping on the validation split; the seeds' test metrics give mean and std,
their mean prediction is the ensemble. ``task.uncertainty`` (by ``_target_``) turns the members
into a std and an interval, calibrated on the calibration set: the validation split plus, with
``task.calibration_folds`` = K > 1 and a regression target, the out-of-fold predictions of K
scaffold-grouped folds of the training split (each fold's heads trained on the other folds, the
same seeds and early stopping; cross-conformal in the manner of Vovk's and Barber et al.'s CV+,
with the final heads in place of the fold models). Scaffold splits put the validation and test
molecules on scaffolds the heads never saw; out-of-fold residuals are of the same kind and eight
times as many, so the interval's quantile no longer rests on the 60-130 validation molecules of
a small dataset. ``task.domain`` finds each molecule's nearest training molecules (Tanimoto),
chooses its in-domain threshold on the calibration set and reports test and calibration metrics
by similarity band. A RandomForest on Morgan bits is trained in the same run on the same split as
the in-run baseline; with a backbone among the features, so are the same heads over its random-init
twin and over the features without it. The trained ensemble is saved in ``<run_dir>/scorer`` for
``fm-score``; per-molecule test predictions in ``<run_dir>/test_predictions.csv``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from chem_fm.features import Features, MorganFeatures, RawCache, featurize_smiles
from chem_fm.smiles import SmilesTokenizer
from fm_core.errors import UserError
from fm_core.finetune import FinetuneRun
from fm_core.label_budget import label_budget
from fm_core.plots import save_figure
from tasks.drug_property.heads import HeadConfig, fit_mlp, predict_targets
from tasks.drug_property.metrics import mean_std, property_metrics, target_metrics
from tasks.drug_property.scorer import Scorer, Target, build_features, build_task_object
from tasks.drug_property.uncertainty import uncertainty_metrics

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
SPLIT_KINDS = ("scaffold", "random", "cluster", "given")
OWN_DATA = ("smiles_column", "target_columns", "split_column", "id_column", "train", "valid", "test")


class DatasetNotPreparedError(UserError, FileNotFoundError):
    """The prepared directory of a dataset is missing (the message names the fm-prep command)."""


class DatasetError(UserError, ValueError):
    """The prepared data does not fit the dataset config."""


def prep_command(dataset: dict[str, Any], out: Path) -> str:
    """The ``fm-prep molecules`` command that prepares ``dataset`` into ``out``."""
    cmd = (f"fm-prep molecules --source {dataset['source']} --out {out} --on-conflict {dataset['on_conflict']} "
           f"--seed {dataset['split_seed']}")
    inputs = dataset["inputs"] or ([dataset["path"]] if dataset.get("path") else None)  # path: csv.yaml only
    if inputs:
        cmd += " --input " + " ".join(str(p) for p in inputs)
    for key in OWN_DATA:
        value = dataset.get(key)  # own-data keys exist in conf/dataset/csv.yaml only
        if value:
            cmd += f" --{key.replace('_', '-')} " + (" ".join(value) if isinstance(value, list) else str(value))
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
        raise DatasetNotPreparedError(f"dataset {dataset['name']!r}: {missing} not found; prepare it first with "
                                      f"`{prep_command(dataset, out)}`")
    manifest = json.loads(manifest_path.read_text())
    want = {"source": dataset["source"], "largest_fragment": dataset["largest_fragment"],
            "on_conflict": dataset["on_conflict"], "seed": dataset["split_seed"], "max_rows": dataset["max_rows"],
            **{k: dataset[k] for k in OWN_DATA if k in dataset}}
    got = {k: manifest["config"].get(k) for k in want}
    if got != want:
        raise DatasetError(f"dataset {dataset['name']!r}: {out} was prepared with {got}, the config asks for "
                           f"{want}; prepare it again with `{prep_command(dataset, out)}`")
    return manifest


def dataset_targets(dataset: dict[str, Any]) -> list[Target]:
    """The targets: ``label``/``kind``/``unit`` of a preset, or ``target_columns`` with ``kinds``
    (one per target, or one for all) and ``units`` (by column) of own data."""
    if "target_columns" not in dataset:
        return [Target(dataset["label"], dataset["kind"], dataset["unit"])]
    names, kinds = list(dataset["target_columns"]), list(dataset["kinds"])
    kinds = kinds * len(names) if len(kinds) == 1 else kinds
    if len(kinds) != len(names):
        raise DatasetError(f"dataset.kinds: {len(kinds)} kinds for {len(names)} target_columns {names}")
    units = dataset["units"] or {}
    return [Target(n, k, units.get(n)) for n, k in zip(names, kinds, strict=True)]


def load_dataset(dataset: dict[str, Any], data_dir: str | Path, split: str) -> dict[str, Any]:
    """SMILES, labels (n, T; NaN = missing), ids and split names of ``fm-prep molecules`` output,
    restricted to a seeded ``subset`` of each split when the dataset config asks for one."""
    import pyarrow.parquet as pq

    if split not in SPLIT_KINDS:
        raise DatasetError(f"split must be one of {', '.join(SPLIT_KINDS)}, got {split!r}")
    out = Path(data_dir) / str(dataset["name"])
    counts = read_manifest(dataset, out)["counts"]
    table = pq.read_table(out / "molecules.parquet").to_pydict()
    if f"split_{split}" not in table:
        raise DatasetError(f"dataset {dataset['name']!r}: {out} has no {split} split (split=given needs "
                           "dataset.split_column or dataset.train/valid/test); set task.split=scaffold|random|cluster "
                           "or prepare it again")
    targets = dataset_targets(dataset)
    smiles = np.array(table["smiles"], dtype=object)
    y = np.array([[np.nan if v is None else v for v in table[t.name]] for t in targets], dtype=np.float64).T
    for j, t in enumerate(targets):
        bad = np.isfinite(y[:, j]) & ~np.isin(y[:, j], (0.0, 1.0))
        if t.kind == "classification" and bad.any():
            raise DatasetError(f"dataset {dataset['name']!r}: classification target {t.name!r} has "
                               f"{int(bad.sum())} labels other than 0/1 (first: {y[bad, j][0]:g}); "
                               "set its kind to regression in dataset.kinds")
    ids = np.array(table["id"] if "id" in table else [f"{s} row {r}" for s, r in zip(table["source"], table["row"],
                                                                                     strict=True)], dtype=object)
    names = np.array(table[f"split_{split}"])
    keep = np.ones(len(smiles), dtype=bool)
    subset = dataset["subset"]
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
    if len(targets) > 1:
        info.update({f"data/labelled_{t.name}": int(np.isfinite(y[:, j]).sum()) for j, t in enumerate(targets)})
    return {"smiles": smiles, "y": y, "ids": ids, "parts": parts, "info": info, "targets": targets,
            "scaffolds": np.array(table["scaffold"], dtype=object)}


def plain(node: Any) -> Any:
    """A config node as plain Python containers (a dict/list given directly is returned as is)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def scaling(targets: list[Target], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-target standardisation of the training labels (regression; classes stay 0/1)."""
    reg = np.array([t.kind == "regression" for t in targets])
    with np.errstate(all="ignore"):
        mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return np.where(reg, mean, 0.0), np.where(reg, std, 1.0)


def per_molecule_loss(targets: list[Target], y: np.ndarray, pred: np.ndarray, y_std: np.ndarray) -> np.ndarray:
    """The mean over a molecule's labelled targets of the standardised squared error (regression)
    or the log loss (classification): what the domain threshold is chosen on."""
    cls = np.array([t.kind == "classification" for t in targets])
    p = np.clip(pred, 1e-7, 1 - 1e-7)
    with np.errstate(all="ignore"):
        loss = np.where(cls, -(y * np.log(p) + (1 - y) * np.log(1 - p)), np.square((y - pred) / y_std))
    return np.nanmean(np.where(np.isfinite(y), loss, np.nan), axis=1)


class DrugPropertyTask:
    """Every argument is required: the defaults live in conf/task/drug_property.yaml."""

    def __init__(self, *, dataset: DictConfig, features: DictConfig, head: DictConfig, seeds: list[int], split: str,
                 data_dir: str, rf_baseline: DictConfig | None, threads: int, uncertainty: DictConfig,
                 domain: DictConfig, featurize: DictConfig, train_size: int | float | None,
                 calibration_folds: int):
        if calibration_folds < 0 or calibration_folds == 1:
            raise DatasetError(f"task.calibration_folds={calibration_folds}: 0 (validation only) or at least 2")
        self.calibration_folds = calibration_folds
        self.train_size = train_size  # label budget over the train split, whole scaffolds (fm_core.label_budget)
        self.dataset = dict(plain(dataset))
        self.feature_configs = {k: dict(plain(v)) for k, v in features.items() if v is not None}
        self.head = HeadConfig(**plain(head))
        self.seeds = list(seeds)
        if len(self.seeds) < 1:
            raise DatasetError("task.seeds: give at least one seed (3 or more for mean and std)")
        self.split, self.data_dir, self.threads = split, data_dir, threads
        self.rf = plain(rf_baseline)
        self.uncertainty_config, self.domain_config = dict(plain(uncertainty)), dict(plain(domain))
        self.featurize = dict(plain(featurize))
        for t in dataset_targets(self.dataset):
            if t.kind not in ("classification", "regression"):
                raise DatasetError(f"dataset: target {t.name!r} kind must be classification or regression, "
                                   f"got {t.kind!r}")

    def build_features(self, run: FinetuneRun, like: Any = None) -> dict[str, Features]:
        """The configured representations; those that need a backbone share fm-finetune's
        (``run.backbone``, built once), or with ``like`` (a backbone) its random-init twin."""
        features = build_features(self.feature_configs)
        users = [f for f in features.values() if f.needs_backbone]
        if users:
            tokenizer = SmilesTokenizer()
            net = run.backbone(tokenizer) if like is None else run.random_backbone(like, tokenizer)
            for f in users:
                f.use_backbone(net, tokenizer)
        return features

    def backbone_comparison(self, run: FinetuneRun, features: dict[str, Features], smiles: dict[str, list[str]],
                            mols: dict[str, list[Any]], cache: RawCache, ys: dict[str, np.ndarray],
                            targets: list[Target], y_mean: np.ndarray, y_std: np.ndarray) -> dict[str, float]:
        """With a backbone among the features, the same heads (seeds, early stopping) over the
        same features with the backbone's random-init twin (``test/random_init/...``) and over the
        features without the backbone (``test/no_backbone/...``, when others remain): what the
        pre-trained weights add, in the same run and split (fm-report's twin and baseline)."""
        users = [f for f in features.values() if f.needs_backbone]
        arms = {"random_init": self.build_features(run, like=users[0].net)}
        rest = {n: f for n, f in build_features(self.feature_configs).items() if not f.needs_backbone}
        if rest:
            arms["no_backbone"] = rest
        out: dict[str, float] = {}
        for name, feats in arms.items():
            x = featurize_smiles(feats, smiles, mols, cache, "train")
            heads, _ = self.fit_heads(x, {s: (ys[s] - y_mean) / y_std for s in SPLITS}, targets, False, desc=name)
            out.update(mean_std(per_head_metrics(heads, x["test"], ys["test"], targets, y_mean, y_std), f"test/{name}/"))
            out[f"features/{name}_dim"] = int(x["train"].shape[1])
        return out

    def fit_heads(self, x: dict[str, np.ndarray], target: dict[str, np.ndarray], targets: list[Target],
                  mean_variance: bool, desc: str = "heads") -> tuple[list[Any], list[dict[str, float]]]:
        from tqdm import tqdm

        heads, losses = [], []
        kinds = [t.kind for t in targets]
        for seed in tqdm(self.seeds, desc=f"{self.dataset['name']} {desc}", unit="seed"):
            fit = fit_mlp(x["train"], target["train"], x["valid"], target["valid"], kinds, self.head, seed,
                          mean_variance)
            heads.append(fit.model)
            losses.append({"train_loss": fit.train_loss, "valid_loss": fit.valid_loss, "best_epoch": fit.best_epoch})
        return heads, losses

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        import torch
        from rdkit import Chem

        torch.set_num_threads(self.threads)
        data = load_dataset(self.dataset, self.data_dir, self.split)
        parts, targets = data["parts"], data["targets"]
        budget = label_budget(data["scaffolds"][parts["train"]], self.train_size, run.seed)
        parts["train"] = parts["train"][budget.indices]
        data["info"].update({**budget.metrics, "data/train": len(parts["train"])})
        kinds = [t.kind for t in targets]
        smiles = {s: list(data["smiles"][parts[s]]) for s in SPLITS}
        mols = {s: [Chem.MolFromSmiles(smi) for smi in smiles[s]] for s in SPLITS}
        ys = {s: data["y"][parts[s]] for s in SPLITS}
        metrics: dict[str, Any] = {"dataset": self.dataset["name"], "split": self.split, **data["info"]}
        if not (len(parts["train"]) and len(parts["valid"]) and len(parts["test"])):
            raise DatasetError(f"dataset {self.dataset['name']!r}: split {self.split} has "
                               f"{[len(parts[s]) for s in SPLITS]} train/valid/test molecules; each needs some")

        started = time.perf_counter()
        features = self.build_features(run)
        cache = RawCache(**self.featurize)
        x = featurize_smiles(features, smiles, mols, cache, "train")
        metrics.update({"features/dim": int(x["train"].shape[1]), "features/seconds": time.perf_counter() - started,
                        "features/cache_hits": cache.hits, "features/computed": cache.computed})

        y_mean, y_std = scaling(targets, ys["train"])
        unc = build_task_object("task.uncertainty", self.uncertainty_config)
        heads, losses = self.fit_heads(x, {s: (ys[s] - y_mean) / y_std for s in SPLITS}, targets,
                                       unc.mean_variance)
        for s in ("valid", "test"):
            metrics.update(mean_std(per_head_metrics(heads, x[s], ys[s], targets, y_mean, y_std), f"{s}/"))
        metrics.update(mean_std(losses, "head/"))
        metrics["members"] = len(heads)
        if any(f.needs_backbone for f in features.values()):
            metrics.update(self.backbone_comparison(run, features, smiles, mols, cache, ys, targets, y_mean, y_std))
        else:  # these heads are the features-only arm (fm-report's baseline beside backbone runs)
            metrics.update({f"test/no_backbone/{k[5:]}": v for k, v in list(metrics.items())
                            if k.startswith("test/") and k.endswith(("_mean", "_std"))})
        domain = build_task_object("task.domain", self.domain_config).fit(mols["train"], list(data["ids"][parts["train"]]))
        scorer = Scorer(targets, self.feature_configs, features, heads, self.head.hidden, y_mean, y_std,
                        self.uncertainty_config, unc, self.domain_config, domain, bool(self.dataset["largest_fragment"]))
        calibration = self.calibration_set(scorer, x, ys, mols, data["scaffolds"][parts["train"]], metrics)
        out = self.evaluate(scorer, x, ys, mols, calibration, metrics)
        write_predictions(run.run_dir / "test_predictions.csv", targets, data["ids"][parts["test"]], smiles["test"],
                          ys["test"], out)
        if self.rf:
            metrics.update(rf_baseline(kinds[0], mols, {s: v[:, 0] for s, v in ys.items()}, self.seeds, **self.rf))
        metrics["scorer"] = str(scorer.save(run.run_dir / "scorer"))
        png = plot_test(kinds[0], targets[0].name, ys["test"][:, 0], out["mean"][:, 0], out["calibrated_std"][:, 0],
                        run.run_dir / "test_predictions.png")
        run.log_image("test/predictions", png)
        return metrics

    def calibration_set(self, scorer: Scorer, x: dict[str, np.ndarray], ys: dict[str, np.ndarray],
                        mols: dict[str, list[Any]], scaffolds: np.ndarray, metrics: dict[str, Any]) -> dict[str, np.ndarray]:
        """Ensemble mean and std, labels and nearest-training similarity of the molecules the
        uncertainty and the domain threshold are calibrated on: the validation split, then (with
        ``calibration_folds`` > 1 and a regression target) every training molecule predicted by
        heads trained without its scaffold's fold, its similarity taken to the other folds."""
        from sklearn.model_selection import GroupKFold

        from tasks.drug_property.domain import tanimoto_top_k

        valid = scorer.outputs(x["valid"], intervals=False)
        nn, _ = scorer.domain.neighbours(mols["valid"])
        cal = {"mean": [valid["mean"]], "std": [valid["std"]], "y": [ys["valid"]], "nn": [nn[:, 0]]}
        folds = min(self.calibration_folds, len(set(scaffolds)))
        regression = any(t.kind == "regression" for t in scorer.targets)
        metrics["calibration/folds"] = folds if regression and folds > 1 else 0
        if metrics["calibration/folds"]:
            n, t = ys["train"].shape
            mean, std, near = np.full((n, t), np.nan), np.full((n, t), np.nan), np.zeros(n)
            target = {s: (ys[s] - scorer.y_mean) / scorer.y_std for s in ("train", "valid")}
            bits = scorer.domain.train_bits
            for k, (fit, held) in enumerate(GroupKFold(folds).split(x["train"], groups=scaffolds)):
                heads, _ = self.fit_heads({"train": x["train"][fit], "valid": x["valid"]},
                                          {"train": target["train"][fit], "valid": target["valid"]}, scorer.targets,
                                          scorer.uncertainty.mean_variance, desc=f"fold {k + 1}/{folds}")
                fold = dataclasses.replace(scorer, heads=heads).outputs(x["train"][held], intervals=False)
                mean[held], std[held] = fold["mean"], fold["std"]
                near[held] = tanimoto_top_k(bits[held], bits[fit], 1)[0][:, 0]
            metrics.update({f"calibration/out_of_fold_{k}": v
                            for k, v in target_metrics(scorer.targets, ys["train"], mean).items()})
            cal = {"mean": [*cal["mean"], mean], "std": [*cal["std"], std], "y": [*cal["y"], ys["train"]],
                   "nn": [*cal["nn"], near]}
        cal = {k: np.concatenate(v) for k, v in cal.items()}
        metrics["calibration/molecules"] = len(cal["y"])
        return cal

    def evaluate(self, scorer: Scorer, x: dict[str, np.ndarray], ys: dict[str, np.ndarray],
                 mols: dict[str, list[Any]], cal: dict[str, np.ndarray], metrics: dict[str, Any]) -> dict[str, np.ndarray]:
        """Calibrates the uncertainty and chooses the domain threshold on the calibration set
        (:meth:`calibration_set`); the test split's ensemble, uncertainty and per-band metrics
        (and the calibration set's per-band metrics) into ``metrics``; the test outputs."""
        targets, unc, domain = scorer.targets, scorer.uncertainty, scorer.domain
        unc.calibrate(cal["mean"], cal["std"], cal["y"])
        metrics["domain/threshold"] = domain.choose_threshold(
            cal["nn"], per_molecule_loss(targets, cal["y"], cal["mean"], scorer.y_std))
        cal_band = domain.band_of(cal["nn"])
        metrics.update(masked_metrics("calibration", targets, cal["y"], cal["mean"],
                                      {f"band_{b}": cal_band == i for i, b in enumerate(domain.band_names())}))
        out = scorer.outputs(x["test"])
        sims, nn_ids = domain.neighbours(mols["test"])
        out.update({"nn_similarity": sims, "nn_ids": nn_ids, "in_domain": sims[:, 0] >= domain.threshold,
                    "band": domain.band_of(sims[:, 0])})
        y = ys["test"]
        metrics.update({f"test/ensemble_{k}": v for k, v in target_metrics(targets, y, out["mean"]).items()})
        for j, t in enumerate(targets):
            if t.kind == "regression":
                m = uncertainty_metrics(y[:, j], out["mean"][:, j], out["std"][:, j], out["calibrated_std"][:, j],
                                        out["lower"][:, j], out["upper"][:, j], unc.coverage)
                metrics.update({f"test/{k}" if len(targets) == 1 else f"test/{t.name}/{k}": v for k, v in m.items()})
        metrics["test/in_domain_fraction"] = float(out["in_domain"].mean())
        metrics["test/nn_similarity_mean"] = float(sims[:, 0].mean())
        metrics.update(masked_metrics("test", targets, y, out["mean"],
                                      {**{f"band_{b}": out["band"] == i for i, b in enumerate(domain.band_names())},
                                       "in_domain": out["in_domain"], "out_of_domain": ~out["in_domain"]}))
        return out


def per_head_metrics(heads: list[Any], x: np.ndarray, y: np.ndarray, targets: list[Target], y_mean: np.ndarray,
                     y_std: np.ndarray) -> list[dict[str, float]]:
    """Every head's own metrics on ``(x, y)`` (one dict per seed, for :func:`mean_std`)."""
    kinds = [t.kind for t in targets]
    return [target_metrics(targets, y, predict_targets([h], x, kinds, y_mean, y_std, False)[0][0]) for h in heads]


def masked_metrics(prefix: str, targets: list[Target], y: np.ndarray, pred: np.ndarray,
                   masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """``<prefix>/<name>/n`` per subset of molecules, and its metrics when it holds two or more."""
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        out[f"{prefix}/{name}/n"] = int(mask.sum())
        if mask.sum() >= 2:
            out.update({f"{prefix}/{name}/{k}": v for k, v in target_metrics(targets, y[mask], pred[mask]).items()})
    return out


def write_predictions(path: Path, targets: list[Target], ids: np.ndarray, smiles: list[str], y: np.ndarray,
                      out: dict[str, Any]) -> Path:
    """``test_predictions.csv``: per test molecule its id, SMILES, per target the measured and
    predicted value, std and interval, and the nearest training molecule's similarity and id."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        cols = [c for t in targets for c in (f"{t.name} measured", t.column(), f"{t.name} std",
                                             f"{t.name} lower", f"{t.name} upper")]
        w.writerow(["id", "smiles", *cols, "nn1_similarity", "nn1_id", "in_domain"])
        for i in range(len(ids)):
            vals = [v for j in range(len(targets)) for v in (y[i, j], out["mean"][i, j], out["std"][i, j],
                                                              out["lower"][i, j], out["upper"][i, j])]
            w.writerow([ids[i], smiles[i], *(f"{v:.6g}" if np.isfinite(v) else "" for v in vals),
                        f"{out['nn_similarity'][i, 0]:.4f}", out["nn_ids"][i][0], int(out["in_domain"][i])])
    return path

def rf_baseline(kind: str, mols: dict[str, list], ys: dict[str, np.ndarray], seeds: list[int], *,
                n_estimators: int, radius: int, size: int, n_jobs: int) -> dict[str, float]:
    """scikit-learn RandomForest on Morgan bits (the standard baseline), one forest per seed
    (``task.rf_baseline``: the defaults in conf/task/drug_property.yaml)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    fp = MorganFeatures(radius=radius, size=size, counts=False, log_counts=False, chirality=False)
    ok = {s: np.isfinite(ys[s]) for s in SPLITS}  # the labelled molecules (of the first target)
    x = {s: fp.transform([m for m, keep in zip(mols[s], ok[s], strict=True) if keep]) for s in SPLITS}
    per_seed = []
    for seed in seeds:
        forest = RandomForestClassifier if kind == "classification" else RandomForestRegressor
        rf = forest(n_estimators=n_estimators, n_jobs=n_jobs, random_state=seed).fit(x["train"], ys["train"][ok["train"]])
        pred = rf.predict_proba(x["test"])[:, 1] if kind == "classification" else rf.predict(x["test"])
        per_seed.append(property_metrics(kind, ys["test"][ok["test"]], pred))
    return mean_std(per_seed, "rf/test/")


def plot_test(kind: str, label: str, y: np.ndarray, pred: np.ndarray, unc: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.isfinite(y)
    y, pred, unc = y[ok], pred[ok], unc[ok]
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
        ax.set(xlabel=f"measured {label}", ylabel=f"predicted {label} (± calibrated std)", title=f"{label}: test set")
    return save_figure(fig, path, dpi=120)
