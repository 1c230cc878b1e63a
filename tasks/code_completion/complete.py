"""Code completion at a cursor: prompts, token healing, end-of-line / end-of-block stops, and ``fm-complete``.

A prompt is the text before the cursor (left-to-right: ``<cls> prefix``) or, when text follows
the cursor, the FIM prompt (``<fim_prefix> P <fim_suffix> S <fim_middle>``, see ``code_fm.fim_format``).
The prompt keeps the most recent ``context`` tokens (the caller is told when it was cut).

Token healing: a cursor rarely falls on a token boundary the model saw in training (``"    ret"``
or a line start, whose newline is merged with the next line's indentation by the BPE). The last
prompt token is dropped and the first generated token must start with its text, so the model
chooses the tokenization; the dropped text is then removed from the completion.

Stops: ``line`` ends at the end of the current line; ``statement`` at the end of the logical line
(Python's rule: the first newline outside brackets, strings and a backslash continuation, from the
state the prefix leaves: ``foo(a,`` + completion goes on to the closing ``)``, a cursor inside a
triple-quoted string to its end; with text after the cursor on its line, e.g. an editor's
auto-closed ``)``, at the line's end);
``block`` ends before the first non-blank line indented less than the block (not more than the
current line when that opens a block with ``:``); all also end at ``<eos>``, after
``max_new_tokens`` or ``max_seconds``.

Generated code is only ever decoded and printed (or parsed with ``ast`` in evaluation): never run.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from code_fm.fim_format import FIMTokenizer, fim_layout
from fm_core.decoding import NextTokenModel, generate
from fm_core.errors import UserError

DECODING_FILE = "decoding.json"  # the repetition handling the task chose on the validation split


class CompletionError(UserError, ValueError):
    """Bad input for completion: the message says what and where."""


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def block_end(first_line: str, text: str, floor: int = 0) -> int | None:
    """Offset in ``text`` (the completion, whose first line continues ``first_line``, the cursor's
    line) where the block ends, or None while it is still open. The block is what is indented at
    least as much as the cursor's line, or more than it when that line opens a block (``:``); a
    blank cursor line takes the first non-blank line's indentation."""
    lines = text.split("\n")
    current = first_line + lines[0]
    base, opens = (indent_of(current), current.rstrip().endswith(":")) if current.strip() else (None, False)
    # a blank cursor line: the block is at least as indented as the code above it (``floor``)
    if not first_line and current.strip():  # the cursor at a line start: this is the block's first line
        if indent_of(current) < floor:
            return 0
        opens = False  # e.g. the first line of a function body: the body goes on at its indentation
    offset = len(lines[0]) + 1
    for line in lines[1:-1]:  # the last piece may be an unfinished line
        if line.strip():
            if base is None and indent_of(line) < floor:
                return offset - 1
            if base is None:
                base = indent_of(line)
            elif indent_of(line) < base or (opens and indent_of(line) <= base):
                return offset - 1
        offset += len(line) + 1
    return None


MODES = ("line", "statement", "block")
OPENERS, CLOSERS = "([{", ")]}"


@dataclass(frozen=True)
class LineState:
    """Where a scan of Python source stopped: the brackets open, the string open (its quote: ``'``,
    ``"``, ``'''`` or ``\"\"\"``; ``#`` for a comment; ``""`` for code) and whether the text ended with
    a backslash continuation."""

    depth: int = 0
    quote: str = ""
    continued: bool = False


