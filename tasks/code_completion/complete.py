"""Code completion at a cursor: prompts, token healing, end-of-line / end-of-block stops, and ``fm-complete``.

A prompt is the text before the cursor (left-to-right: ``<cls> prefix``) or, when text follows
the cursor, the FIM prompt (``<fim_prefix> P <fim_suffix> S <fim_middle>``, see ``code_fm.fim_format``).
The prompt keeps the most recent ``context`` tokens (the caller is told when it was cut).

Token healing: a cursor rarely falls on a token boundary the model saw in training (``"    ret"``
or a line start, whose newline is merged with the next line's indentation by the BPE). The last
prompt token is dropped and the first generated token must start with its text, so the model
chooses the tokenization; the dropped text is then removed from the completion.

Stops: ``line`` ends at the end of the current line; ``block`` ends before the first non-blank
line indented less than the block (not more than the current line when that opens a block with
``:``); both also end at ``<eos>``, after ``max_new_tokens`` or ``max_seconds``.

Generated code is only ever decoded and printed (or parsed with ``ast`` in evaluation): never run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from code_fm.fim_format import FIMTokenizer, fim_layout
from fm_core.decoding import NextTokenModel, generate
from fm_core.errors import UserError


class CompletionError(UserError, ValueError):
    """Bad input for completion: the message says what and where."""


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def block_end(first_line: str, text: str) -> int | None:
    """Offset in ``text`` (the completion, whose first line continues ``first_line``, the cursor's
    line) where the block ends, or None while it is still open. The block is what is indented at
    least as much as the cursor's line, or more than it when that line opens a block (``:``); a
    blank cursor line takes the first non-blank line's indentation."""
    lines = text.split("\n")
    current = first_line + lines[0]
    base, opens = (indent_of(current), current.rstrip().endswith(":")) if current.strip() else (None, False)
    offset = len(lines[0]) + 1
    for line in lines[1:-1]:  # the last piece may be an unfinished line
        if line.strip():
            if base is None:
                base = indent_of(line)
            elif indent_of(line) < base or (opens and indent_of(line) <= base):
                return offset - 1
        offset += len(line) + 1
    return None


@dataclass
class Prompt:
    ids: list[int]
    healed: str  # text of the dropped last token: the completion must start with it
    truncated_from: int  # prompt tokens before keeping the most recent ``context``
    first_line: str  # the cursor's line up to the cursor


@dataclass
class Completion:
    text: str
    stopped: str
    prompt_tokens: int
    truncated_from: int
    seconds: float


