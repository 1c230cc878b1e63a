"""Repository-level retrieval-augmented completion: BM25 over chunks of the repository's *other* files.

For a prompt in file F of repository R (RepoCoder, Zhang et al. 2023; CodeT / ReACC prepend
retrieved code the same way), the query is the last ``query_lines`` lines before the cursor; the
corpus is R's files cut into windows of ``chunk_lines`` lines every ``stride`` lines, F excluded
(its own text is the prompt already; retrieving it would leak the target in evaluation). Scoring is
BM25 (``bm25s``: Lucene's variant) over identifier tokens (whole identifiers, lower-cased, plus
their snake / camel parts). The best chunks go ahead of the prompt, each under a comment naming its
file, as many whole chunks as fit ``budget_tokens`` (the prefix keeps the rest of the window, cut
from the left); RepoCoder's iterative mode (``iterations`` 2: query again with the first draft
appended) is an option.

The ranker is chosen by ``_target_`` (``conf/code_ranker/``): ``BM25Ranker`` (the default),
``EmbeddingRanker`` (the model's own embeddings: cosine similarity of mean-pooled hidden states of a
pre-trained encoder, by default the fine-tuning run's backbone, ``model.init_from``; exact search,
as a repository's chunks number thousands) or ``FusionRanker`` (reciprocal rank fusion of several,
Cormack et al. 2009). A repository is indexed when it is first searched.

A repository is a directory (``fm-complete --repo DIR``) or, for the prepared corpus, the files of
one package: the first directory under the corpus root (``python3.11/lib2to3/...`` -> ``lib2to3``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS_FILE = "repo_retrieval.json"  # the task's retrieval settings, exported for fm-complete --repo
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def code_tokens(text: str) -> list[str]:
    """Identifier tokens of ``text`` for BM25: each identifier lower-cased, and its parts when it has several."""
    out = []
    for word in WORD.findall(text):
        out.append(word.lower())
        parts = PART.findall(word)
        if len(parts) > 1:
            out.extend(p.lower() for p in parts)
    return out


@dataclass
class Chunk:
    file: str
    start: int  # 0-based first line
    text: str

    def as_context(self) -> str:
        return f"# file: {self.file} (line {self.start + 1})\n{self.text.rstrip()}\n\n"


def chunks_of(name: str, text: str, chunk_lines: int, stride: int) -> list[Chunk]:
    """Windows of ``chunk_lines`` lines every ``stride`` lines (blank-only windows skipped)."""
    lines = text.split("\n")
    out = []
    for start in range(0, max(1, len(lines) - chunk_lines + stride), stride):
        piece = "\n".join(lines[start : start + chunk_lines])
        if piece.strip():
            out.append(Chunk(name, start, piece))
    return out


def package_of(path: str) -> str:
    """The repository of a prepared-corpus path: the first directory under the corpus root."""
    parts = Path(path).parts
    return parts[1] if len(parts) > 2 else path


class BM25Ranker:
    """BM25 (``bm25s``, Lucene's variant) over identifier tokens (``code_tokens``); a chunk sharing no
    token with the query is never returned."""

    def fit(self, texts: Sequence[str]) -> None:
        import bm25s

        self.bm25 = bm25s.BM25()
        self.bm25.index([code_tokens(t) or ["<empty>"] for t in texts], show_progress=False)

    def rank(self, queries: Sequence[str], k: int, keep: np.ndarray) -> list[list[int]]:
        k = min(k, len(keep))  # bm25s refuses a k above the number of chunks (a fusion's depth can be)
        ids, scores = self.bm25.retrieve([code_tokens(q) or ["<empty>"] for q in queries], k=k, show_progress=False,
                                         weight_mask=keep.astype(np.float32), n_threads=1)
        return [[int(i) for i, s in zip(row, srow, strict=True) if s > 0] for row, srow in zip(ids, scores, strict=True)]


@functools.lru_cache(maxsize=4)
def _embedder(model: str, layer: int, max_tokens: int) -> Any:
    """One ``fm_core.embed.Embedder`` per encoder checkpoint and layer in a process (every package's
    ranker shares it)."""
    from fm_core.embed import Embedder
    from fm_core.export import load_pretrained

    net, tok = load_pretrained(model)
    return Embedder(net, tok, (layer,), max_tokens=max_tokens, inplace=True)


class EmbeddingRanker:
    """The model's own embeddings: chunks and queries mean-pooled at ``layer`` of the encoder ``model``
    (an export directory or any checkpoint ``load_pretrained`` reads), ranked by cosine similarity.
    ``model`` null is filled with the fine-tuning run's backbone (``with_model``) before use."""

    def __init__(self, *, model: str | None, layer: int, max_tokens: int):
        if not model:
            raise ValueError("code_ranker embedding: no model (give task.repo_retrieval.ranker.model=<encoder "
                             "checkpoint>, or fine-tune from one: model.init_from=...)")
        self.embedder = _embedder(str(model), int(layer), int(max_tokens))
        self.layer = self.embedder.layers[0]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        tok = self.embedder.tok
        records = [(str(i), np.asarray(tok.encode(t), dtype=np.int64)) for i, t in enumerate(texts)]
        out = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        full = [i for i, (_, ids) in enumerate(records) if len(ids)]
        for i, e in zip(full, self.embedder.embed([records[i] for i in full]), strict=True):
            out[i] = e.mean[self.layer]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def fit(self, texts: Sequence[str]) -> None:
        self.matrix = self.vectors(texts)

    def rank(self, queries: Sequence[str], k: int, keep: np.ndarray) -> list[list[int]]:
        q = self.vectors(queries)
        scores = q @ self.matrix.T
        scores[:, ~keep.astype(bool)] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[int(i) for i in row if np.isfinite(scores[r, i])] if q[r].any() else []
                for r, row in enumerate(top)]


