"""fm-embed: parity of embeddings with fair-esm, window stitching, resumable shards, bad input."""

import gzip
import json

import numpy as np
import pytest
import torch
from esm_fixtures import padded_batch, random_esm2, write_released_layout
from safetensors.numpy import load_file

from bio_fm.esm_compat import from_esm2_module
from fm_core.embed import Embedder, HashedIdSet, ShardStore, embed, plan_windows, read_embeddings
from fm_core.tokenizer import InvalidRecordError


def test_plan_windows_partition_and_context():
    assert plan_windows(100, 254, 63) == [(0, 100, 0, 100)]
    wins = plan_windows(1000, 254, 63)
    assert wins == [(0, 254, 0, 222), (191, 445, 222, 413), (382, 636, 413, 604), (573, 827, 604, 786),
                    (746, 1000, 786, 1000)]
    for n, width, overlap in [(1000, 254, 63), (255, 254, 0), (5000, 1022, 255), (1023, 1022, 511)]:
        wins = plan_windows(n, width, overlap)
        owned = np.concatenate([np.arange(a, b) for _, _, a, b in wins])
        assert np.array_equal(owned, np.arange(n))  # every residue exactly once, in order
        for k, (s, e, a, b) in enumerate(wins):
            assert e - s == width and s <= a <= b <= e
            if k:  # consecutive windows share at least `overlap`, cut with half of it on each side
                assert wins[k - 1][1] - s >= overlap
                assert a - s >= overlap // 2 and wins[k - 1][1] - a >= overlap // 2
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(500, 100, 100)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory):
    ref = random_esm2("tiny", seed=11)
    path = write_released_layout(ref, tmp_path_factory.mktemp("ckpt") / "esm2_t2_test.pt")
    return ref, path


def test_mean_and_per_residue_match_fair_esm(tiny_esm, alphabet, valid_records):
    ref, _ = tiny_esm
    records = [(rid, alphabet.encode(seq[:500])) for rid, seq in valid_records[:16]]
    embedder = Embedder(from_esm2_module(ref), alphabet, layers=[0, 1, -1], per_residue=True, max_tokens=4096)
    out = embedder.embed(records)
    assert [e.id for e in out] == [r for r, _ in records] and all(e.windows == 1 for e in out)
    with torch.no_grad():  # fair-esm, one sequence at a time, mean over residues (specials excluded)
        for e, (_, ids) in zip(out, records, strict=True):
            reps = ref(padded_batch(alphabet, [alphabet.decode(ids)]), repr_layers=[0, 1, 2])["representations"]
            for layer in (0, 1, 2):
                theirs = reps[layer][0, 1 : len(ids) + 1]
                scale = max(1.0, float(theirs.abs().max()))
                assert np.abs(e.residues[layer] - theirs.numpy()).max() <= 1e-5 * scale
                assert np.abs(e.mean[layer] - theirs.mean(0).numpy()).max() <= 1e-5 * scale


def test_long_sequences_are_stitched_from_windows(tiny_esm, alphabet, valid_records):
    ref, _ = tiny_esm
    net = from_esm2_module(ref)
    seq = max((s for _, s in valid_records), key=len)[:700]
    ids = alphabet.encode(seq)
    embedder = Embedder(net, alphabet, layers=[-1], per_residue=True, max_tokens=2048, max_length=130,
                        window_overlap=40)
    (e,) = embedder.embed([("long", ids)])
    wins = plan_windows(len(ids), 128, 40)
    assert e.windows == len(wins) == 8 and e.residues[2].shape == (700, 64)
    with torch.no_grad():  # each residue comes from the window that owns it, computed alone
        for s, end, a, b in wins:
            rep = net(padded_batch(alphabet, [seq[s:end]]), repr_layers=[2])["representations"][2][0]
            np.testing.assert_allclose(e.residues[2][a:b], rep[1 + a - s : 1 + b - s].numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(e.mean[2], e.residues[2].mean(0), atol=1e-6, rtol=1e-5)


def test_the_callers_model_is_left_as_it_was_unless_inplace(tiny_esm, alphabet, valid_records):
    ref, _ = tiny_esm
    records = [(rid, alphabet.encode(seq[:200])) for rid, seq in valid_records[:4]]
    net = from_esm2_module(ref).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bf16 = Embedder(net, alphabet, layers=[-1], max_tokens=2048, precision="bfloat16")
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())  # a copy was cast
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert bf16.net is not net and next(bf16.net.parameters()).dtype == torch.bfloat16 and not bf16.net.training
    fp32 = Embedder(net, alphabet, layers=[-1], max_tokens=2048)  # training mode: a copy in eval mode
    assert net.training and fp32.net is not net
    a, b = fp32.embed(records), bf16.embed(records)
    for x, y in zip(a, b, strict=True):  # the bf16 copy computes the same embeddings, to bf16 rounding
        cos = float(np.dot(x.mean[2], y.mean[2]) / np.linalg.norm(x.mean[2]) / np.linalg.norm(y.mean[2]))
        assert cos > 0.999
    net.eval()
    assert Embedder(net, alphabet, layers=[-1]).net is net  # nothing to change: no copy
    own = Embedder(net, alphabet, layers=[-1], precision="bfloat16", inplace=True)
    assert own.net is net and next(net.parameters()).dtype == torch.bfloat16


def write_fasta(path, records):
    with gzip.open(path, "wt") as fh:
        for rid, seq in records:
            fh.write(f">{rid} some description\n")
            for i in range(0, len(seq), 60):
                fh.write(seq[i : i + 60] + "\n")
    return path


def job(compose, *overrides):
    cfg = compose(["progress=false", "chunk_records=16", "max_tokens=2048", *overrides], config_name="embed")
    return embed(cfg)


