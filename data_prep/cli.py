"""``fm-prep <kind> ...``: turn raw public data into clean, deduplicated, split, sharded datasets.

Kinds: ``protein``, ``structures``, ``molecules``, ``code``, ``go``, ``seqdb``. Each writes ``<out>/manifest.json``
(inputs, counts that balance, splits, output hashes) and ``<out>/metrics.json`` and prints their
paths; each is resumable (rerun the same command after an interruption) and idempotent.

examples:
  fm-prep protein --input uniprot_sprot.fasta.gz --out data/protein
  fm-prep structures --slice --out data/structure_slice
  fm-prep molecules --source b3db_classification --out data/molecules/b3db_classification

Errors are one line with exit code 2 (--debug or FM_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from fm_core.errors import UserError, run_cli, strip_debug

# kind -> module with add_arguments(parser), from_args(namespace) -> config, prepare(config)
KINDS = {
    "protein": "data_prep.protein",
    "structures": "data_prep.structures",
    "molecules": "data_prep.molecules",
    "code": "data_prep.code",
    "go": "data_prep.go",
    "seqdb": "data_prep.seqdb",
}


def _docstring(module: str) -> str:
    """A kind's docstring read from its source, so that `fm-prep --help` imports none of them."""
    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    return ast.get_docstring(ast.parse(source)) or ""


def parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser; only the chosen kind's module is imported (for its arguments)."""
    p = argparse.ArgumentParser(prog="fm-prep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also FM_DEBUG=1)")
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, name in KINDS.items():
        doc = importlib.import_module(name).__doc__ if kind == chosen else _docstring(name)
        sp = sub.add_parser(kind, help=(doc or "").splitlines()[0].replace("%", "%%"),
                            description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        if kind == chosen:
            importlib.import_module(name).add_arguments(sp)
    return p


def _prepare(kind: str, args: argparse.Namespace) -> None:
    mod = importlib.import_module(KINDS[kind])
    try:
        mod.prepare(mod.from_args(args))
    except ValueError as err:  # the preparers report bad input as ValueError naming file and record
        if isinstance(err, UserError):
            raise
        raise UserError(str(err)) from err


def main(argv: list[str] | None = None) -> None:
    argv = strip_debug(sys.argv[1:] if argv is None else list(argv))
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = parser(chosen if chosen in KINDS else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_cli(f"fm-prep {args.kind}", lambda: _prepare(args.kind, args), resumes=True)


if __name__ == "__main__":
    main()