class FusionRanker:
    """Reciprocal rank fusion (Cormack et al. 2009): each ranker's ``depth`` best, scored by the sum
    of 1 / (``k`` + rank) over the rankers that return them."""

    def __init__(self, *, rankers: Sequence[Any], k: int, depth: int):
        if not rankers or k < 0 or depth < 1:
            raise ValueError("code_ranker fusion: give one ranker or more, k >= 0 and depth >= 1")
        self.rankers, self.k, self.depth = [make_ranker(r) for r in rankers], k, depth

    def fit(self, texts: Sequence[str]) -> None:
        for r in self.rankers:
            r.fit(texts)

    def rank(self, queries: Sequence[str], k: int, keep: np.ndarray) -> list[list[int]]:
        fused: list[dict[int, float]] = [{} for _ in queries]
        for r in self.rankers:
            for scores, row in zip(fused, r.rank(queries, max(k, self.depth), keep), strict=True):
                for rank, i in enumerate(row):
                    scores[i] = scores.get(i, 0.0) + 1.0 / (self.k + rank + 1)
        return [sorted(s, key=lambda i: (-s[i], i))[:k] for s in fused]


def make_ranker(spec: Any) -> Any:
    """A ranker from its config (a mapping with ``_target_``: ``conf/code_ranker/``), or the ranker itself.
    Only this module's rankers are built: a settings file (an export's ``repo_retrieval.json``) naming any
    other callable is refused, never imported."""
    from omegaconf import DictConfig

    if not isinstance(spec, dict | DictConfig):
        return spec
    spec = _plain(spec)
    rankers = {f"{__name__}.{c.__name__}": c for c in (BM25Ranker, EmbeddingRanker, FusionRanker)}
    target = spec.get("_target_")
    if target not in rankers:
        raise ValueError(f"repo_retrieval ranker {target!r}: choose one of {sorted(rankers)}")
    return rankers[target](**{k: v for k, v in spec.items() if k != "_target_"})