def test_job_resumes_to_identical_shards(tiny_esm, compose, tmp_path, valid_records, monkeypatch):
    _, ckpt = tiny_esm
    fasta = write_fasta(tmp_path / "in.fa.gz", [(r, s[:400]) for r, s in valid_records[:50]])
    common = [f"input={fasta}", f"checkpoint={ckpt}", "layers=[1,-1]", "per_residue=true"]
    whole = job(compose, *common, f"out={tmp_path / 'whole'}")
    assert whole["embed/finished"] and whole["embed/shards"] == 4 and whole["data/records_kept"] == 50
    on_disk = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert on_disk["embed/sequences"] == 50 and on_disk["embed/residues"] == sum(
        len(s[:400]) for _, s in valid_records[:50])

    # interrupted after one shard, then after a shard written but not committed (a crash)
    parts = tmp_path / "parts"
    first = job(compose, *common, f"out={parts}", "max_shards=1")
    assert not first["embed/finished"] and first["embed/sequences"] == 16
    calls = {"n": 0}
    original = ShardStore._write_progress

    def crash_on_second(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # shard 2 and its index rows are on disk, progress.json is not
        original(self)

    monkeypatch.setattr(ShardStore, "_write_progress", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        job(compose, *common, f"out={parts}")
    monkeypatch.setattr(ShardStore, "_write_progress", original)
    last = job(compose, *common, f"out={parts}")
    assert last["embed/finished"] and last["embed/resumed"] and last["embed/sequences"] == 50

    assert (parts / "index.tsv").read_text() == (tmp_path / "whole" / "index.tsv").read_text()
    for shard in sorted((tmp_path / "whole" / "shards").iterdir()):
        a, b = load_file(str(shard)), load_file(str(parts / "shards" / shard.name))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ids, means = read_embeddings(parts, layer=2)
    assert ids == [r for r, _ in valid_records[:50]] and means.shape == (50, 64)
    _, per_res = read_embeddings(parts, layer=1, per_residue=True)
    assert [len(x) for x in per_res] == [len(s[:400]) for _, s in valid_records[:50]]

    # the same directory for another job is refused
    with pytest.raises(ValueError, match=r"another embedding job \(differs in \['layers'\]\)"):
        job(compose, f"input={fasta}", f"checkpoint={ckpt}", "layers=[-1]", "per_residue=true", f"out={parts}")


def test_bad_records_error_or_are_counted(tiny_esm, compose, tmp_path, valid_records, capsys):
    _, ckpt = tiny_esm
    good = [(r, s[:200]) for r, s in valid_records[:6]]
    bad = [*good[:2], ("P_BAD", "MKTJAYIAK"), ("P_EMPTY", ""), (good[0][0], "MKV"), *good[2:]]
    fasta = write_fasta(tmp_path / "bad.fa.gz", bad)
    base = [f"input={fasta}", f"checkpoint={ckpt}"]
    with pytest.raises(InvalidRecordError, match=r"bad\.fa\.gz, record 'P_BAD', position 4: invalid residue 'J'"):
        job(compose, *base, f"out={tmp_path / 'e1'}")
    only_empty = write_fasta(tmp_path / "empty.fa.gz", [good[0], ("P_EMPTY", "")])
    with pytest.raises(InvalidRecordError, match=r"record 'P_EMPTY': empty record"):
        job(compose, f"input={only_empty}", f"checkpoint={ckpt}", f"out={tmp_path / 'e2'}")
    dup = write_fasta(tmp_path / "dup.fa.gz", [good[0], good[1], (good[0][0], "MKV")])
    with pytest.raises(InvalidRecordError, match=rf"record '{good[0][0]}': duplicate id"):
        job(compose, f"input={dup}", f"checkpoint={ckpt}", f"out={tmp_path / 'e3'}")
    metrics = job(compose, *base, "on_invalid=skip", f"out={tmp_path / 'skip'}")
    assert metrics["data/records_read"] == 9 and metrics["data/records_kept"] == 6
    assert metrics["data/records_rejected_invalid"] == metrics["data/records_rejected_empty"] == 1
    assert metrics["data/records_rejected_duplicate_id"] == 1
    ids, _ = read_embeddings(tmp_path / "skip")
    assert ids == [r for r, _ in good]
    # each rejected record listed with its reason, and one line saying so
    rows = (tmp_path / "skip" / "rejected.tsv").read_text().splitlines()
    assert rows[0] == "record\treason\tdetail"
    assert [r.split("\t")[:2] for r in rows[1:]] == [["P_BAD", "invalid"], ["P_EMPTY", "empty"],
                                                    [good[0][0], "duplicate_id"]]
    assert (f"fm-embed: read 9, kept 6, rejected 3 (duplicate_id 1, empty 1, invalid 1); rejected records: "
            f"{tmp_path / 'skip' / 'rejected.tsv'}") in capsys.readouterr().err
    # a job stopped after its first shard and resumed lists each rejected record once, as one run does
    first = job(compose, *base, "on_invalid=skip", "chunk_records=3", "max_shards=1", f"out={tmp_path / 'legs'}")
    assert not first["embed/finished"]
    job(compose, *base, "on_invalid=skip", "chunk_records=3", f"out={tmp_path / 'legs'}")
    assert (tmp_path / "legs" / "rejected.tsv").read_text() == "\n".join(rows) + "\n"


def test_hashed_id_set_finds_duplicates_across_runs():
    ids = HashedIdSet(flush_every=7)
    assert all(ids.add(f"id{i}") for i in range(1000))
    assert len(ids) == 1000 and len(ids.runs) < 10 and len(ids.pending) < 7
    assert not any(ids.add(f"id{i}") for i in range(0, 1000, 37))
    assert ids.add("id1000")
