"""Embedding throughput: transformers' ``EsmModel`` (SDPA) vs our encoder vs ``fm-embed``, SAME weights.

    nice -n 10 python bench/hf_embed.py                    # ESM-2 8M shape, 100 held-out proteins, 2 threads
    nice -n 10 python bench/hf_embed.py --n 200 --rounds 5 --size esm2_35m

No weights can be downloaded: transformers builds an ``EsmModel`` at the ESM-2 shape with random
(perturbed) weights and writes it with ``save_pretrained``; our model is that directory read by
``fm_core.export.load_pretrained`` (the Hugging Face ESM import, ``bio_fm.hf_esm``). Sequences are
the first ``--n`` of the embedded UniProt validation slice (held out from the toolkit's training
slice), cut at 1022 residues.

Variants, interleaved round by round (the order rotates), each timed in wall seconds and in CPU
seconds of this process (``time.process_time``); medians reported, ratios of medians quoted:
  transformers_sdpa   ``EsmModel(attn_implementation="sdpa")``, padded length-sorted batches of
                      ``--max-tokens`` tokens with ``attention_mask``, ``inference_mode``, mean over residues
  ours_encoder        our ``Encoder`` on the same batches, same means
  fm_embed            the fm-embed engine (``fm_core.embed.Embedder``): its own token-budget bucketing
Writes bench/hf_embed.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, padded_batches, print_table, timed_rounds, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def random_hf_esm(size: str, seed: int, directory: Path):
    """transformers' EsmModel at an ESM-2 shape, every weight perturbed, saved and reloaded with SDPA."""
    from transformers import EsmConfig, EsmModel

    from fm_core.config import SIZES

    shape = SIZES[size]
    cfg = EsmConfig(vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=shape["embed_dim"],
                    num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
                    intermediate_size=4 * shape["embed_dim"], position_embedding_type="rotary", token_dropout=True,
                    emb_layer_norm_before=False, layer_norm_eps=1e-5, max_position_embeddings=1026)
    torch.manual_seed(seed)
    model = EsmModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "embeddings.word_embeddings.weight":
                p.mul_(0.3)  # keep activations in the range of a trained model
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    return EsmModel.from_pretrained(directory, local_files_only=True, attn_implementation="sdpa",
                                    add_pooling_layer=False).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="esm2_8m")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import logging as hf_logging

    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.fasta import iter_fasta
    from fm_core.embed import Embedder
    from fm_core.export import load_pretrained
    from fm_core.padding import pad_batch

    hf_logging.set_verbosity_error()
    alphabet = ProteinAlphabet()
    records = [(rid, seq[:1022]) for rid, seq in iter_fasta(ROOT / "bio_fm/data/uniprot_slice/valid.fasta.gz")][: args.n]
    encoded = [(rid, alphabet.encode(s)) for rid, s in records]
    with tempfile.TemporaryDirectory() as tmp:
        hf = random_hf_esm(args.size, args.seed, Path(tmp))
        net, _ = load_pretrained(tmp)
    embedder = Embedder(net, alphabet, layers=[-1], max_tokens=args.max_tokens, precision="float32")
    plan = padded_batches([len(s) for _, s in records], args.max_tokens)
    token_batches = [pad_batch([alphabet.add_special_tokens(encoded[i][1]) for i in b], alphabet.pad_id) for b in plan]

    def loop(forward):
        def run():
            out = {}
            with torch.inference_mode():
                for b, toks in zip(plan, token_batches, strict=True):
                    hidden = forward(toks)
                    for row, i in enumerate(b):
                        out[i] = hidden[row, 1 : len(records[i][1]) + 1].mean(0).numpy()
            return out
        return run

    variants = {
        "transformers_sdpa": loop(lambda t: hf(t, attention_mask=t.ne(alphabet.pad_id).long()).last_hidden_state),
        "ours_encoder": loop(lambda t: net.encoder(t)["hidden"]),
        "fm_embed": lambda: {i: e.mean[net.config.num_layers] for i, e in enumerate(embedder.embed(encoded))},
    }
    outputs, wall, cpu = timed_rounds(variants, args.rounds, width=18)
    report(args, records, plan, outputs, wall, cpu)


def report(args, records, plan, outputs, wall, cpu) -> None:
    ref = np.stack([outputs["transformers_sdpa"][i] for i in range(len(records))])
    base_wall, base_cpu = median(wall["transformers_sdpa"]), median(cpu["transformers_sdpa"])
    results, rows = {}, []
    for name in wall:
        stack = np.stack([outputs[name][i] for i in range(len(records))])
        cos = (stack * ref).sum(1) / (np.linalg.norm(stack, axis=1) * np.linalg.norm(ref, axis=1))
        med_wall, med_cpu = median(wall[name]), median(cpu[name])
        results[name] = {
            "median_wall_seconds": med_wall, "wall_seconds": wall[name],
            "median_cpu_seconds": med_cpu, "cpu_seconds": cpu[name],
            "sequences_per_second": len(records) / med_wall,
            "speedup_vs_transformers_wall": base_wall / med_wall, "speedup_vs_transformers_cpu": base_cpu / med_cpu,
            "max_abs_diff_vs_transformers": float(np.abs(stack - ref).max()), "min_cosine_vs_transformers": float(cos.min()),
        }
        r = results[name]
        rows.append((name, med_wall, med_cpu, r["speedup_vs_transformers_wall"], r["speedup_vs_transformers_cpu"],
                     r["max_abs_diff_vs_transformers"], r["min_cosine_vs_transformers"]))
    payload = {
        "model": {"size": args.size, "weights": f"random (seed {args.seed}), built by transformers, imported by fm-toolkit"},
        "data": {"sequences": len(records), "residues": sum(len(s) for _, s in records),
                 "source": "bio_fm/data/uniprot_slice/valid.fasta.gz (real held-out UniProt), cut at 1022"},
        "batching": {"max_tokens": args.max_tokens, "padded_batches": len(plan),
                     "fm_embed": "its own TokenBudgetBatchSampler over the same lengths"},
        "machine": machine(), "rounds": args.rounds, "results": results,
        "ratio_fm_embed_vs_transformers_wall": results["fm_embed"]["speedup_vs_transformers_wall"],
        "ratio_fm_embed_vs_transformers_cpu": results["fm_embed"]["speedup_vs_transformers_cpu"],
        "ratio_ours_encoder_vs_transformers_wall": results["ours_encoder"]["speedup_vs_transformers_wall"],
        "ratio_ours_encoder_vs_transformers_cpu": results["ours_encoder"]["speedup_vs_transformers_cpu"],
    }
    print_table(f"{args.size}, {len(records)} proteins, {args.threads} threads, median of {args.rounds} rounds "
                "(x = transformers median / variant median)",
                ("variant", "wall s", "cpu s", "x wall", "x cpu", "max|diff|", "min cos"), rows)
    write_json("hf_embed", payload, args.out)


if __name__ == "__main__":
    main()
