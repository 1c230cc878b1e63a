"""Chains of an ``fm-prep structures`` output for the structure tasks: labels, leakage subsets, and
per-residue features from a backbone (embeddings, APC-corrected attention maps).

The tasks read a prepared directory (``task.data_dir``, by default ``data/structure_slice``) and never
prepare it: ``fm-prep structures --slice --out data/structure_slice`` makes the default one from the
committed 320-chain slice; a missing directory is an error naming that command.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from bio_fm.alphabet import ProteinAlphabet
from bio_fm.contact import attention_features
from bio_fm.mmseqs import mmseqs_search
from bio_fm.structure import DSSP8, SS3, contact_atoms, contact_map
from fm_core.label_budget import label_budget
from fm_core.model import MaskedLM
from fm_core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PRETRAIN_SLICE = Path(str(files("bio_fm").joinpath("data/uniprot_slice/train.fasta.gz")))
AMINO = "ACDEFGHIKLMNPQRSTVWY"
_LUT8 = np.full(256, -1, dtype=np.int64)
_LUT8[np.frombuffer(DSSP8.encode(), np.uint8)] = np.arange(len(DSSP8))
_LUT3 = np.full(256, -1, dtype=np.int64)
_LUT3[np.frombuffer(SS3.encode(), np.uint8)] = np.arange(len(SS3))
_LUTAA = np.full(256, -1, dtype=np.int64)
_LUTAA[np.frombuffer(AMINO.encode(), np.uint8)] = np.arange(len(AMINO))


@dataclass
class Chain:
    id: str
    sequence: str
    tokens: np.ndarray  # alphabet ids, no specials
    atoms: np.ndarray  # (L, 3) contact atoms: CB, CA for glycine
    ss8: str
    ss3: str
    profile: np.ndarray | None  # (L, 20) sequence profile (probabilities), or None
    train_max_identity: float = 0.0
    pretrain_max_identity: float = 0.0
    cropped_from: int = 0  # original length when cropped, else 0
    cluster: int = -1  # the fm-prep sequence cluster (-1 when the shards have none): the label-budget group
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.sequence)

    def contacts(self, threshold: float = 8.0) -> np.ndarray:
        return contact_map(self.atoms, threshold)

    @property
    def group(self) -> str:
        """What a label budget keeps or drops whole (``fm_core.label_budget``): the sequence cluster,
        or the chain itself when the shards have no clusters."""
        return f"cluster {self.cluster}" if self.cluster >= 0 else f"chain {self.id}"

    @property
    def aa_index(self) -> np.ndarray:
        return _LUTAA[np.frombuffer(self.sequence.encode(), np.uint8)]

    @property
    def y3(self) -> np.ndarray:
        return _LUT3[np.frombuffer(self.ss3.encode(), np.uint8)]

    @property
    def y8(self) -> np.ndarray:
        return _LUT8[np.frombuffer(self.ss8.encode(), np.uint8)]

    def crop(self, n: int) -> Chain:
        if len(self) <= n:
            return self
        return Chain(self.id, self.sequence[:n], self.tokens[:n], self.atoms[:n], self.ss8[:n], self.ss3[:n],
                     None if self.profile is None else self.profile[:n], self.train_max_identity,
                     self.pretrain_max_identity, cropped_from=len(self), cluster=self.cluster)


def _lists(col: pa.ChunkedArray, width: int) -> list[np.ndarray]:
    out = []
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        off = chunk.offsets.to_numpy(zero_copy_only=False)
        vals = chunk.values.to_numpy(zero_copy_only=False)
        out += [vals[off[k] : off[k + 1]].reshape(-1, width) if width > 1 else vals[off[k] : off[k + 1]]
                for k in range(len(chunk))]
    return out


def prepared(data_dir: str | Path) -> Path:
    """``data_dir`` when it holds a finished ``fm-prep structures`` output, else an error naming the
    command that makes it."""
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{data_dir}: no prepared structures (fm-prep structures output) there. Make it with "
            f"`fm-prep structures --slice --out {data_dir}` (the committed 320-chain slice) or "
            f"`fm-prep structures --input <structure_db.dat or PDB folder> --out {data_dir}`, "
            "or point task.data_dir at one")
    return data_dir


def load_split(data_dir: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[Chain]:
    """Chains of one split of an ``fm-prep structures`` output; ``limit`` draws that many at random
    (seeded), in file order."""
    from fm_core.shards import ShardDataset

    ds = ShardDataset(prepared(data_dir) / split)
    chains: list[Chain] = []
    keep = np.arange(len(ds))
    if limit is not None and limit < len(ds):
        keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=limit, replace=False))
    start = 0
    for table in ds._tables:
        mine = keep[(keep >= start) & (keep < start + table.num_rows)] - start
        start += table.num_rows
        if not len(mine):
            continue
        t = table.take(pa.array(mine))
        ca, cb = _lists(t.column("ca"), 3), _lists(t.column("cb"), 3)
        tokens = _lists(t.column("tokens"), 1)
        has_profile = "profile" in t.column_names and t.column("profile").null_count < t.num_rows
        profiles = _lists(t.column("profile"), 20) if has_profile else [None] * t.num_rows
        ident = t.column("train_max_identity").to_numpy() if "train_max_identity" in t.column_names \
            else np.zeros(t.num_rows, np.float32)
        clusters = t.column("cluster").to_numpy() if "cluster" in t.column_names else np.full(t.num_rows, -1)
        for k, (cid, seq, s8, s3) in enumerate(zip(*(t.column(c).to_pylist() for c in ("id", "sequence", "ss8", "ss3")),
                                                   strict=True)):
            prof = None if profiles[k] is None else profiles[k].astype(np.float32) / 1e4
            chains.append(Chain(cid, seq, tokens[k].astype(np.int64), contact_atoms(seq, ca[k], cb[k]), s8, s3, prof,
                                float(ident[k]), cluster=int(clusters[k])))
    return chains


def search_pretrain_corpus(chains: list[Chain], corpus: str | Path, threads: int | None = 1) -> int:
    """MMseqs2 search of ``chains`` against the pre-training corpus (FASTA, gzip allowed); sets each
    chain's ``pretrain_max_identity`` and returns the number of chains with a hit."""
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"pre-training corpus {corpus} not found (task.pretrain_corpus)")
    with tempfile.TemporaryDirectory(prefix="fm_pretrain_search_") as tmp:
        query = Path(tmp) / "query.fa"
        query.write_text("".join(f">{k}\n{c.sequence}\n" for k, c in enumerate(chains)))
        hits = mmseqs_search(query, corpus, Path(tmp), threads=threads)
    best = np.zeros(len(chains), dtype=np.float64)
    for q, _, ident in hits:
        best[int(q)] = max(best[int(q)], ident)
    for c, b in zip(chains, best, strict=True):
        c.pretrain_max_identity = float(b)
    return int((best > 0).sum())


