"""fm-prep structures on the committed ProMod3 slice (320 real PDB chains), the numpy reader of
structure_db.dat, ideal C-beta, contacts, DSSP states, and PDB files labelled by mkdssp."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from bio_fm import mmseqs
from bio_fm.structure import contact_atoms, contact_map, dssp8_to_3, ideal_cb, normalise_dssp8
from data_prep import common
from data_prep.structures import StructureDB, StructurePrepConfig, prepare, read_structure_files
from fm_core.shards import ShardDataset, load_tokenizer

SLICE = Path(str(files("bio_fm").joinpath("data/structure_slice/structure_db.dat.gz")))
DATA = Path(__file__).parent / "data" / "structures"
FAST = {"cluster_steps": 1, "valid_fraction": 0.1, "test_fraction": 0.15}


@pytest.fixture(scope="module")
def db():
    return StructureDB(SLICE)


def test_reader_golden_values(db, tmp_path):
    assert len(db) == 320 and db.num_residues == 42822
    assert (db.ids[1], db.chains[1], int(db.sizes[1]), int(db.first_resnum[1])) == ("1B12", "A", 120, 129)
    assert set("".join(db.sequence(i) for i in range(len(db)))) <= set("ACDEFGHIKLMNPQRSTVWY")
    # backbone in 0.01 A: consecutive CA-CA distances of a chain are ~3.8 A (trans peptides)
    o, n = db.offsets[1], db.sizes[1]
    ca = db.arrays["backbone"][o : o + n].reshape(-1, 4, 3)[:, 1] / 100.0
    d = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    assert abs(np.median(d) - 3.80) < 0.02
    # write -> read round trip (plain file), and truncation is reported with the file name
    db.write(tmp_path / "two.dat", [1, 5])
    two = StructureDB(tmp_path / "two.dat")
    assert two.ids == [db.ids[1], db.ids[5]] and two.sequence(1) == db.sequence(5)
    assert np.array_equal(two.arrays["dssp"], db.arrays["dssp"][db.residue_index(np.array([1, 5]))])
    raw = (tmp_path / "two.dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"cut\.dat.*structure_db"):
        StructureDB(tmp_path / "cut.dat")
    (tmp_path / "bad.dat").write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match="magic"):
        StructureDB(tmp_path / "bad.dat")


def test_ideal_cb_geometry(db):
    o, n = db.offsets[1], db.sizes[1]
    bb = db.arrays["backbone"][o : o + n].reshape(-1, 4, 3).astype(np.float64) / 100.0
    nn, ca, c = bb[:, 0], bb[:, 1], bb[:, 2]
    cb = ideal_cb(nn, ca, c)
    bond = np.linalg.norm(cb - ca, axis=1)
    # C-alpha - C-beta bond ~1.53 A (the construction follows the real N-CA-C geometry, so it varies)
    assert abs(np.median(bond) - 1.53) < 0.02
    assert 1.40 < np.percentile(bond, 5) and np.percentile(bond, 95) < 1.70
    u, v = nn - ca, cb - ca
    angle = np.degrees(np.arccos((u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)))
    assert abs(np.median(angle) - 110.5) < 1.5  # N-CA-CB
    # L-amino acids: (N - CA) x (C - CA) . (CB - CA) has one sign, about +2.5 A^3 (D would be negative)
    chir = np.einsum("ij,ij->i", np.cross(nn - ca, c - ca), cb - ca)
    assert (chir > 1.5).all()


def test_contacts_and_dssp_states():
    coords = np.array([[0, 0, 0], [7.9, 0, 0], [8.1, 0, 0], [0, 20, 0]], dtype=np.float32)
    m = contact_map(coords)
    assert m.tolist() == [[True, True, False, False], [True, True, True, False],
                          [False, True, True, False], [False, False, False, True]]
    ca, cb = np.zeros((2, 3)), np.ones((2, 3))
    assert contact_atoms("GA", ca, cb).tolist() == [[0, 0, 0], [1, 1, 1]]  # CA for glycine
    assert dssp8_to_3("HGIEBTSC") == "HHHEECCC"
    assert normalise_dssp8(" -PHE") == "CCCHE"
    with pytest.raises(ValueError, match="unknown DSSP"):
        dssp8_to_3("HXE")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("structures")
    return out, prepare(StructurePrepConfig(input=str(SLICE), out=str(out), **FAST))


def test_prepare_counts_splits_and_labels(prepared, db):
    out, m = prepared
    c = m["counts"]
    assert c["read"] == 320 and c["kept"] + sum(c["rejected"].values()) == 320 and c["kept"] == 320
    sets = {s: ShardDataset(out / s) for s in ("train", "valid", "test")}
    assert sum(len(d) for d in sets.values()) == 320
    assert sum(int(d.lengths.sum()) for d in sets.values()) == 42822
    train_clusters = set(sets["train"].column("cluster").tolist())
    for s in ("valid", "test"):
        assert not train_clusters & set(sets[s].column("cluster").tolist())
        assert len(sets[s]) == m["splits"][s]["records"] > 0
    # one chain, every field against the raw database
    tok = load_tokenizer(out)
    row = next(r for d in sets.values() for r in d.rows() if r["id"] == "1B12_A")
    o, n = db.offsets[1], db.sizes[1]
    assert tok.decode(row["tokens"]) == row["sequence"] == db.sequence(1)
    bb = db.arrays["backbone"][o : o + n].reshape(-1, 4, 3) / 100.0
    assert np.allclose(np.reshape(row["ca"], (-1, 3)), bb[:, 1], atol=1e-5)
    assert np.allclose(np.reshape(row["cb"], (-1, 3)), ideal_cb(bb[:, 0], bb[:, 1], bb[:, 2]), atol=1e-4)
    assert row["ss8"] == db.arrays["dssp"][o : o + n].tobytes().decode()
    assert row["ss3"] == dssp8_to_3(row["ss8"]) and len(row["profile"]) == 20 * n
    cmap = contact_map(contact_atoms(row["sequence"], np.reshape(row["ca"], (-1, 3)), np.reshape(row["cb"], (-1, 3))))
    assert cmap.shape == (n, n) and (cmap == cmap.T).all() and 2.0 < (cmap.sum() - n) / n < 20.0
    assert json.loads((out / "metrics.json").read_text())["prep/read"] == 320


def test_leakage_report_matches_an_independent_search(prepared, tmp_path):
    out, m = prepared
    sets = {s: ShardDataset(out / s) for s in ("train", "test")}
    fa = {}
    for s, d in sets.items():
        fa[s] = tmp_path / f"{s}.fa"
        fa[s].write_text("".join(f">{r['id']}\n{r['sequence']}\n" for r in d.rows(["id", "sequence"])))
    hits = mmseqs.mmseqs_search(fa["test"], fa["train"], tmp_path)
    best: dict[str, float] = {}
    for q, _, ident in hits:
        best[q] = max(best.get(q, 0.0), ident)
    rep = m["leakage"]["test"]
    assert rep["chains"] == len(sets["test"]) and rep["with_train_hit"] == len(best)
    flagged = {r["id"]: r["train_max_identity"] for r in sets["test"].rows(["id", "train_max_identity"])}
    assert {k for k, v in flagged.items() if v > 0} == set(best)
    assert all(abs(flagged[k] - v) < 1e-6 for k, v in best.items())


def _fake_mkdssp(tmp_path: Path) -> str:
    """Replays the output real mkdssp 4.2.2 wrote for the committed backbone PDB (CI has no mkdssp)."""
    script = tmp_path / "mkdssp"
    golden = DATA / "1b12_A_backbone.dssp"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"print('mkdssp version 4.2.2') if '--version' in sys.argv else "
                      f"sys.stdout.write(open({str(golden)!r}).read())\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_pdb_input_labelled_by_dssp(tmp_path, db, monkeypatch):
    counts = common.Counts()
    cfg = StructurePrepConfig(mkdssp=_fake_mkdssp(tmp_path))
    table = read_structure_files([DATA / "1b12_A_backbone.pdb"], cfg, counts)
    assert (counts.read, counts.kept) == (1, 1)
    row = table.to_pylist()[0]
    assert row["id"] == "1b12_A_backbone_A" and row["sequence"] == db.sequence(1)
    # mkdssp on the lone chain vs ProMod3's labels (computed with the chain's full context): 97 of 120
    o, n = db.offsets[1], db.sizes[1]
    ref = db.arrays["dssp"][o : o + n].tobytes().decode()
    assert sum(a == b for a, b in zip(row["ss8"], ref, strict=True)) == 97
    assert row["ss8"].count("E") == 22 and row["ss3"] == dssp8_to_3(row["ss8"])
    # no mkdssp: a clear error naming the package
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="apt-get install dssp"):
        read_structure_files([DATA / "1b12_A_backbone.pdb"], StructurePrepConfig(), common.Counts())
    # a gzip-compressed, truncated PDB is named
    bad = tmp_path / "x.pdb"
    bad.write_bytes(gzip.compress(b"ATOM")[:5])
    with pytest.raises(ValueError, match=r"x\.pdb"):
        read_structure_files([bad], StructurePrepConfig(dssp=False), common.Counts())
    assert os.environ["PATH"].endswith("empty")


def test_mmcif_input_matches_pdb_input(tmp_path):
    from Bio.PDB import MMCIFIO, PDBParser

    pdb = DATA / "1b12_A_backbone.pdb"
    io = MMCIFIO()
    io.set_structure(PDBParser(QUIET=True).get_structure("1b12", str(pdb)))
    cif = tmp_path / "1b12_A_backbone.cif"
    io.save(str(cif))
    cfg = StructurePrepConfig(dssp=False)
    a = read_structure_files([pdb], cfg, common.Counts()).to_pylist()[0]
    b = read_structure_files([cif], cfg, common.Counts()).to_pylist()[0]
    assert a["sequence"] == b["sequence"] and len(a["sequence"]) == 120
    assert np.allclose(a["ca"], b["ca"]) and np.allclose(a["cb"], b["cb"])
    assert a["ss8"] == "C" * 120  # no DSSP asked for: coil everywhere, said in the docs
