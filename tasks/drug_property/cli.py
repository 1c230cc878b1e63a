"""``fm-score``'s command line: parsed here without importing torch or RDKit, so that ``--help`` and
argument errors answer at once; the work is ``tasks.drug_property.score.run``."""

from __future__ import annotations

import argparse

from fm_core.errors import argparse_main

DESCRIPTION = """Score molecules with a trained property scorer (<fm-finetune run>/scorer).

Input: a CSV with a SMILES column (--smiles-column, default: the first column named smiles in any
case) or a .smi file. Output: a CSV with every input row and column, in order, plus row, input,
canonical_smiles, per property "<name> (<unit>)", its std and interval, the nearest training
molecules (nn1_similarity, nn1_id, ...), in_domain and error; and <out>.metrics.json; rows are
never dropped. Salts get the scorer's training policy (largest fragment or all fragments).

examples:
  fm-score runs/finetune/drug_property/<run>/scorer molecules.csv -o scored.csv
  fm-score <scorer> molecules.smi -o scored.csv --largest-fragment
  fm-score <scorer> table.csv -o scored.csv --smiles-column canonical_smiles

Errors are one line with exit code 2 (--debug or FM_DEBUG=1 shows the traceback)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-score", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scorer", help="a scorer directory: <fm-finetune task=drug_property run>/scorer")
    p.add_argument("input", help="CSV with a SMILES column, or a .smi file")
    p.add_argument("-o", "--out", required=True, help="output CSV")
    p.add_argument("--smiles-column", default=None)
    p.add_argument("--largest-fragment", action="store_const", const=True, default=None,
                   help="score the largest fragment of salts/mixtures (default: the scorer's training policy)")
    p.add_argument("--keep-fragments", dest="largest_fragment", action="store_const", const=False,
                   help="score every fragment as given (default: the scorer's training policy)")
    return p


def main(argv: list[str] | None = None) -> None:
    argparse_main("fm-score", parser(), "tasks.drug_property.score:run", argv)


if __name__ == "__main__":
    main()
