"""Drug property scoring: SMILES tokenizer, representations, the drug_property task on committed
real-data slices (B3DB, FreeSolv), the saved scorer and fm-score's handling of bad input."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from chem_fm.features import DescriptorFeatures, MorganFeatures
from chem_fm.smiles import SmilesTokenizer, smiles_dataset
from fm_core.finetune import finetune
from fm_core.tokenizer import InvalidRecordError, tokenizer_from_dict
from tasks.drug_property.score import main as fm_score
from tasks.drug_property.score import score_file
from tasks.drug_property.scorer import Scorer

DATA = Path(__file__).parent / "data" / "molecules"


def moses_smiles() -> list[str]:
    with gzip.open(DATA / "moses_train_head1000.csv.gz", "rt") as fh:
        return [r["SMILES"] for r in csv.DictReader(fh)]


def test_smiles_tokenizer_round_trip_and_golden_tokens():
    tok = SmilesTokenizer()
    assert tok.split("CC[C@@H](Cl)c1ccc2[nH]c(=O)n%12c2c1Br.[Na+]") == [
        "C", "C", "[C@@H]", "(", "Cl", ")", "c", "1", "c", "c", "c", "2", "[nH]", "c", "(", "=", "O", ")",
        "n", "%12", "c", "2", "c", "1", "Br", ".", "[Na+]"]
    smiles = moses_smiles()
    total = 0
    for s in smiles:  # 1,000 real MOSES molecules: exact round trip, no unknown token
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert ids.min() >= 5  # never a special token
        total += len(ids)
    assert tok.unknown == 0 and total == 32915  # characters less the multi-character tokens
    # an unknown bracket atom is <unk> (counted); a stray character is an error naming the record
    assert tok.encode("[Xe]C").tolist() == [tok.unk_id, tok.index["C"]] and tok.unknown == 1
    with pytest.raises(InvalidRecordError, match="record 'row 7'.*character 3"):
        tok.encode("CC{C", record="row 7")
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.vocab_size == tok.vocab_size == 256 and again.encode(smiles[0]).tolist() == tok.encode(smiles[0]).tolist()


def test_smiles_dataset_counts_bad_rows(tmp_path):
    src = tmp_path / "s.csv"
    src.write_text("SMILES\nCCO\nC{C\n\"\"\nc1ccccc1\n")
    ds = smiles_dataset(SmilesTokenizer(), str(src), on_invalid="skip")
    assert (ds.stats.read, ds.stats.kept, dict(ds.stats.rejected)) == (4, 2, {"invalid_smiles": 2})
    with pytest.raises(InvalidRecordError, match="row 2"):
        smiles_dataset(SmilesTokenizer(), str(src))


def test_morgan_counts_match_rdkit_and_descriptors_are_nan_safe():
    mols = [Chem.MolFromSmiles(s) for s in moses_smiles()[:40]]
    x = MorganFeatures(radius=2, size=1024, counts=True, log_counts=False, chirality=False).transform(mols)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    for i, m in enumerate(mols):  # parity with RDKit's sparse count fingerprint
        ref = np.zeros(1024)
        for k, v in gen.GetCountFingerprint(m).GetNonzeroElements().items():
            ref[k] = v
        np.testing.assert_array_equal(x[i], ref)
    bits = MorganFeatures(radius=2, size=1024, counts=False, log_counts=True, chirality=False).transform(mols)
    np.testing.assert_array_equal(bits, (x > 0).astype(np.float32))

    names = ["MolWt", "TPSA", "MolLogP", "NumHDonors"]
    d = DescriptorFeatures(names=names, clip_percentile=0.5).fit(mols[:30])
    raw = d.raw(mols[:30])
    np.testing.assert_allclose(raw[:, 0], [Descriptors.MolWt(m) for m in mols[:30]])
    z = d.transform(mols[:30])
    assert np.isfinite(z).all() and np.abs(z.mean(0)).max() < 0.05 and np.abs(z.std(0) - 1).max() < 0.05
    # a missing value (NaN / a descriptor that raises) becomes the train median, finite after scaling
    d.raw = lambda ms: np.where(np.arange(4) == 1, np.nan, DescriptorFeatures.raw(d, ms))
    z2 = d.transform(mols[30:])
    assert np.isfinite(z2).all()
    np.testing.assert_allclose(z2[:, 1], (d.median[1] - d.mean[1]) / d.std[1], rtol=1e-6)


def _compose(compose, tmp_path, dataset, inputs, extra=()):
    return compose(["task=drug_property", f"dataset={dataset}", f"dataset.inputs=[{inputs}]", "logger=csv",
                    "task.seeds=[0,1,2]", f"task.data_dir={tmp_path / 'data'}", "~task.features.descriptors",
                    "task.features.morgan.size=1024", "task.head.hidden=[128]", "task.head.max_epochs=60",
                    "task.head.patience=10", "task.rf_baseline.n_estimators=10",
                    f"paths.run_dir={tmp_path / dataset}", *extra], config_name="finetune")


def _prepare(cfg):
    """What `fm-prep molecules` does for the dataset config (the task only reads the result)."""
    from data_prep.molecules import MoleculePrepConfig, prepare

    d = cfg.task.dataset
    prepare(MoleculePrepConfig(source=d.source, inputs=list(d.inputs), out=str(Path(cfg.task.data_dir) / d.name),
                               largest_fragment=d.largest_fragment, on_conflict=d.on_conflict, seed=d.split_seed,
                               max_rows=d.max_rows))


def _run(compose, tmp_path, dataset, inputs, extra=()):
    cfg = _compose(compose, tmp_path, dataset, inputs, extra)
    _prepare(cfg)
    return finetune(cfg)


def test_drug_property_classification_and_fm_score(compose, tmp_path, capsys):
    m = _run(compose, tmp_path, "b3db_classification", DATA / "b3db_classification_sample300.tsv")
    assert (m["data/read"], m["data/kept"], m["data/rejected_invalid_structure"]) == (300, 299, 1)
    assert (m["data/train"], m["data/valid"], m["data/test"]) == (239, 30, 30)
    assert m["members"] == 3 and m["test/roc_auc_std"] > 0  # three different seeds
    # 30 scaffold-split test molecules (a hard, small test): above chance on both metrics
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "data" / "b3db_classification" / "molecules.parquet").to_pydict()
    prevalence = np.mean([y for y, s in zip(t["bbb"], t["split_scaffold"], strict=True) if s == "test"])
    assert m["test/roc_auc_mean"] > 0.55 and m["test/ensemble_roc_auc"] > 0.55  # chance is 0.5
    assert m["test/pr_auc_mean"] > prevalence + 0.02 and m["head/valid_loss_mean"] < np.log(2)  # a coin's BCE
    assert 0 < m["rf/test/roc_auc_mean"] <= 1
    on_disk = json.loads((tmp_path / "b3db_classification" / "metrics.json").read_text())
    assert on_disk["test/roc_auc_mean"] == m["test/roc_auc_mean"]
    assert (tmp_path / "b3db_classification" / "test_predictions.png").stat().st_size > 5000

    # fm-score: every row and input column comes back, invalid ones with their reason; salts get the
    # training policy stored in the scorer (largest fragment, as fm-prep's default), or --keep-fragments
    scorer_dir = Path(m["scorer"])
    src = tmp_path / "in.csv"
    src.write_text("name,SMILES\naspirin,CC(=O)Oc1ccccc1C(=O)O\nbad,C1CC\nempty,\n"
                   "salt,CC(=O)Oc1ccccc1C(=O)[O-].[Na+]\nvalence,C(C)(C)(C)(C)C\ncaffeine,Cn1cnc2c1c(=O)n(C)c(=O)n2C\n")
    s = score_file(scorer_dir, src, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["row"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["name"] for r in rows] == ["aspirin", "bad", "empty", "salt", "valence", "caffeine"]
    assert (s["score/read"], s["score/scored"], s["score/rejected_invalid_smiles"]) == (6, 3, 3)
    assert rows[1]["error"] == "SMILES parse error" and rows[2]["error"] == "empty"
    assert "valence" in rows[4]["error"].lower() and rows[3]["error"] == ""
    assert rows[3]["canonical_smiles"] == "CC(=O)Oc1ccccc1C(=O)[O-]"  # the anion, as fm-prep keeps it
    # predictions equal the in-memory ensemble's (save/load round trip)
    scorer = Scorer.load(scorer_dir)
    mean, std, members = scorer.predict_mols([Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")])
    assert float(rows[0]["bbb (probability)"]) == pytest.approx(mean[0], rel=1e-5) and members.shape == (3, 1)
    assert float(rows[0]["bbb std"]) == pytest.approx(std[0], rel=1e-5, abs=1e-7) and 0 <= mean[0] <= 1
    assert fm_score([str(scorer_dir), str(src), "-o", str(tmp_path / "o2.csv"), "--keep-fragments"]) == 0
    salt = list(csv.DictReader(open(tmp_path / "o2.csv")))[3]
    assert salt["error"] == "" and salt["canonical_smiles"] == "CC(=O)Oc1ccccc1C(=O)[O-].[Na+]"
    anion = scorer.predict_mols([Chem.MolFromSmiles(rows[3]["canonical_smiles"])])[0][0]
    assert float(rows[3]["bbb (probability)"]) == pytest.approx(anion, rel=1e-5)
    assert "row 2: SMILES parse error" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("")
    assert fm_score([str(scorer_dir), str(tmp_path / "empty.csv"), "-o", str(tmp_path / "o3.csv")]) == 2
    assert "empty file" in capsys.readouterr().err


def test_drug_property_regression_beats_the_mean(compose, tmp_path):
    m = _run(compose, tmp_path, "freesolv", DATA / "freesolv_head200.csv", ["task.split=random"])
    assert m["split"] == "random" and (m["data/train"], m["data/valid"], m["data/test"]) == (160, 20, 20)
    # R^2 > 0: better than predicting the training mean; RMSE in kcal/mol
    assert m["test/r2_mean"] > 0.3 and m["test/ensemble_rmse"] < 3.0
    assert m["test/uncertainty_mean"] > 0 and np.isfinite(m["test/uncertainty_error_spearman"])
    assert m["test/no_backbone/r2_mean"] == m["test/r2_mean"]  # no backbone: these heads are that arm
    # prepared with other settings than the config's: an error with the command, never a silent re-prep
    with pytest.raises(ValueError, match=r"prepared with .*`fm-prep molecules --source freesolv .*--seed 1"):
        finetune(_compose(compose, tmp_path, "freesolv", DATA / "freesolv_head200.csv", ["dataset.split_seed=1"]))


def test_drug_property_reads_prepared_data_only(compose, tmp_path):
    """The task never runs data_prep: without fm-prep's output it names the file and the command."""
    cfg = _compose(compose, tmp_path, "freesolv", DATA / "freesolv_head200.csv")
    out = tmp_path / "data" / "freesolv"
    command = (f"`fm-prep molecules --source freesolv --out {out} --on-conflict drop --seed 0 "
               f"--input {DATA / 'freesolv_head200.csv'}`")
    with pytest.raises(FileNotFoundError) as err:
        finetune(cfg)
    assert str(out / "manifest.json") in str(err.value) and command in str(err.value)
    assert not out.exists()