def subsets(chains: list[Chain], pretrain_identity: float) -> dict[str, list[int]]:
    """Chain indices of the reporting subsets: every test chain; those without any MMseqs2 hit in
    train; those without a >= ``pretrain_identity`` hit in the pre-training corpus."""
    return {
        "test": list(range(len(chains))),
        "test_no_train_hit": [k for k, c in enumerate(chains) if c.train_max_identity <= 0],
        "test_no_pretrain_hit": [k for k, c in enumerate(chains) if c.pretrain_max_identity < pretrain_identity],
    }


def test_chains(max_residues: int, *, data_dir: str | Path, pretrain_corpus: str | None,
                pretrain_identity: float, max_test_chains: int | None,
                mmseqs_threads: int | None) -> tuple[list[Chain], dict[str, list[int]], dict[str, Any]]:
    """What both structure tasks evaluate on: the test chains of ``data_dir`` cropped to
    ``max_residues``, searched against the pre-training corpus, the reporting subsets and their counts.
    ``max_test_chains`` draws the same chains in every run (seed 0, not the run's seed): the runs of a
    sweep over seeds and label budgets are scored on one test set."""
    data = prepared(data_dir)
    test = [c.crop(max_residues) for c in load_split(data, "test", max_test_chains, seed=0)]
    corpus = pretrain_corpus or PRETRAIN_SLICE
    search_pretrain_corpus(test, corpus, threads=mmseqs_threads)
    groups = subsets(test, pretrain_identity)
    counts = {**subset_counts(test, groups, pretrain_identity), "data/dir": str(data),
              "data/pretrain_corpus": str(corpus)}
    return test, groups, counts


@dataclass
class StructureSetup:
    """What ``StructureTask.setup`` gives a structure task."""

    tokenizer: ProteinAlphabet
    net: MaskedLM  # the backbone from ``model`` (``model.init_from=...``, or a random-init size)
    random_net: MaskedLM  # its random-init twin, the same shape
    max_residues: int  # chains are cropped to what the backbone's context holds
    data_dir: Path
    test: list[Chain]
    groups: dict[str, list[int]]  # reporting subsets: chain indices into ``test``
    metrics: dict[str, Any]  # the data counts, the first metrics of the run


