"""Drug property side-by-side on identical splits, in one run: scikit-learn RandomForest on Morgan
bits, chemprop 2.x (D-MPNN, its Python API, CPU) and ours (MLP seed ensemble over Morgan counts +
RDKit 2D descriptors, optionally + a SMILES masked-LM backbone).

Every dataset is prepared by ``fm-prep molecules`` (the same ``conf/dataset`` configs as
``fm-finetune task=drug_property``), scaffold split by default; every method sees the same
train/valid/test molecules and seeds. JSON out (``--out``, rewritten after each method so a partial
run keeps its numbers) and a printed table: mean ± std over seeds of the test metrics, plus losses
and seconds::

    pip install -c constraints.txt -e ".[chem,bench]" && pip install --no-deps molsets
    python bench/drug_vs_baselines.py --chemprop-epochs 30
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from chem_fm.features import BackboneFeatures
from data_prep.molecules import MoleculePrepConfig, prepare
from fm_core.export import load_pretrained
from tasks.drug_property.heads import HeadConfig, fit_mlp, predict
from tasks.drug_property.metrics import mean_std, property_metrics
from tasks.drug_property.task import SPLITS, load_dataset, rf_baseline

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASETS = ("freesolv", "b3db_regression", "solubility", "qm9_gap", "b3db_classification")
PRIMARY = {"classification": ("roc_auc", "pr_auc"), "regression": ("rmse", "mae", "r2")}


def ensemble_uncertainty(valid: np.ndarray, test: np.ndarray, ys: dict[str, np.ndarray]) -> dict[str, float]:
    """A regression seed ensemble's uncertainty, the same way for every method: (members, n)
    predictions on valid and test; the members' spread, z-scaled on validation (chemprop's
    ``ZScalingCalibrator``; our ``Recalibrated``) for the miscalibration area, and split-conformal
    90% intervals on validation (our ``Conformal``, constant width) for the coverage."""
    from tasks.drug_property.uncertainty import Conformal, Recalibrated, SeedEnsemble, uncertainty_metrics

    out = {}
    for name, unc in (("zscaled", Recalibrated(base=SeedEnsemble(coverage=0.9), coverage=0.9)),
                      ("conformal", Conformal(base=SeedEnsemble(coverage=0.9), coverage=0.9, normalized=False))):
        mv, sv = unc.combine(valid[..., None], None)
        unc.calibrate(mv, sv, ys["valid"][:, None])
        mt, st = unc.combine(test[..., None], None)
        cal, lo, hi = unc.interval(mt, st)
        m = uncertainty_metrics(ys["test"], mt[:, 0], st[:, 0], cal[:, 0], lo[:, 0], hi[:, 0], 0.9)
        out.update({f"uncertainty/{name}_{k}": v for k, v in m.items()})
    return out


def ours(kind: str, x: dict[str, np.ndarray], ys: dict[str, np.ndarray], seeds: list[int], head: HeadConfig) -> dict:
    if kind == "regression":
        mu, sd = float(ys["train"].mean()), float(ys["train"].std()) or 1.0
    else:
        mu, sd = 0.0, 1.0
    models, per_seed, losses = [], [], []
    for seed in seeds:
        fit = fit_mlp(x["train"], (ys["train"] - mu) / sd, x["valid"], (ys["valid"] - mu) / sd, kind, head, seed)
        models.append(fit.model)
        per_seed.append(property_metrics(kind, ys["test"], predict([fit.model], x["test"], kind, mu, sd)[0]))
        losses.append({"train_loss": fit.train_loss, "valid_loss": fit.valid_loss, "best_epoch": fit.best_epoch})
    members = predict(models, x["test"], kind, mu, sd)
    unc = ensemble_uncertainty(predict(models, x["valid"], kind, mu, sd), members, ys) if kind == "regression" else {}
    return {**mean_std(per_seed, "test/"), **mean_std(losses, ""), **unc,
            **{f"test/ensemble_{k}": v for k, v in property_metrics(kind, ys["test"], members.mean(0)).items()}}


def chemprop_run(kind: str, smiles: dict[str, list[str]], ys: dict[str, np.ndarray], seeds: list[int],
                 epochs: int, workdir: Path) -> dict:
    """chemprop 2.x defaults (BondMessagePassing, mean aggregation, FFN; its Noam-like schedule),
    best epoch by validation loss, on the given splits."""
    import lightning.pytorch as pl
    from chemprop import data as cdata
    from chemprop import featurizers, models
    from chemprop import nn as cnn

    feat = featurizers.SimpleMoleculeMolGraphFeaturizer()
    per_seed, losses, preds = [], [], {"valid": [], "test": []}
    for seed in seeds:
        pl.seed_everything(seed, verbose=False)
        dsets = {s: cdata.MoleculeDataset([cdata.MoleculeDatapoint.from_smi(smi, [float(y)])
                                           for smi, y in zip(smiles[s], ys[s], strict=True)], feat) for s in SPLITS}
        if kind == "regression":
            scaler = dsets["train"].normalize_targets()
            dsets["valid"].normalize_targets(scaler)
            ffn = cnn.RegressionFFN(output_transform=cnn.UnscaleTransform.from_standard_scaler(scaler))
        else:
            ffn = cnn.BinaryClassificationFFN()
        model = models.MPNN(cnn.BondMessagePassing(), cnn.MeanAggregation(), ffn)
        # chemprop drops a last batch of one molecule (batch norm); evaluation batches never leave one
        loaders = {s: cdata.build_dataloader(dsets[s], batch_size=64 if s == "train" or len(dsets[s]) % 64 != 1 else 65,
                                             num_workers=0, seed=seed, shuffle=(s == "train")) for s in SPLITS}
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=workdir / f"seed{seed}", monitor="val_loss", mode="min",
                                            save_top_k=1)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, callbacks=[ckpt],
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(workdir))
        trainer.fit(model, loaders["train"], loaders["valid"])
        best = models.MPNN.load_from_checkpoint(ckpt.best_model_path)
        for s in preds:  # valid's targets were normalised in place: predictions come out unscaled
            preds[s].append(torch.cat(trainer.predict(best, loaders[s])).numpy().reshape(-1))
        per_seed.append(property_metrics(kind, ys["test"], preds["test"][-1]))
        cm = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k}
        losses.append({**{f"{k}_last": v for k, v in sorted(cm.items())}, "val_loss_best": float(ckpt.best_model_score)})
    members = {s: np.stack(v) for s, v in preds.items()}
    unc = ensemble_uncertainty(members["valid"], members["test"], ys) if kind == "regression" else {}
    return {**mean_std(per_seed, "test/"), **mean_std(losses, ""), "epochs": epochs, **unc,
            **{f"test/ensemble_{k}": v for k, v in property_metrics(kind, ys["test"], members["test"].mean(0)).items()}}


def read_dataset(name: str, ds: dict, data_dir: str, split: str) -> tuple[dict, dict, dict, dict]:
    """``fm-prep molecules`` (cached) then the task's reader: (data, SMILES, molecules, labels) per split."""
    from rdkit import Chem

    prepare(MoleculePrepConfig(source=ds["source"], inputs=ds["inputs"], out=str(Path(data_dir) / name),
                               largest_fragment=ds["largest_fragment"], on_conflict=ds["on_conflict"],
                               seed=ds["split_seed"], max_rows=ds["max_rows"]))
    data = load_dataset(ds, data_dir, split)
    smiles = {s: list(data["smiles"][data["parts"][s]]) for s in SPLITS}
    mols = {s: [Chem.MolFromSmiles(x) for x in smiles[s]] for s in SPLITS}
    return data, smiles, mols, {s: data["y"][data["parts"][s], 0] for s in SPLITS}  # the first target