def scan(text: str, state: LineState = LineState(), stop: bool = False) -> tuple[int | None, LineState]:
    """Scan ``text`` from ``state``. ``stop``: return at the first newline that ends the logical line
    (outside brackets, strings and continuations) with its offset; else return ``(None, state at the
    end)``, with brackets closed beyond the open ones ignored (a prefix's stray ``)``)."""
    depth, quote, i, n = state.depth, state.quote, 0, len(text)
    if state.continued:  # the newline after a trailing backslash does not end the line
        i = 2 if text.startswith("\r\n") else 1 if text.startswith("\n") else 0
    while i < n:
        ch = text[i]
        if quote == "#":  # a comment runs to the end of its line; the newline is code again
            j = text.find("\n", i)
            if j < 0:
                return None, LineState(depth, quote)
            quote, i = "", j - (j > 0 and text[j - 1] == "\r")
            continue
        if quote:
            if ch == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i, quote = i + len(quote), ""
                continue
            if not (ch in "\r\n" and len(quote) == 1):
                i += 1
                continue
            quote = ""  # an unterminated one-line string ends with its line (a syntax error anyway)
        if ch == "#":
            quote = "#"
            continue
        if ch in "'\"":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            continue
        if ch == "\\":
            rest = text[i + 1 : i + 3]
            if not rest or rest == "\r":
                return None, LineState(depth, quote, True)
            if rest.startswith("\n") or rest == "\r\n":
                i += 1 + (2 if rest == "\r\n" else 1)  # an explicit line continuation
                continue
        if ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth = depth - 1 if stop else max(0, depth - 1)
        elif ch in "\r\n" and depth <= 0 and stop and (ch == "\n" or text.startswith("\r\n", i)):
            return i, LineState(depth)
        i += 1
    return None, LineState(depth, quote)


def open_brackets(prefix: str) -> LineState:
    """The state at the cursor: the brackets the prefix leaves open, the string or comment it is in, a
    trailing backslash (strings and comments hold no brackets)."""
    return scan(prefix)[1]


def statement_end(text: str, state: LineState = LineState()) -> int | None:
    """Offset in ``text`` (the completion) of the newline that ends the logical line, or None while it
    is open; ``state``: where the prefix left off (``open_brackets``): brackets it opened, a string it
    is inside (a triple-quoted one spans lines), a trailing backslash."""
    return scan(text, state, stop=True)[0]


def block_floor(prefix: str) -> int:
    """For a cursor on a blank line: the indentation of the last non-blank line above it, one more when
    that line opens a block (``:``), so a body is not ended by its own first line nor continued by a
    line that leaves the enclosing block; 0 when the cursor's line holds code."""
    lines = prefix.split("\n")
    if lines[-1].strip():
        return 0
    above = next((x for x in reversed(lines[:-1]) if x.strip()), "")
    return indent_of(above) + (1 if above.rstrip().endswith(":") else 0)


@dataclass
class Prompt:
    ids: list[int]
    healed: str  # text of the dropped last token: the completion must start with it
    truncated_from: int  # prompt tokens before keeping the most recent ``context``
    first_line: str  # the cursor's line up to the cursor
    floor: int = 0  # a blank cursor line: the indentation the block may not go below (the code above it)
    prefix: str = ""  # the text before the cursor (the statement stop counts its open brackets)
    inline: bool = False  # the cursor's line goes on after the cursor (FIM): a statement stops at its line's end

    @functools.cached_property
    def state(self) -> LineState:
        """Where the prefix leaves the statement (scanned on first use: statement mode only)."""
        return open_brackets(self.prefix)

    @property
    def indented(self) -> bool:
        """The cursor follows the indentation the user typed (and nothing else) on its line."""
        return bool(self.first_line) and not self.first_line.strip()


@dataclass
class Completion:
    text: str
    stopped: str
    prompt_tokens: int
    truncated_from: int
    seconds: float


