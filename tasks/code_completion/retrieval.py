"""Retrieval-augmented line completion: the completion model chooses between its own line and a retrieved one.

Code repeats itself inside a file, which is why the copy-line heuristic is a strong baseline, and a
small model with a 256-token window cannot see most of the file. Retrieval-augmented completion
(ReACC, Lu et al. 2022; RepoCoder, Zhang et al. 2023) gives the generator code retrieved from
beyond its window. Here the retriever is the copy-line rule run over the whole prefix (the line that
followed the earlier line most similar to the cursor's previous line) and the generator decides:
for each prompt it greedily writes its own line, scores both lines with its own log-probabilities
given the prompt (end of line included), and a linear gate over those scores, the lines' lengths,
the retrieval similarity and the agreement of the two lines picks one. The gate is fitted on prompts
of the ``valid`` split (never the evaluation files) to predict which candidate has the higher edit
similarity to the true line, much as kNN-LM (Khandelwal et al. 2020) tunes its interpolation on
validation data. Without a neural model (the n-gram baseline) there is nothing to gate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rapidfuzz import fuzz, process

from fm_core.padding import pad_batch

FEATURES = ("retrieval_similarity", "logp_model_line", "logp_retrieved_line", "mean_logp_model_line",
            "mean_logp_retrieved_line", "tokens_model_line", "tokens_retrieved_line", "agreement",
            "no_retrieved_line")
GATE_FILE = "retrieval_gate.json"


def retrieve(prefix: str) -> tuple[str, float]:
    """The line that followed the earlier line most similar (``fuzz.ratio`` on stripped lines; ties:
    the most recent) to the last complete line of ``prefix``, and that similarity (0-100);
    ("", 0) without history. ``prefix`` ends at a line start."""
    lines = prefix.split("\n")[:-1]
    if len(lines) < 2:
        return "", 0.0
    query, history = lines[-1].strip(), [x.strip() for x in lines[:-1]]
    scores = process.cdist([query], history, scorer=fuzz.ratio)[0]
    best = len(scores) - 1 - int(np.argmax(scores[::-1]))
    return lines[best + 1], float(scores[best])


@torch.no_grad()
def line_logprobs(completer: Any, prompts: Sequence[Any], lines: Sequence[str],
                  batch_size: int = 32) -> list[tuple[float, int]]:
    """``log p(line, end of line | prompt)`` and the line's token count under ``completer``'s causal
    network, for left-to-right prompts (``Completer.prompt(prefix)``). The line is tokenized after
    the prompt's healed text (the tokenization decoding would produce); the end of line is the
    probability mass of tokens that start with a newline. Prompts are cut from the left so that
    prompt + line fits the context."""
    net, tok = completer.model.net, completer.tok
    newline = torch.tensor([t.startswith("\n") for t in completer.texts])
    seqs, starts, spans = [], [], []
    for p, line in zip(prompts, lines, strict=True):
        if p.ids[0] != tok.bos_id:
            raise ValueError("line_logprobs scores left-to-right prompts (<cls> prefix), not FIM prompts")
        ids = list(map(int, tok.encode(p.healed + line))) if p.healed + line else []
        ids = ids[: completer.context - 2]
        keep = completer.context - len(ids) - 1
        ctx = [tok.bos_id, *p.ids[1:][-keep:]] if len(p.ids) - 1 > keep else list(p.ids)
        seqs.append(ctx + ids)
        starts.append(len(ctx))
        spans.append(len(ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = np.argsort([len(s) for s in seqs])
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        x = pad_batch([seqs[i] for i in idx], tok.pad_id)  # (B, L)
        logp = net.mlm_logits(net.encoder(x)["hidden"]).float().log_softmax(-1)
        for r, i in enumerate(idx):
            s, n = starts[i], spans[i]
            pos = torch.arange(s - 1, s - 1 + n)
            total = logp[r, pos, x[r, s : s + n]].sum() if n else torch.zeros(())
            total = total + torch.logsumexp(logp[r, s - 1 + n][newline], 0)
            out[i] = (float(total), n)
    return out


def features(similarity: float, own: str, retrieved: str, own_score: tuple[float, int],
             retrieved_score: tuple[float, int]) -> list[float]:
    (lo, no), (lr, nr) = own_score, retrieved_score
    return [similarity, lo, lr, lo / (no + 1), lr / (nr + 1), float(no), float(nr),
            fuzz.ratio(own.strip(), retrieved.strip()), float(not retrieved.strip())]


class RetrievalGate:
    """Standardised ridge regression of ``edit_sim(retrieved) - edit_sim(own)`` on ``FEATURES``;
    the retrieved line is taken where the prediction is positive."""

    def __init__(self, mean: Sequence[float], scale: Sequence[float], coef: Sequence[float], intercept: float,
                 fitted_on: int = 0):
        self.mean, self.scale = np.asarray(mean, float), np.asarray(scale, float)
        self.coef, self.intercept, self.fitted_on = np.asarray(coef, float), float(intercept), fitted_on

    @classmethod
    def fit(cls, X: np.ndarray, gain: np.ndarray, alpha: float = 1.0) -> RetrievalGate:
        from sklearn.linear_model import Ridge

        X = np.asarray(X, float)
        if X.ndim != 2 or X.shape[1] != len(FEATURES) or len(X) != len(gain) or len(X) < 10:
            raise ValueError(f"need >= 10 rows of {len(FEATURES)} features and one gain each, got {X.shape}")
        mean, scale = X.mean(0), X.std(0)
        scale[scale == 0] = 1.0
        ridge = Ridge(alpha=alpha).fit((X - mean) / scale, gain)
        return cls(mean, scale, ridge.coef_, float(ridge.intercept_), len(X))

    def take_retrieved(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, float) - self.mean) / self.scale) @ self.coef + self.intercept > 0

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept, "fitted_on": self.fitted_on}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / GATE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalGate:
        path = Path(directory) / GATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {GATE_FILE} (fm-finetune task=code_completion writes it "
                                    f"with task.retrieval=true)")
        d = json.loads(path.read_text())
        if d.get("features") != list(FEATURES):
            raise ValueError(f"{path}: features {d.get('features')} differ from this version's {list(FEATURES)}")
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"], d.get("fitted_on", 0))


def continuation(prefix: str) -> tuple[str, float]:
    """The retrieved line as a continuation of the cursor's line, whatever its indentation: at a line
    start, the whole line; with the cursor after typed indentation (as in an editor), the line's
    code without its own indentation; inside a line, only a retrieved line whose code starts with
    the code already typed counts, and the rest of it is returned."""
    typed = prefix[prefix.rfind("\n") + 1 :]
    line, similarity = retrieve(prefix[: len(prefix) - len(typed)])
    if not typed:
        return line, similarity
    code, typed_code = line.lstrip(" \t"), typed.lstrip(" \t")
    if not code.startswith(typed_code):
        return "", similarity
    return code[len(typed_code) :], similarity


def candidates(completer: Any, prefixes: Sequence[str], own: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Features of (own continuation, retrieved continuation) for each prefix, and the retrieved ones."""
    prompts = [completer.prompt(p) for p in prefixes]
    found = [continuation(p) for p in prefixes]
    retrieved = [r for r, _ in found]
    scores = line_logprobs(completer, prompts + prompts, list(own) + retrieved)
    n = len(prefixes)
    X = np.array([features(sim, o, r, scores[i], scores[n + i])
                  for i, (o, (r, sim)) in enumerate(zip(own, found, strict=True))])
    return X, retrieved


def fit_gate(completer: Any, prefixes: Sequence[str], own: Sequence[str], targets: Sequence[str]) -> RetrievalGate:
    X, retrieved = candidates(completer, prefixes, own)
    gain = np.array([fuzz.ratio(r.strip(), t.strip()) - fuzz.ratio(o.strip(), t.strip())
                     for o, r, t in zip(own, retrieved, targets, strict=True)])
    return RetrievalGate.fit(X, gain)


def choose(gate: RetrievalGate, completer: Any, prefixes: Sequence[str], own: Sequence[str]) -> list[str]:
    X, retrieved = candidates(completer, prefixes, own)
    take = gate.take_retrieved(X)
    return [r if t and r.strip() else o for o, r, t in zip(own, retrieved, take, strict=True)]


__all__ = ["FEATURES", "GATE_FILE", "RetrievalGate", "candidates", "choose", "continuation", "fit_gate", "line_logprobs", "retrieve"]
