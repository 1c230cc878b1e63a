"""Candidate reranking: retrieval proposes lines, a language model chooses among them.

Copy-line is a strong baseline because code repeats itself, but it trusts one rule: the line after
the earlier line most like the cursor's previous line. Here the same retrieval proposes the lines
after the ``candidates`` most similar earlier lines (of the prefix and of the retrieved repository
chunks ahead of it, the text ``copy_line+repo`` searches), the system adds its own greedy line
(written with the same chunks ahead of the prompt), and a learned scorer picks one. Features per
candidate: its anchor's similarity and rank, how many of the top anchors propose the same line,
whether it is the system's own line, its agreement with that line, and the system's log-probability
of the candidate as the rest of the line (total, per token, and both against the best candidate of
the prompt). The scorer (``HistGradientBoostingRegressor``) predicts each candidate's edit
similarity to the true line; it is fitted on prompts of the ``valid`` split only (never the
evaluation files), as ReACC / kNN-LM tune on validation data.

So that the language model's part is measured, not assumed, the same scorer is also fitted without
any language model (``copy_line+rerank``: retrieval features only) and with the n-gram's
log-probabilities (``ngram<N>+rerank``): the non-neural systems with the same retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process

FEATURES = ("similarity", "rank", "votes", "own", "agreement", "empty", "tokens", "logp", "mean_logp",
            "logp_minus_best", "mean_logp_minus_best")
RETRIEVAL_ONLY = FEATURES[:6]  # no language model (copy_line+rerank)
SCORER_FILE, SETTINGS_FILE = "rerank_scorer.skops", "rerank.json"  # the model's scorer, exported for fm-complete
# the one type a saved scorer may hold beyond what skops trusts by default (skops refuses anything else)
TRUSTED = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)


def proposals(text: str, n: int) -> list[tuple[str, float, int, int]]:
    """Up to ``n`` distinct continuations retrieved from ``text`` (repository chunks + prefix): for the
    earlier lines most similar to the last complete line (``fuzz.ratio`` of stripped lines; ties: the
    most recent), the line after each, as ``(line, similarity, rank, votes)``; ``votes``: how many of
    the best ``2 n`` anchors propose the same (stripped) line. With the cursor after typed code only
    lines whose code starts with it count, and the rest of the line is returned (as ``continuation``)."""
    typed = text[text.rfind("\n") + 1 :]
    lines = text[: len(text) - len(typed)].split("\n")[:-1]
    if len(lines) < 2:
        return []
    query, history = lines[-1].strip(), [x.strip() for x in lines[:-1]]
    scores = process.cdist([query], history, scorer=fuzz.ratio)[0]
    order = np.lexsort((-np.arange(len(history)), -scores))  # best first, ties: the most recent
    typed_code = typed.lstrip(" \t")
    found: list[tuple[str, float]] = []
    for j in order[: 8 * n]:
        line = lines[j + 1]
        if typed:
            code = line.lstrip(" \t")
            if not code.startswith(typed_code):
                continue
            line = code[len(typed_code) :]
        found.append((line, float(scores[j])))
    keys = [line.strip() for line, _ in found[: 2 * n]]
    out, seen = [], set()
    for line, sim in found:
        if line.strip() in seen:
            continue
        seen.add(line.strip())
        out.append((line, sim, len(out), keys.count(line.strip())))
        if len(out) == n:
            break
    return out


class Reranker:
    """A regressor of a candidate's edit similarity on ``features`` (standardised gradient boosting)."""

    def __init__(self, features: Sequence[str] = FEATURES, seed: int = 0):
        self.features, self.seed = tuple(features), seed

    def columns(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, float)[:, [FEATURES.index(f) for f in self.features]]

    def fit(self, X: np.ndarray, gain: np.ndarray) -> Reranker:
        from sklearn.ensemble import HistGradientBoostingRegressor

        if len(X) < 20:
            raise ValueError(f"rerank: need >= 20 candidate rows to fit the scorer, got {len(X)}")
        self.model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                                   min_samples_leaf=20, random_state=self.seed)
        self.model.fit(self.columns(X), np.asarray(gain, float))
        return self

    def save(self, directory: str | Path, candidates: int, fitted_on: int) -> Path:
        """The fitted scorer (``skops``: no pickle) and its settings, beside an export for ``fm-complete --rerank``."""
        import json

        import skops.io

        skops.io.dump(self.model, Path(directory) / SCORER_FILE)
        path = Path(directory) / SETTINGS_FILE
        path.write_text(json.dumps({"features": list(self.features), "candidates": int(candidates),
                                    "fitted_on": int(fitted_on)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> tuple[Reranker, int]:
        """A saved scorer and its candidate count; a scorer holding types other than a boosted tree's is refused."""
        import json

        import skops.io

        path, settings = Path(directory) / SCORER_FILE, Path(directory) / SETTINGS_FILE
        if not path.is_file() or not settings.is_file():
            raise FileNotFoundError(f"{directory}: no {SCORER_FILE} / {SETTINGS_FILE} (fm-finetune task=code_completion "
                                    f"writes them with task.rerank_candidates > 0)")
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in TRUSTED]
        if untrusted:
            raise ValueError(f"{path}: holds types that are not a boosted tree's: {untrusted}")
        d = json.loads(settings.read_text())
        unknown = [f for f in d["features"] if f not in FEATURES]
        if unknown:
            raise ValueError(f"{settings}: features {unknown} are not this version's {list(FEATURES)}")
        ranker = cls(d["features"])
        ranker.model = skops.io.load(path, trusted=list(TRUSTED))
        return ranker, int(d["candidates"])

    def choose(self, groups: Sequence[np.ndarray]) -> list[int]:
        """The index of the best-predicted candidate of each group (-1 for an empty group)."""
        out = []
        for X in groups:
            out.append(int(np.argmax(self.model.predict(self.columns(X)))) if len(X) else -1)
        return out


def features(cands: Sequence[tuple[str, float, int, int, bool]], own: str,
             scores: Sequence[tuple[float, int]] | None) -> np.ndarray:
    """One row of ``FEATURES`` per candidate ``(line, similarity, rank, votes, is_own)``; without
    ``scores`` (no language model) the log-probability columns are 0."""
    rows = []
    for i, (line, sim, rank, votes, is_own) in enumerate(cands):
        lp, n = scores[i] if scores is not None else (0.0, 0)
        rows.append([sim, rank, votes, float(is_own), fuzz.ratio(line.strip(), own.strip()) if own else 0.0,
                     float(not line.strip()), float(n), lp, lp / (n + 1), 0.0, 0.0])
    X = np.array(rows, float).reshape(len(rows), len(FEATURES))
    if scores is not None and len(X):
        X[:, 9] = X[:, 7] - X[:, 7].max()
        X[:, 10] = X[:, 8] - X[:, 8].max()
    return X


def candidate_sets(texts: Sequence[str], own: Sequence[str] | None, n: int
                   ) -> list[list[tuple[str, float, int, int, bool]]]:
    """Per prompt (``texts``: retrieved chunks + prefix), the retrieved proposals and the system's own
    line (``own``; a proposal equal to it is merged into it)."""
    out = []
    for i, text in enumerate(texts):
        props = proposals(text, n)
        cands: list[tuple[str, float, int, int, bool]] = []
        if own is not None:
            same = next((p for p in props if p[0].strip() == own[i].strip()), None)
            cands.append((own[i], same[1] if same else 0.0, same[2] if same else n, same[3] if same else 0, True))
            props = [p for p in props if p is not same]
        cands += [(*p, False) for p in props]
        out.append(cands)
    return out


def score_candidates(completer: Any, prompts: Sequence[Any], cands: Sequence[Sequence[tuple]],
                     batch_size: int) -> list[list[tuple[float, int]]]:
    """The system's ``(log p(line, end of line | prompt), tokens)`` of every candidate of every prompt
    (``completer.model.line_logprobs`` where the model has its own, else the neural scorer)."""
    from tasks.code_completion.retrieval import line_logprobs

    flat_p = [prompts[i] for i, cs in enumerate(cands) for _ in cs]
    flat_l = [c[0] for cs in cands for c in cs]
    own_scorer = getattr(completer.model, "line_logprobs", None)
    flat = (own_scorer(completer, flat_p, flat_l) if own_scorer is not None
            else line_logprobs(completer, flat_p, flat_l, batch_size))
    out, k = [], 0
    for cs in cands:
        out.append(flat[k : k + len(cs)])
        k += len(cs)
    return out


def rows(completer: Any | None, prompts: Sequence[Any], texts: Sequence[str], own: Sequence[str] | None, n: int,
         batch_size: int) -> tuple[list[list[tuple]], list[np.ndarray]]:
    """Candidates and their feature matrices for each prompt."""
    cands = candidate_sets(texts, own, n)
    scored = score_candidates(completer, prompts, cands, batch_size) if completer is not None else [None] * len(cands)
    return cands, [features(cs, own[i] if own is not None else "", s)
                   for i, (cs, s) in enumerate(zip(cands, scored, strict=True))]


def fit_and_choose(fit: tuple[list[list[tuple]], list[np.ndarray]], targets: Sequence[str],
                   apply: tuple[list[list[tuple]], list[np.ndarray]], feature_names: Sequence[str],
                   seed: int) -> tuple[list[str], Reranker]:
    """Fit a ``Reranker`` on the candidates of ``fit`` (their edit similarity to ``targets``); the
    chosen line of each prompt of ``apply`` ("" where there is no candidate), and the scorer."""
    cands, X = fit
    if not any(len(x) for x in X):
        raise ValueError("rerank: no candidate line on any fit prompt (retrieval found nothing to propose)")
    gain = np.concatenate([[fuzz.ratio(c[0].strip(), t.strip()) for c in cs] for cs, t in zip(cands, targets, strict=True)]
                          or [np.zeros(0)])
    ranker = Reranker(feature_names, seed).fit(np.concatenate([x for x in X if len(x)]), gain)
    return choose_lines(ranker, apply), ranker


def choose_lines(ranker: Reranker, apply: tuple[list[list[tuple]], list[np.ndarray]]) -> list[str]:
    picks = ranker.choose(apply[1])
    return [cs[p][0] if p >= 0 else "" for cs, p in zip(apply[0], picks, strict=True)]


def evaluate_rerank(completers: dict[str, Any], fit_cases: Sequence[Any], fit_pre: Sequence[str],
                    cases: Sequence[Any], pre: Sequence[str], own: dict[str, Sequence[str]], *, candidates: int,
                    batch_size: int, line_tokens: int, seed: int) -> tuple[dict[str, list[str]], dict[str, Reranker]]:
    """Line completions chosen by reranking (``<key>+rerank`` for each completer, ``copy_line+rerank``
    without a language model): the scorers are fitted on ``fit_cases`` (with their retrieved
    preambles ``fit_pre``; each system's own line there written greedily) and applied to ``cases``
    (``pre``; the system's own line ``own[key]`` where given, else written greedily); and the fitted scorers."""
    from tasks.code_completion.evaluate import greedy

    fit_text = [p + c.prefix for p, c in zip(fit_pre, fit_cases, strict=True)]
    text = [p + c.prefix for p, c in zip(pre, cases, strict=True)]
    fit_targets = [c.target for c in fit_cases]
    out, scorers = {}, {}
    out["copy_line+rerank"], scorers["copy_line"] = fit_and_choose(
        rows(None, [None] * len(fit_cases), fit_text, None, candidates, batch_size), fit_targets,
        rows(None, [None] * len(cases), text, None, candidates, batch_size), RETRIEVAL_ONLY, seed)
    for key, comp in completers.items():
        fit_prompts = [comp.prompt(c.prefix, preamble=p) for c, p in zip(fit_cases, fit_pre, strict=True)]
        prompts = [comp.prompt(c.prefix, preamble=p) for c, p in zip(cases, pre, strict=True)]
        mine = own.get(key) or greedy(comp, prompts, "line", line_tokens, batch_size)
        out[f"{key}+rerank"], scorers[key] = fit_and_choose(
            rows(comp, fit_prompts, fit_text, greedy(comp, fit_prompts, "line", line_tokens, batch_size),
                 candidates, batch_size), fit_targets,
            rows(comp, prompts, text, mine, candidates, batch_size), FEATURES, seed)
    return out, scorers


def rerank_one(ranker: Reranker, candidates: int, completer: Any, prompt: Any, text: str, own: str) -> str:
    """``fm-complete --rerank``: the chosen line for one prompt (``text``: retrieved chunks + prefix;
    ``own``: the model's greedy line for ``prompt``)."""
    return choose_lines(ranker, rows(completer, [prompt], [text], [own], candidates, 1))[0]


__all__ = ["FEATURES", "RETRIEVAL_ONLY", "SCORER_FILE", "SETTINGS_FILE", "TRUSTED", "Reranker", "candidate_sets",
           "choose_lines", "evaluate_rerank", "rerank_one", "features", "fit_and_choose", "proposals",
           "rows", "score_candidates"]
