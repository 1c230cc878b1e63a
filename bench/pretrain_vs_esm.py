"""Pre-training and embedding-inference throughput: ours vs fair-esm ``ESM2`` at the same shape.

    python bench/pretrain_vs_esm.py                 # ESM-2 8M shape, real UniProt length distribution
    python bench/pretrain_vs_esm.py --quick         # fewer batches and rounds (a smoke run)
    python bench/pretrain_vs_esm.py --ablations     # add bf16 padded, bf16 with bf16 attention
    python bench/pretrain_vs_esm.py --compile       # add torch.compile'd variants
    python bench/pretrain_vs_esm.py --device cuda --size esm2_150m --max-tokens 32768   # a GPU (bf16 peers)
    python bench/gpu_check.py                       # the one-command GPU check (150M and 650M)

Identical inputs: real proteins from the embedded UniProt slice, cut into batches by our token-budget
sampler (length-bucketed, so fair-esm's padded batches waste < 1%; batches picked at evenly spaced
length quantiles), cropped at 1,024 tokens and masked once (15%, 80/10/10). fair-esm gets the padded
batches, our packed variants the very same samples packed into one row. Same optimiser: torch AdamW
(ESM-2's betas 0.9/0.98, eps 1e-8, weight decay 0.01); fair-esm has no training loop, so its step
is the natural one: full logits, cross-entropy on the masked positions. transformers'
``EsmForMaskedLM`` (SDPA attention, the same weights through ``bio_fm.hf_esm``) trains the way its
users do: ``model(input_ids, attention_mask, labels=...).loss``. ``--peer-dtype bf16`` (the default
on CUDA) runs both peers under the same bf16 autocast as ours.

Throughput counts real (non-padding) tokens. MFU = model FLOPs (the same formula for every variant:
6 x tokens x matmul weights + 12 x layers x D x sum(L_i^2) attention + the LM head on masked
positions) / a matrix-multiply peak measured in the same run (fp32 and bf16, 2048^3).
Every number is a median over rounds; variants are interleaved with a rotating order.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, matmul_gflops, median, print_table, real_batches, write_json  # noqa: E402

from bio_fm.esm_compat import from_esm2_module  # noqa: E402
from fm_core.config import SIZES, EncoderConfig  # noqa: E402
from fm_core.masking import IGNORE  # noqa: E402
from fm_core.model import MaskedLM  # noqa: E402

DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the device, so that wall-clock timing covers the work (a no-op on CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def to_device(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.to(DEVICE) for k, v in b.items()} for b in batches]


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)


def model_flops(cfg: EncoderConfig, seq_lens: list[list[int]], n_masked: int, train: bool) -> float:
    d, f, v = cfg.embed_dim, cfg.ffn_dim, cfg.vocab_size
    weights = cfg.num_layers * (4 * d * d + 2 * d * f)
    tokens = sum(sum(s) for s in seq_lens)
    sq = sum(n * n for s in seq_lens for n in s)
    fwd = 2 * tokens * weights + 4 * cfg.num_layers * d * sq + 2 * n_masked * (d * d + d * v) * train
    return 3 * fwd if train else fwd


class EsmTrain:
    def __init__(self, ref, batches, bf16: bool = False):
        self.ref, self.opt, self.batches, self.bf16 = ref.train(), adamw(ref.parameters()), batches, bf16

    def __call__(self) -> None:
        for b in self.batches:
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.ref(b["input_ids"])["logits"]  # (B, L, V): fair-esm always runs the head
            loss = F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync()


class HfTrain:
    """transformers' EsmForMaskedLM: ``model(input_ids, attention_mask, labels).loss`` (full logits)."""

    def __init__(self, hf, batches, pad_id: int, bf16: bool):
        self.hf, self.opt, self.batches, self.pad_id, self.bf16 = hf.train(), adamw(hf.parameters()), batches, pad_id, bf16

    def __call__(self) -> None:
        for b in self.batches:
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.hf(input_ids=b["input_ids"], attention_mask=b["input_ids"].ne(self.pad_id).long(),
                               labels=b["labels"]).loss
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync()


def random_hf_mlm(net: MaskedLM, directory: Path):
    """transformers' EsmForMaskedLM carrying ``net``'s very weights (written by bio_fm.hf_esm), SDPA."""
    from transformers import EsmForMaskedLM
    from transformers import logging as hf_logging

    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.hf_esm import save_hf_esm

    hf_logging.set_verbosity_error()
    save_hf_esm(net, ProteinAlphabet(), directory, card={})
    return EsmForMaskedLM.from_pretrained(directory, local_files_only=True, attn_implementation="sdpa")


class OursTrain:
    """Our training step as ``MLMModule`` runs it: encoder, LM head on masked positions only."""

    def __init__(self, net: MaskedLM, batches, bf16: bool):
        self.net, self.opt, self.batches, self.bf16 = net.train(), adamw(net.parameters()), batches, bf16

    def __call__(self) -> None:
        for b in self.batches:
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
                hidden = self.net.encoder(b["input_ids"], seq_lens=b.get("seq_lens"))["hidden"]
                selected = b["labels"] != IGNORE
                logits = self.net.mlm_logits(hidden[selected])
            F.cross_entropy(logits.float(), b["labels"][selected]).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sync()


