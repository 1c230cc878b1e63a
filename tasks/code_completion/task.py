"""``fm-finetune task=code_completion``: adapt a pre-trained code masked LM into a completion model.

Design: the encoder's weights are re-used as a left-to-right generator. Attention becomes causal
(``EncoderConfig.causal``, one flag of the shared encoder, no new model class) and training
continues with next-token prediction on fill-in-the-middle formatted windows (``code_fm.fim``:
half PSM/SPM with ``<fim_prefix>/<fim_suffix>/<fim_middle>``, half plain left-to-right), so one
model serves both "complete at the end" and "complete between prefix and suffix". The tied LM
head is the masked LM's own head: every pre-trained weight carries over.

Baselines in the same run, on the same held-out files (the ``test`` split of ``fm-prep code``,
whole packages never seen in pre-training): the same architecture from random initialisation
fine-tuned with the identical budget, a token n-gram model (stupid backoff) counted on the
train split, and the copy-line heuristic. The adapted model is exported to ``<run_dir>/export``
for ``fm-complete``. With ``repo_retrieval`` set, a share ``retrieval_train_rate`` of the training
windows carries BM25-retrieved chunks of the other training files of its package ahead of its text
(``code_fm.fim``, ``repo_retrieval.TrainingContext``), the layout ``<system>+repo`` is scored with, so
the model learns to copy from retrieved code, not only to see it at inference.

With ``retrieval=true`` each neural system is also scored as retrieval-augmented line completion
(``tasks.code_completion.retrieval``: the model picks between its own line and the copy-line retrieval from the
whole file, by a gate fitted on ``gate_prompts`` prompts of the ``valid`` split), reported as
``model+retrieval`` and ``random_init+retrieval``; the model's gate is exported beside its weights.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from code_fm.fim import FIMDataModule
from code_fm.fim_format import FIMTokenizer
from fm_core.config import ConfigError, require_positive
from fm_core.decoding import NeuralLM
from fm_core.export import save_pretrained
from fm_core.finetune import FinetuneRun
from fm_core.label_budget import Subset, label_budget
from fm_core.module import CausalLMModule
from fm_core.schedules import warmup_decay
from fm_core.shards import ShardDataset, load_tokenizer
from tasks.code_completion import evaluate as ev
from tasks.code_completion.complete import DECODING_FILE, Completer
from tasks.code_completion.humaneval import HumanEvalBench  # noqa: F401  (instantiated from the YAML)
from tasks.code_completion.ngram import NgramLM
from tasks.code_completion.retrieval import RetrievalGate, choose, fit_gate

log = logging.getLogger(__name__)
TABLE_METRICS = ("line/exact_match", "line/edit_sim", "fim/exact_match", "syntax/parse_rate")


class CodeCompletionTask:
    """Every option is required: the defaults live in ``conf/task/code_completion.yaml``."""

    def __init__(self, *, data_dir: str, max_length: int, max_tokens: int, steps: int, lr: float,
                 warmup_steps: int, weight_decay: float, fim_rate: float, spm_rate: float, eval_split: str,
                 line_prompts: int, fim_prompts: int, functions: int, ngram_order: int, batch_size: int,
                 random_init_baseline: bool, threads: int, retrieval: bool, gate_prompts: int, gate_split: str,
                 train_size: int | float | None, humaneval: Any, decoding_prompts: int, decoding_grid: list[Any],
                 repo_retrieval: Any, retrieval_train_rate: float, rerank_candidates: int):
        self.__dict__.update({k: v for k, v in locals().items() if k != "self"})
        require_positive("task", steps=steps, lr=lr, max_length=max_length, max_tokens=max_tokens,
                         batch_size=batch_size, ngram_order=ngram_order, line_prompts=line_prompts,
                         gate_prompts=gate_prompts if retrieval else None)
        if rerank_candidates < 0 or (rerank_candidates and gate_prompts < 1):
            raise ConfigError(f"task.rerank_candidates={rerank_candidates}: 0 (off) or the lines proposed per prompt, "
                              f"with task.gate_prompts >= 1 to fit the scorer on (got {gate_prompts})")
        if not 0 <= retrieval_train_rate <= 1:
            raise ConfigError(f"task.retrieval_train_rate={retrieval_train_rate}: a share of the training windows, "
                              f"in [0, 1]")

    def adapt(self, run: FinetuneRun, net: torch.nn.Module, tok: FIMTokenizer, name: str,
              budget: Subset, context: dict[str, Any]) -> dict[str, float]:
        """Continue training ``net`` (causal) on FIM-formatted windows of the budget's train files
        (``context``: ``training_context``'s retrieved-context arguments)."""
        dm = FIMDataModule(tok, self.data_dir, fim_rate=self.fim_rate, spm_rate=self.spm_rate,
                           max_length=self.max_length, max_tokens=self.max_tokens, seed=run.seed, **context)
        dm.setup("fit")
        dm.train_set = budget.view(dm.train_set)
        module = CausalLMModule(
            net, functools.partial(torch.optim.AdamW, lr=self.lr, betas=(0.9, 0.98), weight_decay=self.weight_decay),
            functools.partial(warmup_decay, warmup_steps=self.warmup_steps, total_steps=self.steps),
            log_prefix=f"{name}/")
        trainer = run.trainer(max_steps=self.steps, val_check_interval=None, check_val_every_n_epoch=None,
                              enable_checkpointing=False, limit_val_batches=1.0)
        trainer.fit(module, datamodule=dm)
        (val,) = trainer.validate(module, datamodule=dm, verbose=False)
        return {f"{name}/fim_val_loss": float(val[f"{name}/val/loss"])}

    def retrieval_settings(self, init_from: str | None) -> dict[str, Any]:
        """``repo_retrieval`` as plain data, an embedding ranker's ``model: null`` set to the run's backbone."""
        from tasks.code_completion.repo_retrieval import with_model

        return with_model(self.repo_retrieval, init_from)

    def training_context(self, tok: FIMTokenizer, train: ShardDataset, budget: Subset,
                         init_from: str | None = None) -> dict[str, Any]:
        """FIMDataModule's retrieved-context arguments: with ``repo_retrieval`` set and
        ``retrieval_train_rate`` > 0, that share of the training windows gets the chunks of the other
        budget files of its package ahead of the text (``TrainingContext``), in the evaluation's token
        budget (at most half the window, as ``Completer.prompt`` cuts the preamble at inference)."""
        tokens = min(int(self.repo_retrieval["budget_tokens"]), self.max_length // 2) if self.repo_retrieval else 0
        if not self.retrieval_train_rate or tokens <= 0:
            return {}
        from tasks.code_completion.repo_retrieval import TrainingContext

        texts = {int(i): tok.decode(train.array(int(i))) for i in budget.indices}
        context = TrainingContext(self.retrieval_settings(init_from), train.column("path"), texts, tok)
        return {"context": context, "context_rate": float(self.retrieval_train_rate), "context_tokens": tokens}

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        torch.set_num_threads(self.threads)
        tok = load_tokenizer(self.data_dir)
        if not isinstance(tok, FIMTokenizer):
            raise ValueError(f"{self.data_dir}: tokenizer {tok.to_dict().get('kind')} has no FIM sentinels")
        if self.repo_retrieval is not None:  # a bad ranker (or an embedding ranker without a model) fails now
            from tasks.code_completion.repo_retrieval import make_ranker

            make_ranker(self.retrieval_settings(run.init_from)["ranker"])
        net = run.backbone(tok, causal=True, max_length=self.max_length)
        systems: dict[str, torch.nn.Module] = {}
        metrics: dict[str, Any] = {"data/eval_split": self.eval_split}
        name = "model" if run.init_from else "random_init"
        if self.random_init_baseline and run.init_from:
            systems["random_init"] = run.random_backbone(net, tok)
        systems = {name: net, **systems}
        train = ShardDataset(Path(self.data_dir) / "train")
        budget = label_budget(train.column("path"), self.train_size, run.seed)  # whole files (fm_core.label_budget)
        metrics.update(budget.metrics)
        context = self.training_context(tok, train, budget, run.init_from)  # the same for every system
        metrics["fim/retrieval_train_rate"] = float(context.get("context_rate", 0.0))
        for key, model in systems.items():
            metrics.update(self.adapt(run, model, tok, key, budget, context))
        export = save_pretrained(Path(run.run_dir) / "export", net.eval(), tok,
                                 metadata={"task": "code_completion", "init_from": run.init_from or "random"})
        metrics["export"] = str(export)
        if "random_init" in systems and name != "random_init":  # the twin too, for later benchmark runs
            metrics["export_random_init"] = str(save_pretrained(
                Path(run.run_dir) / "export_random_init", systems["random_init"].eval(), tok,
                metadata={"task": "code_completion", "init_from": "random"}))

        # held-out files and the baselines fitted on the train split
        texts = self.texts(tok, self.eval_split)
        lines = ev.line_cases(texts, self.line_prompts, run.seed)
        fims = ev.line_cases(texts, self.fim_prompts, run.seed + 1)
        funcs = ev.function_cases(texts, self.functions, run.seed + 2)
        metrics.update({"data/eval_files": len(texts), "data/line_prompts": len(lines),
                        "data/fim_prompts": len(fims), "data/functions": len(funcs)})
        ngram = NgramLM(tok.vocab_size, self.ngram_order).fit((train.array(int(i)) for i in budget.indices), tok.bos_id)
        line_preds: dict[str, list[str]] = {"copy_line": []}
        results: dict[str, dict[str, float]] = {"copy_line": ev.evaluate_copy_line(lines, fims, line_preds["copy_line"])}
        completers = {key: Completer(NeuralLM(model), tok, self.max_length) for key, model in systems.items()}
        completers[f"ngram{self.ngram_order}"] = Completer(ngram, tok, self.max_length)
        metrics.update(self.choose_decoding(completers, tok, run.seed, export if name in completers else None, name))
        gate_cases: list[ev.LineCase] = []
        if self.retrieval:
            gate_cases = ev.line_cases(self.texts(tok, self.gate_split), self.gate_prompts, run.seed + 3)
            metrics["data/gate_prompts"] = len(gate_cases)
        for key, completer in completers.items():
            preds = line_preds[key] = []
            with tqdm(total=len(lines) + len(fims) + len(funcs), desc=f"evaluate {key}", unit=" prompt") as bar:
                results[key] = ev.evaluate_system(completer, lines, fims, funcs, batch_size=self.batch_size,
                                                  progress=bar.update, line_preds=preds)
            if gate_cases and key in systems:
                results[f"{key}+retrieval"], gate, line_preds[f"{key}+retrieval"] = self.with_retrieval(
                    completer, gate_cases, lines, preds)
                metrics[f"retrieval/taken/{key}"] = results[f"{key}+retrieval"].pop("taken")
                if key == name:
                    gate.save(export)
        for key, res in results.items():
            metrics.update({f"{metric}/{key}": value for metric, value in res.items()})
        if run.init_from:
            metrics.update(beats_baselines(results))
        if self.repo_retrieval is not None:
            metrics.update(self.run_repo_retrieval(completers, lines, line_preds, tok, export, run.seed,
                                                   run.init_from))
        if self.rerank_candidates:
            metrics.update(self.run_rerank(completers, lines, line_preds, tok, run.seed, run.init_from, export))
        metrics.update(self.write_line_predictions(Path(run.run_dir), lines, line_preds, run.seed))
        print(table(results))
        if self.humaneval is not None:
            metrics.update(self.run_humaneval(completers, run.seed))
        return metrics

    def choose_decoding(self, completers: dict[str, Completer], tok: FIMTokenizer, seed: int, export: Path | None,
                        name: str) -> dict[str, float]:
        """Per system, the repetition handling of ``decoding_grid`` whose greedy line completions have the
        best edit similarity on ``decoding_prompts`` prompts of ``gate_split`` (never the evaluation files);
        the model's choice is exported (``DECODING_FILE``) for fm-complete."""
        cases = ev.line_cases(self.texts(tok, self.gate_split), self.decoding_prompts, seed + 4)
        out: dict[str, float] = {"data/decoding_prompts": len(cases)}
        for key, c in completers.items():
            scored = []
            for option in self.decoding_grid:
                c.repetition_penalty, c.no_repeat_ngram = float(option["repetition_penalty"]), int(option["no_repeat_ngram"])
                preds = ev.greedy(c, [c.prompt(x.prefix) for x in cases], "line", ev.LINE_TOKENS, self.batch_size)
                scored.append((ev.line_scores(preds, [x.target for x in cases])["edit_sim"] if cases else 0.0,
                               c.repetition_penalty, c.no_repeat_ngram))
            best = max(scored, key=lambda x: x[0])  # ties: the first (the grid starts with "off")
            _, c.repetition_penalty, c.no_repeat_ngram = best
            out.update({f"decoding/valid_edit_sim/{key}": best[0], f"decoding/repetition_penalty/{key}": best[1],
                        f"decoding/no_repeat_ngram/{key}": best[2]})
            if key == name and export is not None:
                (export / DECODING_FILE).write_text(json.dumps(
                    {"repetition_penalty": best[1], "no_repeat_ngram": best[2], "chosen_on": f"{len(cases)} "
                     f"{self.gate_split} line prompts"}, indent=2) + "\n")
        return out

    def run_repo_retrieval(self, completers: dict[str, Completer], lines: list[ev.LineCase],
                           line_preds: dict[str, list[str]], tok: FIMTokenizer, export: Path | None,
                           seed: int, init_from: str | None = None) -> dict[str, Any]:
        """Repository-level retrieval (``tasks.code_completion.repo_retrieval``) on the evaluation line
        prompts: every system with the same retrieved chunks (``<system>+repo``, added to
        ``line_preds``), line scores and paired intervals; the settings (and an embedding ranker's encoder)
        are exported for ``fm-complete --repo``."""
        from tasks.code_completion.repo_retrieval import evaluate_repo, export_settings

        names = [str(x) for x in ShardDataset(Path(self.data_dir) / self.eval_split).column("path")]
        texts = self.texts(tok, self.eval_split)
        args = self.retrieval_settings(init_from)
        preds, metrics = evaluate_repo(completers, args, lines, names, texts, tok, batch_size=self.batch_size,
                                       line_tokens=ev.LINE_TOKENS)
        line_preds.update(preds)
        targets = [c.target for c in lines]
        for key, got in preds.items():
            metrics.update({f"line/{m}/{key}": v for m, v in ev.line_scores(got, targets).items()})
        metrics.update(repo_comparisons(line_preds, targets, seed))
        if export is not None:
            export_settings(args, export)
        return metrics

    def run_rerank(self, completers: dict[str, Completer], lines: list[ev.LineCase],
                   line_preds: dict[str, list[str]], tok: FIMTokenizer, seed: int,
                   init_from: str | None = None, export: Path | None = None) -> dict[str, Any]:
        """Candidate reranking (``tasks.code_completion.rerank``) on the evaluation line prompts: retrieval
        (the repository chunks of ``repo_retrieval`` + the prefix; the prefix alone without it) proposes
        ``rerank_candidates`` lines, each system adds its own, a scorer fitted on ``gate_prompts`` prompts
        of ``gate_split`` chooses (``<system>+rerank``, and ``copy_line+rerank`` with no language model);
        line scores and paired intervals of the model against the best other systems; the model's scorer
        is saved in ``export`` for ``fm-complete --rerank``."""
        from tasks.code_completion.repo_retrieval import preambles
        from tasks.code_completion.rerank import evaluate_rerank

        def retrieved(split: str, cases: list[ev.LineCase]) -> list[str]:
            if self.repo_retrieval is None:
                return [""] * len(cases)
            names = [str(x) for x in ShardDataset(Path(self.data_dir) / split).column("path")]
            return preambles(self.retrieval_settings(init_from), cases, names, self.texts(tok, split), tok)[0]

        fit_cases = ev.line_cases(self.texts(tok, self.gate_split), self.gate_prompts, seed + 3)
        # each system's own line, written with the first round's chunks as on the fit prompts (a RepoCoder
        # second round's line is rewritten from those chunks)
        rounds = int(self.repo_retrieval["iterations"]) if self.repo_retrieval is not None else 1
        own = {} if rounds > 1 else {k: line_preds[f"{k}+repo" if self.repo_retrieval is not None else k]
                                     for k in completers}
        preds, scorers = evaluate_rerank(completers, fit_cases, retrieved(self.gate_split, fit_cases), lines,
                                         retrieved(self.eval_split, lines), own,
                                         candidates=int(self.rerank_candidates), batch_size=self.batch_size,
                                         line_tokens=ev.LINE_TOKENS, seed=seed)
        exported = "model" if "model" in scorers else "random_init"  # the system in the export
        if export is not None and exported in scorers:  # its scorer, for fm-complete --rerank
            scorers[exported].save(export, int(self.rerank_candidates), len(fit_cases))
        line_preds.update(preds)
        targets = [c.target for c in lines]
        metrics: dict[str, Any] = {"data/rerank_fit_prompts": len(fit_cases)}
        for key, got in preds.items():
            metrics.update({f"line/{m}/{key}": v for m, v in ev.line_scores(got, targets).items()})
        metrics.update(rerank_comparisons(line_preds, targets, seed))
        return metrics

    def run_humaneval(self, completers: dict[str, Completer], seed: int) -> dict[str, float]:
        """HumanEval and its single-line infilling (``tasks.code_completion.humaneval``) for every system
        of the run and copy-line, with paired intervals of the model against each other system."""
        from hydra.utils import instantiate

        bench = instantiate(self.humaneval)
        train = ShardDataset(Path(self.data_dir) / "train")
        tok = load_tokenizer(self.data_dir)

        def corpus():  # the pre-training (and fine-tuning) files, for the decontamination check
            paths = train.column("path")
            return ((str(paths[i]), tok.decode(train.array(i))) for i in range(len(train)))

        metrics, per_task = bench.run(completers, seed, corpus)
        for other in (k for k in per_task if k != "model" and "model" in per_task):
            for metric, scores in per_task["model"].items():
                boot = ev.paired_bootstrap(scores, per_task[other][metric], seed=seed)
                metrics.update({f"paired/{metric}/model-{other}/{k}": v for k, v in boot.items()})
        print(humaneval_table(metrics, list(per_task)))
        return metrics

    def texts(self, tok: FIMTokenizer, split: str) -> list[str]:
        """The decoded files of one split of the prepared directory."""
        files = ShardDataset(Path(self.data_dir) / split)
        return [tok.decode(files.array(i)) for i in range(len(files))]

    @staticmethod
    def write_line_predictions(run_dir: Path, lines: list[ev.LineCase], preds: dict[str, list[str]],
                               seed: int) -> dict[str, float]:
        """Every system's line completions in ``line_predictions.jsonl`` (one prompt per row), and the
        paired bootstrap of the pre-trained model against its random-init twin on the same prompts
        (``paired/<metric>/<a>-<b>/{mean,ci95_low,ci95_high}``)."""
        with open(run_dir / "line_predictions.jsonl", "w") as f:
            for i, c in enumerate(lines):
                f.write(json.dumps({"file": c.file, "target": c.target, **{k: v[i] for k, v in preds.items()}}) + "\n")
        targets = [c.target for c in lines]
        scores = {k: ev.per_prompt_scores(v, targets) for k, v in preds.items()}
        out: dict[str, float] = {}
        for a, b in (("model", "random_init"), ("model+retrieval", "random_init+retrieval")):
            if a in scores and b in scores:
                for metric in ("exact_match", "edit_sim"):
                    boot = ev.paired_bootstrap(scores[a][metric], scores[b][metric], seed=seed)
                    out.update({f"paired/line/{metric}/{a}-{b}/{k}": v for k, v in boot.items()})
        return out

    def with_retrieval(self, completer: Completer, gate_cases: list[ev.LineCase], lines: list[ev.LineCase],
                       preds: list[str]) -> tuple[dict[str, float], RetrievalGate, list[str]]:
        """Fit the gate on the gate split's prompts, then choose on the evaluation prompts."""
        own = ev.greedy(completer, [completer.prompt(c.prefix) for c in gate_cases], "line", ev.LINE_TOKENS, self.batch_size)
        gate = fit_gate(completer, [c.prefix for c in gate_cases], own, [c.target for c in gate_cases])
        chosen = choose(gate, completer, [c.prefix for c in lines], preds)
        out: dict[str, float] = {f"line/{k}": v for k, v in ev.line_scores(chosen, [c.target for c in lines]).items()}
        out["taken"] = 100.0 * float(np.mean([c != p for c, p in zip(chosen, preds, strict=True)]))
        return out, gate, chosen


def beats_baselines(results: dict[str, dict[str, float]]) -> dict[str, bool]:
    """Per headline metric: is the better of ``model`` and ``model+retrieval`` above every other system?"""
    ours = [k for k in results if k.split("+")[0] == "model"]
    out = {}
    for metric in TABLE_METRICS:
        best = max((results[k][metric] for k in ours if metric in results[k]), default=float("-inf"))
        others = [res[metric] for key, res in results.items() if key not in ours and metric in res]
        out[f"beats_baselines/{metric}"] = bool(best > max(others))
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    rows = [f"{'system':<14}" + "".join(f"{c:>20}" for c in TABLE_METRICS)]
    for key, res in results.items():
        rows.append(f"{key:<14}" + "".join(f"{res[c]:>20.2f}" if c in res else f"{'-':>20}" for c in TABLE_METRICS))
    return "\n".join(rows)


def humaneval_table(metrics: dict[str, float], systems: list[str]) -> str:
    cols = [c for c in ("humaneval/pass@1", "humaneval/pass@10", "humaneval/greedy_pass@1", "humaneval_infill/pass@1",
                        "humaneval_infill/exact_match") if any(f"{c}/{k}" in metrics for k in systems)]
    rows = [f"{'system':<14}" + "".join(f"{c.replace('humaneval', 'he'):>22}" for c in cols)]
    for key in systems:
        rows.append(f"{key:<14}" + "".join(f"{metrics[f'{c}/{key}']:>22.2f}" if f"{c}/{key}" in metrics else f"{'-':>22}"
                                          for c in cols))
    return "\n".join(rows)


def repo_comparisons(preds: dict[str, list[str]], targets: list[str], seed: int) -> dict[str, Any]:
    """Paired bootstrap intervals on the same prompts, per line metric: the best neural system with
    repository retrieval against the best non-neural one with the same chunks (``beats_baselines_repo``:
    the interval lies above zero), the model against its twin with retrieval, and retrieval's gain."""
    scores = {k: ev.per_prompt_scores(v, targets) for k, v in preds.items()}
    neural = [k for k in scores if k.endswith("+repo") and k.split("+")[0] in ("model", "random_init")]
    plain = [k for k in scores if k.endswith("+repo") and k not in neural]
    out: dict[str, Any] = {}
    for metric in ("exact_match", "edit_sim"):
        pairs = [("model+repo", "random_init+repo"), ("model+repo", "model")]
        if neural and plain:
            best_n = max(neural, key=lambda k: scores[k][metric].mean())
            best_p = max(plain, key=lambda k: scores[k][metric].mean())
            pairs.append((best_n, best_p))
        for a, b in pairs:
            if a in scores and b in scores:
                boot = ev.paired_bootstrap(scores[a][metric], scores[b][metric], seed=seed)
                out.update({f"paired/line/{metric}/{a}-{b}/{k}": v for k, v in boot.items()})
        if neural and plain:
            out[f"beats_baselines_repo/line/{metric}"] = bool(out[f"paired/line/{metric}/{best_n}-{best_p}/ci95_low"] > 0)
    return out


def rerank_comparisons(preds: dict[str, list[str]], targets: list[str], seed: int) -> dict[str, Any]:
    """Paired bootstrap intervals on the same prompts, per line metric: the best neural system with
    retrieval (``+repo`` or ``+rerank``) against the best non-neural one with the same retrieval
    (``beats_baselines_rerank``: the interval lies above zero), the model against its twin when both
    rerank, and the model's reranking against the scorer with no language model and against copy-line + repo."""
    with_retrieval = [k for k in preds if k.endswith(("+repo", "+rerank"))]
    scores = {k: ev.per_prompt_scores(preds[k], targets) for k in with_retrieval}
    neural = [k for k in scores if k.split("+")[0] in ("model", "random_init")]
    plain = [k for k in scores if k not in neural]
    out: dict[str, Any] = {}
    for metric in ("exact_match", "edit_sim"):
        pairs = [("model+rerank", "random_init+rerank"), ("model+rerank", "copy_line+rerank"),
                 ("model+rerank", "copy_line+repo")]
        if neural and plain:
            best_n = max(neural, key=lambda k: scores[k][metric].mean())
            best_p = max(plain, key=lambda k: scores[k][metric].mean())
            pairs.append((best_n, best_p))
        for a, b in dict.fromkeys(pairs):
            if a in scores and b in scores:
                boot = ev.paired_bootstrap(scores[a][metric], scores[b][metric], seed=seed)
                out.update({f"paired/line/{metric}/{a}-{b}/{k}": v for k, v in boot.items()})
        if neural and plain:
            out[f"beats_baselines_rerank/line/{metric}"] = bool(
                out[f"paired/line/{metric}/{best_n}-{best_p}/ci95_low"] > 0)
    return out