class StructureTask:
    """What the contact and secondary-structure tasks share: the backbone (``run.backbone``) and its
    random-init twin, the test chains of ``data_dir`` and their pre-training homology subsets."""

    def __init__(self, *, data_dir: str, pretrain_corpus: str | None, pretrain_identity: float,
                 max_test_chains: int | None, mmseqs_threads: int | None, num_threads: int | None,
                 retrieval: dict[str, Any], train_size: int | float | None):
        self.train_size = train_size  # the label budget (fm_core.label_budget): null = every training chain
        self.data_dir, self.pretrain_corpus, self.pretrain_identity = data_dir, pretrain_corpus, pretrain_identity
        self.retrieval = dict(retrieval)  # tasks.structure.retrieval settings; database null = off
        self.max_test_chains, self.mmseqs_threads, self.num_threads = max_test_chains, mmseqs_threads, num_threads

    def setup(self, run: Any) -> StructureSetup:
        """The backbones and test chains for a ``fm_core.finetune.FinetuneRun``."""
        data_dir = prepared(self.data_dir)  # before the backbone: a missing directory fails at once
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        alphabet = ProteinAlphabet()
        net = run.backbone(alphabet)
        rand = run.random_backbone(net, alphabet)
        max_res = net.config.max_length - alphabet.num_special_added
        test, groups, metrics = test_chains(
            max_res, data_dir=data_dir, pretrain_corpus=self.pretrain_corpus,
            pretrain_identity=self.pretrain_identity, max_test_chains=self.max_test_chains,
            mmseqs_threads=self.mmseqs_threads)
        return StructureSetup(alphabet, net, rand, max_res, data_dir, test, groups, metrics)

    def budget(self, chains: list[Chain], seed: int, metrics: dict[str, Any]) -> list[Chain]:
        """The training chains ``task.train_size`` keeps, whole clusters at a time (counts into ``metrics``)."""
        subset = label_budget([c.group for c in chains], self.train_size, seed)
        metrics.update(subset.metrics)
        return subset.take(chains)


def subset_counts(chains: list[Chain], groups: dict[str, list[int]], pretrain_identity: float) -> dict[str, int]:
    return {"data/test_chains": len(chains),
            "data/test_residues": int(sum(len(c) for c in chains)),
            "data/test_cropped": int(sum(c.cropped_from > 0 for c in chains)),
            "data/test_with_train_hit": int(sum(c.train_max_identity > 0 for c in chains)),
            "data/test_with_train_hit_ge50": int(sum(c.train_max_identity >= 0.5 for c in chains)),
            f"data/test_with_pretrain_hit_ge{round(100 * pretrain_identity)}":
                len(chains) - len(groups["test_no_pretrain_hit"]),
            "data/test_with_pretrain_hit": int(sum(c.pretrain_max_identity > 0 for c in chains)),
            **{f"data/{name}_chains": len(idx) for name, idx in groups.items()}}


def resolve_layers(net: MaskedLM, layers: list[int] | None) -> list[int]:
    """Representation layers: indices into 0..num_layers (negative from the end); None = all of them."""
    n = net.config.num_layers
    if layers is None:
        return list(range(n + 1))
    out = [k + n + 1 if k < 0 else k for k in layers]
    if any(not 0 <= k <= n for k in out):
        raise ValueError(f"representation layers {layers} out of range for a {n}-layer backbone (0..{n})")
    return out


@torch.no_grad()
def backbone_features(net: MaskedLM, tokenizer: Tokenizer, chain: Chain, *, embeddings: bool = True,
                      attention: bool = False, layers: list[int] | None = (-1,)) -> dict[str, np.ndarray]:
    """One chain through the frozen backbone: ``embeddings`` (L, D x layers) from ``layers``
    (concatenated; default the last, None = every layer incl. 0, the token embeddings), and/or
    ``attention`` (L, L, layers*heads) symmetrised APC-corrected maps (ESM's contact features)."""
    net.eval()
    tokens = torch.as_tensor(tokenizer.add_special_tokens(chain.tokens))[None]
    reps = resolve_layers(net, None if layers is None else list(layers)) if embeddings else []
    out = net(tokens, repr_layers=reps, need_weights=attention)
    res = {}
    if embeddings:
        res["embeddings"] = torch.cat([out["representations"][k][0, 1:-1] for k in reps], -1).float().numpy()
    if attention:
        res["attention"] = attention_features(net, tokens, out)[0].float().numpy()
    return res


__all__ = ["AMINO", "Chain", "PRETRAIN_SLICE", "StructureSetup", "StructureTask", "backbone_features", "load_split",
           "prepared", "search_pretrain_corpus", "subset_counts", "subsets", "test_chains"]
