"""What a user sees from `fm-complete` on held-out line prompts: how many completions repeat a unit,
run to the token cap, add indentation on top of the typed one, or are empty; with the repetition
handling off and with the one the task chose on the validation split (`decoding.json`), side by side
on the same prompts; the cursor at the line start and after the typed indentation (as in an editor).
Also counts the in-file retriever's empty answers at an indented cursor, by the old rule (the
retrieved line must start with the typed indentation) and the current one.

Stop rules (`--mode line` against `--mode statement`, the repetition handling chosen): every prompt's
statement target is the logical line that starts at the cursor (the target line and its continuation
lines until brackets, strings and backslashes close, `statement_end`); both rules are scored against it
on all prompts and on those whose statement spans several lines. Run it on `--split valid` to choose a
rule (the held-out `test` files are for reporting).

    nice -n 10 python bench/code_completion_quality.py --checkpoint runs/code_completion/export --prompts 300
    nice -n 10 python bench/code_completion_quality.py --checkpoint runs/code_completion/export --split valid \
        --out bench/code_completion_stops.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import RESULTS, machine

REPEAT = re.compile(r"(.{2,}?)\1{2,}")  # a unit of 2+ characters three times in a row (indentation stripped)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default="data/code")
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=str(RESULTS / "code_completion_quality.json"))
    args = ap.parse_args()
    import torch

    from fm_core.shards import ShardDataset, load_tokenizer
    from tasks.code_completion import evaluate as ev
    from tasks.code_completion.complete import load_completer, open_brackets, statement_end
    from tasks.code_completion.retrieval import continuation, retrieve

    torch.set_num_threads(1)
    tok = load_tokenizer(args.data_dir)
    files = ShardDataset(Path(args.data_dir) / args.split)
    cases = ev.line_cases([tok.decode(files.array(i)) for i in range(len(files))], args.prompts, 0)
    completer, _ = load_completer(args.checkpoint)
    chosen = (completer.repetition_penalty, completer.no_repeat_ngram)
    indented = [c for c in cases if c.target[: len(c.target) - len(c.target.lstrip())]]
    cursors = {"line_start": [(c.prefix, c.target) for c in cases],
               "after_indentation": [(c.prefix + c.target[: len(c.target) - len(c.target.lstrip())], c.target.lstrip())
                                     for c in indented]}
    out: dict[str, float] = {"prompts": len(cases), "indented_prompts": len(indented)}
    for rules, (penalty, ngram) in (("off", (1.0, 0)), ("chosen", chosen)):
        completer.repetition_penalty, completer.no_repeat_ngram = penalty, ngram
        for where, pairs in cursors.items():
            prompts = [completer.prompt(p) for p, _ in pairs]
            res = []
            for b in range(0, len(prompts), 32):
                res += completer.complete(prompts[b : b + 32], mode="line", max_new_tokens=ev.LINE_TOKENS)
            texts = [r.text for r in res]
            key = f"{rules}/{where}"
            out[f"{key}/repeats_a_unit"] = sum(bool(REPEAT.search(t.strip())) for t in texts)
            out[f"{key}/ran_to_cap"] = sum(r.stopped == "max_new_tokens" for r in res)
            out[f"{key}/empty"] = sum(not t.strip() for t in texts)
            if where == "after_indentation":
                out[f"{key}/adds_indentation"] = sum(t[:1] in (" ", "\t") for t in texts)
            scores = ev.line_scores(texts, [t for _, t in pairs])
            out.update({f"{key}/{m}": v for m, v in scores.items()})
    # stop rules against the logical line that starts at the cursor (repetition handling as chosen)
    completer.repetition_penalty, completer.no_repeat_ngram = chosen
    stmt = []
    for c in cases:
        rest = c.target + c.suffix + "\n"
        end = statement_end(rest, open_brackets(c.prefix))  # from the state the prefix leaves
        stmt.append(rest[: end if end is not None else len(c.target)])
    multi = [i for i, t in enumerate(stmt) if "\n" in t]
    out["statement/multi_line_targets"] = len(multi)
    prompts = [completer.prompt(c.prefix) for c in cases]
    for mode, budget in (("line", ev.LINE_TOKENS), ("statement", 128)):
        res = []
        for b in range(0, len(prompts), 32):
            res += completer.complete(prompts[b : b + 32], mode=mode, max_new_tokens=budget)
        texts = [r.text for r in res]
        out[f"statement/{mode}_mode/ran_to_cap"] = sum(r.stopped == "max_new_tokens" for r in res)
        out[f"statement/{mode}_mode/multi_line_outputs"] = sum("\n" in t for t in texts)
        out.update({f"statement/{mode}_mode/{m}": v for m, v in ev.line_scores(texts, stmt).items()})
        if multi:
            out.update({f"statement/{mode}_mode/multi_line_targets/{m}": v for m, v in
                        ev.line_scores([texts[i] for i in multi], [stmt[i] for i in multi]).items()})
    typed = [(c.prefix, c.target[: len(c.target) - len(c.target.lstrip())]) for c in indented]
    out["retriever_empty_after_indentation/old_rule"] = sum(not retrieve(p)[0].startswith(t) for p, t in typed)
    out["retriever_empty_after_indentation/now"] = sum(not continuation(p + t)[0] for p, t in typed)
    out["retriever_empty_at_line_start"] = sum(not continuation(c.prefix)[0] for c in cases)
    res = {"checkpoint": args.checkpoint, "split": args.split,
           "chosen": {"repetition_penalty": chosen[0], "no_repeat_ngram": chosen[1]}, "counts": out,
           "machine": machine(), "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in out.items():
        print(f"{k:<58}{v:>10.2f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
