"""Profiles and couplings from retrieved alignments (``bio_fm.profiles``) on hand-made alignments,
with the numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bio_fm import profiles as P


def test_query_anchored_places_hits_on_the_query():
    # hit 1 starts at query position 2: C-C, D-D, a target insertion (K, dropped), E-E, F against a gap
    msa = P.query_anchored("ACDEFG", [(2, "CD-EF", "CDKE-"), (1, "AC", "WW")])
    g = P.GAP
    assert msa.tolist() == [[0, 1, 2, 3, 4, 5], [g, 1, 2, 3, g, g], [18, 18, g, g, g, g]]
    with pytest.raises(ValueError, match="past the query"):
        P.query_anchored("ACD", [(3, "DE", "DE")])


def test_sequence_weights_and_profile_hand_computed():
    # two pairs of identical rows: each row weighs 1/2; column 1 of row 3 is a gap
    msa = np.stack([P.encode(s) for s in ("AAC", "AAC", "D-C", "DDC")])
    w = P.sequence_weights(msa, 0.8)
    # rows 2 and 3 share 2 of the 2 positions where both have a residue -> identical
    np.testing.assert_allclose(w, [0.5, 0.5, 0.5, 0.5])
    prof = P.position_profile(msa, w, pseudocount=1.0)
    # column 0: A 1.0, D 1.0 of 2.0, pseudocount 1 spread over 20: (1 + 0.05) / 3
    assert prof[0, 0] == pytest.approx(1.05 / 3) and prof[0, 2] == pytest.approx(1.05 / 3)
    assert prof[0, 1] == pytest.approx(0.05 / 3)
    # column 1: A 1.0, D 0.5 of 1.5 (the gap does not count): (0.5 + 0.05) / 2.5 for D
    assert prof[1, 0] == pytest.approx(1.05 / 2.5) and prof[1, 2] == pytest.approx(0.55 / 2.5)
    # column 2: C 2.0 of 2.0
    assert prof[2, 1] == pytest.approx(2.05 / 3)
    np.testing.assert_allclose(prof.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(P.coverage(msa, w), [1.0, 0.75, 1.0])
    feats = P.profile_features(msa, identity=0.8, pseudocount=1.0)
    assert feats.shape == (3, 22) and feats[0, 21] == pytest.approx(np.log1p(1.5))  # Neff without the query


def test_distinct_rows_weigh_one():
    msa = np.stack([P.encode(s) for s in ("ACDE", "ACWW", "WWWW")])
    # row 0 vs 1 and row 1 vs 2: 2 of 4 identical (0.5 < 0.8); row 0 vs 2: 0 of 4
    np.testing.assert_allclose(P.sequence_weights(msa, 0.8), [1, 1, 1])
    # at 0.5, row 1 has two neighbours (1/3), rows 0 and 2 one each (1/2)
    np.testing.assert_allclose(P.sequence_weights(msa, 0.5), [1 / 2, 1 / 3, 1 / 2])


def test_mutual_information_and_apc_hand_computed():
    # columns 0 and 1 covary perfectly over two equally frequent states; column 2 is constant
    msa = np.stack([P.encode(s) for s in ("AAC", "AAC", "DDC", "DDC")])
    mi = P.mutual_information(msa, np.ones(4), pseudocount=0.0)
    ln2 = np.log(2)
    # pair frequencies are float32 (bio_fm.profiles.mutual_information): within 1e-6 nats
    np.testing.assert_allclose(mi, [[0, ln2, 0], [ln2, 0, 0], [0, 0, 0]], atol=1e-6)
    # APC: row means (off-diagonal) ln2/2, ln2/2, 0; overall mean ln2/3 -> MI_01 - (ln2/2)^2 / (ln2/3)
    np.testing.assert_allclose(P.apc(mi), [[0, ln2 / 4, 0], [ln2 / 4, 0, 0], [0, 0, 0]], atol=1e-6)
    # with a pseudocount (and blocks of 2 rows): symmetric, and the hand value below
    mi_pc = P.mutual_information(msa, np.ones(4), pseudocount=0.5, block=2)
    assert mi_pc[0, 1] > 0 and mi_pc[0, 1] == pytest.approx(mi_pc[1, 0])
    # hand value: f_i = 0.5 * 0.5 + 0.5/21 for A and D; f_ij(A,A) = 0.5 * 0.5 + 0.5/441, f_ij(A,D) = 0.5/441
    q = P.STATES
    fi = np.full(q, 0.5 / q)
    fi[[0, 2]] += 0.25
    fij = np.full((q, q), 0.5 / q**2)
    fij[0, 0] += 0.25
    fij[2, 2] += 0.25
    assert mi_pc[0, 1] == pytest.approx(float((fij * np.log(fij / np.outer(fi, fi))).sum()))


def test_mutual_information_equals_the_float64_definition():
    # sum_ab f_ij(a, b) log(f_ij(a, b) / (f_i(a) f_j(b))) in float64 over every pair, weighted rows,
    # blocks that do not divide L (the fast path is float32 over the upper triangle)
    rng = np.random.default_rng(1)
    length, n, lam, q = 23, 40, 0.3, P.STATES
    cons = rng.integers(0, 20, length)
    msa = np.where(rng.random((n, length)) < 0.5, cons[None], rng.integers(0, q, (n, length))).astype(np.int8)
    w = rng.random(n) + 0.1
    x = np.eye(q)[msa] * (w / w.sum())[:, None, None]  # (N, L, Q) weighted one-hot
    fi = (1 - lam) * x.sum(0) + lam / q
    fij = (1 - lam) * np.einsum("nia,njb->ijab", x, np.eye(q)[msa]) + lam / q**2
    want = (fij * np.log(fij / (fi[:, None, :, None] * fi[None, :, None, :]))).sum((2, 3))
    np.fill_diagonal(want, 0.0)
    got = P.mutual_information(msa, w, pseudocount=lam, block=5)
    assert want.max() > 0.05
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_coupling_map_is_symmetric_with_a_zero_diagonal():
    rng = np.random.default_rng(0)
    msa = rng.integers(0, P.STATES, size=(30, 17)).astype(np.int8)
    c = P.coupling_map(msa, identity=0.8, pseudocount=0.5)
    assert c.shape == (17, 17) and np.allclose(c, c.T) and np.all(np.diag(c) == 0)
