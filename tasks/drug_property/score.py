"""``fm-score``: score molecules with a trained property scorer (``<fm-finetune run>/scorer``).

Input: a CSV with a SMILES column (``--smiles-column``, default: the first column named
``smiles`` in any case) or a ``.smi`` file (first whitespace-separated field per line; the column
``input``). Output: a CSV with every input row, in order, every input column kept as it was, then
``row`` (1-based, after a header), ``input`` (the SMILES text read), ``canonical_smiles`` (what was
scored), per target ``<property> (<unit>)`` (the value; ``<property> (probability)`` of class 1),
``<property> std``, ``<property> lower <c>%`` / ``upper <c>%`` (the scorer's calibrated interval of
coverage c), the applicability domain (``nn<i>_similarity`` / ``nn<i>_id``: the nearest training
molecules by Tanimoto, ``in_domain``: nn1 similarity >= the threshold chosen on the calibration
set), and ``error`` (why a row was not scored: RDKit's parse/sanitisation reason or an empty field). A name
already taken by an input column gets the prefix ``fm_``. Rows are never dropped: counts in = scored +
rejected, printed and in ``<out>.metrics.json``. Salts and mixtures get the policy of training,
stored in the scorer (the largest fragment, or every fragment); ``--largest-fragment`` /
``--keep-fragments`` override it. An empty file is an error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from fm_core.errors import UserError


class ScoreInputError(UserError, ValueError):
    """An unusable fm-score input file."""


def read_input(path: Path, smiles_column: str | None) -> tuple[list[str], list[dict[str, str]], str]:
    """(input columns, records, SMILES column); a clear error for an empty or unusable file."""
    if not path.is_file():
        raise ScoreInputError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ScoreInputError(f"{path}: empty file, no molecules to score")
    if path.suffix.lower() in (".smi", ".smiles", ".txt"):
        return ["input"], [{"input": (line.split() or [""])[0]} for line in text.splitlines()], "input"
    dialect = "excel-tab" if path.suffix.lower() in (".tsv", ".tab") else "excel"
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    fields = list(reader.fieldnames or [])
    column = smiles_column or next((f for f in fields if f.strip().lower() == "smiles"), None)
    if column is None or column not in fields:
        raise ScoreInputError(f"{path}: no SMILES column {smiles_column or 'smiles'!r} (columns: {fields}); "
                              "use --smiles-column")
    rows = [{f: rec.get(f) or "" for f in fields} for rec in reader]
    if not rows:
        raise ScoreInputError(f"{path}: header only, no molecules to score")
    return fields, rows, column


def prepare_mol(text: str, largest_fragment: bool) -> tuple[Any, str | None]:
    """The molecule as training saw it (fm-prep's standardisation), or (None, why)."""
    from rdkit import Chem

    from chem_fm.standardize import canonical, parse
    from chem_fm.standardize import largest_fragment as keep_largest

    mol, why = parse(text)
    if mol is None:
        return None, why
    if largest_fragment:
        mol = keep_largest(mol)
    canon = canonical(mol).mol
    return (canon, None) if canon is not None else (None, f"RDKit cannot re-read {Chem.MolToSmiles(mol)!r}")


def output_columns(scorer: Any, taken: list[str]) -> tuple[list[str], dict[str, str]]:
    """The added columns (by key) with names free of the input's columns."""
    c = round(scorer.uncertainty.coverage * 100)
    keys = ["row", "input", "canonical_smiles"]
    for t in scorer.targets:
        keys += [t.column(), f"{t.name} std", f"{t.name} lower {c}%", f"{t.name} upper {c}%"]
    keys += [f"nn{i + 1}_{w}" for i in range(scorer.domain.k) for w in ("similarity", "id")] + ["in_domain", "error"]
    names = {k: (f"fm_{k}" if k in taken else k) for k in keys}
    return keys, names


def score_rows(scorer: Any, mols: list[Any]) -> list[dict[str, str]]:
    """The added cells of every scored molecule."""
    from rdkit import Chem

    from chem_fm.features import featurize

    out = scorer.outputs(featurize(scorer.features, mols))
    sims, ids = scorer.domain.neighbours(mols)
    c = round(scorer.uncertainty.coverage * 100)
    cells = []
    for i, mol in enumerate(mols):
        row = {"canonical_smiles": Chem.MolToSmiles(mol), "in_domain": str(int(sims[i, 0] >= scorer.domain.threshold))}
        for j, t in enumerate(scorer.targets):
            row[t.column()] = f"{out['mean'][i, j]:.6g}"
            row[f"{t.name} std"] = f"{out['std'][i, j]:.6g}"
            if t.kind == "regression":
                row[f"{t.name} lower {c}%"], row[f"{t.name} upper {c}%"] = (f"{out['lower'][i, j]:.6g}",
                                                                          f"{out['upper'][i, j]:.6g}")
        for k in range(sims.shape[1]):
            row[f"nn{k + 1}_similarity"], row[f"nn{k + 1}_id"] = f"{sims[i, k]:.4f}", ids[i][k]
        cells.append(row)
    return cells


def score_file(scorer_dir: str | Path, input_path: str | Path, out_path: str | Path, *,
               smiles_column: str | None = None, largest_fragment: bool | None = None) -> dict[str, Any]:
    """``largest_fragment``: None = the scorer's policy (that of its training data)."""
    from rdkit import RDLogger

    from tasks.drug_property.scorer import Scorer

    RDLogger.DisableLog("rdApp.*")
    scorer = Scorer.load(scorer_dir)
    policy = scorer.largest_fragment if largest_fragment is None else largest_fragment
    fields, rows, column = read_input(Path(input_path), smiles_column)
    prepared = [prepare_mol(rec[column], policy) for rec in rows]
    ok = [i for i, (m, _) in enumerate(prepared) if m is not None]
    scored = dict(zip(ok, score_rows(scorer, [prepared[i][0] for i in ok]), strict=True)) if ok else {}
    keys, names = output_columns(scorer, fields)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*fields, *(names[k] for k in keys)])
        for i, rec in enumerate(rows):
            added = {"row": str(i + 1), "input": rec[column], "error": prepared[i][1] or "", **scored.get(i, {})}
            w.writerow([*(rec[f] for f in fields), *(added.get(k, "") for k in keys)])
    rejected = len(rows) - len(ok)
    summary = {"score/read": len(rows), "score/scored": len(ok), "score/rejected_invalid_smiles": rejected,
               "score/in_domain": int(sum(scored[i]["in_domain"] == "1" for i in ok)),
               "score/largest_fragment": policy, "score/targets": ",".join(t.name for t in scorer.targets),
               "score/members": len(scorer.heads), "score/output": str(out)}
    Path(str(out) + ".metrics.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    """``fm-score`` in-process (the console command is ``tasks.drug_property.cli.main``)."""
    from tasks.drug_property.cli import parser

    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Score ``args.input`` into ``args.out``; print the summary; the exit code."""
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
