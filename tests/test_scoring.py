"""Masked marginals, pseudo-perplexity and variant scores against fair-esm computed by hand."""

import csv
import math

import numpy as np
import pytest
import torch
from esm_fixtures import padded_batch, random_esm2, write_released_layout
from test_embed import write_fasta

from bio_fm.esm_compat import from_esm2_module
from bio_fm.scoring import MutationError, parse_mutant, score
from fm_core.scoring import MaskedMarginals, centred_window


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ref = random_esm2("tiny", seed=21)
    return ref, write_released_layout(ref, tmp_path_factory.mktemp("ckpt") / "esm2_t2_score.pt")


def esm_masked_marginals(ref, alphabet, seq, positions=None):
    """fair-esm, the way its variant-prediction example does it: mask one position, log-softmax."""
    tokens = padded_batch(alphabet, [seq])
    rows = {}
    with torch.no_grad():
        for i in positions if positions is not None else range(len(seq)):
            masked = tokens.clone()
            masked[0, i + 1] = alphabet.mask_id
            rows[i] = torch.log_softmax(ref(masked)["logits"][0, i + 1], -1).numpy()
    return rows


def test_masked_marginals_match_fair_esm(tiny, alphabet, valid_records):
    ref, _ = tiny
    seqs = [valid_records[0][1][:45], valid_records[1][1][:70], "MKV"]
    mm = MaskedMarginals(from_esm2_module(ref), alphabet, max_tokens=2048)
    ours = mm([alphabet.encode(s) for s in seqs])
    for seq, logp in zip(seqs, ours, strict=True):
        theirs = esm_masked_marginals(ref, alphabet, seq)
        assert logp.shape == (len(seq), 33)
        for i, row in theirs.items():
            np.testing.assert_allclose(logp[i], row, atol=2e-5, rtol=1e-5)
    # only some positions: the others are NaN, the asked ones identical
    part = mm([alphabet.encode(seqs[1])], [np.array([3, 40])])[0]
    assert np.isnan(part[0]).all()
    np.testing.assert_allclose(part[[3, 40]], ours[1][[3, 40]], atol=1e-5, rtol=1e-6)


def test_long_sequences_use_centred_windows(tiny, alphabet, valid_records):
    ref, _ = tiny
    net = from_esm2_module(ref)
    seq = max((s for _, s in valid_records), key=len)[:300]
    assert centred_window(5, 300, 100) == (0, 100) and centred_window(150, 300, 100) == (100, 200)
    assert centred_window(299, 300, 100) == (200, 300)
    logp = MaskedMarginals(net, alphabet, max_tokens=1024, max_length=102)([alphabet.encode(seq)], [[5, 150, 299]])[0]
    for pos in (5, 150, 299):
        start, end = centred_window(pos, 300, 100)
        window = esm_masked_marginals(ref, alphabet, seq[start:end], [pos - start])[pos - start]
        np.testing.assert_allclose(logp[pos], window, atol=2e-5, rtol=1e-5)


def test_mutations_are_checked_against_the_wild_type():
    wt = "MKTAYIAKQR"
    (m,) = parse_mutant("A4G", wt, record="P1")
    assert (m.wt, m.position, m.mt, m.index) == ("A", 4, "G", 3)
    assert [str(x) for x in parse_mutant("M1A:K2R", wt, record="P1")] == ["M1A", "K2R"]
    assert parse_mutant("A3G", wt, record="P1", offset=0)[0].index == 3
    cases = {"K4G": "residue 4 of the wild type is A, not K", "A11G": "position 11 is outside",
             "A4J": "'J' is not one of the 20", "A4": "not of the form A24G", "A4G:A4C": "mutated twice",
             "": "empty mutation"}
    for text, reason in cases.items():
        with pytest.raises(MutationError, match=rf"mutant '{text}' of record 'P1'.*{reason}"):
            parse_mutant(text, wt, record="P1")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_protein_score_job(tiny, alphabet, valid_records, compose, tmp_path):
    ref, ckpt = tiny
    wt1, wt2 = valid_records[0][1][:40], valid_records[1][1][:30]
    fasta = write_fasta(tmp_path / "wt.fa.gz", [("WT1", wt1), ("WT2", wt2)])
    m1, m2 = f"{wt1[23]}24G", f"{wt1[29]}30R"
    muts = tmp_path / "dms.csv"
    muts.write_text(f"protein,mutant,assay\nWT1,{m1},0.5\nWT1,{m1}:{m2},0.1\nWT2,{wt2[0]}1A,1.0\n")
    cfg = compose([f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'out'}", f"mutations={muts}",
                   "id_column=protein", "scan=true", "progress=false"], config_name="protein_score")
    metrics = score(cfg)
    assert metrics["score/sequences"] == 2 and metrics["score/variants"] == 3

    theirs = {name: esm_masked_marginals(ref, alphabet, s) for name, s in (("WT1", wt1), ("WT2", wt2))}
    idx = alphabet.index
    pppl = {r["id"]: r for r in read_csv(tmp_path / "out" / "pppl.csv")}
    for name, seq in (("WT1", wt1), ("WT2", wt2)):
        pll = sum(theirs[name][i][idx[c]] for i, c in enumerate(seq))
        assert float(pppl[name]["pseudo_log_likelihood"]) == pytest.approx(pll, abs=1e-3)
        assert float(pppl[name]["pseudo_perplexity"]) == pytest.approx(math.exp(-pll / len(seq)), rel=1e-4)

    def single(name, mutant):
        wt, pos, mt = mutant[0], int(mutant[1:-1]), mutant[-1]
        row = theirs[name][pos - 1]
        return row[idx[mt]] - row[idx[wt]]

    rows = read_csv(tmp_path / "out" / "variants.csv")
    assert [r["assay"] for r in rows] == ["0.5", "0.1", "1.0"]  # input columns kept, in order
    expected = [single("WT1", m1), single("WT1", m1) + single("WT1", m2), single("WT2", f"{wt2[0]}1A")]
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-4)
    scan = read_csv(tmp_path / "out" / "scan.csv")
    assert len(scan) == 19 * (len(wt1) + len(wt2))
    scan_m1 = next(r for r in scan if r["id"] == "WT1" and r["mutant"] == m1)
    assert float(scan_m1["score"]) == pytest.approx(float(rows[0]["score"]), abs=1e-5)

    bad = tmp_path / "bad.csv"
    bad.write_text(f"protein,mutant\nWT1,{m1}\nWT2,W5A\n")
    if wt2[4] == "W":
        bad.write_text(f"protein,mutant\nWT1,{m1}\nWT2,C5A\n")
    cfg_bad = compose([f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'bad'}", f"mutations={bad}",
                       "id_column=protein", "pppl=false", "progress=false"], config_name="protein_score")
    with pytest.raises(MutationError, match=rf"bad\.csv row 3: mutant '[WC]5A' of record 'WT2'.*is {wt2[4]}, not"):
        score(cfg_bad)
    no_id = compose([f"input={fasta}", f"checkpoint={ckpt}", f"out={tmp_path / 'noid'}", f"mutations={muts}",
                     "progress=false"], config_name="protein_score")
    with pytest.raises(ValueError, match="several records; name the record"):
        score(no_id)
