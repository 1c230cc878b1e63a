"""Start-up time of every CLI: `--help` and an argument error, each the median of N runs (default 5)
of the installed console script as a fresh process, beside `python -c "import torch"` measured in
the same run (what every CLI paid before its imports were made lazy). Writes JSON and prints a table.

    nice -n 10 python bench/cli_startup.py --runs 5 --out bench/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# tool -> arguments of a typical mistake (answered before any work starts)
CASES = {
    "fm-pretrain": ["seedd=1"],
    "fm-embed": [],
    "fm-finetune": ["task=contactz"],
    "fm-protein-score": [],
    "fm-prep": ["bogus"],
    "fm-predict-structure": ["--fasta", "x.fa"],
    "fm-complete": ["--line", "x"],
    "fm-score": [],
    "fm-report": [],
}
# fm-prep's kinds each build their own parser (its module imported for the arguments)
PREP_KINDS = {kind: ["--no-such-flag"] for kind in ("protein", "structures", "molecules", "code", "go")}


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seconds(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child: what a loaded machine does not inflate
    as much as the wall time) and the exit code of one run."""
    start, cpu = time.perf_counter(), _child_cpu()
    proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})
    return time.perf_counter() - start, _child_cpu() - cpu, proc.returncode


def median_of(cmd: list[str], runs: int) -> dict[str, float | int]:
    times, cpus, codes = zip(*(seconds(cmd) for _ in range(runs)), strict=True)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "median_cpu_s": round(statistics.median(cpus), 3), "exit_code": codes[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    rows = {}
    commands = [(tool, [str(BIN / tool)], mistake) for tool, mistake in CASES.items()]
    commands += [(f"fm-prep {kind}", [str(BIN / "fm-prep"), kind], mistake) for kind, mistake in PREP_KINDS.items()]
    for name, base, mistake in commands:
        rows[name] = {"help": median_of([*base, "--help"], args.runs),
                      "argument_error": median_of([*base, *mistake], args.runs)}
    peer = median_of([sys.executable, "-c", "import torch"], args.runs)
    worst = max(max(r["help"]["median_s"], r["argument_error"]["median_s"]) for r in rows.values())
    result = {"runs": args.runs, "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), "import_torch": peer, "clis": rows,
              "worst_median_s": worst, "target_s": 2.0, "all_under_target": worst < 2.0,
              "worst_over_import_torch": round(worst / peer["median_s"], 3),
              "worst_median_cpu_s": max(max(r["help"]["median_cpu_s"], r["argument_error"]["median_cpu_s"])
                                        for r in rows.values())}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'cli':<22}{'--help s':>10}{'cpu s':>8}{'error s':>10}{'cpu s':>8}  exit codes (help, error)")
    for tool, r in rows.items():
        h, e = r["help"], r["argument_error"]
        print(f"{tool:<22}{h['median_s']:>10.3f}{h['median_cpu_s']:>8.3f}{e['median_s']:>10.3f}{e['median_cpu_s']:>8.3f}"
              f"  {h['exit_code']}, {e['exit_code']}")
    print(f"{'import torch':<22}{peer['median_s']:>10.3f}{peer['median_cpu_s']:>8.3f}"
          f"   (medians of {args.runs}; load {result['load_avg_1m']})")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
