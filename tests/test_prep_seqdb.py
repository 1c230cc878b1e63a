"""fm-prep seqdb: the retrieval database of the structure tasks, from real UniProt records (BLAST DB
slices of Debian metastudent-data): counts that balance, one record per sequence, an MMseqs2
database MMseqs2 can search, bad input named, a rerun skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bio_fm.fasta import read_fasta
from bio_fm.mmseqs import mmseqs_search
from data_prep.blastdb import BlastProteinDB
from data_prep.cli import main as prep_main
from data_prep.seqdb import SeqDBPrepConfig, prepare

DATA = Path(__file__).parent / "data" / "protein"
INPUTS = [str(DATA / "bpo_head"), str(DATA / "mfo_head")]


@pytest.fixture(scope="module")
def seqdb(tmp_path_factory):
    out = tmp_path_factory.mktemp("seqdb")
    return out, prepare(SeqDBPrepConfig(inputs=INPUTS, out=str(out)))


def test_one_record_per_sequence_and_counts_balance(seqdb):
    out, m = seqdb
    c = m["counts"]
    # 1,800 records, 1,248 distinct sequences (the same accession in BPO and MFO; see test_prep_protein)
    assert c["read"] == 1800 and c["rejected"]["duplicate_sequence"] == 1800 - 1248
    assert c["kept"] + sum(c["rejected"].values()) == c["read"] and m["balanced"]
    records = list(read_fasta(out / "sequences.fasta"))
    assert len(records) == c["kept"] == m["sequences"] == c["read"] - sum(c["rejected"].values())
    assert len({s for _, s in records}) == len(records) and len({h for h, _ in records}) == len(records)
    raw = {t.split("|")[0]: s for db in INPUTS for t, s in BlastProteinDB(db)}
    assert all(raw[h] == s for h, s in records)  # ids are the accessions, sequences unchanged
    assert min(len(s) for _, s in records) >= 10
    assert json.loads((out / "metrics.json").read_text())["prep/kept"] == c["kept"]


def test_the_database_is_searchable_and_finds_each_sequence_itself(seqdb, tmp_path):
    out, m = seqdb
    records = list(read_fasta(out / "sequences.fasta"))[:5]
    query = tmp_path / "q.fa"
    query.write_text("".join(f">{h}\n{s}\n" for h, s in records))
    hits = mmseqs_search(query, out / "msdb", tmp_path, threads=1)
    best = {}
    for q, t, ident in hits:
        best.setdefault(q, (t, ident))
    assert {q: t for q, (t, _) in best.items()} == {h: h for h, _ in records}
    assert all(ident == 1.0 for _, ident in best.values())
    assert (out / "msdb.dbtype").is_file() and m["database"] == "msdb"


def test_a_rerun_skips_every_stage(seqdb):
    out, _ = seqdb
    again = prepare(SeqDBPrepConfig(inputs=INPUTS, out=str(out)))
    assert again["stages"]["ran"] == [] and again["sequences"] == 1248 - again["counts"]["rejected"].get("too_short", 0)


def test_bad_input_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nMKTAYIAKQR\n>bad1\nMKT1AYIAKQ\n")
    with pytest.raises(SystemExit) as err:
        prep_main(["seqdb", "--input", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "o1")])
    assert err.value.code == 2 and "missing.fa" in capsys.readouterr().err
    m = prepare(SeqDBPrepConfig(inputs=[str(bad)], out=str(tmp_path / "o2")))
    assert m["counts"]["rejected"] == {"invalid_character": 1} and m["sequences"] == 1
    assert "bad1" in (tmp_path / "o2" / "rejected.tsv").read_text()