def _map_models(node: Any, fn: Any) -> Any:
    """``node`` (plain dicts and lists) with every ``model`` value ``v`` replaced by ``fn(v)``."""
    if isinstance(node, dict):
        return {k: (fn(v) if k == "model" else _map_models(v, fn)) for k, v in node.items()}
    return [_map_models(v, fn) for v in node] if isinstance(node, list | tuple) else node


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return {k: _plain(v) for k, v in node.items()} if isinstance(node, dict) else node


def with_model(settings: Any, model: str | None) -> dict[str, Any]:
    """``settings`` as plain data, every ``model: null`` of its ranker (and of the rankers it fuses) set to ``model``."""
    return _map_models(_plain(settings), lambda v: model if v is None else v)


def models_of(settings: dict[str, Any]) -> list[str]:
    """The encoder checkpoints the settings' rankers embed with (``model`` values, in order)."""
    found: list[str] = []
    _map_models(settings, lambda v: found.append(v) if isinstance(v, str) and v not in found else None)
    return found


def export_settings(settings: dict[str, Any], export: Path) -> dict[str, Any]:
    """Write ``settings`` into ``export`` for ``fm-complete --repo``, with a copy of every encoder the
    rankers embed with (``ranker_model<i>/``, named in the JSON relative to the export), so the
    export stands alone."""
    import json

    from fm_core.export import load_pretrained, save_pretrained

    moved = {}
    for i, model in enumerate(models_of(settings)):
        net, tok = load_pretrained(model)
        save_pretrained(export / f"ranker_model{i}", net, tok,
                        metadata={"role": "repo_retrieval ranker", "source": str(model)})
        moved[model] = f"ranker_model{i}"
    out = _map_models(_plain(settings), lambda v: moved.get(v, v))
    (export / SETTINGS_FILE).write_text(json.dumps(out, indent=2) + "\n")
    return out


class RepoRetriever:
    """Chunks of a set of files ranked by ``ranker`` (``conf/code_ranker/``), searched with one file
    excluded. Every option is required: the defaults live in ``conf/task/code_completion.yaml``
    (``repo_retrieval:``)."""

    def __init__(self, *, chunk_lines: int, stride: int, query_lines: int, top_k: int, budget_tokens: int,
                 iterations: int, ranker: Any):
        if min(chunk_lines, stride, query_lines, top_k, iterations) < 1 or budget_tokens < 0:
            raise ValueError("repo_retrieval: chunk_lines, stride, query_lines, top_k and iterations must be >= 1 "
                             "and budget_tokens >= 0")
        self.chunk_lines, self.stride, self.query_lines = chunk_lines, stride, query_lines
        self.top_k, self.budget_tokens, self.iterations = top_k, budget_tokens, iterations
        make_ranker(ranker)  # refuses an unknown ranker now, not at the first search
        self.ranker_spec, self.ranker = ranker, None
        self.chunks: list[Chunk] = []

    def index(self, files: dict[str, str]) -> RepoRetriever:
        """Chunk ``files``; the ranker indexes them when first searched."""
        self.chunks = [c for name, text in files.items() for c in chunks_of(name, text, self.chunk_lines, self.stride)]
        self.files = np.array([c.file for c in self.chunks])
        self.ranker = None
        return self

    def query(self, prefix: str) -> str:
        return "\n".join(prefix.split("\n")[-self.query_lines:])

    def search(self, queries: Sequence[str], exclude: str) -> list[list[Chunk]]:
        """The ``top_k`` chunks for each query text, none from the file ``exclude``."""
        keep = (self.files != exclude) if self.chunks else np.zeros(0, bool)
        k = min(self.top_k, int(keep.sum()))
        if k == 0 or not queries:
            return [[] for _ in queries]
        if self.ranker is None:
            self.ranker = make_ranker(self.ranker_spec)
            self.ranker.fit([c.text for c in self.chunks])
        return [[self.chunks[i] for i in row] for row in self.ranker.rank([self.query(q) for q in queries], k, keep)]

    def preamble(self, chunks: Sequence[Chunk], tok: Any) -> str:
        """The retrieved chunks (best first) that fit ``budget_tokens`` whole, best placed last (nearest
        the prompt)."""
        kept, used = [], 0
        for c in chunks:
            n = len(tok.encode(c.as_context()))
            if used + n > self.budget_tokens:
                continue
            kept.append(c)
            used += n
        return "".join(c.as_context() for c in reversed(kept))


