"""``fm-protein-score``: pseudo-perplexity per sequence and masked-marginal variant-effect scores.

Variant score (ESM-1v's "masked marginals", Meier et al. 2021): for a substitution ``A24G``,
``log p(G | x with residue 24 masked) - log p(A | same)``, both from one forward pass of the wild
type with position 24 masked; a multi-mutant ``A24G:K30R`` scores the sum of its substitutions.
Pseudo-perplexity: ``exp(-mean_i log p(x_i | x with i masked))`` (Salazar et al. 2020), from the
same masked passes. Positions in mutation strings are 1-based (``offset`` changes the numbering).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bio_fm.alphabet import STANDARD
from fm_core.batching import ReadStats
from fm_core.embed import DTYPES, HashedIdSet, peak_rss_mb, validated_chunks
from fm_core.locks import DirectoryLock
from fm_core.scoring import MaskedMarginals, pseudo_log_likelihood
from fm_core.summary import REJECTED_FILE, print_summary, write_rejected

log = logging.getLogger(__name__)
_MUTATION = re.compile(r"^([A-Za-z])(-?\d+)([A-Za-z])$")


class MutationError(ValueError):
    """A mutation that does not fit its wild type; the message names the mutation and why."""


@dataclass(frozen=True)
class Mutation:
    wt: str
    position: int  # as written (numbering starts at ``offset``)
    mt: str
    index: int  # 0-based residue index in the wild type

    def __str__(self) -> str:
        return f"{self.wt}{self.position}{self.mt}"


def parse_mutant(text: str, wild_type: str, *, record: str, offset: int = 1, where: str = "") -> list[Mutation]:
    """``"A24G"`` or ``"A24G:K30R"`` -> mutations checked against ``wild_type``."""
    prefix = f"{where}mutant {text!r} of record {record!r}"
    parts = [p.strip() for p in str(text).split(":")]
    if not text or not all(parts):
        raise MutationError(f"{prefix}: empty mutation")
    muts, seen = [], set()
    for part in parts:
        m = _MUTATION.match(part)
        if not m:
            raise MutationError(f"{prefix}: {part!r} is not of the form A24G (wild type, position, mutant)")
        wt, pos, mt = m.group(1).upper(), int(m.group(2)), m.group(3).upper()
        index = pos - offset
        if not 0 <= index < len(wild_type):
            raise MutationError(f"{prefix}: {part}: position {pos} is outside the sequence "
                                f"(positions {offset}..{offset + len(wild_type) - 1})")
        if wild_type[index].upper() != wt:
            raise MutationError(f"{prefix}: {part}: residue {pos} of the wild type is "
                                f"{wild_type[index].upper()}, not {wt}")
        if mt not in STANDARD:
            raise MutationError(f"{prefix}: {part}: {mt!r} is not one of the 20 standard amino acids")
        if index in seen:
            raise MutationError(f"{prefix}: {part}: position {pos} is mutated twice")
        seen.add(index)
        muts.append(Mutation(wt, pos, mt, index))
    return muts


def score_mutations(logp: np.ndarray, muts: list[Mutation], alphabet: Any) -> float:
    return float(sum(logp[m.index, alphabet.index[m.mt]] - logp[m.index, alphabet.index[m.wt]] for m in muts))


def read_mutations(path: Path, mutant_column: str, id_column: str | None) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    for col in (mutant_column, id_column):
        if col is not None and col not in fields:
            raise ValueError(f"{path}: no column {col!r} (columns: {fields})")
    return fields, rows


def _stream_records(stream, tokenizer, source, on_invalid, stats, rejections):
    for chunk, _ in validated_chunks(stream, tokenizer, source, stats, HashedIdSet(), on_invalid=on_invalid,
                                     chunk_records=256, chunk_residues=100_000, rejections=rejections):
        yield from chunk


class _Tables:
    """The per-sequence outputs: ``pppl.csv`` (with ``pppl``) and ``scan.csv`` (with ``scan``)."""

    def __init__(self, out: Path, *, pppl: bool, scan: bool, offset: int):
        self.offset = offset
        self.ppl_values: list[float] = []
        self._files = {name: open(out / f"{name}.csv", "w", newline="") for name, on in
                       (("pppl", pppl), ("scan", scan)) if on}
        self.pppl = csv.writer(self._files["pppl"]) if pppl else None
        self.scan = csv.writer(self._files["scan"]) if scan else None
        if self.pppl:
            self.pppl.writerow(["id", "length", "pseudo_log_likelihood", "pseudo_perplexity"])
        if self.scan:
            self.scan.writerow(["id", "mutant", "position", "wt", "mt", "score"])

    def write(self, rid: str, ids: np.ndarray, wild: str, logp: np.ndarray, alphabet: Any) -> None:
        if self.pppl:
            pll = pseudo_log_likelihood(logp, ids)
            ppl = math.exp(-pll / len(ids))
            self.ppl_values.append(ppl)
            self.pppl.writerow([rid, len(ids), f"{pll:.6f}", f"{ppl:.6f}"])
        if self.scan:
            for index, wt in enumerate(wild):
                for mt in STANDARD:
                    if mt != wt:
                        s = logp[index, alphabet.index[mt]] - logp[index, alphabet.index[wt]]
                        self.scan.writerow([rid, f"{wt}{index + self.offset}{mt}", index + self.offset, wt, mt,
                                            f"{s:.6f}"])

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


def _rows_by_record(cfg: Any) -> tuple[list[str], list[dict[str, str]], dict[str | None, list[int]]]:
    """The mutation table's columns and rows, and the row indices per record id (``None``: the
    rows name no record)."""
    by_record: dict[str | None, list[int]] = defaultdict(list)
    fields, rows = [], []
    if cfg.mutations:
        fields, rows = read_mutations(Path(cfg.mutations), cfg.mutant_column, cfg.id_column)
        for i, row in enumerate(rows):
            by_record[row[cfg.id_column] if cfg.id_column else None].append(i)
    return fields, rows, by_record


def _mutants_of(rid: str, by_record: dict[str | None, list[int]], seen_ids: set[str], cfg: Any) -> list[int]:
    if None in by_record:  # rows name no record: the input must hold exactly one
        if seen_ids:
            raise ValueError(f"{cfg.mutations}: {cfg.input} holds several records; name the record "
                             "of each row with a column (id_column=...)")
        return by_record[None]
    return by_record.get(rid, [])


def _check_found(by_record: dict[str | None, list[int]], seen_ids: set[str], cfg: Any) -> None:
    if None in by_record and not seen_ids:
        raise ValueError(f"{cfg.mutations}: no valid wild-type record in {cfg.input}")
    missing = sorted({k for k in by_record if k is not None and k not in seen_ids})
    if missing:
        raise ValueError(f"{cfg.mutations}: record(s) {missing[:5]} not found (or rejected) in {cfg.input}")


def _write_variants(path: Path, fields: list[str], rows: list[dict[str, str]], scores: list[float | None]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*fields, "score"])
        for row, s in zip(rows, scores, strict=True):
            writer.writerow([row[f] for f in fields] + [f"{s:.6f}"])


def _load_marginals(cfg: Any) -> tuple[Any, Any, MaskedMarginals]:
    from fm_core.export import load_pretrained

    net, alphabet = load_pretrained(cfg.checkpoint)
    if cfg.precision not in DTYPES:
        raise ValueError(f"precision {cfg.precision!r}: choose one of {sorted(DTYPES)}")
    return net, alphabet, MaskedMarginals(net, alphabet, max_tokens=cfg.max_tokens, max_length=cfg.max_length,
                                          dtype=DTYPES[cfg.precision])


def score(cfg: Any) -> dict[str, Any]:
    """The ``fm-protein-score`` job (Hydra config ``protein_score.yaml``): ``pppl.csv``,
    ``variants.csv`` (with ``mutations=``), ``scan.csv`` (with ``scan=true``), ``rejected.tsv``,
    ``metrics.json``; ``out`` is locked for the job (a second run into it fails at once)."""
    with DirectoryLock(cfg.out, what="fm-protein-score output"):
        return _score(cfg)


def _score(cfg: Any) -> dict[str, Any]:
    from hydra.utils import instantiate
    from tqdm.auto import tqdm

    from fm_core.summary import write_metrics

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    net, alphabet, marginals = _load_marginals(cfg)
    source = str(cfg.input)
    stream = instantiate(cfg.reader)(cfg.input)
    stats = ReadStats(source)
    fields, rows, by_record = _rows_by_record(cfg)
    variant_scores: list[float | None] = [None] * len(rows)
    need_all = cfg.pppl or cfg.scan
    tables = _Tables(out, pppl=cfg.pppl, scan=cfg.scan, offset=cfg.offset)
    started = time.perf_counter()
    n_seq, residues, seen_ids, rejections = 0, 0, set(), []
    bar = tqdm(unit="seq", desc="fm-protein-score", disable=not cfg.progress)
    try:
        for rid, ids in _stream_records(stream, alphabet, source, cfg.on_invalid, stats, rejections):
            mutants = _mutants_of(rid, by_record, seen_ids, cfg)
            seen_ids.add(rid)
            if not need_all and not mutants:
                continue
            wild = alphabet.decode(ids)
            parsed = {i: parse_mutant(rows[i][cfg.mutant_column], wild, record=rid, offset=cfg.offset,
                                      where=f"{cfg.mutations} row {i + 2}: ") for i in mutants}
            positions = None if need_all else [np.array(sorted({m.index for ms in parsed.values() for m in ms}))]
            (logp,) = marginals([ids], positions)
            for i, muts in parsed.items():
                variant_scores[i] = score_mutations(logp, muts, alphabet)
            tables.write(rid, ids, wild, logp, alphabet)
            n_seq += 1
            residues += len(ids)
            bar.update(1)
    finally:
        bar.close()
        tables.close()
    _check_found(by_record, seen_ids, cfg)
    if rows:
        _write_variants(out / "variants.csv", fields, rows, variant_scores)
    stats.check()
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {f"data/{k}": v for k, v in stats.as_dict("records").items()}
    metrics.update({"score/sequences": n_seq, "score/residues": residues, "score/variants": len(rows),
                    "score/seconds": seconds, "score/peak_rss_mb": peak_rss_mb(), "model/name": net.config.name})
    if tables.ppl_values:
        metrics["score/mean_pseudo_perplexity"] = float(np.mean(tables.ppl_values))
        metrics["score/median_pseudo_perplexity"] = float(np.median(tables.ppl_values))
    write_metrics(out, metrics)
    print_summary("fm-protein-score", stats.read, stats.kept, stats.rejected, write_rejected(out / REJECTED_FILE, rejections))
    return metrics
