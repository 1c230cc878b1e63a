"""LoRA vs full fine-tuning on CPU at the 8M and 35M shapes: trainable parameters, peak RSS, step time.

    nice -n 10 python bench/lora.py                       # esm2_8m and esm2_35m, writes bench/lora.json
    nice -n 10 python bench/lora.py --sizes esm2_8m --steps 3

The task is secondary-structure-like: a per-residue ``WindowHead`` (3 + 8 states, window 9) over
the last layer of a backbone with random weights, trained with the task's own module
(``tasks.structure.heads.BackboneResidueModule``, AdamW) on one fixed batch of real UniProt
sequences (the embedded slice, each cropped to ``--length`` residues) with random per-residue
labels. ``full``: every backbone weight trains; ``lora``: ``conf/adapter/lora.yaml`` (rank 8 on
``attn.qkv`` and ``attn.out_proj``, the rest frozen). Each configuration runs in its own process
(peak RSS only grows within a process): ``resource.getrusage`` max RSS at the end is the peak;
the RSS before the first step (imports, model, adapter) is reported beside it. Step time: the
median of the timed steps after one warm-up step. Configurations alternate full/lora within each
size, and the figures quoted are ratios LoRA / full. Each pair runs with fm-finetune's allocator
setting (``malloc_mmap_threshold_mib``, ``--mmap-threshold config``) and/or glibc's adaptive default
(``adaptive``), and with activation checkpointing off and/or on (``--checkpointing``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

LORA_YAML = Path(__file__).resolve().parents[1] / "conf" / "adapter" / "lora.yaml"
FINETUNE_YAML = Path(__file__).resolve().parents[1] / "conf" / "finetune.yaml"


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def batch(tokenizer: Any, n: int, length: int) -> dict[str, Any]:
    """``n`` real proteins of at least ``length`` residues from the embedded validation slice, cropped
    to ``length``; random 3- and 8-state labels per residue (seeded)."""
    from importlib.resources import files

    import numpy as np

    from bio_fm.fasta import iter_fasta
    from tasks.structure.heads import TokenResidueDataset

    path = Path(str(files("bio_fm").joinpath("data/uniprot_slice/valid.fasta.gz")))
    seqs = [s[:length] for _, s in iter_fasta(path) if len(s) >= length][:n]
    if len(seqs) < n:
        raise SystemExit(f"{path}: fewer than {n} sequences of >= {length} residues")
    rng = np.random.default_rng(0)
    tokens = [tokenizer.add_special_tokens(tokenizer.encode(s)) for s in seqs]
    labels = [(rng.integers(0, 3, len(s)), rng.integers(0, 8, len(s))) for s in seqs]
    ds = TokenResidueDataset(tokens, labels, tokenizer.pad_id)
    return ds.collate([ds[i] for i in range(n)])


def one(size: str, mode: str, steps: int, n: int, length: int, threads: int, checkpointing: bool,
        mmap_mib: float | None) -> dict[str, Any]:
    """One configuration, in this process."""
    import torch
    from omegaconf import OmegaConf

    from bio_fm.alphabet import ProteinAlphabet
    from fm_core.adapters import LoraAdapter, is_adapter_weight, trainable_parameters
    from fm_core.allocator import set_mmap_threshold
    from fm_core.model import build_model
    from tasks.structure.heads import BackboneResidueModule, WindowHead, residue_features, residue_loss

    set_mmap_threshold(mmap_mib)  # as fm-finetune does with malloc_mmap_threshold_mib
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    alphabet = ProteinAlphabet()
    net = build_model(size, alphabet, activation_checkpointing=checkpointing)
    adapter = None
    if mode == "lora":
        spec = OmegaConf.to_container(OmegaConf.load(LORA_YAML))
        spec.pop("_target_")
        adapter = LoraAdapter(**spec)
        adapter.apply(net)
    last = net.config.num_layers
    head = WindowHead(net.config.embed_dim, out_dims=(3, 8), window=9, hidden=64, dropout=0.0)
    module = BackboneResidueModule(net, head, layers=[last], name="ss", lr=1e-3, backbone_lr=1e-4, weight_decay=0.01)
    opt = module.configure_optimizers()
    data = batch(alphabet, n, length)
    module.train()
    before = rss_now()
    times, losses = [], []
    for step in range(steps + 1):  # step 0: warm-up (allocates the optimiser state), not timed
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = residue_loss(head(residue_features(net, data["tokens"], [last]), data["mask"]), data["ys"])
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - started)
        losses.append(float(loss.detach()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"size": size, "mode": mode, "adapter": None if adapter is None else adapter.to_dict(),
            "trainable_parameters": trainable_parameters(net) + trainable_parameters(head),
            "backbone_parameters": sum(p.numel() for k, p in net.named_parameters() if not is_adapter_weight(k)),
            "peak_rss_bytes": peak, "rss_before_training_bytes": before, "training_rss_bytes": peak - before,
            "step_seconds": times, "step_seconds_median": statistics.median(times), "loss_first": losses[0],
            "loss_last": losses[-1], "batch": {"sequences": n, "residues_each": length}, "threads": threads,
            "activation_checkpointing": checkpointing, "malloc_mmap_threshold_mib": mmap_mib}


def run_child(size: str, mode: str, checkpointing: bool, mmap_mib: float | None,
              args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", size, mode, "--steps", str(args.steps), "--sequences",
           str(args.sequences), "--length", str(args.length), "--threads", str(args.threads),
           "--child-mmap", str(mmap_mib), *(["--activation-checkpointing"] if checkpointing else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["esm2_8m", "esm2_35m"])
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=256, help="residues per sequence (real proteins, cropped)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    p.add_argument("--activation-checkpointing", action="store_true", help=argparse.SUPPRESS)  # the child's
    p.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"],
                   help="activation checkpointing (model.activation_checkpointing), the same on both sides: 'on' "
                        "recomputes activations in backward, so that they stop dominating the step's memory")
    p.add_argument("--mmap-threshold", nargs="+", choices=["config", "adaptive"], default=["config"],
                   help="config: fm-finetune's malloc_mmap_threshold_mib (conf/finetune.yaml, the default); "
                        "adaptive: glibc's own (what runs got before that setting)")
    p.add_argument("--child-mmap", default="None", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mmap_mib = None if args.child_mmap == "None" else float(args.child_mmap)
        print(json.dumps(one(*args.child, args.steps, args.sequences, args.length, args.threads,
                             args.activation_checkpointing, mmap_mib)))
        return
    from omegaconf import OmegaConf

    config_mib = OmegaConf.load(FINETUNE_YAML).malloc_mmap_threshold_mib
    results, ratios = [], {}
    combos = [(s, c, m) for s in args.sizes for m in args.mmap_threshold for c in args.checkpointing]
    for k, (size, ckpt, mmap) in enumerate(combos):
        order = ("full", "lora") if k % 2 == 0 else ("lora", "full")
        got = {mode: run_child(size, mode, ckpt == "on", config_mib if mmap == "config" else None, args)
               for mode in order}
        results += [got["full"], got["lora"]]
        ratios[f"{size} checkpointing {ckpt} mmap {mmap}"] = {
            key: got["lora"][key] / got["full"][key]
            for key in ("peak_rss_bytes", "training_rss_bytes", "step_seconds_median", "trainable_parameters")}
    rows = [[r["size"], r["mode"], "on" if r["activation_checkpointing"] else "off",
             r["malloc_mmap_threshold_mib"] or "adaptive", r["trainable_parameters"],
             r["peak_rss_bytes"] / 2**20, r["training_rss_bytes"] / 2**20, r["step_seconds_median"]] for r in results]
    print_table("LoRA vs full fine-tuning (per-residue head, CPU)",
                ["size", "mode", "ckpt", "mmap MiB", "trainable", "peak RSS MiB", "step RSS MiB", "step s"], rows)
    for name, r in ratios.items():
        print(f"{name}: LoRA/full peak RSS {r['peak_rss_bytes']:.3f}, training RSS {r['training_rss_bytes']:.3f}, "
              f"step time {r['step_seconds_median']:.3f}, trainable {r['trainable_parameters']:.4f}")
    payload = {"machine": machine(), "command": " ".join(["python", "bench/lora.py", *sys.argv[1:]]),
               "results": results, "ratios_lora_over_full": ratios,
               "acceptance": {"figure": "esm2_35m peak RSS LoRA / full (fm-finetune's defaults: mmap config, "
                                        "checkpointing off; and beside it every other setting run)",
                              "value": {k: r["peak_rss_bytes"] for k, r in ratios.items() if k.startswith("esm2_35m")}}}
    write_json("lora", payload, args.out)


if __name__ == "__main__":
    main()