class Completer:
    """Completion of text at a cursor with any ``NextTokenModel`` sharing the BPE tokenizer."""

    def __init__(self, model: NextTokenModel, tokenizer: FIMTokenizer, context: int):
        if context < 8:
            raise ValueError(f"context {context} is too small")
        self.model, self.tok, self.context = model, tokenizer, context
        self.texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self.special = {int(i) for i in tokenizer.special_ids}
        self._allowed: dict[str, torch.Tensor] = {}

    def allowed_after(self, healed: str) -> torch.Tensor | None:
        if not healed:
            return None
        if healed not in self._allowed:
            self._allowed[healed] = torch.tensor([t.startswith(healed) and i not in self.special
                                                  for i, t in enumerate(self.texts)])
        return self._allowed[healed]

    def prompt(self, prefix: str, suffix: str = "", spm: bool = False) -> Prompt:
        if not prefix.strip() and not suffix.strip():
            raise CompletionError("empty prompt: there is no code before (or after) the cursor")
        p = list(map(int, self.tok.encode(prefix)))
        healed = ""
        if p:
            healed = self.tok.decode(p[-1:])
            p = p[:-1]
        first_line = prefix[prefix.rfind("\n") + 1:]
        if suffix:
            s = list(map(int, self.tok.encode(suffix)))
            budget = self.context - 3
            keep_s = min(len(s), budget // 4)  # the start of the suffix, then as much prefix as fits
            keep_p = min(len(p), budget - keep_s)
            ids = fim_layout(self.tok, p[len(p) - keep_p:], [], s[:keep_s], spm)
            total = len(p) + len(s) + 3
        else:
            keep_p = min(len(p), self.context - 1)
            ids = [self.tok.bos_id, *p[len(p) - keep_p:]]
            total = len(p) + 1
        return Prompt(ids, healed, total if total > len(ids) else 0, first_line)

    def complete(self, prompts: list[Prompt], *, mode: str = "line", max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 max_seconds: float | None = None) -> list[Completion]:
        if mode not in ("line", "block"):
            raise ValueError(f"mode must be 'line' or 'block', got {mode!r}")

        def text_of(row: int, ids: list[int]) -> str:
            text = self.tok.decode(ids)
            healed = prompts[row].healed
            return text[len(healed):] if text.startswith(healed) else text

        def end(row: int, ids: list[int]) -> int | None:
            text = text_of(row, ids)
            if mode == "line":
                return text.index("\n") if "\n" in text else None
            return block_end(prompts[row].first_line, text)

        res = generate(self.model, [p.ids for p in prompts], max_new_tokens=max_new_tokens,
                       stop=lambda row, ids: end(row, ids) is not None, eos_ids=(self.tok.eos_id,),
                       first_allowed=[self.allowed_after(p.healed) for p in prompts],
                       banned=sorted(self.special - {self.tok.eos_id}), temperature=temperature,
                       top_p=top_p, generator=torch.Generator().manual_seed(seed), max_seconds=max_seconds)
        out = []
        for row, (ids, why) in enumerate(zip(res.ids, res.stopped, strict=True)):
            text = text_of(row, ids)
            cut = end(row, ids)
            if cut is not None:
                text = text[:cut]
            elif why in ("max_new_tokens", "time") and mode == "block" and "\n" in text:
                text = text[: text.rindex("\n")]  # keep complete lines only
            out.append(Completion(text.rstrip() if mode == "block" else text, why, len(prompts[row].ids),
                                  prompts[row].truncated_from, res.seconds))
        return out


def read_source(path: str) -> str:
    """A source file's text; binary or non-UTF-8 files are refused with the reason."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise CompletionError(f"file {path}: cannot read ({err.strerror})") from err
    return decode_source(raw, f"file {path}")


def decode_source(raw: bytes, where: str) -> str:
    nul = raw.find(b"\0")
    if nul >= 0:
        raise CompletionError(f"{where}: binary data (NUL byte at offset {nul}), not source code")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CompletionError(f"{where}: not UTF-8 text (invalid byte at offset {err.start})") from err


def cursor_offset(text: str, line: int, column: int, where: str) -> int:
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise CompletionError(f"{where}: line {line} outside 1..{len(lines)}")
    if not 0 <= column <= len(lines[line - 1]):
        raise CompletionError(f"{where}: column {column} outside 0..{len(lines[line - 1])} on line {line}")
    return sum(len(x) + 1 for x in lines[: line - 1]) + column


def load_completer(checkpoint: str, context: int | None = None) -> tuple[Completer, FIMTokenizer]:
    from fm_core.checkpoint import CheckpointError
    from fm_core.decoding import NeuralLM
    from fm_core.export import load_pretrained

    if not Path(checkpoint).exists():
        raise CompletionError(f"checkpoint {checkpoint}: no such file or directory")
    try:
        net, tok = load_pretrained(checkpoint)
    except (CheckpointError, ValueError) as err:
        raise CompletionError(f"checkpoint {checkpoint}: {err}") from err
    if not net.config.causal:
        raise CompletionError(f"checkpoint {checkpoint} is a masked LM (causal=false): adapt it first with "
                              f"fm-finetune task=code_completion model.init_from={checkpoint}")
    if not isinstance(tok, FIMTokenizer):
        raise CompletionError(f"checkpoint {checkpoint}: its tokenizer ({tok.to_dict().get('kind')}) has no "
                              f"fill-in-the-middle sentinels: not a code completion model")
    return Completer(NeuralLM(net), tok, context or net.config.max_length), tok


def main(argv: list[str] | None = None) -> int:
    """``fm-complete`` in-process (the console command is ``tasks.code_completion.cli.main``)."""
    from tasks.code_completion.cli import parser

    return run(parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Complete at the cursor ``args`` describe; print the completion; the exit code."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    try:
        if args.file:
            text = read_source(args.file)
            lines = text.split("\n")
            line = args.line or len(lines)
            column = len(lines[line - 1]) if args.column is None and 1 <= line <= len(lines) else (args.column or 0)
            cut = cursor_offset(text, line, column, f"file {args.file}")
            prefix, suffix = text[:cut], text[cut:]
        else:
            text = decode_source(sys.stdin.buffer.read(), "stdin")
            text = text[:-1] if text.endswith("\n") else text
            prefix, _, suffix = text.partition(args.marker)
        completer, _ = load_completer(args.checkpoint, args.context)
        if args.retrieval and (args.mode != "line" or args.temperature > 0):
            raise CompletionError("--retrieval works in --mode line with greedy decoding (--temperature 0)")
        # --retrieval: the gate was fitted on left-to-right prompts, so the text after the cursor is not used
        prompt = completer.prompt(prefix, "" if args.retrieval or not suffix.strip() else suffix)
        if prompt.truncated_from:
            print(f"fm-complete: the prompt has {prompt.truncated_from} tokens; kept the most recent "
                  f"{len(prompt.ids)} (context {completer.context})", file=sys.stderr)
        budget = args.max_new_tokens or (48 if args.mode == "line" else 256)
        (result,) = completer.complete([prompt], mode=args.mode, max_new_tokens=budget,
                                       temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                       max_seconds=args.max_seconds)
        if args.retrieval:
            from tasks.code_completion.retrieval import RetrievalGate, choose

            try:
                gate = RetrievalGate.load(args.checkpoint)
            except (FileNotFoundError, ValueError) as err:
                raise CompletionError(f"checkpoint {err}") from err
            result.text = choose(gate, completer, [prefix], [result.text])[0]
    except CompletionError as err:
        print(f"fm-complete: {err}", file=sys.stderr)
        return 2
    print(result.text)
    if result.stopped == "time":
        print(f"fm-complete: stopped after {args.max_seconds:g} s (--max-seconds)", file=sys.stderr)
    return 0


def cli() -> None:
    sys.exit(main())  # the console command is tasks.code_completion.cli.main


__all__ = ["Completer", "Completion", "CompletionError", "Prompt", "block_end", "load_completer", "main"]
