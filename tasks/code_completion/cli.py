"""``fm-complete``'s command line: parsed here without importing torch, so that ``--help`` and
argument errors answer at once; the work is ``tasks.code_completion.complete.run``."""

from __future__ import annotations

import argparse

from fm_core.errors import argparse_main

DESCRIPTION = """Complete the current line (or statement, or block) of code at a cursor. The code comes from
--file with --line/--column, or from stdin: everything before the marker (default <cursor>) is the prefix,
everything after it the optional suffix. A single trailing newline on stdin is dropped (echo adds one).

examples:
  fm-complete --checkpoint runs/finetune/code_completion/<run>/export --file app.py --line 12
  printf 'def add(a, b):\\n    return <cursor>\\n' | fm-complete --checkpoint <export>
  fm-complete --checkpoint <export> --file app.py --line 30 --mode block --max-seconds 5
  fm-complete --checkpoint <export> --serve      # JSON lines in, JSON lines out; the model loads once
  fm-complete --checkpoint <export> --repo mypkg --file mypkg/app.py --line 12   # + the package's other files

Errors are one line with exit code 2 (--debug or FM_DEBUG=1 shows the traceback)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fm-complete", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export directory written by fm-finetune task=code_completion")
    p.add_argument("--file", help="source file (UTF-8)")
    p.add_argument("--line", type=int, help="cursor line, 1-based (default: end of file)")
    p.add_argument("--column", type=int, default=None, help="cursor column, 0-based (default: end of line)")
    p.add_argument("--marker", default="<cursor>", help="cursor marker in stdin text")
    p.add_argument("--mode", choices=("line", "statement", "block"), default="line",
                   help="where the completion stops: the end of the line, of the logical line (brackets, strings "
                        "and continuations closed), or of the block")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 48 (line), 256 (block)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="wall-clock bound on decoding")
    p.add_argument("--context", type=int, default=None, help="prompt tokens kept (default: the model's max_length)")
    p.add_argument("--retrieval", action="store_true",
                   help="line mode, greedy: let the model choose between its own line and the line retrieved from "
                        "earlier in the file (tasks.code_completion.retrieval, with the gate the task exported); the text "
                        "after the cursor is not used")
    p.add_argument("--rerank", action="store_true",
                   help="line mode, greedy: retrieval (with --repo, its chunks too) proposes the lines after the most "
                        "similar earlier lines, the model adds its own, and the scorer the task exported "
                        "(task.rerank_candidates > 0) picks one (tasks.code_completion.rerank); the text after the "
                        "cursor is not used")
    p.add_argument("--repo", help="repository directory: retrieved chunks of its other source files go ahead of the "
                                  "prompt (the settings the task exported beside the model; --file is excluded)")
    p.add_argument("--serve", action="store_true",
                   help="load the model once, then answer JSON lines on stdin, one JSON line each on stdout: "
                        '{"prefix": ..., "suffix": ..., "id": ..., "mode": ...} (or "text" with the marker, or "file" '
                        '+ "line"/"column"); the options above are the defaults of every request')
    return p


def main(argv: list[str] | None = None) -> None:
    argparse_main("fm-complete", parser(), "tasks.code_completion.complete:run", argv)


if __name__ == "__main__":
    main()
