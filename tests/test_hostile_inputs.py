"""Hostile inputs for every reader: hypothesis fuzzing (bounded example counts, so CI stays fast)
plus hand-made cases. Each input gives a clear error naming the file (and record), or a counted
skip with ``read == kept + rejected``; nothing crashes the interpreter, hangs or vanishes silently."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.fasta import fasta_dataset
from chem_fm.standardize import MAX_ATOMS, parse
from data_prep import common
from data_prep.structures import StructurePrepConfig, read_structure_file
from fm_core.shards import SHARD_FORMAT_VERSION, ShardDataset, ShardWriter, save_tokenizer
from fm_core.tokenizer import InvalidRecordError

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALPHABET = ProteinAlphabet()
PDB = Path(__file__).parent / "data" / "structures" / "1b12_A_backbone.pdb"


def _headers(raw: bytes) -> int:
    text = raw.decode("utf-8", errors="replace")
    return sum(line.startswith(">") for line in re.split(r"\r\n|\r|\n", text))


# ---- FASTA --------------------------------------------------------------------------------------
@FUZZ
@given(raw=st.binary(max_size=2000))
def test_fasta_fuzz_bytes(tmp_path, raw):
    path = tmp_path / "fuzz.fa"
    path.write_bytes(raw)
    try:
        ds = fasta_dataset(path, ALPHABET, on_invalid="skip")
    except ValueError as err:  # unparseable layout: the message names the file
        assert str(path) in str(err)
        return
    s = ds.stats
    assert s.read == s.kept + sum(s.rejected.values()) == _headers(raw) and len(ds) == s.kept


record = st.tuples(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n>"),
                           max_size=12),
                   st.text(alphabet=st.sampled_from("ACDEFGHIKLMNPQRSTVWYXBZUO*acdeJ0\x00 \ufffd-"), max_size=60))


@FUZZ
@given(records=st.lists(record, max_size=12), newline=st.sampled_from(["\n", "\r\n", "\r"]))
def test_fasta_fuzz_records_nothing_lost(tmp_path, records, newline):
    text = "".join(f">{name}{newline}{seq}{newline}" for name, seq in records)
    path = tmp_path / "records.fa"
    path.write_bytes(text.encode("utf-8"))
    ds = fasta_dataset(path, ALPHABET, on_invalid="skip")
    s = ds.stats
    assert s.read == len(records) == s.kept + sum(s.rejected.values())
    expected = []
    for _name, seq in records:  # what survives: each record on its own through the tokenizer
        try:
            ids = ALPHABET.encode(seq.replace(" ", ""))  # FASTA: blanks inside sequences are dropped
        except InvalidRecordError:
            continue
        if len(ids):
            expected.append(ALPHABET.decode(ids))
    assert [ALPHABET.decode(ds.array(i)) for i in range(len(ds))] == expected


def test_fasta_hand_made(tmp_path):
    huge = "MKT" * 333_334  # a 10^6-residue record is read whole (cropped only at batching)
    (tmp_path / "a.fa").write_bytes(f">big\r\n{huge}\r\n>dup x\r\nMKV\r\n>dup y\r\nMKW\r\n".encode())
    ds = fasta_dataset(tmp_path / "a.fa", ALPHABET)
    assert len(ds.array(0)) == 1_000_002 and ds.stats.kept == 3
    assert ds.stats.as_dict("data/train")["data/train_duplicate_ids"] == 1  # kept, but counted
    (tmp_path / "nul.fa").write_bytes(b">ok\nMKV\n>bad\nMK\x00V\n")
    with pytest.raises(InvalidRecordError, match=r"nul\.fa.*'bad'.*position 3"):
        fasta_dataset(tmp_path / "nul.fa", ALPHABET)
    assert fasta_dataset(tmp_path / "nul.fa", ALPHABET, on_invalid="skip").stats.rejected["invalid"] == 1
    (tmp_path / "junk.fa").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"junk\.fa"):
        fasta_dataset(tmp_path / "junk.fa", ALPHABET)
    blob = gzip.compress(b">a\nMKV\n" * 1000)
    (tmp_path / "cut.fa.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.fa\.gz.*cannot parse"):
        fasta_dataset(tmp_path / "cut.fa.gz", ALPHABET)


# ---- SMILES -------------------------------------------------------------------------------------
@FUZZ
@given(text=st.one_of(st.text(max_size=80), st.text(alphabet="CNOScno()[]=#@+-123456789%/\\.", max_size=120)))
def test_smiles_fuzz_never_raises(text):
    mol, why = parse(text)
    assert (mol is None) != (why is None)
    if mol is not None:
        assert 0 < mol.GetNumAtoms() <= MAX_ATOMS
    else:
        assert isinstance(why, str) and why


def test_smiles_hand_made():
    assert parse("C" * 6000)[1] == "SMILES of 6000 characters (limit 4000)"  # used to crash RDKit
    assert parse("C" * 10**6)[0] is None
    assert parse("C" * 1500)[1] == "1500 atoms (limit 1000)"
    assert parse("CC\x00O")[1] == "NUL character in SMILES"
    assert parse("CéC")[1] == "SMILES parse error" and parse("")[1] == "empty"
    assert parse("c1ccccc1")[1] is None and parse("C1CC")[0] is None


# ---- code files ---------------------------------------------------------------------------------
def test_code_files_hand_made(tmp_path):
    from data_prep.code import CodePrepConfig, stage_scan

    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "good.py").write_text("def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n")
    (src / "latin1.py").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (src / "bundle.py").write_bytes(b"x=1;" * (50 * 2**20 // 4))  # a 50 MB minified file: not read
    (src / "blob.py").write_bytes(b"\x00\x01binary")
    (src / "empty.py").write_text("\n\n")
    (src / "long.py").write_text("y = [" + ",".join(["1"] * 3000) + "]\n")
    out = tmp_path / "tmp"
    out.mkdir()
    cfg = CodePrepConfig(inputs=[str(tmp_path / "src")], out=str(tmp_path / "out"))
    counts = stage_scan(out, cfg)["counts"]
    assert counts["read"] == 6 and counts["kept"] == 1
    assert counts["rejected"] == {"binary": 1, "empty": 1, "minified": 1, "non_utf8": 1, "oversized": 1}
    assert any("bundle.py: 52428800 bytes" in m for m in counts["reject_examples"]["oversized"])
    assert any("latin1.py: byte" in m for m in counts["reject_examples"]["non_utf8"])


# ---- PDB / mmCIF --------------------------------------------------------------------------------
def _read(path: Path):
    counts = common.Counts()
    chains = read_structure_file(path, None, counts, StructurePrepConfig(dssp=False, min_length=5))
    counts.check(str(path))
    return chains, counts


@FUZZ
@given(cut=st.integers(0, 480 * 81), junk=st.binary(max_size=200))
def test_pdb_fuzz_truncated_and_junk(tmp_path, cut, junk):
    path = tmp_path / "t.pdb"
    path.write_bytes(PDB.read_bytes()[:cut] + junk)
    try:
        chains, counts = _read(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert counts.read == len(chains) + sum(counts.rejected.values())
    for c in chains:
        assert len(c["ca"]) == 3 * len(c["sequence"]) and np.isfinite(c["ca"]).all()


def test_pdb_hand_made(tmp_path):
    full, _ = _read(PDB)
    n = len(full[0]["sequence"])
    lines = PDB.read_text().splitlines(keepends=True)
    # missing atoms: residues without CA are left out (chain kept); a chain with none is counted
    no_ca = [x for i, x in enumerate(lines) if not (x.startswith("ATOM") and x[12:16] == " CA " and i < 40)]
    (tmp_path / "noca.pdb").write_text("".join(no_ca))
    chains, _ = _read(tmp_path / "noca.pdb")
    assert len(chains[0]["sequence"]) == n - sum(x.startswith("ATOM") and x[12:16] == " CA " for x in lines[:40])
    (tmp_path / "none.pdb").write_text("".join(x for x in lines if x[12:16] != " CA "))
    chains, counts = _read(tmp_path / "none.pdb")
    assert chains == [] and counts.rejected["too_short"] == 1 and counts.read == 1
    # alternate locations: one residue each, the first/most occupied conformer
    alt = []
    for x in lines:
        if x.startswith("ATOM"):
            alt.append(x[:16] + "A" + x[17:54] + "  0.60" + x[60:])
            moved = f"{float(x[30:38]) + 1.0:8.3f}"
            alt.append(x[:16] + "B" + x[17:30] + moved + x[38:54] + "  0.40" + x[60:])
        else:
            alt.append(x)
    (tmp_path / "alt.pdb").write_text("".join(alt))
    chains, _ = _read(tmp_path / "alt.pdb")
    assert chains[0]["sequence"] == full[0]["sequence"]
    assert np.allclose(chains[0]["ca"], full[0]["ca"], atol=1e-3)
    # truncated mmCIF: an error naming the file, or fewer residues; never a crash
    from Bio.PDB import MMCIFIO, PDBIO, PDBParser  # noqa: F401

    io = MMCIFIO()
    io.set_structure(PDBParser(QUIET=True).get_structure("x", str(PDB)))
    io.save(str(tmp_path / "x.cif"))
    raw = (tmp_path / "x.cif").read_bytes()
    (tmp_path / "cut.cif").write_bytes(raw[: len(raw) // 2])
    try:
        chains, _ = _read(tmp_path / "cut.cif")
        assert len(chains[0]["sequence"]) < n
    except ValueError as err:
        assert "cut.cif" in str(err)


# ---- shards -------------------------------------------------------------------------------------
def _write_split(tmp_path: Path) -> Path:
    save_tokenizer(tmp_path, ALPHABET)
    w = ShardWriter(tmp_path / "train", ALPHABET.vocab_size, shard_tokens=400)
    for i in range(60):
        w.add(ALPHABET.encode("MKTAYIAKQR" * (1 + i % 4)))
    summary = w.close()
    assert summary["format_version"] == SHARD_FORMAT_VERSION and len(summary["shards"]) > 1
    return tmp_path / "train"


def test_shards_hand_made(tmp_path):
    split = _write_split(tmp_path)
    assert len(ShardDataset(split, ALPHABET)) == 60
    meta = json.loads((split / "split.json").read_text())
    # wrong version
    (split / "split.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match=r"split\.json: shard format version 99"):
        ShardDataset(split)
    # garbage description
    (split / "split.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"split\.json: unreadable split description"):
        ShardDataset(split)
    (split / "split.json").write_text(json.dumps(meta))
    # truncated shard
    shard = split / meta["shards"][1]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(shard)) + ".*truncated"):
        ShardDataset(split)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        ShardDataset(split, verify=True)
    shard.write_bytes(data)
    # ids outside the tokenizer: refused, not clipped
    ds = ShardDataset(split)
    with pytest.raises(ValueError, match="outside the tokenizer's 20 ids"):
        ds.token_counts(20)


@FUZZ
@given(cut=st.integers(0, 3000), flip=st.integers(0, 3000))
def test_shards_fuzz_damaged_file(tmp_path, cut, flip):
    split = tmp_path / "train"
    if not split.exists():
        _write_split(tmp_path)
    meta = json.loads((split / "split.json").read_text())
    shard = split / meta["shards"][0]["file"]
    good = getattr(test_shards_fuzz_damaged_file, "_good", None) or shard.read_bytes()
    test_shards_fuzz_damaged_file._good = good
    data = bytearray(good[: max(cut, 0)] if cut < len(good) else good)
    if flip < len(data):
        data[flip] ^= 0x5A
    shard.write_bytes(bytes(data))
    try:
        ds = ShardDataset(split, verify=True)
    except ValueError as err:
        assert str(split) in str(err)
        return
    finally:
        shard.write_bytes(good)
    assert bytes(data) == good and len(ds) == 60


# ---- the one error path of every CLI (fm_core.errors) --------------------------------------------
def _exit_of(work, capsys, resumes=False):
    from fm_core.errors import run_cli

    with pytest.raises(SystemExit) as done:
        run_cli("fm-x", work, resumes=resumes)
    return done.value.code, capsys.readouterr().err


def test_run_cli_user_error_interrupt_and_bug(capsys, monkeypatch, tmp_path):
    from fm_core.errors import UserError

    monkeypatch.delenv("FM_DEBUG", raising=False)

    def user():
        raise UserError("data.fa: record 'r7' has no sequence; fix or drop it")

    assert _exit_of(user, capsys) == (2, "fm-x: error: data.fa: record 'r7' has no sequence; fix or drop it\n")

    def missing():
        open(tmp_path / "nope.fa")

    code, err = _exit_of(missing, capsys)
    assert code == 2 and str(tmp_path / "nope.fa") in err and err.count("\n") == 1

    def ctrl_c():
        raise KeyboardInterrupt

    assert _exit_of(ctrl_c, capsys, resumes=True) == (130, "\nfm-x: interrupted: rerun the same command to resume\n")
    assert _exit_of(ctrl_c, capsys)[0] == 130

    def bug():
        return {}["key"]

    with pytest.raises(KeyError):  # a programming error keeps its traceback
        _exit_of(bug, capsys)
    monkeypatch.setenv("FM_DEBUG", "1")
    with pytest.raises(UserError):  # FM_DEBUG=1: the user's mistake with its traceback
        _exit_of(user, capsys)


def test_user_facing_errors_share_the_base():
    from fm_core.checkpoint import CheckpointError
    from fm_core.config import ConfigError
    from fm_core.errors import UserError
    from fm_core.registry import UnknownKindError

    for cls in (CheckpointError, ConfigError, InvalidRecordError, UnknownKindError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls


def test_malicious_pickle_refusal_gives_no_unsafe_advice(tmp_path):
    import os
    import pickle

    import torch

    from fm_core.checkpoint import CheckpointError, safe_torch_load

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(CheckpointError) as err:
            safe_torch_load(tmp_path / name)
        text = str(err.value)
        assert name in text and "nothing in it was run" in text and "weights_only" not in text, text
        assert "\n" not in text
    assert "GLOBAL posix.system" in str(pytest.raises(CheckpointError, safe_torch_load, tmp_path / "evil.pt").value)
    assert not (tmp_path / "pwned").exists()


def test_help_is_rendered_from_the_yaml_comments():
    from fm_core.help import render_help, required, short_usage

    text = render_help("embed", "fm-embed", [])
    assert "on_invalid: error       # error | skip (and count)" in text and "hydra:" not in text
    assert text.count("fm-embed input=") >= 1 and "Groups" not in text
    assert short_usage("pretrain", "fm-pretrain") is None
    assert "missing required input, checkpoint, out" in short_usage("embed", "fm-embed")
    from fm_core.help import read_config

    assert required(read_config("finetune")) == ["task"]
