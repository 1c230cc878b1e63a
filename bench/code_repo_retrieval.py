"""Repository-level retrieval on the held-out stdlib split, from a finished `fm-finetune
task=code_completion` run: the model (`export/`), its random-init twin (`export_random_init/`), the
n-gram and copy-line, each in-file (the run's own `line_predictions.jsonl`) and with the same BM25
chunks of the package's other files (`<system>+repo`), on the run's line prompts, with paired
bootstrap intervals. The settings are the task's YAML (`conf/task/code_completion.yaml`,
`repo_retrieval:`), each system's repetition handling the one the run chose (`metrics.json`).
Also writes the settings into the export for `fm-complete --repo`.

    nice -n 10 python bench/code_repo_retrieval.py --run runs/code_completion [overrides: task.repo_retrieval.top_k=4]
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
    ap.add_argument("--out", default=str(RESULTS / "code_repo_retrieval.json"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    from fm_core.shards import load_tokenizer
    from tasks.code_completion import evaluate as ev
    from tasks.code_completion.repo_retrieval import SETTINGS_FILE

    torch.set_num_threads(1)
    run = Path(args.run)
    done = json.loads((run / "metrics.json").read_text())
    cfg, task = code_completion_task(args.overrides)
    tok = load_tokenizer(task.data_dir)
    rows = [json.loads(x) for x in (run / "line_predictions.jsonl").read_text().splitlines()]
    lines = ev.line_cases(task.texts(tok, task.eval_split), len(rows), int(cfg.seed))
    assert [c.target for c in lines] == [r["target"] for r in rows], "the run's prompts differ from these"
    completers = code_completers(run, task, done)
    ngram = f"ngram{task.ngram_order}"
    preds = {k: [r[k] for r in rows] for k in ("model", "random_init", ngram, "copy_line")}
    t = time.perf_counter()
    init_from = done.get("init_from") if done.get("init_from") != "random" else None
    metrics = task.run_repo_retrieval(completers, lines, preds, tok, run / "export", int(cfg.seed), init_from)
    metrics["seconds"] = time.perf_counter() - t
    targets = [c.target for c in lines]
    for key in ("model", "random_init", ngram, "copy_line"):
        metrics.update({f"line/{m}/{key}": v for m, v in ev.line_scores(preds[key], targets).items()})
        repo = f"{key}+repo"  # retrieval's gain for each system
        for m in ("exact_match", "edit_sim"):
            boot = ev.paired_bootstrap(ev.per_prompt_scores(preds[repo], targets)[m],
                                       ev.per_prompt_scores(preds[key], targets)[m], seed=int(cfg.seed))
            metrics.update({f"paired/line/{m}/{repo}-{key}/{k}": v for k, v in boot.items()})
    res = {"run": str(run), "prompts": len(lines), "settings": task.retrieval_settings(init_from), "metrics": metrics,
           "settings_file": str(run / "export" / SETTINGS_FILE), "machine": machine(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'system':<22}{'line EM':>10}{'edit sim':>10}")
    for key in ("model", "random_init", ngram, "copy_line"):
        for k in (key, f"{key}+repo"):
            print(f"{k:<22}{metrics[f'line/exact_match/{k}']:>10.2f}{metrics[f'line/edit_sim/{k}']:>10.2f}")
    for k, v in metrics.items():
        if k.startswith(("paired/", "beats_", "repo_retrieval/")) and not k.endswith(("ci95_low", "ci95_high")):
            lo, hi = k.rsplit("/", 1)[0] + "/ci95_low", k.rsplit("/", 1)[0] + "/ci95_high"
            print(f"{k:<70} {v:8.2f}" + (f"  [{metrics[lo]:.2f}, {metrics[hi]:.2f}]" if lo in metrics else ""))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