def save(result: dict, name: str, entry: dict, out: str) -> None:
    result["datasets"][name] = entry
    Path(out).write_text(json.dumps(result, indent=1))


def fmt(r: dict, k: str) -> str:
    m = r.get(f"test/{k}_mean")
    return "-" if m is None else f"{m:.3f}±{r[f'test/{k}_std']:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--split", default="scaffold", choices=["scaffold", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--chemprop-epochs", type=int, default=30)
    task = OmegaConf.load(CONF / "task" / "drug_property.yaml")
    p.add_argument("--rf-trees", type=int, default=task.rf_baseline.n_estimators)
    p.add_argument("--backbone", default=None, help="export of fm-pretrain experiment=smiles_quick: adds "
                   "'ours+smiles' (Morgan + descriptors + backbone embeddings)")
    p.add_argument("--methods", nargs="+", default=["rf", "chemprop", "ours"])
    p.add_argument("--features", nargs="+", default=["morgan", "descriptors"], choices=["morgan", "descriptors"],
                   help="our representations (descriptors cost most of our time on a loaded CPU)")
    p.add_argument("--data-dir", default="data/molecules")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    p.add_argument("--merge", nargs="+", default=None, help="no training: merge these JSON outputs (datasets and "
                   "methods of separate invocations) into --out and print the table")
    args = p.parse_args()
    if args.merge:
        merged: dict[str, Any] = {"datasets": {}, "runs": []}
        for f in args.merge:
            part = json.loads(Path(f).read_text())
            merged["runs"].append({k: v for k, v in part.items() if k != "datasets"} | {"file": Path(f).name})
            for name, entry in part["datasets"].items():
                merged["datasets"].setdefault(name, {}).update(entry)
        Path(args.out).write_text(json.dumps(merged, indent=1))
        print_table(merged, args.out)
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    head = HeadConfig(**OmegaConf.to_container(task.head))
    result: dict[str, Any] = {"split": args.split, "seeds": args.seeds, "chemprop_epochs": args.chemprop_epochs,
                              "rf_trees": args.rf_trees, "head": vars(head) | {"hidden": list(head.hidden)},
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch threads {args.threads}",
                              "datasets": {}}
    if Path(args.out).is_file():  # a later invocation adds datasets/methods (e.g. --backbone) to the same JSON
        result["datasets"] = json.loads(Path(args.out).read_text())["datasets"]
    for name in args.datasets:
        ds = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{name}.yaml"))
        kind = ds["kind"]
        data, smiles, mols, ys = read_dataset(name, ds, args.data_dir, args.split)
        entry: dict[str, Any] = {**result["datasets"].get(name, {}), "kind": kind, "label": ds["label"],
                                 "split": args.split, **data["info"]}
        print(f"== {name}: {kind}, train/valid/test {len(ys['train'])}/{len(ys['valid'])}/{len(ys['test'])}", flush=True)
        if "rf" in args.methods:
            t = time.perf_counter()
            entry["rf"] = rf_baseline(kind, mols, ys, args.seeds, **{**task.rf_baseline, "n_estimators": args.rf_trees})
            entry["rf"] = {k.replace("rf/", ""): v for k, v in entry["rf"].items()} | {
                "seconds": time.perf_counter() - t, "seeds": args.seeds, "trees": args.rf_trees}
            print(f"   rf       {entry['rf']['seconds']:.0f}s", flush=True)
            save(result, name, entry, args.out)  # after every method: a stopped run keeps its numbers
        if "ours" in args.methods:
            t = time.perf_counter()
            reps = [instantiate(task.features[f]) for f in args.features]  # the task's defaults
            for r in reps:
                r.fit(mols["train"])
            x = {s: np.concatenate([r.transform(mols[s]) for r in reps], axis=1) for s in SPLITS}
            feat_s = time.perf_counter() - t
            entry["ours"] = ours(kind, x, ys, args.seeds, head) | {"seconds": time.perf_counter() - t,
                                                                   "features_seconds": feat_s, "seeds": args.seeds,
                                                                   "features": args.features}
            print(f"   ours     {entry['ours']['seconds']:.0f}s", flush=True)
            save(result, name, entry, args.out)  # after every method: a stopped run keeps its numbers
            if args.backbone:
                t = time.perf_counter()
                bb = BackboneFeatures(layer=-1, batch_size=256)
                bb.use_backbone(*load_pretrained(args.backbone))
                bb.fit(mols["train"])
                xb = {s: np.concatenate([x[s], bb.transform(mols[s])], axis=1) for s in SPLITS}
                entry["ours+smiles"] = ours(kind, xb, ys, args.seeds, head) | {
                    "seconds": time.perf_counter() - t + feat_s, "seeds": args.seeds, "backbone": args.backbone}
                print(f"   ours+smi {entry['ours+smiles']['seconds']:.0f}s", flush=True)
                save(result, name, entry, args.out)  # after every method: a stopped run keeps its numbers
        if "chemprop" in args.methods:
            t = time.perf_counter()
            entry["chemprop"] = chemprop_run(kind, smiles, ys, args.seeds, args.chemprop_epochs,
                                             Path(args.data_dir) / "chemprop_runs" / name) | {
                "seconds": time.perf_counter() - t, "seeds": args.seeds}
            print(f"   chemprop {entry['chemprop']['seconds']:.0f}s", flush=True)
        save(result, name, entry, args.out)
    print_table(result, args.out)


def print_table(result: dict, out: str) -> None:
    methods = [m for m in ("rf", "chemprop", "ours", "ours+smiles") if any(m in e for e in result["datasets"].values())]
    print("\ntest metrics, mean ± std over seeds (seeds, chemprop epochs on CPU and our features per dataset in the JSON)")
    print(f"{'dataset':20s} {'split':8s} {'metric':7s} " + " ".join(f"{m:>14s}" for m in methods))
    for name, e in result["datasets"].items():
        for k in PRIMARY[e["kind"]]:
            print(f"{name:20s} {e.get('split', ''):8s} {k:7s} "
                  + " ".join(f"{fmt(e[m], k) if m in e else '-':>14s}" for m in methods))
        extra = {m: round(e[m][key], 4) for m in methods if m in e
                 for key in ("valid_loss_mean", "val_loss_best_mean") if key in e[m]}
        print(f"{'':20s} {'':8s} {'loss':7s} valid loss (best epoch, mean over seeds): {extra}; seconds: "
              f"{ {m: round(e[m]['seconds']) for m in methods if m in e} }")
    print(f"json: {out}")


if __name__ == "__main__":
    main()
