"""``fm-prep <kind> ...``: turn raw public data into clean, deduplicated, split, sharded datasets.

Kinds: ``protein``, ``structures``, ``molecules``, ``code``. Each writes ``<out>/manifest.json``
(inputs, counts that balance, splits, output hashes) and ``<out>/metrics.json`` and prints their
paths; each is resumable (rerun the same command after an interruption) and idempotent.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# kind -> module with add_arguments(parser), from_args(namespace) -> config, prepare(config)
KINDS = {
    "protein": "data_prep.protein",
    "structures": "data_prep.structures",
    "molecules": "data_prep.molecules",
    "code": "data_prep.code",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fm-prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="kind", required=True)
    modules = {}
    for kind, name in KINDS.items():
        mod = importlib.import_module(name)
        modules[kind] = mod
        sp = sub.add_parser(kind, help=(mod.__doc__ or "").splitlines()[0].replace("%", "%%"),
                            description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    mod = modules[args.kind]
    try:
        mod.prepare(mod.from_args(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"fm-prep {args.kind}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
