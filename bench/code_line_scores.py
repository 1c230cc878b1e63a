"""Line EM / edit similarity of every system in a code_completion run's line_predictions.jsonl, and the paired
bootstrap intervals of the pairs the README quotes (for a run stopped before its metrics.json):

    python bench/code_line_scores.py runs/code_completion
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tasks.code_completion import evaluate as ev
from tasks.code_completion.task import repo_comparisons

PAIRS = [("copy_line+repo", "copy_line"), ("model", "random_init"), ("model+retrieval", "random_init+retrieval"),
         ("model+retrieval", "copy_line+repo"), ("random_init+retrieval", "copy_line+repo")]
OUT = Path(__file__).resolve().parent / "code_completion_issue17.json"


def main(run: str) -> None:
    with open(Path(run) / "line_predictions.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    targets = [r["target"] for r in rows]
    systems = [k for k in rows[0] if k not in ("file", "target")]
    predictions = {k: [r[k] for r in rows] for k in systems}
    per_prompt = {k: ev.per_prompt_scores(predictions[k], targets) for k in systems}
    out = {f"line/{m}/{k}": v for k in systems for m, v in ev.line_scores(predictions[k], targets).items()}
    out.update(repo_comparisons(predictions, targets, 0))
    for a, b in PAIRS:
        for m in ("exact_match", "edit_sim"):
            out.update({f"paired/line/{m}/{a}-{b}/{k}": v
                        for k, v in ev.paired_bootstrap(per_prompt[a][m], per_prompt[b][m], seed=0).items()})
    OUT.write_text(json.dumps({"source": f"{run}/line_predictions.jsonl ({len(rows)} line prompts)",
                               "command": f"python bench/code_line_scores.py {run}", "metrics": out}, indent=2))
    print(f"{len(out)} figures -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
