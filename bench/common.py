"""Shared pieces of the benchmarks: real batches, interleaved timing, measured matmul peaks, JSON out.

Rules every bench here follows (the machine is shared and timings swing 2x): the reference and our
variants run on identical inputs in one process, interleaved round by round (the order rotates
each round), and the reported figure is the ratio of medians over rounds, never a lone time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent  # JSON results sit beside the scripts that write them


def machine() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "load_avg_1m": os.getloadavg()[0]}


def protein_dataset(split: str = "train"):
    """The embedded UniProt slice (real proteins, their real length distribution)."""
    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.fasta import fasta_dataset

    tok = ProteinAlphabet()
    path = str(files("bio_fm").joinpath(f"data/uniprot_slice/{split}.fasta.gz"))
    return fasta_dataset(path, tok), tok


def real_batches(n_batches: int, max_tokens: int, max_length: int = 1024, seed: int = 0,
                 split: str = "train") -> dict[str, Any]:
    """``n_batches`` training batches of real proteins cut by our token-budget sampler, chosen at
    evenly spaced quantiles of batch length so their tokens follow the corpus length distribution.
    Returns the same samples (same crops, same masks) collated padded and packed."""
    from fm_core.data import MLMCollator, TokenBudgetBatchSampler
    from fm_core.masking import MaskingConfig

    ds, tok = protein_dataset(split)
    lengths = np.minimum(ds.lengths + 2, max_length)
    sampler = TokenBudgetBatchSampler(lengths, max_tokens, seed=seed)
    plan = sorted(sampler, key=lambda b: max(lengths[i] for i, _ in b))
    picks = np.linspace(0, len(plan) - 1, n_batches + 2)[1:-1].round().astype(int)
    chosen = [plan[i] for i in picks]
    bert = MaskingConfig(mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1)  # conf/data/uniprot_slice.yaml
    padded = MLMCollator(tok, max_length, bert)
    packed = MLMCollator(tok, max_length, bert, packing=True)
    out = {"padded": [padded([ds[k] for k in b]) for b in chosen],
           "packed": [packed([ds[k] for k in b]) for b in chosen], "tokenizer": tok}
    for p, q in zip(out["padded"], out["packed"], strict=True):  # same samples, same masks
        assert torch.equal(p["input_ids"][p["input_ids"] != tok.pad_id], q["input_ids"][0])
    out["real_tokens"] = sum(int(b["seq_lens"].sum()) for b in out["packed"])
    out["seq_lens"] = [b["seq_lens"].tolist() for b in out["packed"]]
    return out


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3, device: torch.device | str = "cpu") -> float:
    """Measured matrix-multiply throughput (GFLOP/s) of an n x n x n product: the peak MFU refers to."""
    device = torch.device(device)
    if device.type == "cuda":
        n = max(n, 8192)  # a GPU needs a large product to reach its peak
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                extra: dict[str, Callable[[], float]] | None = None,
                progress: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``rounds`` times, variants interleaved with a rotating order.
    ``extra`` callables return a number measured once per round (e.g. a matmul peak)."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    measured: dict[str, list[float]] = {n: [] for n in (extra or {})}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t = time.perf_counter()
            variants[name]()
            dt = time.perf_counter() - t
            if r >= warmup:
                times[name].append(dt)
        if r >= warmup:
            for name, fn in (extra or {}).items():
                measured[name].append(fn())
        progress(f"round {r + 1}/{warmup + rounds}" + (" (warm-up)" if r < warmup else "") + ": " +
                 ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names if r >= warmup))
    return {**times, **measured}


def timed_rounds(variants: dict[str, Callable[[], Any]], rounds: int, width: int = 24
                 ) -> tuple[dict[str, Any], dict[str, list[float]], dict[str, list[float]]]:
    """Run each variant ``rounds`` times, interleaved with a rotating order, every round timed
    (no untimed warm-up: the median of >= 3 rounds absorbs the first). Returns the first output of
    each variant, and its wall seconds and CPU seconds of this process (``time.process_time``)."""
    names = list(variants)
    outputs: dict[str, Any] = {}
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            t0, c0 = time.perf_counter(), time.process_time()
            outputs.setdefault(name, variants[name]())
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"round {r + 1}/{rounds} {name:{width}s} {wall[name][-1]:8.2f} s wall {cpu[name][-1]:8.2f} s cpu",
                  file=sys.stderr, flush=True)
    return outputs, wall, cpu


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    print(f"results: {path}")
    return path


def padded_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted batches of at most ``max_tokens`` padded tokens (what a careful HF user writes)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * (lengths[i] + 2) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


def code_completion_task(overrides: list[str]) -> tuple[Any, Any]:
    """(config, task) of ``fm-finetune task=code_completion`` with ``overrides``, composed as the CLI does."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="fm_conf", version_base=None):
        cfg = compose(config_name="finetune", overrides=["task=code_completion", *overrides])
    return cfg, instantiate({k: v for k, v in cfg.task.items() if k != "name"}, _recursive_=False)


def code_completers(run: Path, task: Any, done: dict[str, Any]) -> dict[str, Any]:
    """The completion systems of a finished (or stopped) code_completion run, rebuilt from its run
    directory: ``model`` (``export/``), ``random_init`` (``export_random_init/`` when there), and the
    task's n-gram refitted on its train split; each with the repetition handling the run chose
    (``decoding/*`` in ``done``, its metrics; the decoder's defaults where absent)."""
    from fm_core.decoding import NeuralLM
    from fm_core.export import load_pretrained
    from fm_core.shards import ShardDataset
    from tasks.code_completion.complete import Completer, load_completer
    from tasks.code_completion.ngram import NgramLM

    completers = {"model": load_completer(str(run / "export"), task.max_length)[0]}
    tok = completers["model"].tok
    if (run / "export_random_init").is_dir():
        completers["random_init"] = Completer(NeuralLM(load_pretrained(str(run / "export_random_init"))[0]), tok,
                                              task.max_length)
    train = ShardDataset(Path(task.data_dir) / "train")
    completers[f"ngram{task.ngram_order}"] = Completer(NgramLM(tok.vocab_size, task.ngram_order).fit(
        (train.array(i) for i in range(len(train))), tok.bos_id), tok, task.max_length)
    for key, c in completers.items():
        if f"decoding/repetition_penalty/{key}" in done:
            c.repetition_penalty = float(done[f"decoding/repetition_penalty/{key}"])
            c.no_repeat_ngram = int(done[f"decoding/no_repeat_ngram/{key}"])
    return completers
