"""Kill-and-resume: are a resumed run's reported `train/seconds` and `train/tokens_per_second` those
of the same run never interrupted? Each round runs, as real `fm-pretrain` processes on the same
data and config, (a) the run uninterrupted and (b) the run SIGKILLed once its checkpoint at step
`--kill-after` is on disk, then the same command again (resume=auto). The order of (a) and (b)
alternates by round; the figures are the ratio of medians over rounds (resumed / uninterrupted) and
the median of the per-round (paired) ratios.

    nice -n 10 python bench/resume_seconds.py --rounds 3 --out bench/resume_seconds.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def small_fasta(src: Path, dst: Path, n: int, skip: int = 0) -> Path:
    from bio_fm.fasta import iter_fasta

    with gzip.open(dst, "wt") as fh:
        for name, seq in list(iter_fasta(src))[skip:skip + n]:
            fh.write(f">{name}\n{seq}\n")
    return dst


def command(train_fa: Path, val_fa: Path, run_dir: Path, steps: int, every: int) -> list[str]:
    return [str(BIN / "fm-pretrain"), "model=tiny", "model.max_length=128", "data=fasta",
            f"data.train.path={train_fa}", f"data.val.path={val_fa}", "data.max_tokens=1024",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={max(steps // 4, 1)}",
            "trainer.enable_progress_bar=false", f"callbacks.resume_checkpoint.every_n_train_steps={every}",
            "logger=csv", f"hydra.run.dir={run_dir}", f"paths.run_dir={run_dir}"]


def uninterrupted(cmd: list[str], run_dir: Path) -> dict:
    subprocess.run(cmd, env=ENV, capture_output=True, check=True, timeout=3600)
    return json.loads((run_dir / "metrics.json").read_text())


def killed_then_resumed(cmd: list[str], run_dir: Path, kill_after: int) -> dict:
    ckpt = run_dir / "checkpoints" / f"resume-step{kill_after:07d}.ckpt"
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ckpt.exists():  # renamed into place last, after its sidecar
        if first.poll() is not None:
            raise SystemExit(f"fm-pretrain ended (exit {first.returncode}) before step {kill_after}")
        time.sleep(0.02)
    time.sleep(0.5)  # let it train past the checkpoint: that work is lost and redone, counted once
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    from fm_core.checkpoint import safe_torch_load

    leg1 = safe_torch_load(ckpt)["fm_toolkit"]["train_seconds"]  # what the resumed leg starts from
    subprocess.run(cmd, env=ENV, capture_output=True, check=True, timeout=3600)
    return {**json.loads((run_dir / "metrics.json").read_text()), "leg1_seconds": leg1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    p.add_argument("--kill-after", type=int, default=60, help="kill once the checkpoint of this step is written")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    slice_dir = Path(str(files("bio_fm").joinpath("data/uniprot_slice")))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_fa = small_fasta(slice_dir / "valid.fasta.gz", tmp / "train.fa.gz", 64)
        val_fa = small_fasta(slice_dir / "valid.fasta.gz", tmp / "val.fa.gz", 24, skip=64)
        for r in range(args.rounds):
            ref_dir, res_dir = tmp / f"ref{r}", tmp / f"resumed{r}"
            ref_cmd = command(train_fa, val_fa, ref_dir, args.steps, args.every)
            res_cmd = command(train_fa, val_fa, res_dir, args.steps, args.every)
            if r % 2 == 0:
                ref = uninterrupted(ref_cmd, ref_dir)
                res = killed_then_resumed(res_cmd, res_dir, args.kill_after)
            else:
                res = killed_then_resumed(res_cmd, res_dir, args.kill_after)
                ref = uninterrupted(ref_cmd, ref_dir)
            rows.append({"round": r, "ref_seconds": ref["train/seconds"], "resumed_seconds": res["train/seconds"],
                         "ref_cpu_seconds": ref["train/cpu_seconds"], "resumed_cpu_seconds": res["train/cpu_seconds"],
                         "ref_tokens_per_second": ref["train/tokens_per_second"],
                         "resumed_tokens_per_second": res["train/tokens_per_second"],
                         "resumed_legs": res["train/legs"], "resumed_leg1_seconds": res["leg1_seconds"], "same_val_perplexity":
                         res["val/perplexity"] == ref["val/perplexity"]})
            print(f"round {r}: uninterrupted {ref['train/seconds']:.2f} s, resumed {res['train/seconds']:.2f} s "
                  f"({res['train/legs']} legs: {res['leg1_seconds']:.2f} s to step {args.kill_after}, then "
                  f"{res['train/seconds'] - res['leg1_seconds']:.2f} s)", flush=True)
    med = {k: statistics.median(row[k] for row in rows) for k in
           ("ref_seconds", "resumed_seconds", "ref_cpu_seconds", "resumed_cpu_seconds", "ref_tokens_per_second",
            "resumed_tokens_per_second")}
    result = {"steps": args.steps, "kill_after": args.kill_after, "rounds": rows, **{f"median_{k}": v for k, v in med.items()},
              "seconds_ratio": med["resumed_seconds"] / med["ref_seconds"],
              "cpu_seconds_ratio": med["resumed_cpu_seconds"] / med["ref_cpu_seconds"],
              # each round's pair ran back to back: the median of the per-round ratios is the paired figure
              "paired_seconds_ratio_median": statistics.median(r["resumed_seconds"] / r["ref_seconds"] for r in rows),
              "paired_cpu_seconds_ratio_median": statistics.median(r["resumed_cpu_seconds"] / r["ref_cpu_seconds"]
                                                                   for r in rows),
              "tokens_per_second_ratio": med["resumed_tokens_per_second"] / med["ref_tokens_per_second"],
              "load_avg_1m": os.getloadavg()[0]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':24}{'uninterrupted':>14}{'resumed':>10}{'ratio':>8}")
    print(f"{'train/seconds':24}{med['ref_seconds']:14.2f}{med['resumed_seconds']:10.2f}{result['seconds_ratio']:8.3f}")
    print(f"{'train/cpu_seconds':24}{med['ref_cpu_seconds']:14.2f}{med['resumed_cpu_seconds']:10.2f}"
          f"{result['cpu_seconds_ratio']:8.3f}")
    print(f"{'paired (median of rounds)':24}{'':14}{'':10}{result['paired_seconds_ratio_median']:8.3f}"
          f"  (CPU {result['paired_cpu_seconds_ratio_median']:.3f})")
    print(f"{'train/tokens_per_second':24}{med['ref_tokens_per_second']:14.0f}{med['resumed_tokens_per_second']:10.0f}"
          f"{result['tokens_per_second_ratio']:8.3f}")


if __name__ == "__main__":
    main()