def test_backbone_features_pool_real_tokens_independent_of_batching(tmp_path):
    import torch

    from chem_fm.features import BackboneFeatures
    from fm_core.export import load_pretrained, save_pretrained
    from fm_core.model import build_model

    tok = SmilesTokenizer()
    torch.manual_seed(0)
    net = build_model("tiny", tok).eval()
    save_pretrained(tmp_path / "export", net, tok)
    smiles = ["CCO", "c1ccccc1C(=O)O", "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", "N"]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    f = BackboneFeatures(layer=-1, batch_size=3)
    f.use_backbone(*load_pretrained(tmp_path / "export"))
    x = f.fit(mols).transform(mols)
    layer = net.config.num_layers
    for i, m in enumerate(mols):  # one molecule at a time, no padding: the mean over its atom/bond tokens
        ids = torch.as_tensor(tok.add_special_tokens(tok.encode(Chem.MolToSmiles(m))))[None]
        with torch.no_grad():
            rep = net(ids, repr_layers=[layer])["representations"][layer][0, 1:-1].mean(0)
        np.testing.assert_allclose(x[i], rep.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(x[0] - x[1]).max() > 1e-3


def test_drug_property_backbone_features_use_fm_finetunes_model(compose, tmp_path):
    """A backbone representation gets fm-finetune's backbone (model.init_from=), like every task's;
    the scorer carries its own export and predicts as the run's in-memory ensemble does."""
    import torch

    from chem_fm.features import BackboneFeatures
    from fm_core.export import load_pretrained, save_pretrained
    from fm_core.model import build_model

    tok = SmilesTokenizer()
    torch.manual_seed(123)  # not the run's seed: the random-init twin (seeded by it) must differ
    save_pretrained(tmp_path / "export", build_model("tiny", tok).eval(), tok)
    smiles = "{_target_:chem_fm.features.BackboneFeatures,layer:-1,batch_size:64}"
    m = _run(compose, tmp_path, "freesolv", DATA / "freesolv_head200.csv",
             ["task.split=random", "task.seeds=[0,1]", "task.head.max_epochs=3", "task.rf_baseline=null",
              f"model.init_from={tmp_path / 'export'}", f"+task.features.smiles={smiles}"])
    embed_dim = build_model("tiny", tok).config.embed_dim
    assert m["features/dim"] == 1024 + embed_dim and m["members"] == 2
    # in the same run: the same heads over the backbone's random-init twin and without the backbone
    assert (m["features/random_init_dim"], m["features/no_backbone_dim"]) == (1024 + embed_dim, 1024)
    assert np.isfinite(m["test/random_init/rmse_mean"]) and np.isfinite(m["test/no_backbone/rmse_mean"])
    assert len({m["test/rmse_mean"], m["test/random_init/rmse_mean"], m["test/no_backbone/rmse_mean"]}) == 3
    scorer = Scorer.load(m["scorer"])
    mols = [Chem.MolFromSmiles(s) for s in ("CCO", "c1ccccc1O")]
    direct = BackboneFeatures(layer=-1, batch_size=64)
    direct.use_backbone(*load_pretrained(tmp_path / "export"))  # the run's backbone, saved with the scorer
    np.testing.assert_array_equal(scorer.features["smiles"].transform(mols), direct.transform(mols))
    assert np.isfinite(scorer.predict_mols(mols)[0]).all()
