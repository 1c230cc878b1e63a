"""Where the time goes, per op (torch.profiler): embedding inference at the ESM-2 8M and 35M shapes
(ours float32, ours int8, transformers' EsmModel with SDPA) and one training step at the 8M shape.

    nice -n 10 python bench/profile_ops.py                      # 8M and 35M, 48 held-out proteins, 2 threads
    python bench/profile_ops.py --sizes esm2_8m --n 8 --train-batches 1 --out /tmp/p.json   # a smoke run

Each variant runs once untimed (oneDNN's per-shape set-up), then the fp32 GEMM peak is measured
(2048^3) and the variant runs once under the profiler. Ops are
grouped (matmul, attention, elementwise, copy, normalisation, optimizer, other) by their self CPU
time; the matmul and attention groups are also given the GFLOP/s they reach (their useful FLOPs /
their time) against the fp32 GEMM peak measured in the same run at the same threads, which shows
which op holds the total back. Training: our step as ``MLMModule`` runs it (encoder, LM head on the
masked positions, AdamW) in float32 and in bf16-mixed (``torch.autocast`` as Lightning's
``precision=bf16-mixed`` runs it, measured against the bf16 GEMM peak), on real batches from
bench/common.real_batches. Every variant also gets ``lost_seconds`` per group: its op time minus the
time its useful FLOPs would take at the peak of the variant's dtype (all of it for groups without
GEMM FLOPs: element-wise ops, copies, norms, the optimizer); ``held_back_by`` names the group that
loses the most, which is what keeps the step from the peak.
Writes bench/profile_ops.json and prints the groups.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_gflops, print_table, real_batches, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK = [0.0]  # fp32 GEMM GFLOP/s measured right before the profiled pass in progress
GROUPS = {  # first match wins; op names of the CPU profiler (aten::..., quantized::..., autograd nodes excluded)
    "attention": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "matmul": ("addmm", "aten::mm", "aten::bmm", "quantized::linear", "linear_dynamic", "aten::matmul",
               "linear_pointwise"),
    "normalisation": ("layer_norm",),
    "gelu": ("gelu",),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "sqrt"),
    "copy": ("copy_", "contiguous", "clone", "index", "cat", "fill_", "zero_"),
    "elementwise": ("mul", "add", "neg", "sub", "div", "sin", "cos", "exp", "where", "masked_fill", "softmax",
                    "log_softmax", "nll_loss", "sum", "mean", "quantize_per", "dequantize", "amax", "round"),
}


TRAIN_PRECISIONS = {  # --train-precisions: (result key, compute dtype whose GEMM peak it is measured against, short)
    "float32": ("ours_float32", torch.float32, "fp32"),
    "bf16-mixed": ("ours_bf16_mixed", torch.bfloat16, "bf16"),
}


def group_of(name: str) -> str:
    low = name.lower()
    return next((g for g, keys in GROUPS.items() if any(k in low for k in keys)), "other")


def profiled(fn, dtype: torch.dtype = torch.float32) -> tuple[dict[str, float], list[dict[str, Any]], float]:
    """(seconds per group, top ops, profiled CPU seconds of the process)."""
    fn()  # untimed set-up pass
    PEAK[0] = matmul_gflops(dtype)  # the peak of this moment and dtype (the machine is shared)
    c0 = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    cpu = time.process_time() - c0
    groups: dict[str, float] = {}
    ops = []
    for ev in prof.key_averages():
        if ev.key.startswith(("autograd::", "Optimizer.", "ProfilerStep", "<")) or ev.self_cpu_time_total <= 0:
            continue
        seconds = ev.self_cpu_time_total / 1e6
        groups[group_of(ev.key)] = groups.get(group_of(ev.key), 0.0) + seconds
        ops.append({"op": ev.key, "self_seconds": seconds, "calls": ev.count})
    ops.sort(key=lambda o: -o["self_seconds"])
    return groups, ops[:15], cpu


def flop_parts(cfg: Any, lengths: list[int], train: bool, n_masked: int = 0) -> dict[str, float]:
    d, f, v, layers = cfg.embed_dim, cfg.ffn_dim, cfg.vocab_size, cfg.num_layers
    tokens, sq = sum(lengths), sum(n * n for n in lengths)
    parts = {"matmul": 2 * tokens * layers * (4 * d * d + 2 * d * f) + 2 * n_masked * (d * d + d * v),
             "attention": 4 * layers * d * sq}
    return {k: 3 * x for k, x in parts.items()} if train else parts


def lost_seconds(groups: dict[str, float], flops: dict[str, float], peak_gflops: float) -> dict[str, float]:
    """Per group, op seconds beyond what its useful FLOPs take at the peak (a group with no GEMM FLOPs
    loses all its time), largest first: what keeps the whole from the peak, in seconds."""
    lost = {g: max(0.0, s - flops.get(g, 0.0) / 1e9 / peak_gflops) for g, s in groups.items()}
    return dict(sorted(lost.items(), key=lambda x: -x[1]))


def summarise(label: str, groups: dict[str, float], ops: list, cpu: float, flops: dict[str, float],
              _peak: float, dtype: str = "fp32") -> dict[str, Any]:
    peak = PEAK[0]  # measured just before this variant's profiled pass, in its compute dtype
    total = sum(groups.values())
    out = {"profiled_cpu_seconds": cpu, "op_seconds_total": total, f"{dtype}_peak_gflops_at_profile": peak,
           "peak_dtype": dtype,
           "share": {g: s / total for g, s in sorted(groups.items(), key=lambda x: -x[1])}, "top_ops": ops,
           "flops": flops, f"fraction_of_{dtype}_peak": sum(flops.values()) / 1e9 / total / peak}
    for g in ("matmul", "attention"):
        if groups.get(g):
            out[f"{g}_gflops"] = flops[g] / 1e9 / groups[g]
            out[f"{g}_fraction_of_{dtype}_peak"] = out[f"{g}_gflops"] / peak
    out["lost_seconds"] = lost_seconds(groups, flops, peak)
    out["held_back_by"] = next(iter(out["lost_seconds"]))
    out["lost_share"] = {g: s / total for g, s in out["lost_seconds"].items()}
    shares = ", ".join(f"{g} {100 * s:.0f}%" for g, s in out["share"].items())
    print(f"{label}: {total:.1f} s in ops, {100 * out[f'fraction_of_{dtype}_peak']:.0f}% of the {dtype} peak overall "
          f"(matmul {out.get('matmul_gflops', 0):.0f}, attention {out.get('attention_gflops', 0):.0f} GFLOP/s); "
          f"{shares}; held back by {out['held_back_by']} ({100 * out['lost_share'][out['held_back_by']]:.0f}% "
          "of the op time lost)", flush=True)
    return out


def embedding(size: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    from transformers import EsmModel

    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.fasta import iter_fasta
    from bio_fm.hf_esm import save_hf_esm
    from fm_core.config import EncoderConfig
    from fm_core.model import MaskedLM
    from fm_core.padding import pad_batch
    from fm_core.quant import quantize_encoder_int8

    alphabet = ProteinAlphabet()
    seqs = [s[:1022] for _, s in iter_fasta(ROOT / "bio_fm/data/uniprot_slice/valid.fasta.gz")][: args.n]
    torch.manual_seed(0)
    cfg = EncoderConfig.from_name(size, vocab_size=alphabet.vocab_size, pad_id=alphabet.pad_id,
                                  mask_id=alphabet.mask_id, **alphabet.encoder_defaults())
    net = MaskedLM(cfg).eval()
    work = Path(args.workdir) / size
    save_hf_esm(net, alphabet, work, card={})
    hf = EsmModel.from_pretrained(work, local_files_only=True, attn_implementation="sdpa",
                                  add_pooling_layer=False).eval()
    int8 = quantize_encoder_int8(net.encoder)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    batches, cur = [], []
    for i in order:  # length-sorted, padded size within the budget
        if cur and (len(cur) + 1) * (len(seqs[i]) + 2) > args.max_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    toks = [pad_batch([alphabet.add_special_tokens(alphabet.encode(seqs[i])) for i in b], alphabet.pad_id)
            for b in batches]
    variants = {"ours_float32": lambda t: net.encoder(t)["hidden"], "ours_int8": lambda t: int8(t)["hidden"],
                "transformers_sdpa": lambda t: hf(t, attention_mask=t.ne(alphabet.pad_id).long()).last_hidden_state}
    flops = flop_parts(cfg, [len(s) + 2 for s in seqs], train=False)
    out = {"sequences": len(seqs), "residues": sum(len(s) for s in seqs), "batches": len(batches),
           "padding_fraction": 1 - sum(len(s) + 2 for s in seqs) / sum(t.numel() for t in toks)}
    for name, fwd in variants.items():
        def run(fwd=fwd):
            with torch.inference_mode():
                for t in toks:
                    fwd(t)
        out[name] = summarise(f"{size} {name}", *profiled(run), flops, peak)
    return out


def training(args: argparse.Namespace, peak: float) -> dict[str, Any]:
    import esm

    from bio_fm.esm_compat import from_esm2_module
    from fm_core.config import SIZES
    from fm_core.masking import IGNORE

    data = real_batches(args.train_batches, 4096)
    shape = SIZES["esm2_8m"]
    torch.manual_seed(0)
    net = from_esm2_module(esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                                               attention_heads=shape["num_heads"], alphabet="ESM-1b")).train()
    opt = torch.optim.AdamW(net.parameters(), lr=4e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    out = {"real_tokens": data["real_tokens"], "batches": args.train_batches}
    for precision in args.train_precisions:
        name, dtype, short = TRAIN_PRECISIONS[precision]
        for layout in ("padded", "packed"):
            batches = data[layout]

            def step(batches=batches, bf16=dtype == torch.bfloat16):
                for b in batches:
                    # bf16-mixed: autocast around forward and loss, as Lightning's plugin does; fp32 master weights
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        hidden = net.encoder(b["input_ids"], seq_lens=b.get("seq_lens"))["hidden"]
                        selected = b["labels"] != IGNORE
                        loss = F.cross_entropy(net.mlm_logits(hidden[selected]).float(), b["labels"][selected])
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            n_masked = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
            flops = flop_parts(net.config, [n for s in data["seq_lens"] for n in s], train=True, n_masked=n_masked)
            out[f"{name}_{layout}"] = summarise(f"train esm2_8m {precision} {layout}", *profiled(step, dtype), flops,
                                                peak, dtype=short)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=["esm2_8m", "esm2_35m"], help="embedding shapes (none: training only)")
    ap.add_argument("--train-precisions", nargs="+", default=list(TRAIN_PRECISIONS), choices=list(TRAIN_PRECISIONS))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--train-batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/fm_profile_ops")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {"fp32_gflops": matmul_gflops(torch.float32), "bf16_gflops": matmul_gflops(torch.bfloat16)}
    print(f"GEMM peaks (2048^3, {args.threads} threads): {peaks}", flush=True)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "gemm_peaks": peaks,
                              "embed": {s: embedding(s, args, peaks["fp32_gflops"]) for s in args.sizes}}
    if args.train_batches > 0:
        result["train_esm2_8m"] = training(args, peaks["fp32_gflops"])
    peaks_after = {"fp32_gflops": matmul_gflops(torch.float32), "bf16_gflops": matmul_gflops(torch.bfloat16)}
    result["gemm_peaks_after"], result["machine_after"] = peaks_after, machine()
    rows = []
    for size, e in result["embed"].items():
        for name in ("ours_float32", "ours_int8", "transformers_sdpa"):
            s = e[name]["share"]
            rows.append((f"{size} {name}", e[name]["op_seconds_total"], f"{100 * e[name]['fraction_of_fp32_peak']:.0f}%",
                         *(f"{100 * s.get(g, 0):.0f}%" for g in ("matmul", "attention", "elementwise", "copy", "gelu",
                                                                  "normalisation"))))
    losses = []
    for name, t in result.get("train_esm2_8m", {}).items():
        if isinstance(t, dict):
            s, frac = t["share"], t["fraction_of_" + t["peak_dtype"] + "_peak"]
            rows.append((f"train {name}", t["op_seconds_total"], f"{100 * frac:.0f}%",
                         *(f"{100 * s.get(g, 0):.0f}%" for g in ("matmul", "attention", "elementwise", "copy", "gelu",
                                                                  "normalisation"))))
            lost = ", ".join(f"{g} {100 * x:.0f}%" for g, x in list(t["lost_share"].items())[:4])
            losses.append(f"train {name}: {100 * frac:.0f}% of the {t['peak_dtype']} peak; share of the op time lost "
                          f"against it: {lost}")
    print_table(f"op time by group ({args.threads} threads, fp32 peak {peaks['fp32_gflops']:.0f} GFLOP/s, "
                f"load {result['machine']['load_avg_1m']:.1f})",
                ("variant", "op s", "of peak", "matmul", "attention", "elementwise", "copy", "gelu", "norm"), rows)
    print("\n".join(losses))
    write_json("profile_ops", result, args.out)


if __name__ == "__main__":
    main()
