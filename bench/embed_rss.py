"""Peak memory of ``fm-embed`` at 10k and 100k sequences: it must stay flat (streaming, one chunk
in memory at a time).

    python bench/embed_rss.py                       # 10k and 100k, a 1-layer random model
    python bench/embed_rss.py --counts 10000 --checkpoint esm2_t6_8M_UR50D.pt

Inputs: the embedded slice holds 13,200 real UniProt sequences, so the 100k input is built by
sampling them with replacement (fixed seed) under new unique ids: real lengths (median ~350,
some beyond 1022 residues, which fm-embed windows), duplicated sequences. The default model is a
1-layer, 32-dim random export (what is measured is the pipeline: reading, batching, windows,
shards; the model's own memory is a constant); pass ``--checkpoint`` for a real one.
The job runs as a subprocess (the ``fm-embed`` entry point); its RSS is sampled from /proc every
0.5 s and its own ``getrusage`` peak is read from ``metrics.json``.
Writes bench/embed_rss.json and prints a table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_input(path: Path, count: int, seed: int) -> dict:
    from bio_fm.fasta import iter_fasta

    slice_dir = ROOT / "bio_fm" / "data" / "uniprot_slice"
    records = [r for split in ("train", "valid", "test") for r in iter_fasta(slice_dir / f"{split}.fasta.gz")]
    picks = np.random.default_rng(seed).integers(0, len(records), size=count)
    residues = 0
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for k, i in enumerate(picks):
            rid, seq = records[i]
            fh.write(f">{rid}_{k}\n{seq}\n")
            residues += len(seq)
    return {"sequences": count, "residues": residues, "distinct_sequences": int(len(np.unique(picks))),
            "longer_than_1022": int(sum(len(records[i][1]) > 1022 for i in picks))}


def micro_model(directory: Path) -> Path:
    import torch

    from bio_fm.alphabet import ProteinAlphabet
    from fm_core.config import EncoderConfig
    from fm_core.export import save_pretrained
    from fm_core.model import MaskedLM

    torch.manual_seed(0)
    alphabet = ProteinAlphabet()
    cfg = EncoderConfig(name="micro", num_layers=1, embed_dim=32, num_heads=2, vocab_size=alphabet.vocab_size,
                        pad_id=alphabet.pad_id, mask_id=alphabet.mask_id, max_length=1024)
    return save_pretrained(directory, MaskedLM(cfg), alphabet)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(fasta: Path, checkpoint: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", "from fm_core.cli import embed; embed()", f"input={fasta}",
           f"checkpoint={checkpoint}", f"out={out}", "overwrite=true", "progress=false", *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples = []
    while proc.poll() is None:
        value = rss_mb(proc.pid)
        if value is not None:
            samples.append((time.perf_counter() - started, value))
        time.sleep(0.5)
    output = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"fm-embed failed ({proc.returncode}):\n{output[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    wall = time.perf_counter() - started
    quart = {}
    for q in (0.25, 0.5, 0.75, 1.0):  # RSS at fractions of the run: flat if streaming works
        before = [v for t, v in samples if t <= q * wall]
        quart[f"rss_mb_at_{int(q * 100)}pct"] = before[-1] if before else None
    return {"wall_seconds": wall, "peak_rss_mb": metrics["embed/peak_rss_mb"],
            "sampled_peak_rss_mb": max(v for _, v in samples) if samples else None, **quart,
            "sequences": metrics["embed/sequences"], "residues": metrics["embed/residues"],
            "windowed_sequences": metrics["embed/windowed_sequences"], "shards": metrics["embed/shards"],
            "residues_per_second": metrics["embed/residues_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--workdir", default="/tmp/fm_embed_rss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="fm-embed threads= (torch.set_num_threads)")
    parser.add_argument("--extra", nargs="*", default=[], help="more fm-embed overrides, e.g. per_residue=true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "embed_rss.json"))
    args = parser.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else micro_model(work / "micro_model")
    report = {"checkpoint": str(checkpoint) if args.checkpoint else "random 1-layer 32-dim export (micro)",
              "overrides": args.extra, "runs": {}}
    for count in args.counts:
        fasta = work / f"input_{count}.fa.gz"
        info = build_input(fasta, count, args.seed)
        result = run(fasta, checkpoint, work / f"out_{count}", [f"threads={args.threads}", *args.extra])
        report["runs"][str(count)] = {"input": info, **result}
        print(f"{count:>8d} sequences: peak RSS {result['peak_rss_mb']:.0f} MB, "
              f"{result['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    runs = report["runs"]
    if len(runs) > 1:
        first, last = runs[str(min(args.counts))], runs[str(max(args.counts))]
        report["peak_rss_ratio_largest_vs_smallest"] = last["peak_rss_mb"] / first["peak_rss_mb"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'sequences':>10s} {'residues':>11s} {'peak RSS MB':>12s} {'RSS 25/50/75/100% of run':>28s} {'res/s':>8s}")
    for count, r in runs.items():
        q = "/".join(f"{r[f'rss_mb_at_{p}pct'] or 0:.0f}" for p in (25, 50, 75, 100))
        print(f"{count:>10s} {r['residues']:>11d} {r['peak_rss_mb']:>12.0f} {q:>28s} {r['residues_per_second']:>8.0f}")
    if "peak_rss_ratio_largest_vs_smallest" in report:
        print(f"peak RSS ratio {max(args.counts)} / {min(args.counts)}: {report['peak_rss_ratio_largest_vs_smallest']:.3f}")
    print(f"json: {out}")


if __name__ == "__main__":
    main()
