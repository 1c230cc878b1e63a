"""``fm-predict-structure``'s command line: parsed here without importing torch, so that ``--help``
and argument errors answer at once; the work is ``tasks.structure.predict.predict``."""

from __future__ import annotations

import argparse

from fm_core.errors import argparse_main

DESCRIPTION = """Contact maps and secondary structure for the sequences of a FASTA file.

examples:
  fm-predict-structure --checkpoint runs/finetune/contacts/<run>/export --fasta my.fa --out pred/
  fm-predict-structure --checkpoint esm2_t6_8M_UR50D.pt --fasta my.fa \\
      --heads runs/finetune/secondary_structure/<run>/export/heads
  fm-predict-structure --checkpoint <export> --fasta my.fa --on-invalid skip --no-png

Writes <id>.contacts.npy (+ .png) per record, secondary_structure.tsv when a secondary-structure
head is loaded, and summary.json (read / predicted / rejected by reason). Errors are one line with
exit code 2 (--debug or FM_DEBUG=1 shows the traceback)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-predict-structure", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export dir, fm-pretrain .ckpt or fair-esm ESM-2 .pt")
    p.add_argument("--fasta", required=True, help="input FASTA (plain or gzip)")
    p.add_argument("--out", default="structure_predictions", help="output folder (default: %(default)s)")
    p.add_argument("--heads", nargs="*", default=[], help="head .json files or folders (from fm-finetune exports)")
    p.add_argument("--on-invalid", choices=("error", "skip"), default="error",
                   help="a record with a character outside the alphabet: stop (default) or skip and count it")
    p.add_argument("--no-png", dest="png", action="store_false", help="do not draw the contact maps")
    return p


def run(args: argparse.Namespace) -> None:
    from tasks.structure.predict import predict

    predict(args.checkpoint, args.fasta, args.out, args.heads, args.on_invalid, args.png)


def main(argv: list[str] | None = None) -> None:
    argparse_main("fm-predict-structure", parser(), "tasks.structure.cli:run", argv)


if __name__ == "__main__":
    main()
