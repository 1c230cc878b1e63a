"""HumanEval and its single-line infilling for the exports of a finished `fm-finetune task=code_completion`
run (the model in `export/`, its twin in `export_random_init/`), the n-gram and copy-line, with the
bench settings of the task's YAML (`conf/task/code_completion.yaml`, `humaneval:`) and any overrides:

    nice -n 10 python bench/humaneval_exports.py --run runs/code_completion task.humaneval.problems=20

`--corpus DIR` (repeatable: prepared `fm-prep code` directories, their train splits) adds the
decontamination check of the problems against those files (the pre-training and fine-tuning corpora).

Each system decodes with the repetition handling its run chose (`metrics.json`, else `decoding.json`).
Writes JSON (flat metrics) and prints the table.
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
    ap.add_argument("--out", default=str(RESULTS / "humaneval_exports.json"))
    ap.add_argument("--corpus", action="append", default=[], help="fm-prep code directory; its train split is checked")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch
    from hydra.utils import instantiate

    from tasks.code_completion.task import humaneval_table

    torch.set_num_threads(1)
    run = Path(args.run)
    done = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    cfg, task = code_completion_task(args.overrides)
    completers = code_completers(run, task, done)
    bench = instantiate(cfg.task.humaneval)
    t = time.perf_counter()

    def corpus():  # every train file of the given prepared corpora, for the decontamination check
        from fm_core.shards import ShardDataset, load_tokenizer

        for d in args.corpus:
            train, tok = ShardDataset(Path(d) / "train"), load_tokenizer(d)
            paths = train.column("path")
            yield from ((f"{d}:{paths[i]}", tok.decode(train.array(i))) for i in range(len(train)))

    metrics, _ = bench.run(completers, int(cfg.seed), corpus if args.corpus else None)
    metrics["seconds"] = time.perf_counter() - t
    res = {"run": str(run), "metrics": metrics, "decoding": {k: [c.repetition_penalty, c.no_repeat_ngram]
                                                              for k, c in completers.items()},
           "machine": machine(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(humaneval_table(metrics, [*completers, "copy_line"]))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
