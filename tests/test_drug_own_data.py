"""Drug property on a chemist's own data: CSV input with given splits and several targets (missing
labels masked), calibrated uncertainty (split-conformal coverage), the applicability domain
(neighbours = brute-force Tanimoto), fm-score keeping input columns, parallel cached featurisation."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from chem_fm.features import DescriptorFeatures, MorganFeatures, RawCache
from data_prep.molecules import MoleculePrepConfig, prepare
from fm_core.finetune import finetune
from tasks.drug_property.domain import Domain, tanimoto_top_k
from tasks.drug_property.heads import MaskedLoss
from tasks.drug_property.score import score_file
from tasks.drug_property.task import load_dataset
from tasks.drug_property.uncertainty import Conformal, SeedEnsemble, conformal_quantile, uncertainty_metrics

DATA = Path(__file__).parent / "data" / "molecules"


def freesolv_rows() -> list[dict[str, str]]:
    with open(DATA / "freesolv_head200.csv") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def three_files(tmp_path: Path) -> dict[str, Path]:
    """FreeSolv's first 200 rows with the label renamed, cut 150/25/25 into three files; the
    train file also has four bad rows (bad SMILES, a non-number label, no label, an empty SMILES)."""
    rows = [[r["iupac"], r["smiles"], r["expt"]] for r in freesolv_rows()]
    bad = [["x1", "C1CC", "1.0"], ["x2", "CCO", "abc"], ["x3", "CCCO", ""], ["x4", "", "2.0"]]
    cuts = {"train": rows[:150] + bad, "valid": rows[150:175], "test": rows[175:]}
    return {s: write_csv(tmp_path / f"{s}.csv", ["name", "SMILES", "dG"], r) for s, r in cuts.items()}


def prep_own(tmp_path: Path, name: str, **kw) -> dict:
    return prepare(MoleculePrepConfig(source="csv", out=str(tmp_path / "data" / name), smiles_column="SMILES",
                                      **kw))


def own_dataset(name: str, targets: list[str], kinds: list[str], **kw) -> dict:
    return {"name": name, "source": "csv", "smiles_column": "SMILES", "target_columns": targets, "kinds": kinds,
            "units": None, "split_column": None, "id_column": None, "train": None, "valid": None, "test": None,
            "path": None, "inputs": None, "max_rows": None, "subset": None, "split_seed": 0,
            "largest_fragment": True, "on_conflict": "drop", **kw}


def test_three_file_split_is_kept_exactly_and_bad_rows_are_reported(tmp_path):
    files = three_files(tmp_path)
    paths = {s: str(p) for s, p in files.items()}
    manifest = prep_own(tmp_path, "own", target_columns=["dG"], id_column="name", **paths)
    counts = manifest["counts"]
    assert counts["read"] == 204 and counts["read"] == counts["kept"] + sum(counts["rejected"].values())
    rejects = list(csv.DictReader(open(tmp_path / "data" / "own" / "rejects.csv")))
    by_row = {(r["file"], r["row"]): r["reason"] for r in rejects}
    assert by_row[("train.csv", "151")] == "SMILES parse error" and "not a number" in by_row[("train.csv", "152")]
    assert "no label" in by_row[("train.csv", "153")] and by_row[("train.csv", "154")] == "empty"
    data = load_dataset(own_dataset("own", ["dG"], ["regression"], id_column="name", **paths),
                        tmp_path / "data", "given")
    for s in ("train", "valid", "test"):  # the same molecules, in the file's order, nothing moved
        rows = [r for r in csv.DictReader(open(files[s])) if r["name"] not in ("x1", "x2", "x3", "x4")]
        got = data["smiles"][data["parts"][s]]
        canon = [Chem.MolToSmiles(Chem.MolFromSmiles(r["SMILES"])) for r in rows]
        assert list(got) == canon and list(data["ids"][data["parts"][s]]) == [r["name"] for r in rows]
        np.testing.assert_array_equal(data["y"][data["parts"][s], 0], [float(r["dG"]) for r in rows])
    assert (data["info"]["data/train"], data["info"]["data/valid"], data["info"]["data/test"]) == (150, 25, 25)


def test_masked_loss_ignores_missing_labels():
    torch.manual_seed(0)
    out, y = torch.randn(6, 2), torch.randn(6, 2)
    y[0, 1] = y[3, 0] = y[4, 1] = float("nan")
    y[:, 0] = (y[:, 0] > 0).float()
    y[3, 0] = float("nan")
    loss = MaskedLoss(("classification", "regression"), mean_variance=False)(out, y)
    ok = ~torch.isnan(y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0][ok[:, 0]], y[:, 0][ok[:, 0]],
                                                               reduction="sum")
    mse = ((out[:, 1] - y[:, 1])[ok[:, 1]] ** 2).sum()
    assert float(loss) == pytest.approx(float((bce + mse) / ok.sum()), rel=1e-6)
    assert torch.isfinite(loss)
    # one kind, no missing label: exactly the plain loss
    full = torch.randn(6, 1)
    assert float(MaskedLoss(("regression",), False)(out[:, :1], full)) == pytest.approx(
        float(torch.nn.functional.mse_loss(out[:, :1], full)), rel=1e-7)


def test_multitask_csv_with_missing_labels_trains_and_scores(compose, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, r in enumerate(freesolv_rows()):
        dg = float(r["expt"])
        cls = "" if i % 3 == 0 else str(int(dg < -4))  # every third class label missing
        y2 = "" if i % 4 == 1 else f"{2 * dg + rng.normal(0, 0.5):.3f}"  # every fourth value missing
        rows.append([f"cpd{i}", r["smiles"], f"{dg}", cls, y2, ["train", "valid", "test"][(i % 10 > 6) + (i % 10 > 8)]])
    table = write_csv(tmp_path / "own.csv", ["id", "SMILES", "dG", "soluble", "y2", "set"], rows)
    cfg = compose(["task=drug_property", "dataset=csv", f"dataset.path={table}", "dataset.smiles_column=SMILES",
                   "dataset.target_columns=[dG,soluble,y2]", "dataset.kinds=[regression,classification,regression]",
                   "dataset.split_column=set", "dataset.id_column=id", "+dataset.units={dG:kcal/mol}",
                   "logger=csv", "task.seeds=[0,1]", f"task.data_dir={tmp_path / 'data'}", "~task.features.descriptors",
                   "task.features.morgan.size=512", "task.head.hidden=[64]", "task.head.max_epochs=20",
                   "task.head.patience=5", "task.rf_baseline=null", f"paths.run_dir={tmp_path / 'run'}"],
                  config_name="finetune")
    with pytest.raises(FileNotFoundError, match="fm-prep molecules --source csv .*--split-column set"):
        finetune(cfg)
    prep_own(tmp_path, "csv", inputs=[str(table)], target_columns=["dG", "soluble", "y2"], split_column="set",
             id_column="id")
    m = finetune(cfg)
    assert (m["data/train"], m["data/valid"], m["data/test"]) == (140, 40, 20)
    assert (m["data/labelled_soluble"], m["data/labelled_y2"]) == (133, 150)
    assert np.isfinite(m["head/valid_loss_mean"]) and m["test/dG/rmse_mean"] < 3.5
    assert 0 <= m["test/soluble/roc_auc_mean"] <= 1 and np.isfinite(m["test/y2/rmse_mean"])
    assert 0 <= m["test/dG/coverage_90"] <= 1 and np.isfinite(m["test/y2/miscalibration_area"])
    assert m["test/band_0-0.4/n"] + m["test/band_0.4-0.6/n"] + m["test/band_ge0.6/n"] == 20
    preds = list(csv.DictReader(open(tmp_path / "run" / "test_predictions.csv")))
    assert len(preds) == 20 and preds[0]["id"].startswith("cpd") and "dG (kcal/mol)" in preds[0]
    missing = [p for p in preds if p["soluble measured"] == ""]
    assert missing and all(p["soluble (probability)"] != "" for p in missing)  # predicted, not scored

    # fm-score keeps every input column; the neighbours are training compounds by id
    query = write_csv(tmp_path / "q.csv", ["compound", "note", "SMILES"],
                      [["a", "first", rows[0][1]], ["b", "bad", "C1CC"], ["c", "", "c1ccccc1O"]])
    s = score_file(m["scorer"], query, tmp_path / "scored.csv")
    out = list(csv.DictReader(open(tmp_path / "scored.csv")))
    assert [r["compound"] for r in out] == ["a", "b", "c"] and [r["note"] for r in out] == ["first", "bad", ""]
    assert list(out[0])[:3] == ["compound", "note", "SMILES"] and "dG (kcal/mol)" in out[0]
    train_ids = {r[0] for r in rows if r[5] == "train"}
    assert out[0]["nn1_id"] == "cpd0" and float(out[0]["nn1_similarity"]) == 1.0 and out[0]["in_domain"] == "1"
    assert out[2]["nn1_id"] in train_ids and out[1]["error"] == "SMILES parse error"
    assert float(out[0]["dG lower 90%"]) < float(out[0]["dG (kcal/mol)"]) < float(out[0]["dG upper 90%"])
    assert (s["score/read"], s["score/scored"]) == (3, 2)
    # a scorer saved before task.domain.min_fraction existed still loads, with its stored threshold
    from tasks.drug_property.scorer import Scorer

    spec_path = Path(m["scorer"]) / "scorer.json"
    spec = json.loads(spec_path.read_text())
    del spec["domain"]["config"]["min_fraction"]
    spec_path.write_text(json.dumps(spec))
    assert Scorer.load(m["scorer"]).domain.threshold == m["domain/threshold"]


class _Memo(torch.nn.Module):
    """A fake head that returns the standardised label of every row it was trained on and 0 (the
    training mean) for any other row: out-of-fold predictions made with it show any leak."""

    def __init__(self, x: np.ndarray, z: np.ndarray):
        super().__init__()
        self.seen = {row.tobytes(): float(v) for row, v in zip(x, z[:, 0], strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[self.seen.get(r.tobytes(), 0.0)] for r in x.numpy()], dtype=torch.float64)


def test_cross_conformal_predicts_every_training_molecule_out_of_fold(compose, tmp_path, monkeypatch):
    from tasks.drug_property.task import DrugPropertyTask

    files = three_files(tmp_path)
    paths = {s: str(p) for s, p in files.items()}
    prep_own(tmp_path, "csv", target_columns=["dG"], id_column="name", **paths)
    real, fold_fits = DrugPropertyTask.fit_heads, []

    def fit_heads(self, x, target, targets, mean_variance, desc="heads"):
        if desc == "heads":
            return real(self, x, target, targets, mean_variance, desc)
        fold_fits.append(len(x["train"]))
        return [_Memo(x["train"], target["train"])] * len(self.seeds), []

    monkeypatch.setattr(DrugPropertyTask, "fit_heads", fit_heads)
    cfg = compose(["task=drug_property", "dataset=csv", "dataset.smiles_column=SMILES", "dataset.target_columns=[dG]",
                   "dataset.kinds=[regression]", "dataset.id_column=name", *(f"dataset.{s}={p}" for s, p in paths.items()),
                   "logger=csv", "task.seeds=[0,1]", f"task.data_dir={tmp_path / 'data'}", "~task.features.descriptors",
                   "task.features.morgan.size=512", "task.head.hidden=[32]", "task.head.max_epochs=5",
                   "task.rf_baseline=null", "task.calibration_folds=4", f"paths.run_dir={tmp_path / 'run'}"],
                  config_name="finetune")
    m = finetune(cfg)
    assert m["calibration/folds"] == 4 and m["calibration/molecules"] == 150 + 25
    assert len(fold_fits) == 4 and sum(fold_fits) == 3 * 150  # each molecule held out exactly once
    # every held-out molecule was predicted by heads that never saw it: the training mean
    train_y = np.array([float(r["dG"]) for r in csv.DictReader(open(files["train"])) if r["name"] not in
                        ("x1", "x2", "x3", "x4")])
    assert m["calibration/out_of_fold_rmse"] == pytest.approx(train_y.std(), rel=1e-9)
    assert sum(m[f"calibration/band_{b}/n"] for b in ("0-0.4", "0.4-0.6", "ge0.6")) == 175


def test_split_conformal_coverage_on_a_synthetic_problem():
    rng = np.random.default_rng(0)

    def draw(n):  # heteroscedastic noise; two "members" whose spread tracks the noise scale
        scale = rng.uniform(0.2, 2.0, n)
        y = rng.normal(0, scale)
        members = np.stack([rng.normal(0, 0.3 * scale), rng.normal(0, 0.3 * scale)])[..., None]
        return y[:, None], members

    yv, mv = draw(2000)
    yt, mt = draw(20000)
    for normalized in (False, True):
        c = Conformal(base=SeedEnsemble(coverage=0.9), coverage=0.9, normalized=normalized)
        c.calibrate(*c.combine(mv, None), yv)
        mean, std = c.combine(mt, None)
        cal, lo, hi = c.interval(mean, std)
        m = uncertainty_metrics(yt[:, 0], mean[:, 0], std[:, 0], cal[:, 0], lo[:, 0], hi[:, 0], 0.9)
        assert abs(m["coverage_90"] - 0.9) < 0.015, (normalized, m)
    assert m["uncertainty_error_spearman"] > 0.2  # the normalised intervals follow the noise
    # the quantile rule: ceil((n+1) * 0.9) = 10th smallest of 10 scores; too few scores -> infinite
    assert conformal_quantile(np.arange(10.0), 0.9) == 9.0 and conformal_quantile(np.arange(5.0), 0.9) == np.inf


def moses_mols() -> list:
    with gzip.open(DATA / "moses_train_head1000.csv.gz", "rt") as fh:
        return [Chem.MolFromSmiles(r["SMILES"]) for r in csv.DictReader(fh)]


def test_domain_neighbours_equal_brute_force_tanimoto():
    mols = moses_mols()
    train, queries = mols[:300], mols[300:340] + mols[:2]  # two queries are training molecules
    d = Domain(radius=2, size=2048, k=3, thresholds=[0.3, 0.5], min_count=2, min_fraction=0.0, bands=[0.4, 0.6])
    d.fit(train, [f"m{i}" for i in range(300)])
    sims, ids = d.neighbours(queries)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    tfp = [gen.GetFingerprint(m) for m in train]
    for q, mol in enumerate(queries):
        ref = np.array(DataStructs.BulkTanimotoSimilarity(gen.GetFingerprint(mol), tfp))
        order = np.argsort(-ref, kind="stable")[:3]
        np.testing.assert_allclose(sims[q], ref[order], rtol=1e-12)
        assert ids[q] == [f"m{j}" for j in order]
    assert ids[-2][0] == "m0" and sims[-1][0] == 1.0
    # the threshold maximises the out/in validation loss ratio among candidates with enough molecules
    nearest, loss = np.array([0.2, 0.25, 0.45, 0.55, 0.7, 0.8]), np.array([4.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    assert d.choose_threshold(nearest, loss) == 0.3
    d.min_fraction = 0.4  # at least 40% of the 6 molecules (3) each side: 0.3 leaves 2 below it
    assert d.choose_threshold(nearest, loss) == 0.5 and list(d.band_of(np.array([0.1, 0.4, 0.59, 0.6]))) == [0, 1, 1, 2]
    # packed bits round trip (what the scorer stores)
    again = Domain(radius=2, size=2048, k=3, thresholds=[0.3], min_count=2, min_fraction=0.0, bands=[0.4, 0.6])
    again.load(d.state(), d.arrays())
    np.testing.assert_array_equal(again.train_bits, d.train_bits)
    s2, i2 = tanimoto_top_k(again.fingerprints(queries), again.train_bits, 3)
    np.testing.assert_array_equal(s2, sims)


def test_raw_cache_parallel_equals_single_process(tmp_path):
    smiles = [Chem.MolToSmiles(m) for m in moses_mols()[:120]]
    for f in (MorganFeatures(radius=2, size=256, counts=True, log_counts=True, chirality=False),
              DescriptorFeatures(names=["MolWt", "TPSA", "fr_Al_COO", "qed"], clip_percentile=0.5)):
        ref = f.raw([Chem.MolFromSmiles(s) for s in smiles])
        cache = RawCache(directory=str(tmp_path / "cache"), workers=2, chunk=40)
        np.testing.assert_array_equal(cache.raw(f, smiles), ref)
        assert (cache.hits, cache.computed) == (0, 120)
        again = RawCache(directory=str(tmp_path / "cache"), workers=2, chunk=40)
        np.testing.assert_array_equal(again.raw(f, smiles[::-1] + ["CCO"]), np.concatenate(
            [ref[::-1], f.raw([Chem.MolFromSmiles("CCO")])]))
        assert (again.hits, again.computed) == (120, 1)
    keys = {p.stem for p in (tmp_path / "cache").glob("*.npz")}
    assert len(keys) == 2 and all(k.split("-")[0] in ("MorganFeatures", "DescriptorFeatures") for k in keys)
    assert json.dumps(sorted(keys))


def test_mean_variance_heads_learn_the_noise_and_recalibration_scales_it():
    from tasks.drug_property.heads import HeadConfig, fit_mlp, predict_targets
    from tasks.drug_property.uncertainty import DeepEnsemble, Recalibrated

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (600, 4)).astype(np.float32)
    noise = 0.05 + 0.6 * (x[:, 0] > 0)  # the noise depends on the sign of feature 0
    y = (x[:, 1] + rng.normal(0, noise)).astype(np.float64)
    cfg = HeadConfig(hidden=(32,), dropout=0.0, input_dropout=0.0, lr=3e-3, weight_decay=0.0, batch_size=64,
                     max_epochs=25, patience=25)
    fits = [fit_mlp(x[:400], y[:400], x[400:500], y[400:500], "regression", cfg, s, mean_variance=True)
            for s in (0, 1)]
    means, variances = predict_targets([f.model for f in fits], x[500:], ["regression"], np.zeros(1), np.ones(1),
                                       True)
    assert means.shape == variances.shape == (2, 100, 1) and (variances > 0).all()
    ens = DeepEnsemble(coverage=0.9)
    mean, std = ens.combine(means, variances)
    noisy = x[500:, 0] > 0
    assert std[noisy, 0].mean() > 3 * std[~noisy, 0].mean()  # the heads learned where the noise is
    np.testing.assert_allclose(std, np.sqrt(variances.mean(0) + means.var(0)))
    r = Recalibrated(base=ens, coverage=0.9)
    r.calibrate(mean, std, y[500:, None])
    assert r.scale[0] == pytest.approx(np.sqrt(np.mean(((y[500:] - mean[:, 0]) / std[:, 0]) ** 2)))
    cal, lo, hi = r.interval(mean, std)
    np.testing.assert_allclose(hi - lo, 2 * 1.6448536269514722 * std * r.scale, rtol=1e-9)