def read_repo(directory: str, extensions: Sequence[str] = (".py",)) -> tuple[dict[str, str], list[str]]:
    """The UTF-8 source files under ``directory`` (relative names) and the skipped ones with why
    (binary, not UTF-8, unreadable): a bad file is reported by name and skipped, never fatal."""
    root = Path(directory)
    files, skipped = {}, []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in extensions):
        name = str(path.relative_to(root))
        try:
            raw = path.read_bytes()
        except OSError as err:
            skipped.append(f"{name}: cannot read ({err.strerror})")
            continue
        if b"\0" in raw:
            skipped.append(f"{name}: binary (NUL byte)")
            continue
        try:
            files[name] = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            skipped.append(f"{name}: not UTF-8 (invalid byte at offset {err.start})")
    return files, skipped


def by_package(retriever_args: dict[str, Any], files: Iterable[tuple[str, str]]) -> dict[str, RepoRetriever]:
    """One ``RepoRetriever`` per package (``package_of``) over the ``(name, text)`` files of that package."""
    grouped: dict[str, dict[str, str]] = {}
    for name, text in files:
        grouped.setdefault(package_of(name), {})[name] = text
    return {repo: RepoRetriever(**retriever_args).index(group) for repo, group in grouped.items()}


def preambles(retriever_args: dict[str, Any], cases: Sequence[Any], names: Sequence[str], texts: Sequence[str],
              tok: Any, drafts: Sequence[str] | None = None) -> tuple[list[str], dict[str, float]]:
    """For each line case (``case.file`` indexes ``names`` / ``texts``), the retrieved preamble from the
    other files of its package (``drafts``: RepoCoder's second round, the query extended by a first
    completion); and counts (cases with anything retrieved, mean preamble tokens)."""
    retrievers = by_package(retriever_args, zip(names, texts, strict=True))
    out = [""] * len(cases)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(cases):
        groups.setdefault(c.file, []).append(i)
    for f, idx in groups.items():
        r = retrievers[package_of(names[f])]
        queries = [cases[i].prefix + (drafts[i] if drafts is not None else "") for i in idx]
        for i, found in zip(idx, r.search(queries, exclude=names[f]), strict=True):
            out[i] = r.preamble(found, tok)
    sizes = [len(tok.encode(x)) if x else 0 for x in out]
    return out, {"retrieved_share": 100.0 * float(np.mean([n > 0 for n in sizes])) if sizes else 0.0,
                 "mean_preamble_tokens": float(np.mean(sizes)) if sizes else 0.0}


