"""Profiles and couplings from a query-anchored alignment of retrieved homologues.

An alignment here is an integer matrix ``msa`` (N, L): row 0 is the query, rows 1.. its homologues
aligned to it (``query_anchored``: insertions relative to the query dropped, uncovered query
positions gaps), states 0..19 the residues of ``AMINO`` and ``GAP`` (20) for a gap or any other
letter.

- ``sequence_weights``: each row weighted 1 / (rows within ``identity`` of it, itself included),
  identity over the positions where both rows have a residue (the PSICOV / EVcouplings reweighting).
- ``position_profile``: (L, 20) residue frequencies per query position, weighted, with a uniform
  pseudocount: ``(sum_n w_n [a_n = a] + pseudocount / 20) / (sum_n w_n [a_n != gap] + pseudocount)``.
- ``mutual_information`` and ``apc``: (L, L) mutual information over 21 states (gap included) with
  the usual pseudocount mixing ``f = (1 - lam) f + lam / q`` (and ``lam / q**2`` for pairs), then the
  average-product correction ``MI_ij - mean_i mean_j / mean`` (means over i != j).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

AMINO = "ACDEFGHIKLMNPQRSTVWY"
GAP = len(AMINO)
STATES = GAP + 1
_LUT = np.full(256, GAP, dtype=np.int8)
_LUT[np.frombuffer(AMINO.encode(), np.uint8)] = np.arange(len(AMINO))


def encode(sequence: str) -> np.ndarray:
    """Letters -> states (0..19 residues, 20 anything else)."""
    return _LUT[np.frombuffer(sequence.upper().encode(), np.uint8)].astype(np.int8)


def query_anchored(query: str, hits: Iterable[tuple[int, str, str]]) -> np.ndarray:
    """(N + 1, L) states: the query, then each hit ``(qstart (1-based), qaln, taln)`` placed on
    the query's positions (the aligned strings of MMseqs2 ``convertalis``, ``-`` for gaps)."""
    rows = [encode(query)]
    for qstart, qaln, taln in hits:
        if len(qaln) != len(taln):
            raise ValueError(f"aligned strings differ in length ({len(qaln)} vs {len(taln)})")
        q = np.frombuffer(qaln.encode(), np.uint8)
        on_query = q != ord("-")
        pos = qstart - 1 + np.cumsum(on_query) - 1
        if on_query.any() and pos[on_query][-1] >= len(query):
            raise ValueError(f"alignment runs past the query (qstart {qstart}, {int(on_query.sum())} residues, "
                             f"query length {len(query)})")
        row = np.full(len(query), GAP, dtype=np.int8)
        row[pos[on_query]] = encode(taln)[on_query]
        rows.append(row)
    return np.stack(rows)


def onehot_states(msa: np.ndarray, states: int = STATES) -> np.ndarray:
    """(N, L) states -> (N, L, states) float32 one-hot."""
    return np.eye(states, dtype=np.float32)[msa]


def sequence_weights(msa: np.ndarray, identity: float) -> np.ndarray:
    """(N,) weights: 1 / the number of rows (itself included) sharing >= ``identity`` of the
    positions where both have a residue."""
    res = onehot_states(msa)[..., :GAP].reshape(len(msa), -1)
    present = (msa != GAP).astype(np.float32)
    same = res @ res.T
    both = present @ present.T
    ident = np.divide(same, both, out=np.zeros_like(same), where=both > 0)
    return (1.0 / (ident >= identity).sum(1)).astype(np.float64)


def position_profile(msa: np.ndarray, weights: np.ndarray, pseudocount: float) -> np.ndarray:
    """(L, 20) weighted residue frequencies per column with ``pseudocount`` spread uniformly."""
    counts = np.einsum("n,nla->la", weights, onehot_states(msa)[..., :GAP].astype(np.float64))
    return ((counts + pseudocount / GAP) / (counts.sum(1, keepdims=True) + pseudocount)).astype(np.float32)


