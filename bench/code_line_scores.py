"""Line EM / edit similarity of every system in a code_completion run's line_predictions.jsonl, and the paired
bootstrap intervals of the pairs the README quotes (for a run stopped before its metrics.json):

    python bench/code_line_scores.py runs/code_completion
"""
import json, sys
from tasks.code_completion import evaluate as ev
from tasks.code_completion.task import repo_comparisons
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/line_predictions.jsonl")]
t = [r["target"] for r in rows]
keys = [k for k in rows[0] if k not in ("file", "target")]
P = {k: [r[k] for r in rows] for k in keys}
S = {k: ev.per_prompt_scores(P[k], t) for k in keys}
out = {f"line/{m}/{k}": v for k in keys for m, v in ev.line_scores(P[k], t).items()}
out.update(repo_comparisons(P, t, 0))
for a, b in [("copy_line+repo", "copy_line"), ("model", "random_init"), ("model+retrieval", "random_init+retrieval"),
             ("model+retrieval", "copy_line+repo"), ("random_init+retrieval", "copy_line+repo")]:
    for m in ("exact_match", "edit_sim"):
        out.update({f"paired/line/{m}/{a}-{b}/{k}": v for k, v in ev.paired_bootstrap(S[a][m], S[b][m], seed=0).items()})
json.dump({"source": f"{sys.argv[1]}/line_predictions.jsonl ({len(rows)} line prompts)",
           "command": "python bench/code_line_scores.py " + sys.argv[1],
           "metrics": out}, open("bench/code_completion_issue17.json", "w"), indent=2)
print(len(out))
