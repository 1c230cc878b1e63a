"""``fm-score``: score molecules with a trained property scorer (``<fm-finetune run>/scorer``).

Input: a CSV with a SMILES column (``--smiles-column``, default: the first column named
``smiles`` in any case) or a ``.smi`` file (first whitespace-separated field per line). Output: a
CSV with every input row, in order: ``row`` (1-based, after a header), ``input``, ``smiles`` (the
canonical SMILES scored), ``prediction`` (probability of class 1, or the value), ``uncertainty``
(std of the ensemble members) and ``error`` (why a row was not scored: RDKit's parse/sanitisation
reason, an empty field, or several fragments). Rows are never dropped: counts in = scored +
rejected, printed and in ``<out>.metrics.json``. Multi-fragment inputs (salts, mixtures) are
rejected unless ``--largest-fragment`` keeps the largest fragment. An empty file is an error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def read_input(path: Path, smiles_column: str | None) -> list[tuple[int, str]]:
    """(row number, SMILES text) for every record; a clear error for an empty or unusable file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: empty file, no molecules to score")
    if path.suffix.lower() in (".smi", ".smiles", ".txt"):
        return [(i, (line.split() or [""])[0]) for i, line in enumerate(text.splitlines(), start=1)]
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    column = smiles_column or next((f for f in fields if f.strip().lower() == "smiles"), None)
    if column is None or column not in fields:
        raise ValueError(f"{path}: no SMILES column {smiles_column or 'smiles'!r} (columns: {fields}); "
                         "use --smiles-column")
    rows = [(i, rec.get(column) or "") for i, rec in enumerate(reader, start=1)]
    if not rows:
        raise ValueError(f"{path}: header only, no molecules to score")
    return rows


def prepare_mol(text: str, largest_fragment: bool) -> tuple[Any, str | None]:
    from rdkit import Chem
    from rdkit.Chem.MolStandardize import rdMolStandardize

    from chem_fm.standardize import parse

    mol, why = parse(text)
    if mol is None:
        return None, why
    n = len(Chem.GetMolFrags(mol))
    if n > 1:
        if not largest_fragment:
            return None, f"{n} fragments (salt or mixture); --largest-fragment keeps the largest"
        mol = rdMolStandardize.LargestFragmentChooser().choose(mol)
    return Chem.MolFromSmiles(Chem.MolToSmiles(mol)), None


def score_file(scorer_dir: str | Path, input_path: str | Path, out_path: str | Path, *,
               smiles_column: str | None = None, largest_fragment: bool = False) -> dict[str, Any]:
    from rdkit import Chem, RDLogger

    from tasks.drug_property.scorer import Scorer

    RDLogger.DisableLog("rdApp.*")
    scorer = Scorer.load(scorer_dir)
    rows = read_input(Path(input_path), smiles_column)
    mols, errors = [], []
    for _, text in rows:
        mol, why = prepare_mol(text, largest_fragment)
        mols.append(mol)
        errors.append(why)
    ok = [i for i, m in enumerate(mols) if m is not None]
    mean = np.full(len(rows), np.nan)
    std = np.full(len(rows), np.nan)
    if ok:
        m, s, _ = scorer.predict_mols([mols[i] for i in ok])
        mean[ok], std[ok] = m, s
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "input", "smiles", "prediction", "uncertainty", "error"])
        for i, (row, text) in enumerate(rows):
            scored = mols[i] is not None
            w.writerow([row, text, Chem.MolToSmiles(mols[i]) if scored else "",
                        f"{mean[i]:.6g}" if scored else "", f"{std[i]:.6g}" if scored else "", errors[i] or ""])
    reasons: dict[str, int] = {}
    for e in errors:
        if e:
            key = "multiple_fragments" if "fragments" in e else "invalid_smiles"
            reasons[key] = reasons.get(key, 0) + 1
    summary = {"score/read": len(rows), "score/scored": len(ok),
               **{f"score/rejected_{k}": v for k, v in sorted(reasons.items())},
               "score/kind": scorer.kind, "score/label": scorer.label, "score/members": len(scorer.heads),
               "score/output": str(out)}
    assert summary["score/read"] == summary["score/scored"] + sum(reasons.values())
    Path(str(out) + ".metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fm-score", description=__doc__.split("\n\n")[0])
    p.add_argument("scorer", help="a scorer directory: <fm-finetune task=drug_property run>/scorer")
    p.add_argument("input", help="CSV with a SMILES column, or a .smi file")
    p.add_argument("-o", "--out", required=True, help="output CSV")
    p.add_argument("--smiles-column", default=None)
    p.add_argument("--largest-fragment", action="store_true",
                   help="score the largest fragment of salts/mixtures (default: reject them, with the reason)")
    args = p.parse_args(argv)
    try:
        summary = score_file(args.scorer, args.input, args.out, smiles_column=args.smiles_column,
                             largest_fragment=args.largest_fragment)
    except (FileNotFoundError, ValueError) as err:
        print(f"fm-score: error: {err}", file=sys.stderr)
        return 2
    rejected = summary["score/read"] - summary["score/scored"]
    print(f"fm-score: {summary['score/read']} rows, {summary['score/scored']} scored, {rejected} rejected "
          f"(reasons in the 'error' column) -> {args.out}")
    if rejected:
        with open(args.out) as fh:
            for rec in csv.DictReader(fh):
                if rec["error"]:
                    print(f"  row {rec['row']}: {rec['error']}  ({rec['input']!r})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
