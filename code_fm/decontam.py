"""Decontamination: is a benchmark problem near-duplicated inside the (pre-)training files?

A problem (a few lines) inside a file (hundreds) has a tiny Jaccard similarity with it, so the
question is *containment*: the share of the problem's shingles (``k`` consecutive code tokens)
found in one file. Candidates come from a MinHash LSH Ensemble (``datasketch``; Zhu et al. 2016,
built for containment queries over sets of very different sizes), and each candidate's exact
containment is then computed from its text, so the reported figure is exact and the LSH only
saves comparisons. A problem is contaminated when some file contains at least ``threshold`` of it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

TOKEN = re.compile(r"\w+|[^\w\s]")
SCHEME = "affine32"


def shingles(text: str, k: int) -> set[bytes]:
    """The set of ``k``-token shingles of ``text`` (code tokens: words and single symbols; whitespace
    and comments' layout ignored), each as an 8-byte digest (stable across processes)."""
    toks = TOKEN.findall(text)
    grams = (" ".join(toks[i : i + k]) for i in range(max(0, len(toks) - k + 1)))
    return {hashlib.blake2b(g.encode(), digest_size=8).digest() for g in grams}


@dataclass
class Match:
    query: str
    file: str | None  # the file containing most of the query (None: no candidate)
    containment: float  # exact share of the query's shingles in that file


def _minhash(items: set[bytes], num_perm: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1, scheme=SCHEME)
    m.update_batch(list(items))
    return m


def containment(queries: dict[str, str], corpus: Callable[[], Iterable[tuple[str, str]]], *, threshold: float,
                k: int, num_perm: int) -> list[Match]:
    """For each query, the corpus file with the highest exact containment among the LSH candidates.
    ``corpus()`` yields (name, text) and is called twice (index, then verification), so nothing of
    the corpus is held in memory but its signatures."""
    from datasketch import MinHashLSHEnsemble

    q = {name: shingles(text, k) for name, text in queries.items()}
    entries = []
    for name, text in corpus():
        s = shingles(text, k)
        if s:
            entries.append((name, _minhash(s, num_perm), len(s)))
    lsh = MinHashLSHEnsemble(threshold=threshold, num_perm=num_perm, num_part=8)
    lsh.index(entries)
    wanted: dict[str, list[str]] = {}
    for name, s in q.items():
        if s:
            for hit in lsh.query(_minhash(s, num_perm), len(s)):
                wanted.setdefault(hit, []).append(name)
    best = {name: Match(name, None, 0.0) for name in queries}
    for name, text in corpus():
        if name in wanted:
            s = shingles(text, k)
            for query in wanted[name]:
                c = len(q[query] & s) / len(q[query])
                if c > best[query].containment:
                    best[query] = Match(query, name, c)
    return list(best.values())


__all__ = ["Match", "containment", "shingles"]
