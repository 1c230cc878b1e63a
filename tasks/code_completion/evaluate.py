"""Completion benchmarks on held-out files, and the copy-line heuristic.

- ``line``: CodeXGLUE-style line completion. Prefix = the file up to the start of a random
  non-blank line, target = that line. Exact match and edit similarity (``rapidfuzz.fuzz.ratio``,
  the Levenshtein ratio CodeXGLUE computes with fuzzywuzzy, 0-100) on the stripped lines.
- ``fim``: single-line fill-in-the-middle. The same kind of line, with the text after it given
  as the suffix; exact match on the stripped line.
- ``syntax``: function bodies. Prompt = the file up to the end of a ``def`` header (bodies of at
  least two lines); the model completes the block; the share of header + completion that
  ``ast.parse`` accepts. Parsed only, never executed.

Every system answers the same prompts (sampled with a fixed seed from the files given).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from tasks.code_completion.retrieval import retrieve

LINE_TOKENS = 48  # new-token budget of a line completion


@dataclass
class LineCase:
    file: int
    prefix: str
    target: str  # the line, without its newline
    suffix: str  # from the newline after the target line


@dataclass
class FunctionCase:
    file: int
    prefix: str  # up to the end of the header (no newline)
    header: str  # the header lines (decorators excluded)
    body: str


def line_cases(texts: list[str], n: int, seed: int) -> list[LineCase]:
    """``n`` random non-blank lines (not the first of a file) across ``texts``."""
    where = []
    for f, text in enumerate(texts):
        lines = text.split("\n")
        where += [(f, i) for i in range(1, len(lines)) if lines[i].strip()]
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(where), size=min(n, len(where)), replace=False)
    out = []
    for k in sorted(pick):
        f, i = where[k]
        lines = texts[f].split("\n")
        start = sum(len(x) + 1 for x in lines[:i])
        end = start + len(lines[i])
        out.append(LineCase(f, texts[f][:start], lines[i], texts[f][end:]))
    return out


def function_cases(texts: list[str], n: int, seed: int) -> list[FunctionCase]:
    """``n`` random functions whose body spans at least two lines and starts below the header."""
    found = []
    for f, text in enumerate(texts):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.split("\n")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                first = node.body[0].lineno  # 1-based
                if first <= node.lineno or node.end_lineno - first < 1:
                    continue
                header_end = first - 2  # 0-based index of the header's last line
                offset = sum(len(x) + 1 for x in lines[: header_end + 1]) - 1
                header = "\n".join(lines[node.lineno - 1 : header_end + 1])
                body = "\n".join(lines[header_end + 1 : node.end_lineno])
                found.append(FunctionCase(f, text[:offset], header, body))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(found), size=min(n, len(found)), replace=False)
    return [found[k] for k in sorted(pick)]


def copy_line(prefix: str) -> str:
    """The line that followed the earlier line most similar to the last complete line of
    ``prefix`` (ties: the most recent); "" without history."""
    return retrieve(prefix)[0]


def per_prompt_scores(preds: list[str], targets: list[str]) -> dict[str, np.ndarray]:
    """Exact match (0/100) and edit similarity (0-100) of every prediction, on stripped lines."""
    pairs = [(p.strip(), t.strip()) for p, t in zip(preds, targets, strict=True)]
    return {"exact_match": np.array([100.0 * (p == t) for p, t in pairs]),
            "edit_sim": np.array([fuzz.ratio(p, t) for p, t in pairs], dtype=float)}


def line_scores(preds: list[str], targets: list[str]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in per_prompt_scores(preds, targets).items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over the same prompts and its 95% percentile interval over ``n`` resamples of
    the prompts (the two systems answered the same prompts, so the pairing removes prompt difficulty)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n, len(d)))
    means = d[idx].mean(1)
    return {"mean": float(d.mean()), "ci95_low": float(np.percentile(means, 2.5)),
            "ci95_high": float(np.percentile(means, 97.5))}


def parses(header: str, completion: str) -> bool:
    try:
        ast.parse(textwrap.dedent(header + "\n" + completion.lstrip("\n")))
    except (SyntaxError, ValueError):
        return False
    return True


def greedy(completer: Any, prompts: list[Any], mode: str, budget: int, batch_size: int = 32,
           progress: Any = None) -> list[str]:
    """Greedy completions of ``prompts``, batched by similar length (little padding)."""
    order = np.argsort([len(p.ids) for p in prompts])
    texts: list[str] = [""] * len(prompts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        for i, c in zip(idx, completer.complete([prompts[i] for i in idx], mode=mode, max_new_tokens=budget),
                        strict=True):
            texts[i] = c.text
        if progress is not None:
            progress(len(idx))
    return texts


def evaluate_system(completer: Any, lines: list[LineCase], fims: list[LineCase], funcs: list[FunctionCase],
                    *, batch_size: int = 32, line_tokens: int = LINE_TOKENS, block_tokens: int = 128,
                    progress: Any = None, line_preds: list[str] | None = None) -> dict[str, float]:
    """Greedy completions of every case by ``completer`` (a ``tasks.code_completion.complete.Completer``); the line
    completions are appended to ``line_preds`` when given."""
    out: dict[str, float] = {}

    def run(prompts: list[Any], mode: str, budget: int) -> list[str]:
        return greedy(completer, prompts, mode, budget, batch_size, progress)

    if lines:
        preds = run([completer.prompt(c.prefix) for c in lines], "line", line_tokens)
        if line_preds is not None:
            line_preds.extend(preds)
        out.update({f"line/{k}": v for k, v in line_scores(preds, [c.target for c in lines]).items()})
    if fims:
        preds = run([completer.prompt(c.prefix, c.suffix) for c in fims], "line", line_tokens)
        out["fim/exact_match"] = line_scores(preds, [c.target for c in fims])["exact_match"]
    if funcs:
        preds = run([completer.prompt(c.prefix) for c in funcs], "block", block_tokens)
        out["syntax/parse_rate"] = 100.0 * float(np.mean([parses(c.header, p) for c, p in zip(funcs, preds, strict=True)]))
        out["syntax/mean_lines"] = float(np.mean([len(p.strip("\n").split("\n")) if p.strip() else 0 for p in preds]))
    return out


def evaluate_copy_line(lines: list[LineCase], fims: list[LineCase],
                       line_preds: list[str] | None = None) -> dict[str, float]:
    preds = [copy_line(c.prefix) for c in lines]
    if line_preds is not None:
        line_preds.extend(preds)
    out = {f"line/{k}": v for k, v in line_scores(preds, [c.target for c in lines]).items()}
    out["fim/exact_match"] = line_scores([copy_line(c.prefix) for c in fims], [c.target for c in fims])["exact_match"]
    return out
