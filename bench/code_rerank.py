"""Candidate reranking (`tasks/code_completion/rerank.py`) on the held-out stdlib split, from a
finished `fm-finetune task=code_completion` run: retrieval (the run's repository chunks + the
prefix) proposes lines, each system adds its own line and a scorer fitted on `valid` prompts picks
one. Systems: the model, its random-init twin, the n-gram, and the scorer without any language
model (`copy_line+rerank`), beside copy-line + repo, on the run's line prompts, with paired
bootstrap intervals. Writes JSON and prints a table.

    nice -n 10 python bench/code_rerank.py --run runs/code_completion [the run's overrides]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import RESULTS, code_completers, code_completion_task, machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default=str(RESULTS / "code_rerank.json"))
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    from fm_core.shards import load_tokenizer
    from tasks.code_completion import evaluate as ev

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = Path(args.run)
    done = json.loads((run / "metrics.json").read_text())
    cfg, task = code_completion_task(args.overrides)
    seed = int(cfg.seed)
    tok = load_tokenizer(task.data_dir)
    rows = [json.loads(x) for x in (run / "line_predictions.jsonl").read_text().splitlines()]
    lines = ev.line_cases(task.texts(tok, task.eval_split), len(rows), seed)
    assert [c.target for c in lines] == [r["target"] for r in rows], "the run's prompts differ from these"
    init_from = done.get("init_from") if done.get("init_from") != "random" else None
    task.rerank_candidates = args.candidates
    completers = code_completers(run, task, done)
    preds = {k: v for k, v in ((k, [r.get(k) for r in rows]) for k in rows[0]) if k not in ("file", "target")}
    metrics = task.run_rerank(completers, lines, preds, tok, seed, init_from)
    targets = [c.target for c in lines]
    shown = [k for k in preds if k.endswith(("+repo", "+rerank")) or k == "copy_line"]
    for key in shown:
        metrics.update({f"line/{m}/{key}": v for m, v in ev.line_scores(preds[key], targets).items()})
    res = {"run": str(run), "prompts": len(lines), "fit_split": task.gate_split, "candidates": args.candidates,
           "metrics": metrics, "seconds": time.perf_counter() - t0,
           "machine": machine(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'system':<22}{'line EM':>10}{'edit sim':>10}")
    for key in shown:
        print(f"{key:<22}{metrics[f'line/exact_match/{key}']:>10.2f}{metrics[f'line/edit_sim/{key}']:>10.2f}")
    for k, v in metrics.items():
        if k.startswith("paired/") and k.endswith("/mean"):
            base = k.rsplit("/", 1)[0]
            print(f"{base:<66} {v:7.2f}  [{metrics[base + '/ci95_low']:.2f}, {metrics[base + '/ci95_high']:.2f}]")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
