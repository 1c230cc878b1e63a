"""One completion in a loaded `fm-complete --serve` process, beside the same completion as a fresh
`fm-complete` process (what an editor paid per keystroke before --serve), on the same prompts,
interleaved round by round. Reports the medians and their ratio; writes JSON and prints a table.

    nice -n 10 python bench/complete_serve.py --checkpoint runs/code_completion/export --rounds 5

Prompts: the first `--prompts` line prompts of the held-out split (`tasks.code_completion.evaluate.line_cases`
on `--data-dir`'s `test` files, seed 0), greedy, line mode (the fm-complete defaults).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, machine

BIN = Path(sys.executable).parent


def prompts(data_dir: str, n: int) -> list[str]:
    from fm_core.shards import ShardDataset, load_tokenizer
    from tasks.code_completion import evaluate as ev

    tok = load_tokenizer(data_dir)
    files = ShardDataset(Path(data_dir) / "test")
    texts = [tok.decode(files.array(i)) for i in range(len(files))]
    return [c.prefix for c in ev.line_cases(texts, n, 0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default="data/code")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "complete_serve.json"))
    args = ap.parse_args()
    texts = prompts(args.data_dir, args.prompts)
    t0 = time.perf_counter()
    server = subprocess.Popen([str(BIN / "fm-complete"), "--checkpoint", args.checkpoint, "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(server.stdout.readline())
    load_s = time.perf_counter() - t0
    served, decode, fresh, chars, stops = [], [], [], [], []
    for r in range(args.rounds):
        for i, text in enumerate(texts):
            for side in (("serve", "fresh") if (r + i) % 2 == 0 else ("fresh", "serve")):
                t = time.perf_counter()
                if side == "serve":
                    server.stdin.write(json.dumps({"prefix": text}) + "\n")
                    server.stdin.flush()
                    reply = json.loads(server.stdout.readline())
                    served.append(time.perf_counter() - t)
                    decode.append(reply["seconds"])
                    chars.append(len(reply["text"]))
                    stops.append(str(reply["stopped"]))
                else:
                    subprocess.run([str(BIN / "fm-complete"), "--checkpoint", args.checkpoint], input=text,
                                   capture_output=True, text=True, check=True)
                    fresh.append(time.perf_counter() - t)
    server.stdin.close()
    server.wait(timeout=60)
    res = {"checkpoint": args.checkpoint, "context": ready["context"], "prompts": len(texts), "rounds": args.rounds,
           "server_start_s": load_s, "serve_median_s": statistics.median(served),
           "serve_decode_median_s": statistics.median(decode), "fresh_process_median_s": statistics.median(fresh),
           "serve_completion_chars_median": statistics.median(chars), "serve_empty_completions": chars.count(0),
           "serve_stopped": {k: stops.count(k) for k in sorted(set(stops))},
           "fresh_over_serve": statistics.median(fresh) / statistics.median(served), "machine": machine(),
           "command": " ".join(sys.argv)}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'side':<26}{'median s':>10}")
    for k in ("serve_median_s", "serve_decode_median_s", "fresh_process_median_s", "server_start_s"):
        print(f"{k:<26}{res[k]:>10.3f}")
    print(f"fresh / serve: {res['fresh_over_serve']:.1f}x  ->  {args.out}")


if __name__ == "__main__":
    main()