def coverage(msa: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(L,) weighted fraction of rows with a residue at each query position."""
    return ((weights[:, None] * (msa != GAP)).sum(0) / weights.sum()).astype(np.float32)


def mutual_information(msa: np.ndarray, weights: np.ndarray, pseudocount: float, block: int = 64) -> np.ndarray:
    """(L, L) mutual information (nats) of column pairs over 21 states; the diagonal is 0.

    Computed as ``H_i + H_j - H_ij``: every row has exactly one state per column, so the pair
    frequencies (pseudocount mixing included) sum to the single-column ones and the usual
    ``sum f_ij log(f_ij / (f_i f_j))`` equals that entropy difference, with one logarithm per pair
    frequency instead of a ratio and a logarithm. The pair frequencies are float32 (one weighted
    one-hot product per block of rows, only the upper triangle, mirrored), their per-pair sums
    float64: 3-6x faster than float64 throughout at L = 510, N = 300, within 1e-6 nats of it."""
    n, length = msa.shape
    w = weights / weights.sum()
    x = onehot_states(msa).reshape(n, length * STATES)  # (N, L * Q) float32
    fi = ((1 - pseudocount) * (w @ x.astype(np.float64)) + pseudocount / STATES).reshape(length, STATES)
    h = -_xlogx(fi).sum(1)
    xw = x * w[:, None].astype(np.float32)
    keep, floor = np.float32(1 - pseudocount), np.float32(pseudocount / STATES**2)
    mi = np.zeros((length, length))
    for start in range(0, length, block):
        stop = min(length, start + block)
        fij = xw[:, start * STATES : stop * STATES].T @ x[:, start * STATES :]  # (b * Q, (L - start) * Q)
        fij *= keep
        fij += floor
        if not floor:  # no pseudocount: 0 log 0 = 0 through the smallest normal float32
            np.maximum(fij, np.finfo(np.float32).tiny, out=fij)
        hij = np.log(fij)
        hij *= fij
        mi[start:stop, start:] = (h[start:stop, None] + h[None, start:]
                                  + hij.reshape(stop - start, STATES, length - start, STATES).sum((1, 3), dtype=np.float64))
    mi = np.triu(mi, 1)
    return np.maximum(mi + mi.T, 0.0)


def _xlogx(f: np.ndarray) -> np.ndarray:
    """f log f, 0 where f is 0."""
    return f * np.log(np.where(f > 0, f, 1.0))


def apc(mi: np.ndarray) -> np.ndarray:
    """Average-product correction, means over the off-diagonal pairs; the diagonal stays 0."""
    length = len(mi)
    off = ~np.eye(length, dtype=bool)
    row = (mi * off).sum(1) / max(length - 1, 1)
    mean = mi[off].mean() if length > 1 else 0.0
    out = mi - (np.outer(row, row) / mean if mean > 0 else 0.0)
    np.fill_diagonal(out, 0.0)
    return out


def profile_features(msa: np.ndarray, *, identity: float, pseudocount: float) -> np.ndarray:
    """(L, 22) per-position features of a retrieved alignment: the profile (20), the coverage,
    and log(1 + effective number of homologues) (the query's own weight excluded)."""
    w = sequence_weights(msa, identity)
    neff = np.full((msa.shape[1], 1), np.log1p(w[1:].sum()), np.float32)
    return np.concatenate([position_profile(msa, w, pseudocount), coverage(msa, w)[:, None], neff], 1)


def coupling_map(msa: np.ndarray, *, identity: float, pseudocount: float) -> np.ndarray:
    """(L, L) APC-corrected mutual information of a retrieved alignment, symmetric."""
    return apc(mutual_information(msa, sequence_weights(msa, identity), pseudocount)).astype(np.float32)


def alignments_by_query(rows: Sequence[tuple[str, str, float, int, str, str]],
                        ) -> dict[str, list[tuple[str, float, int, str, str]]]:
    """Rows ``(query, target, identity, qstart, qaln, taln)`` grouped by query, in file order."""
    out: dict[str, list[tuple[str, float, int, str, str]]] = {}
    for q, t, ident, qstart, qaln, taln in rows:
        out.setdefault(q, []).append((t, ident, qstart, qaln, taln))
    return out


__all__ = ["AMINO", "GAP", "STATES", "alignments_by_query", "apc", "coupling_map", "coverage", "encode",
           "mutual_information", "onehot_states", "position_profile", "profile_features", "query_anchored",
           "sequence_weights"]