def unmasked(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(batch)
    out["input_ids"] = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])
    return out


class EsmEmbed:
    def __init__(self, ref, batches):
        self.ref, self.batches, self.last = ref.eval(), batches, None

    @torch.inference_mode()
    def __call__(self) -> None:
        n = self.ref.num_layers
        self.last = [self.ref(b["input_ids"], repr_layers=[n])["representations"][n] for b in self.batches]
        sync()


class OursEmbed:
    def __init__(self, net: MaskedLM, batches, bf16: bool):
        self.net, self.batches, self.bf16, self.last = net.eval(), batches, bf16, None

    @torch.inference_mode()
    def __call__(self) -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
            self.last = [self.net.encoder(b["input_ids"], seq_lens=b.get("seq_lens"))["hidden"].float()
                         for b in self.batches]
        sync()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="esm2_8m", choices=[s for s in SIZES if s.startswith("esm2")] + ["mini", "tiny"])
    ap.add_argument("--max-tokens", type=int, default=4096, help="token budget per batch (padded size)")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 batches, 2 rounds")
    ap.add_argument("--ablations", action="store_true",
                    help="add bf16 padded and bf16 with bf16 attention (CPU) training variants")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1 by default)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (a GPU run: tokens/s and MFU for the README)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile'd variants (slow to compile)")
    ap.add_argument("--skip", nargs="*", default=[], help="variant names to leave out")
    ap.add_argument("--peer-dtype", choices=["fp32", "bf16"], default=None,
                    help="compute dtype of fair-esm and transformers (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--no-transformers", action="store_true", help="leave out the transformers training peer")
    ap.add_argument("--workdir", default="/tmp/fm_pretrain_vs_esm", help="where the transformers copy is written")
    ap.add_argument("--out", default=None, help="JSON path (default bench/pretrain_vs_esm.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.rounds = 2, 2
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)

    import esm

    data = real_batches(args.batches, args.max_tokens)
    tok = data["tokenizer"]
    shape = SIZES[args.size]
    torch.manual_seed(0)
    ref = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                              attention_heads=shape["num_heads"], alphabet="ESM-1b")
    base = from_esm2_module(ref)  # ours with fair-esm's very weights
    cfg = base.config
    assert (cfg.vocab_size, cfg.pad_id, cfg.mask_id) == (tok.vocab_size, tok.pad_id, tok.mask_id)

    def ours(compile: bool = False, **overrides: Any) -> MaskedLM:
        net = MaskedLM(EncoderConfig.from_dict({**cfg.to_dict(), **overrides}))
        # the encoder and LM head only: the contact head fair-esm's module carries is not trained here
        net.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("heads.")})
        net.to(DEVICE)
        if compile:
            for layer in net.encoder.layers:
                layer.compile(dynamic=True)
        return net

    peer_bf16 = (args.peer_dtype or ("bf16" if DEVICE.type == "cuda" else "fp32")) == "bf16"
    peer_tag = "bf16" if peer_bf16 else "fp32"
    ref = ref.to(DEVICE)
    padded, packed = to_device(data["padded"]), to_device(data["packed"])
    train = {
        f"esm ({peer_tag}, padded)": EsmTrain(copy.deepcopy(ref), padded, bf16=peer_bf16),
        "ours fp32 padded": OursTrain(ours(), padded, bf16=False),
        "ours fp32 packed": OursTrain(ours(), packed, bf16=False),
        "ours bf16 packed": OursTrain(ours(), packed, bf16=True),
    }
    if not args.no_transformers:
        hf = random_hf_mlm(base, Path(args.workdir) / f"hf_{args.size}").to(DEVICE)
        train[f"transformers sdpa ({peer_tag}, padded)"] = HfTrain(hf, padded, tok.pad_id, bf16=peer_bf16)
    if args.ablations:  # what the CPU fp32-attention choice and packing gain under bf16
        train["ours bf16 packed, bf16 attention"] = OursTrain(ours(cpu_attention_fp32=False), packed, bf16=True)
        train["ours bf16 padded"] = OursTrain(ours(), padded, bf16=True)
    pad_in, pack_in = [unmasked(b) for b in padded], [unmasked(b) for b in packed]
    embed = {
        "esm (fp32, padded)": EsmEmbed(copy.deepcopy(ref), pad_in),
        "ours fp32 padded": OursEmbed(ours(), pad_in, bf16=False),
        "ours fp32 packed": OursEmbed(ours(), pack_in, bf16=False),
        "ours bf16 packed": OursEmbed(ours(), pack_in, bf16=True),
    }
    if args.compile:
        train["ours bf16 packed, compiled"] = OursTrain(ours(compile=True), packed, bf16=True)
        embed["ours bf16 packed, compiled"] = OursEmbed(ours(compile=True), pack_in, bf16=True)
    for name in args.skip:
        train.pop(name, None)
        embed.pop(name, None)

    n_masked = sum(int((b["labels"] != IGNORE).sum()) for b in padded)
    flops_train = model_flops(cfg, data["seq_lens"], n_masked, train=True)
    flops_embed = model_flops(cfg, data["seq_lens"], 0, train=False)
    peaks = {"peak fp32 GFLOP/s": lambda: matmul_gflops(torch.float32, device=DEVICE),
             "peak bf16 GFLOP/s": lambda: matmul_gflops(torch.bfloat16, device=DEVICE)}

    print(f"{args.size}: {data['real_tokens']} real tokens in {args.batches} batches "
          f"(lengths {min(min(s) for s in data['seq_lens'])}..{max(max(s) for s in data['seq_lens'])}), "
          f"{args.rounds} rounds, {machine()}")
    print("training:")
    t_train = interleaved(train, args.rounds, extra=peaks)
    print("embedding inference:")
    t_embed = interleaved(embed, args.rounds)

    peak32, peak16 = median(t_train["peak fp32 GFLOP/s"]), median(t_train["peak bf16 GFLOP/s"])
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "size": args.size,
                              "real_tokens": data["real_tokens"], "seq_lens": data["seq_lens"],
                              "peak_fp32_gflops": peak32, "peak_bf16_gflops": peak16,
                              "peak_fp32_gflops_rounds": t_train["peak fp32 GFLOP/s"],
                              "peak_bf16_gflops_rounds": t_train["peak bf16 GFLOP/s"],
                              "train": {}, "embed": {}}
    for kind, times, flops, table in (("train", t_train, flops_train, train),
                                      ("embed", t_embed, flops_embed, embed)):
        ref_name = next(iter(table))
        rows = []
        for name in table:
            secs = median(times[name])
            tps = data["real_tokens"] / secs
            per_round = [r / o for r, o in zip(times[ref_name], times[name], strict=True)]
            hf_name = next((n for n in table if n.startswith("transformers")), None)
            entry = {"seconds_rounds": times[name], "tokens_per_s": tps,
                     "ratio_to_esm": median(times[ref_name]) / secs, "ratio_per_round_median": median(per_round),
                     **({"ratio_to_transformers": median(times[hf_name]) / secs} if hf_name else {}),
                     "mfu_vs_fp32_peak": flops / secs / 1e9 / peak32, "mfu_vs_bf16_peak": flops / secs / 1e9 / peak16}
            result[kind][name] = entry
            rows.append([name, round(tps), entry["ratio_to_esm"], f"{100 * entry['mfu_vs_fp32_peak']:.0f}%",
                         f"{100 * entry['mfu_vs_bf16_peak']:.0f}%"])
        print_table(f"{'pre-training' if kind == 'train' else 'embedding inference'} ({args.size}, real tokens/s,"
                    f" medians of {args.rounds} rounds; peaks fp32 {peak32:.0f}, bf16 {peak16:.0f} GFLOP/s)",
                    ["variant", "tokens/s", "x esm", "MFU fp32", "MFU bf16"], rows)

    # numerics of the fast inference path against our own fp32 padded path (same weights)
    fp32 = embed.get("ours fp32 padded")
    for name in ("ours fp32 packed", "ours bf16 packed"):
        if fp32 is None or name not in embed or embed[name].last is None:
            continue
        cos, worst = [], 0.0
        for p, q, b in zip(fp32.last, embed[name].last, packed, strict=True):
            real = torch.cat([row[:n] for row, n in zip(p, b["seq_lens"].tolist(), strict=True)])  # (N, D)
            cos.append(F.cosine_similarity(real, q[0], dim=-1))
            worst = max(worst, float((real - q[0]).abs().max()))
        c = torch.cat(cos)
        result["embed"][name]["vs_fp32_padded"] = {"cosine_min": float(c.min()), "cosine_mean": float(c.mean()),
                                                   "max_abs_diff": worst}
        print(f"{name} vs ours fp32 padded: cosine min {float(c.min()):.5f}, max |diff| {worst:.2e}")
    esm_out = embed.get("esm (fp32, padded)")
    if fp32 is not None and esm_out is not None and esm_out.last is not None:  # same weights: same numbers
        real = [b["input_ids"] != tok.pad_id for b in pad_in]  # fair-esm leaves padding rows unzeroed
        worst = max(float((p[r] - q[r]).abs().max()) for p, q, r in zip(fp32.last, esm_out.last, real, strict=True))
        result["embed"]["ours fp32 padded"]["max_abs_diff_vs_esm"] = worst
        print(f"ours fp32 padded vs fair-esm (same weights): max |diff| {worst:.2e}")
    best = max(v["ratio_to_esm"] for k, v in result["train"].items() if k.startswith("ours"))
    best_e = max(v["ratio_to_esm"] for k, v in result["embed"].items() if k.startswith("ours"))
    result["best_train_ratio"], result["best_embed_ratio"] = best, best_e
    print(f"\nbest pre-training ratio to fair-esm: {best:.2f}x (goal >= 2); embedding inference: {best_e:.2f}x (goal >= 3)")
    write_json("pretrain_vs_esm", result, args.out)
    return result


if __name__ == "__main__":
    main()