class Completer:
    """Completion of text at a cursor with any ``NextTokenModel`` sharing the BPE tokenizer."""

    def __init__(self, model: NextTokenModel, tokenizer: FIMTokenizer, context: int, *,
                 repetition_penalty: float = 1.0, no_repeat_ngram: int = 0):
        """``repetition_penalty`` / ``no_repeat_ngram``: ``fm_core.decoding.penalize_repeats`` (1.0 and 0 =
        off); the task chooses them on the validation split and exports them (``DECODING_FILE``)."""
        if context < 8:
            raise ValueError(f"context {context} is too small")
        self.model, self.tok, self.context = model, tokenizer, context
        self.repetition_penalty, self.no_repeat_ngram = repetition_penalty, no_repeat_ngram
        self.texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self.special = {int(i) for i in tokenizer.special_ids}
        self._allowed: dict[tuple[str, bool], torch.Tensor | None] = {}

    def allowed_after(self, healed: str, indented: bool = False) -> torch.Tensor | None:
        """Tokens that agree with the healed text still to be written: a token that starts with all of
        it, or one that is a start of it (then the next token continues the rest), so a healed
        ``"\n    "`` may come back as ``"\n   "`` + ``" return"`` (the tokenization seen in training)
        and is never forced into deeper indentation. ``indented``: the cursor's line holds only the
        indentation the user typed, so no token may add whitespace after the healed text."""
        if not healed:
            return None
        if (healed, indented) not in self._allowed:
            def ok(t: str) -> bool:
                grows = indented and t[len(healed):len(healed) + 1] in (" ", "\t")
                return bool(t) and ((t.startswith(healed) and not grows) or healed.startswith(t))

            mask = torch.tensor([i not in self.special and ok(t) for i, t in enumerate(self.texts)])
            self._allowed[(healed, indented)] = mask if bool(mask.any()) else None
        return self._allowed[(healed, indented)]

    def still_to_heal(self, healed: str, ids: list[int]) -> str:
        """The part of ``healed`` the generated ``ids`` have not written yet."""
        if not healed:
            return ""
        done = self.tok.decode(ids) if ids else ""
        return healed[len(done):] if len(done) < len(healed) else ""

    def prompt(self, prefix: str, suffix: str = "", spm: bool = False, preamble: str = "") -> Prompt:
        """The prompt for a cursor between ``prefix`` and ``suffix``; ``preamble`` (retrieved code, at most
        half the window) goes ahead of the prefix, which is cut from the left to fit the rest."""
        if not prefix.strip() and not suffix.strip():
            raise CompletionError("empty prompt: there is no code before (or after) the cursor")
        p = list(map(int, self.tok.encode(prefix)))
        first_line = prefix[prefix.rfind("\n") + 1:]
        drop = 1 if p else 0
        if first_line and not first_line.strip():  # typed indentation: heal back to the newline before it
            tail = len(first_line) + ("\n" in prefix)
            while drop < len(p) and len(t := self.tok.decode(p[-drop - 1:])) <= tail and not t.strip():
                drop += 1
        healed = self.tok.decode(p[len(p) - drop:]) if drop else ""
        p = p[: len(p) - drop]
        pre = list(map(int, self.tok.encode(preamble)))[: self.context // 2] if preamble else []
        if suffix:
            s = list(map(int, self.tok.encode(suffix)))
            budget = self.context - 3 - len(pre)
            keep_s = min(len(s), budget // 4)  # the start of the suffix, then as much prefix as fits
            keep_p = min(len(p), budget - keep_s)
            ids = fim_layout(self.tok, pre + p[len(p) - keep_p:], [], s[:keep_s], spm)
            total = len(pre) + len(p) + len(s) + 3
        else:
            keep_p = min(len(p), self.context - 1 - len(pre))
            ids = [self.tok.bos_id, *pre, *p[len(p) - keep_p:]]
            total = len(pre) + len(p) + 1
        return Prompt(ids, healed, total if total > len(ids) else 0, first_line, block_floor(prefix), prefix,
                      bool(suffix.split("\n", 1)[0].strip()))

    def complete(self, prompts: list[Prompt], *, mode: str = "line", max_new_tokens: int = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 max_seconds: float | None = None) -> list[Completion]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")

        def text_of(row: int, ids: list[int]) -> str:
            text = self.tok.decode(ids)
            healed = prompts[row].healed
            if text.startswith(healed):
                return text[len(healed):]
            return "" if healed.startswith(text) else text  # "": still writing the healed text

        def end(row: int, ids: list[int]) -> int | None:
            text = text_of(row, ids)
            if mode == "line" or (mode == "statement" and prompts[row].inline):
                return text.index("\n") if "\n" in text else None
            if mode == "statement":
                return statement_end(text, prompts[row].state)
            return block_end(prompts[row].first_line, text, prompts[row].floor)

        res = generate(self.model, [p.ids for p in prompts], max_new_tokens=max_new_tokens,
                       stop=lambda row, ids: end(row, ids) is not None, eos_ids=(self.tok.eos_id,),
                       allowed=lambda row, ids: self.allowed_after(self.still_to_heal(prompts[row].healed, ids),
                                                                   prompts[row].indented),
                       banned=sorted(self.special - {self.tok.eos_id}), temperature=temperature,
                       top_p=top_p, generator=torch.Generator().manual_seed(seed), max_seconds=max_seconds,
                       repetition_penalty=self.repetition_penalty, no_repeat_ngram=self.no_repeat_ngram)
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
        raise CompletionError(f"{where}: --line {line} outside 1..{len(lines)} (lines are 1-based; omit --line for "
                              f"the end of the file)")
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
    rules = Path(checkpoint) / DECODING_FILE
    chosen = json.loads(rules.read_text()) if rules.is_file() else {}
    return Completer(NeuralLM(net), tok, context or net.config.max_length,
                     repetition_penalty=float(chosen.get("repetition_penalty", 1.0)),
                     no_repeat_ngram=int(chosen.get("no_repeat_ngram", 0))), tok


def main(argv: list[str] | None = None) -> int:
    """``fm-complete`` in-process (the console command is ``tasks.code_completion.cli.main``)."""
    from tasks.code_completion.cli import parser

    return run(parser().parse_args(argv))


OPTIONS = ("mode", "max_new_tokens", "temperature", "top_p", "seed", "max_seconds", "retrieval", "rerank")


def file_cursor(path: str, line: int | None, column: int | None) -> tuple[str, str]:
    """(prefix, suffix) of ``path`` split at a 1-based line and 0-based column (default: the end)."""
    text = read_source(path)
    lines = text.split("\n")
    line = len(lines) if line is None else line
    column = len(lines[line - 1]) if column is None and 1 <= line <= len(lines) else (column or 0)
    cut = cursor_offset(text, line, column, f"file {path}")
    return text[:cut], text[cut:]


def answer(completer: Completer, checkpoint: str, prefix: str, suffix: str, opts: dict,
           preamble: str = "") -> tuple[Completion, list[str]]:
    """One completion with the options ``OPTIONS`` in ``opts`` (``preamble``: retrieved code ahead of
    the prompt), and the notes for the user."""
    if opts["mode"] not in MODES:
        raise CompletionError(f"mode must be one of {', '.join(MODES)}, got {opts['mode']!r}")
    rerank = opts.get("rerank", False)
    for flag, on in (("--retrieval", opts["retrieval"]), ("--rerank", rerank)):
        if on and (opts["mode"] != "line" or opts["temperature"] > 0):
            raise CompletionError(f"{flag} works in --mode line with greedy decoding (--temperature 0)")
    if opts["retrieval"] and rerank:
        raise CompletionError("--retrieval and --rerank are two ways to choose a line: give one")
    # --retrieval / --rerank: fitted on left-to-right prompts, so the text after the cursor is not used
    left_only = opts["retrieval"] or rerank or not suffix.strip()
    prompt = completer.prompt(prefix, "" if left_only else suffix, preamble=preamble)
    notes = []
    if prompt.truncated_from:
        notes.append(f"the prompt has {prompt.truncated_from} tokens; kept the most recent {len(prompt.ids)} "
                     f"(context {completer.context}), cut from the left")
    budget = opts["max_new_tokens"] or {"line": 48, "statement": 128, "block": 256}[opts["mode"]]
    (result,) = completer.complete([prompt], mode=opts["mode"], max_new_tokens=budget, temperature=opts["temperature"],
                                   top_p=opts["top_p"], seed=opts["seed"], max_seconds=opts["max_seconds"])
    if opts["retrieval"]:
        from tasks.code_completion.retrieval import RetrievalGate, choose

        try:
            gate = RetrievalGate.load(checkpoint)
        except (FileNotFoundError, ValueError) as err:
            raise CompletionError(f"checkpoint {err}") from err
        result.text = choose(gate, completer, [prefix], [result.text])[0]
    if rerank:
        from tasks.code_completion.rerank import Reranker, rerank_one

        try:
            scorer, candidates = Reranker.load(checkpoint)
        except (FileNotFoundError, ValueError) as err:
            raise CompletionError(f"checkpoint {err}") from err
        result.text = rerank_one(scorer, candidates, completer, prompt, preamble + prefix, result.text)
    if result.stopped == "time":
        notes.append(f"stopped after {opts['max_seconds']:g} s (--max-seconds)")
    return result, notes


def run(args: argparse.Namespace) -> int:
    """Complete at the cursor ``args`` describe (or serve requests, ``--serve``); the exit code."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    opts = {k: getattr(args, k) for k in OPTIONS}
    try:
        if args.serve:
            completer, tok = load_completer(args.checkpoint, args.context)
            return serve(completer, args.checkpoint, opts, args.marker, repo_context(args, tok))
        if args.file:
            prefix, suffix = file_cursor(args.file, args.line, args.column)
        else:
            text = decode_source(sys.stdin.buffer.read(), "stdin")
            text = text[:-1] if text.endswith("\n") else text
            prefix, _, suffix = text.partition(args.marker)
        completer, tok = load_completer(args.checkpoint, args.context)
        repo = repo_context(args, tok)
        result, notes = answer(completer, args.checkpoint, prefix, suffix, opts,
                               repo.preamble(prefix, args.file) if repo else "")
    except CompletionError as err:
        print(f"fm-complete: {err}", file=sys.stderr)
        return 2
    print(result.text)
    for note in notes:
        print(f"fm-complete: {note}", file=sys.stderr)
    return 0


def repo_context(args: argparse.Namespace, tok: FIMTokenizer) -> Any:
    """``--repo DIR`` indexed once (``tasks.code_completion.repo_retrieval.RepoContext``), or None;
    the files it skipped are named on stderr."""
    if not args.repo:
        return None
    from tasks.code_completion.repo_retrieval import RepoContext

    repo = RepoContext(args.checkpoint, args.repo, tok)
    for why in repo.skipped:
        print(f"fm-complete: --repo: skipped {why}", file=sys.stderr)
    print(f"fm-complete: --repo {args.repo}: {repo.files} files indexed, {len(repo.skipped)} skipped", file=sys.stderr)
    return repo


def request_text(req: dict, marker: str) -> tuple[str, str]:
    """(prefix, suffix) of one ``--serve`` request: ``prefix`` [+ ``suffix``], ``text`` with the cursor
    marker, or ``file`` [+ ``line``, ``column``]."""
    unknown = sorted(set(req) - {"id", "prefix", "suffix", "text", "file", "line", "column", *OPTIONS})
    if unknown:
        raise CompletionError(f"unknown keys {unknown}; a request has prefix [suffix] | text | file [line column], "
                              f"id and any of {list(OPTIONS)}")
    if "file" in req:
        return file_cursor(str(req["file"]), req.get("line"), req.get("column"))
    if isinstance(req.get("text"), str):
        prefix, _, suffix = req["text"].partition(marker)
        return prefix, suffix
    if not isinstance(req.get("prefix"), str) or not isinstance(req.get("suffix", ""), str):
        raise CompletionError("a request needs 'prefix' (a string), 'text' or 'file'")
    return req["prefix"], req.get("suffix", "")


def serve(completer: Completer, checkpoint: str, defaults: dict, marker: str, repo: Any = None) -> int:
    """``--serve``: the model loads once; then one JSON request per stdin line, one JSON reply per stdout
    line (``text``, ``stopped``, ``seconds``, ``prompt_tokens``, ``truncated_from``, ``notes``, or
    ``error``), in order, until stdin closes. A bad request gets an error reply; the server goes on."""
    print(json.dumps({"ready": True, "context": completer.context}), flush=True)
    for n, raw in enumerate(sys.stdin, 1):
        if not raw.strip():
            continue
        req: Any = {}
        try:
            try:
                req = json.loads(raw)
            except json.JSONDecodeError as err:
                raise CompletionError(f"not JSON ({err})") from err
            if not isinstance(req, dict):
                raise CompletionError("a request is a JSON object")
            prefix, suffix = request_text(req, marker)
            pre = repo.preamble(prefix, req.get("file")) if repo else ""
            result, notes = answer(completer, checkpoint, prefix, suffix,
                                   {**defaults, **{k: req[k] for k in OPTIONS if k in req}}, pre)
            reply: dict[str, Any] = {"text": result.text, "stopped": result.stopped, "seconds": round(result.seconds, 4),
                                     "prompt_tokens": result.prompt_tokens, "truncated_from": result.truncated_from,
                                     "notes": notes}
        except (CompletionError, ValueError, TypeError) as err:
            reply = {"error": f"request {n}: {err}"}
        if isinstance(req, dict) and "id" in req:
            reply["id"] = req["id"]
        print(json.dumps(reply), flush=True)
    return 0


def cli() -> None:
    sys.exit(main())  # the console command is tasks.code_completion.cli.main


__all__ = ["MODES", "Completer", "Completion", "CompletionError", "Prompt", "answer", "block_end", "load_completer",
           "LineState", "main", "open_brackets", "scan", "serve", "statement_end"]
