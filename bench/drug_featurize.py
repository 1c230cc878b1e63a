"""Featurisation rate of the drug-property representations (Morgan counts + every RDKit 2D
descriptor, the default recipe), molecules/s: a single-process loop (what the task did before)
against ``chem_fm.features.RawCache`` with worker processes (no cache), and a second pass served
from the cache, side by side in one run (``--repeats`` rounds, medians and their ratios). JSON
(``--out``) and a printed table::

    nice -n 10 python bench/drug_featurize.py --molecules 1000 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from rdkit import Chem, RDLogger

from chem_fm.features import DescriptorFeatures, MorganFeatures, RawCache

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "molecules" / "moses_train_head1000.csv.gz"


def read_smiles(path: str | None, n: int) -> list[str]:
    """Canonical SMILES: an ``fm-prep molecules`` directory's molecules.parquet, else the MOSES fixture."""
    if path:
        import pyarrow.parquet as pq

        smiles = pq.read_table(Path(path) / "molecules.parquet", columns=["smiles"]).column("smiles").to_pylist()
    else:
        with gzip.open(FIXTURE, "rt") as fh:
            smiles = [Chem.MolToSmiles(Chem.MolFromSmiles(r["SMILES"])) for r in csv.DictReader(fh)]
    return smiles[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="an fm-prep molecules output directory (default: MOSES fixture)")
    p.add_argument("--molecules", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    RDLogger.DisableLog("rdApp.*")
    smiles = read_smiles(args.data, args.molecules)
    features = [MorganFeatures(radius=2, size=2048, counts=True, log_counts=True, chirality=False),
                DescriptorFeatures(names=None, clip_percentile=0.5)]
    times: dict[str, list[float]] = {"single_process": [], f"workers_{args.workers}": [], "cached": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        mols = [Chem.MolFromSmiles(s) for s in smiles]
        for f in features:
            f.raw(mols)
        times["single_process"].append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            cache = RawCache(directory=tmp, workers=args.workers, chunk=args.chunk)
            t = time.perf_counter()
            for f in features:
                cache.raw(f, smiles)
            times[f"workers_{args.workers}"].append(time.perf_counter() - t)
            t = time.perf_counter()
            for f in features:
                RawCache(directory=tmp, workers=args.workers, chunk=args.chunk).raw(f, smiles)
            times["cached"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["single_process"]
    result = {"molecules": len(smiles), "source": args.data or str(FIXTURE.name), "workers": args.workers,
              "chunk": args.chunk, "repeats": args.repeats, "cpus": os.cpu_count(), "python": platform.python_version(),
              "seconds": times, "median_seconds": med,
              "molecules_per_s": {k: len(smiles) / v for k, v in med.items()},
              "speedup_vs_single_process": {k: base / v for k, v in med.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{len(smiles)} molecules, Morgan counts + {features[1].dim} descriptors, medians of {args.repeats}")
    print(f"{'method':<16} {'seconds':>8} {'mol/s':>9} {'x single':>9}")
    for k, v in med.items():
        print(f"{k:<16} {v:>8.2f} {len(smiles) / v:>9.0f} {base / v:>9.2f}")


if __name__ == "__main__":
    main()