def evaluate_repo(completers: dict[str, Any], retriever_args: dict[str, Any], cases: Sequence[Any],
                  names: Sequence[str], texts: Sequence[str], tok: Any, *, batch_size: int,
                  line_tokens: int) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Line completions of every system with the retrieved chunks ahead of the prompt: each completer
    (``<key>+repo``) and copy-line over the same chunks + the prefix (``copy_line+repo``)."""
    from tasks.code_completion.evaluate import copy_line, greedy

    pre, counts = preambles(retriever_args, cases, names, texts, tok)
    preds = {"copy_line+repo": [copy_line(p + c.prefix) for p, c in zip(pre, cases, strict=True)]}
    iterations = int(retriever_args["iterations"])
    for key, comp in completers.items():
        got = greedy(comp, [comp.prompt(c.prefix, preamble=p) for c, p in zip(cases, pre, strict=True)], "line",
                     line_tokens, batch_size)
        if iterations > 1:  # RepoCoder: retrieve again with the first draft in the query
            again, _ = preambles(retriever_args, cases, names, texts, tok, drafts=got)
            got = greedy(comp, [comp.prompt(c.prefix, preamble=p) for c, p in zip(cases, again, strict=True)], "line",
                         line_tokens, batch_size)
        preds[f"{key}+repo"] = got
    return preds, {f"repo_retrieval/{k}": v for k, v in counts.items()}


class TrainingContext:
    """Retrieved context for FIM fine-tuning (``code_fm.fim.FIMCollator``'s ``context``): for training
    record ``index``, the chunks of the *other* training files of its package that ``query`` (the text
    before the cursor) retrieves, as token ids, with the settings the evaluation and ``fm-complete
    --repo`` use. Only the files in ``texts`` (record index -> text: the label budget's) are indexed:
    nothing outside the budget reaches the model."""

    def __init__(self, retriever_args: dict[str, Any], names: Sequence[str], texts: dict[int, str], tok: Any):
        self.names, self.tok = [str(x) for x in names], tok
        self.retrievers = by_package(retriever_args, ((self.names[i], text) for i, text in texts.items()))

    def __call__(self, index: int, query: str) -> list[int]:
        name = self.names[index]
        retriever = self.retrievers.get(package_of(name))
        if retriever is None or not query.strip():
            return []
        (found,) = retriever.search([query], exclude=name)
        text = retriever.preamble(found, self.tok)
        return list(map(int, self.tok.encode(text))) if text else []


class RepoContext:
    """``fm-complete --repo DIR``: DIR's source files indexed once with the settings the task exported
    beside the model; each completion gets the chunks of the other files ahead of its prompt."""

    def __init__(self, checkpoint: str, directory: str, tok: Any):
        import json

        from tasks.code_completion.complete import CompletionError

        settings = Path(checkpoint) / SETTINGS_FILE
        if not settings.is_file():
            raise CompletionError(f"checkpoint {checkpoint}: no {SETTINGS_FILE} (fm-finetune task=code_completion "
                                  f"writes it with task.repo_retrieval set)")
        if not Path(directory).is_dir():
            raise CompletionError(f"--repo {directory}: not a directory")
        self.root = Path(directory).resolve()
        files, self.skipped = read_repo(directory)
        args = json.loads(settings.read_text())
        args.setdefault("ranker", {"_target_": f"{__name__}.BM25Ranker"})  # written before rankers were chosen
        root = Path(checkpoint)  # an encoder copied beside the export is named relative to it
        args = _map_models(args, lambda v: str(root / v) if isinstance(v, str) and (root / v).exists() else v)
        try:
            self.retriever = RepoRetriever(**args).index(files)
        except (TypeError, ValueError) as err:
            raise CompletionError(f"{settings}: {err}") from err
        self.tok, self.files = tok, len(files)

    def preamble(self, prefix: str, file: str | None) -> str:
        """The retrieved chunks for ``prefix``, none from ``file`` (the file being edited)."""
        exclude = ""
        if file:
            path = Path(file).resolve()
            exclude = str(path.relative_to(self.root)) if path.is_relative_to(self.root) else ""
        (found,) = self.retriever.search([prefix], exclude)
        return self.retriever.preamble(found, self.tok)


__all__ = ["SETTINGS_FILE", "BM25Ranker", "Chunk", "EmbeddingRanker", "FusionRanker", "RepoContext", "RepoRetriever",
           "TrainingContext", "by_package", "chunks_of", "code_tokens", "evaluate_repo", "export_settings",
           "make_ranker", "models_of", "package_of", "preambles", "read_repo", "with_model"]
