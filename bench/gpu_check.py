"""One-command GPU check: training tokens/s and MFU of ours, transformers and fair-esm at the
ESM-2 150M and 650M shapes, on whatever CUDA device this machine has, in under a minute.

    python bench/gpu_check.py                  # CUDA: 150M and 650M, bf16 autocast, 10 logged steps each
    python bench/gpu_check.py --dry-run        # CPU, the tiny shape, 2 steps: the same code path (CI runs this)

Same random weights for the three (fair-esm ``ESM2`` -> ours -> transformers ``EsmForMaskedLM`` with
SDPA, in memory), the same real protein batches (bench/common.real_batches: token-budget batches of
the embedded UniProt slice, 15% masked), the same optimiser (AdamW), the same autocast (bf16 on
CUDA, none on the CPU). Every ``--log-every`` steps each variant logs, as torchtitan does, its
tokens/s (real tokens) and MFU (model FLOPs as bench/pretrain_vs_esm.py counts them, against the
bf16 matrix-multiply peak measured on this device in the same run) and peak memory. Variants:
  ours packed     our MaskedLM on packed rows (CUDA + bf16: the varlen flash-attention path)
  ours padded     the same on padded batches (SDPA with a key-padding mask)
  transformers    EsmForMaskedLM(attn_implementation="sdpa"), model(..., labels).loss
  fair-esm        ESM2, full logits, cross-entropy on the masked positions
A variant is skipped (and said so) when the time budget (``--budget-s``) is spent.
Writes bench/gpu_check.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_vs_esm as pve  # noqa: E402
from common import machine, matmul_gflops, median, print_table, real_batches, write_json  # noqa: E402

from bio_fm.esm_compat import from_esm2_module  # noqa: E402
from fm_core.config import SIZES  # noqa: E402
from fm_core.masking import IGNORE  # noqa: E402


def hf_mlm(net: Any):
    """transformers' EsmForMaskedLM with ``net``'s weights, built in memory (no disk round trip)."""
    from transformers import EsmConfig, EsmForMaskedLM
    from transformers import logging as hf_logging

    from bio_fm.hf_esm import hf_config_dict, hf_state

    hf_logging.set_verbosity_error()
    model = EsmForMaskedLM._from_config(EsmConfig(**hf_config_dict(net.config, {})), attn_implementation="sdpa")
    missing = model.load_state_dict(hf_state(net), strict=False).missing_keys
    if set(missing) - {"lm_head.decoder.weight"}:  # the decoder is tied to the embeddings
        raise RuntimeError(f"transformers copy lacks {missing}")
    return model


def variants(size: str, device: torch.device, bf16: bool, data: dict) -> dict[str, Any]:
    import esm

    shape = SIZES[size]
    torch.manual_seed(0)
    ref = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                              attention_heads=shape["num_heads"], alphabet="ESM-1b")
    base = from_esm2_module(ref)
    padded = pve.to_device(data["padded"])
    packed = pve.to_device(data["packed"])
    pad_id = data["tokenizer"].pad_id
    return {
        "ours packed": (pve.OursTrain(copy.deepcopy(base).to(device), packed, bf16=bf16), base.config),
        "ours padded": (pve.OursTrain(copy.deepcopy(base).to(device), padded, bf16=bf16), base.config),
        "transformers": (pve.HfTrain(hf_mlm(base).to(device), padded, pad_id, bf16=bf16), base.config),
        "fair-esm": (pve.EsmTrain(ref.to(device), padded, bf16=bf16), base.config),
    }


def run_variant(name: str, runner: Any, cfg: Any, data: dict, args: argparse.Namespace, peak: float,
                device: torch.device) -> dict[str, Any]:
    """``args.steps`` optimizer steps (one batch each, cycling), logged every ``args.log_every``."""
    batches = list(runner.batches)
    masked = [int((b["labels"] != IGNORE).sum()) for b in data["padded"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    logs, window_tokens, window_flops = [], 0, 0.0
    for step in range(-args.warmup, args.steps):
        k = step % len(batches)
        runner.batches = [batches[k]]
        if step == 0 or (step > 0 and step % args.log_every == 0):
            t0, window_tokens, window_flops = time.perf_counter(), 0, 0.0
        runner()  # one optimizer step (synchronises the device)
        if step < 0:
            continue
        window_tokens += sum(data["seq_lens"][k])
        window_flops += pve.model_flops(cfg, [data["seq_lens"][k]], masked[k], train=True)
        if (step + 1) % args.log_every == 0:
            secs = time.perf_counter() - t0
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            logs.append({"step": step + 1, "tokens_per_s": window_tokens / secs,
                         "mfu": window_flops / secs / 1e9 / peak, "max_memory_gib": mem})
            print(f"[{name}] step {step + 1:3d}  tps {logs[-1]['tokens_per_s']:10.0f}  "
                  f"mfu {100 * logs[-1]['mfu']:5.1f}%  memory {mem:6.2f} GiB", flush=True)
    runner.batches = batches
    return {"log": logs, "tokens_per_s": median([x["tokens_per_s"] for x in logs]),
            "mfu": median([x["mfu"] for x in logs]), "max_memory_gib": max(x["max_memory_gib"] for x in logs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["esm2_150m", "esm2_650m"])
    ap.add_argument("--max-tokens", type=int, default=32768, help="token budget per batch")
    ap.add_argument("--batches", type=int, default=4, help="distinct real batches, cycled")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=55.0, help="skip what would start after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, 2 steps (also chosen without CUDA)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: running the CPU dry run", flush=True)
        args.dry_run = True
    if args.dry_run:
        args.sizes, args.max_tokens, args.batches, args.steps, args.warmup, args.log_every = \
            ["tiny"], 1024, 2, 2, 1, 1
        args.budget_s = float("inf")  # a loaded CI machine must not skip what the dry run checks
        torch.set_num_threads(min(2, torch.get_num_threads()))
    device = torch.device("cpu" if args.dry_run else "cuda")
    pve.DEVICE = device
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_gflops(dtype, n=512 if args.dry_run else 8192, device=device)
    result: dict[str, Any] = {"machine": machine(), "device": torch.cuda.get_device_name(0) if bf16 else "cpu",
                              "args": vars(args), "compute_dtype": str(dtype), f"peak_{'bf16' if bf16 else 'fp32'}_gflops": peak,
                              "sizes": {}, "skipped": []}
    rows = []
    for size in args.sizes:
        data = real_batches(args.batches, args.max_tokens, max_length=min(1024, SIZES[size]["max_length"]))
        result["sizes"][size] = {"real_tokens": data["real_tokens"]}
        for name, (runner, cfg) in variants(size, device, bf16, data).items():
            if time.perf_counter() - started > args.budget_s:
                result["skipped"].append(f"{size} {name}")
                continue
            r = run_variant(name, runner, cfg, data, args, peak, device)
            result["sizes"][size][name] = r
            rows.append((f"{size} {name}", round(r["tokens_per_s"]), f"{100 * r['mfu']:.1f}%", r["max_memory_gib"]))
            del runner
        if bf16:
            torch.cuda.empty_cache()
    result["seconds"] = time.perf_counter() - started
    print_table(f"training on {result['device']} ({dtype}, peak {peak:.0f} GFLOP/s measured, "
                f"{result['seconds']:.0f} s in all; skipped: {result['skipped'] or 'none'})",
                ("variant", "tokens/s", "MFU", "memory GiB"), rows)
    write_json("gpu_check", result, args.out)
    return result


if __name__ == "__main__":
    main()
