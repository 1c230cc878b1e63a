"""What every tool says at the end: one line with the records read, kept and rejected by reason,
and the file that lists the rejected records (``rejected.tsv``: record, reason, detail)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REJECTED_FILE = "rejected.tsv"
REJECTED_HEADER = "record\treason\tdetail\n"


def _cell(text: object) -> str:
    return " ".join(str(text).split())  # one line, no tab: a TSV cell


def rejected_rows(rows: Iterable[tuple[str, str, str]]) -> str:
    """``rejected.tsv`` lines for (record, reason, detail) triples."""
    return "".join(f"{_cell(r)}\t{_cell(why)}\t{_cell(detail)}\n" for r, why, detail in rows)


def write_rejected(path: str | Path, rows: Iterable[tuple[str, str, str]]) -> Path:
    """Write ``rows`` (record, reason, detail) as ``path`` (header first); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(REJECTED_HEADER + rejected_rows(rows), encoding="utf-8")
    tmp.replace(path)
    return path


def summary_line(tool: str, read: int, kept: int, rejected: Mapping[str, int], rejected_path: str | Path | None,
                 kept_word: str = "kept") -> str:
    """``fm-embed: read 2000, kept 1990, rejected 10 (duplicate_id 7, empty 3); rejected records: out/rejected.tsv``"""
    total = sum(rejected.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()) if v)
    line = f"{tool}: read {read}, {kept_word} {kept}, rejected {total}" + (f" ({reasons})" if reasons else "")
    if total and rejected_path is not None:
        line += f"; rejected records: {rejected_path}"
    return line


def rejected_counts(metrics: Mapping[str, object], prefix: str) -> dict[str, int]:
    """``{reason: n}`` from flat metrics keys ``<prefix><reason>``."""
    return {k[len(prefix):]: int(v) for k, v in metrics.items() if k.startswith(prefix)}


def print_summary(*args, **kwargs) -> str:
    """Print ``summary_line(...)`` on stderr (stdout stays for the paths scripts read); returns it."""
    line = summary_line(*args, **kwargs)
    print(line, file=sys.stderr, flush=True)
    return line


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """``metrics.json``: flat keys, plain numbers/strings (a 0-d tensor as its value); printed so
    scripts can find it."""
    import torch

    path = Path(run_dir) / "metrics.json"
    plain = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plain, indent=2, sort_keys=True))
    tmp.replace(path)
    print(f"metrics: {path}")
    return path
