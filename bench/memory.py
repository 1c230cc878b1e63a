"""Peak memory (RSS) of one training step against sequence length, with and without activation
checkpointing; fair-esm ``ESM2`` at the same shape as the reference (up to ``--esm-max``).

    python bench/memory.py                          # esm2_8m, lengths 512 1024 2048 4096
    python bench/memory.py --size esm2_35m --lengths 1024 4096

Each measurement runs in a fresh process (peak RSS only grows within a process): build the model
and optimiser, run one warm-up step at length 64 (optimiser state allocated), read the resident
set, then one forward + backward + AdamW step on one real protein of the given length (a real
UniProt sequence, repeated to length; 15% masked) and read the peak (``VmHWM``). The figure is the
peak minus the resident set before the step: what the step itself needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402


def vm(field: str) -> int:
    """Bytes of /proc/self/status ``field`` (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def one(size: str, length: int, variant: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from common import protein_dataset

    from fm_core.config import SIZES, EncoderConfig
    from fm_core.masking import IGNORE
    from fm_core.model import MaskedLM

    torch.set_num_threads(1)
    ds, tok = protein_dataset("valid")
    seq = torch.as_tensor(ds[int(ds.lengths.argmax())]["ids"])  # the longest real protein there
    body = seq.repeat(length // len(seq) + 1)[: length - 2]
    tokens = torch.as_tensor(tok.add_special_tokens(body.numpy()))[None]  # (1, L)
    g = torch.Generator().manual_seed(0)
    selected = (torch.rand(tokens.shape, generator=g) < 0.15) & (tokens != tok.bos_id) & (tokens != tok.eos_id)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE))
    inputs = torch.where(selected, torch.full_like(tokens, tok.mask_id), tokens)
    shape = SIZES[size]
    if variant == "esm":
        import esm

        net = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                                  attention_heads=shape["num_heads"], alphabet="ESM-1b")

        def loss_of(x, y):
            logits = net(x)["logits"]
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    else:
        cfg = EncoderConfig.from_name(size, vocab_size=tok.vocab_size, pad_id=tok.pad_id, mask_id=tok.mask_id,
                                      max_length=max(length, 1024),
                                      activation_checkpointing=variant == "ours, checkpointing")
        net = MaskedLM(cfg)

        def loss_of(x, y):
            hidden = net.encoder(x)["hidden"]
            keep = y != IGNORE
            return F.cross_entropy(net.mlm_logits(hidden[keep]), y[keep])
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(x, y):
        loss_of(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(inputs[:, :64], labels[:, :64])
    before = vm("VmRSS")
    reset_peak()
    step(inputs, labels)
    peak = vm("VmHWM")
    return {"size": size, "length": length, "variant": variant, "rss_before_bytes": before,
            "peak_bytes": peak, "step_bytes": peak - before}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="esm2_8m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--esm-max", type=int, default=2048, help="longest length fair-esm is measured at")
    ap.add_argument("--one", nargs=2, metavar=("LENGTH", "VARIANT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.size, int(args.one[0]), args.one[1])))
        return {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows, results = [], []
    for length in args.lengths:
        variants = ["ours", "ours, checkpointing"] + (["esm"] if length <= args.esm_max else [])
        row: dict[str, Any] = {"length": length}
        for variant in variants:
            proc = subprocess.run([sys.executable, __file__, "--size", args.size, "--one", str(length), variant],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"{variant} at {length}: {proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            row[variant] = r["step_bytes"] / 2**20
            print(f"{length:5d} {variant:22s} step {row[variant]:8.0f} MiB (peak RSS {r['peak_bytes'] / 2**20:.0f} MiB)",
                  flush=True)
        rows.append([length, row["ours"], row["ours, checkpointing"], row.get("esm", "-"),
                     row["ours"] / row["ours, checkpointing"]])
    print_table(f"peak memory of one training step ({args.size}, batch of one, MiB above the resident set)",
                ["length", "ours", "ours + checkpointing", "fair-esm", "ckpt saving x"], rows)
    payload = {"machine": machine(), "args": vars(args), "results": results}
    write_json("memory", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
