"""Protein prep throughput: ``fm-prep protein`` (without MMseqs2) against a bare Biopython parse.

Inputs are real: the first N records (10k, 100k, 500k) of Debian metastudent-data's three BLAST
databases (BPO, MFO, CCO, in that order, 1,338,325 UniProt records with cross-database
duplicates), exported once to plain FASTA (60 residues per line) by ``data_prep.blastdb``.

For each size, in one run and interleaved (``--repeats`` rounds, each round runs both):
- ``seqio``: ``for rec in SeqIO.parse(path, "fasta"): len(rec.seq)`` (the reference);
- ``prep``: ``data_prep.protein.prepare`` with ``cluster_mode="none"``, ``clean_heldout=False``:
  read, normalise, filter, exact de-duplication, tokenise, Arrow shards, manifest.
Each measurement runs in a fresh subprocess; we report CPU seconds (user + sys: the work is
single-threaded, so residues per CPU second = residues/s per core), wall seconds and peak RSS
(``VmHWM`` of the subprocess).
MMseqs2 clustering (``easy-cluster``, 50% identity) is timed separately on the 10k input.

    python bench/prep_protein.py --metastudent /path/to/usr/share/metastudent-data/dataset_201401
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (10_000, 100_000, 500_000)

CHILD = r"""
import sys, time, resource
kind, path, out = sys.argv[1:4]
t0 = time.perf_counter()
if kind == "seqio":
    from Bio import SeqIO
    n = r = 0
    for rec in SeqIO.parse(path, "fasta"):
        n += 1
        r += len(rec.seq)
else:
    from data_prep.protein import ProteinPrepConfig, prepare
    m = prepare(ProteinPrepConfig(inputs=[path], out=out, cluster_mode="none", clean_heldout=False,
                                  id_separator=None, min_length=1))
    n, r = m["counts"]["read"], m["unique_residues"]
wall = time.perf_counter() - t0
u = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM (peak RSS of this program's address space); ru_maxrss would inherit the parent's peak across exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(n, r, wall, u.ru_utime + u.ru_stime, hwm)
"""


def export_fasta(metastudent: Path, n: int, path: Path) -> int:
    from data_prep.blastdb import BlastProteinDB

    residues = written = 0
    with open(path, "w") as fh:
        for onto in ("BPO", "MFO", "CCO"):
            for title, seq in BlastProteinDB(metastudent / onto / "goasp.fasta"):
                if written == n:
                    return residues
                fh.write(f">{title.split('|')[0]} {title}\n")
                fh.writelines(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60))
                written += 1
                residues += len(seq)
    return residues


def measure(kind: str, path: Path, tmp: Path) -> dict:
    out = tempfile.mkdtemp(dir=tmp)
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), out], capture_output=True, text=True,
                          check=True)
    n, r, wall, cpu, rss = proc.stdout.strip().splitlines()[-1].split()
    return {"records": int(n), "residues": int(r), "wall_s": float(wall), "cpu_s": float(cpu),
            "peak_rss_mb": int(rss) / 1024}


def linearity(results: dict) -> None:
    """Cost ratios against the smallest size, and the marginal CPU per residue between sizes
    (constant when the cost is linear; the smallest run also carries fixed start-up costs)."""
    sizes = list(results["sizes"])
    base = results["sizes"][sizes[0]]
    results["linearity"] = {}
    for k, s in enumerate(sizes):
        r = results["sizes"][s]
        row = {"records_ratio": int(s) / int(sizes[0]), "residue_ratio": r["input_residues"] / base["input_residues"],
               "prep_cpu_ratio": r["prep"]["cpu_s"] / base["prep"]["cpu_s"],
               "seqio_cpu_ratio": r["seqio"]["cpu_s"] / base["seqio"]["cpu_s"]}
        if k:
            prev = results["sizes"][sizes[k - 1]]
            extra = r["input_residues"] - prev["input_residues"]
            for kind in ("prep", "seqio"):
                row[f"{kind}_marginal_ns_per_residue"] = 1e9 * (r[kind]["cpu_s"] - prev[kind]["cpu_s"]) / extra
        results["linearity"][s] = row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metastudent", type=Path, default=Path("/usr/share/metastudent-data/dataset_201401"))
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="prep_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
               "inputs": "first N records of metastudent-data BPO+MFO+CCO BLAST DBs, exported to FASTA",
               "sizes": {}}
    for n in args.sizes:
        fa = work / f"first{n}.fa"
        residues = export_fasta(args.metastudent, n, fa)
        runs = {"seqio": [], "prep": []}
        for _ in range(args.repeats):
            for kind in ("seqio", "prep"):  # interleaved
                runs[kind].append(measure(kind, fa, work))
        row = {"records": n, "input_residues": residues}
        for kind, rs in runs.items():
            cpu = statistics.median(r["cpu_s"] for r in rs)
            row[kind] = {"cpu_s": cpu, "wall_s": statistics.median(r["wall_s"] for r in rs),
                         "residues_per_cpu_s": residues / cpu, "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
        row["prep_unique_residues"] = runs["prep"][0]["residues"]
        row["prep_over_seqio_cpu"] = row["prep"]["cpu_s"] / row["seqio"]["cpu_s"]
        results["sizes"][str(n)] = row
        print(f"{n:>8} records: seqio {row['seqio']['residues_per_cpu_s'] / 1e6:6.2f} M res/s/core, "
              f"prep {row['prep']['residues_per_cpu_s'] / 1e6:6.2f} M res/s/core, ratio {row['prep_over_seqio_cpu']:.2f}, "
              f"RSS prep {row['prep']['peak_rss_mb']:.0f} MB seqio {row['seqio']['peak_rss_mb']:.0f} MB", flush=True)
    linearity(results)
    # MMseqs2, reported separately, on the smallest input
    from bio_fm import mmseqs

    fa = work / f"first{args.sizes[0]}.fa"
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    mmseqs.mmseqs_cluster(fa, Path(tempfile.mkdtemp(dir=work)), identity=0.5, coverage=0.8)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    results["mmseqs_cluster_smallest"] = {"records": args.sizes[0], "wall_s": time.perf_counter() - t0,
                                          "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                                          "version": mmseqs.mmseqs_version()}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, args.out)


def print_table(results: dict, out: Path) -> None:
    sizes = list(results["sizes"])
    print("\n| records | residues | SeqIO parse M res/s/core | prep M res/s/core | prep / parse CPU | "
          "prep marginal ns/residue | prep peak RSS MB | parse peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sizes:
        r = results["sizes"][s]
        print(f"| {int(s):,} | {r['input_residues']:,} | {r['seqio']['residues_per_cpu_s'] / 1e6:.2f} | "
              f"{r['prep']['residues_per_cpu_s'] / 1e6:.2f} | {r['prep_over_seqio_cpu']:.2f} | "
              f"{results['linearity'][s].get('prep_marginal_ns_per_residue', float('nan')):.1f} | "
              f"{r['prep']['peak_rss_mb']:.0f} | {r['seqio']['peak_rss_mb']:.0f} |")
    mm = results["mmseqs_cluster_smallest"]
    print(f"\nMMseqs2 easy-cluster on {mm['records']:,} records: {mm['wall_s']:.1f} s wall, {mm['cpu_s']:.1f} CPU s")
    print(f"json: {out}")


if __name__ == "__main__":
    main()
