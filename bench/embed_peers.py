"""Embedding end to end against the peers a user would pick, each in its own process, same weights.

    nice -n 10 python bench/embed_peers.py                       # ESM-2 8M shape, 200 held-out proteins, 2 threads
    nice -n 10 python bench/embed_peers.py --size esm2_35m --rounds 2 --pppl-positions 0
    python bench/embed_peers.py --n 8 --rounds 1 --pppl-positions 2 --out /tmp/x.json   # a smoke run

Weights: one random ESM-2 model (fair-esm ``ESM2`` built at the shape, every weight perturbed as
in bench/embed_vs_esm.py), written once in each peer's own format: a fair-esm ``.pt``
(``bio_fm.esm_compat.save_esm2_checkpoint``), a Hugging Face directory (``bio_fm.hf_esm``) and an
fm-toolkit export. Proteins: the first ``--n`` of the embedded UniProt validation slice (held out
from the toolkit's training slice), cut at 1022 residues, written as one FASTA file.

Peers, each a separate process (its CPU seconds and peak RSS are its own: ``os.wait4``), started
in interleaved rounds with a rotating order; medians over rounds; all at ``--threads`` threads and
the same token budget per batch (``--max-tokens``, fm-embed's default):
  fair-esm            what its ``scripts/extract.py`` does: ``load_model_and_alphabet_local``,
                      ``FastaBatchedDataset`` + ``get_batch_indices``, ``BatchConverter``, ``no_grad``
  transformers_sdpa   ``EsmModel.from_pretrained(attn_implementation="sdpa")`` + ``EsmTokenizer``,
                      length-sorted padded batches with ``attention_mask``, ``inference_mode``
  fm_embed_<p>        the ``fm-embed`` command itself, ``precision=<p>`` (float32, int8, ...)
Each process reads the FASTA file, embeds, and writes the mean embedding of the last layer per
protein (residues only); everything counts (start-up, imports, reading, writing). Inside, each also
reports the CPU seconds of its embedding loop alone (``compute``).

Also in the run: the machine's matrix-multiply peak per dtype (``--gemm-n`` cube, this many
threads, once per round), the fraction of the fp32 peak each peer's embedding loop reaches (useful
FLOPs of the forward, as bench/pretrain_vs_esm.py counts them, per CPU second, against the peak's
FLOPs per CPU second), and for INT8 the drift of pseudo-perplexity: for every protein,
``--pppl-positions`` residues (fixed seed) are masked one at a time and scored by the float32 and
the INT8 model (``fm_core.scoring.MaskedMarginals``); drift = 1 - Spearman rho over proteins.
Writes bench/embed_peers.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_gflops, median, padded_batches, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT / "bio_fm" / "data" / "uniprot_slice" / "valid.fasta.gz"
REFERENCE = "transformers_sdpa"


# --------------------------------------------------------------------------- peers (child processes)

def _finish(work: Path, name: str, means: np.ndarray, compute_cpu: float, compute_wall: float) -> None:
    np.save(work / f"{name}.npy", means.astype(np.float32))
    (work / f"{name}.json").write_text(json.dumps({"compute_cpu_seconds": compute_cpu,
                                                   "compute_wall_seconds": compute_wall}))


def peer_fair_esm(work: Path, args: argparse.Namespace) -> None:
    import esm

    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(work / "esm2_peer.pt"))
    model.eval()
    dataset = esm.data.FastaBatchedDataset.from_file(str(work / "input.fa"))
    batches = dataset.get_batch_indices(args.max_tokens, extra_toks_per_seq=1)
    loader = torch.utils.data.DataLoader(dataset, collate_fn=alphabet.get_batch_converter(1022),
                                         batch_sampler=batches)
    last = model.num_layers
    means = np.zeros((len(dataset), model.embed_dim), dtype=np.float32)
    index = {label: i for i, label in enumerate(dataset.sequence_labels)}
    c0, w0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for labels, strs, toks in loader:
            reps = model(toks, repr_layers=[last], return_contacts=False)["representations"][last]
            for row, (label, seq) in enumerate(zip(labels, strs, strict=True)):
                means[index[label]] = reps[row, 1 : len(seq) + 1].mean(0).numpy()
    _finish(work, "fair-esm", means, time.process_time() - c0, time.perf_counter() - w0)


def read_fasta(path: Path) -> list[tuple[str, str]]:
    records, rid, seq = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if rid is not None:
                records.append((rid, "".join(seq)))
            rid, seq = line[1:].split()[0], []
        else:
            seq.append(line.strip())
    return records + ([(rid, "".join(seq))] if rid is not None else [])


def peer_transformers(work: Path, args: argparse.Namespace) -> None:
    from transformers import EsmModel, EsmTokenizer
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = EsmModel.from_pretrained(work / "hf", local_files_only=True, attn_implementation="sdpa",
                                     add_pooling_layer=False).eval()
    tokenizer = EsmTokenizer.from_pretrained(work / "hf", local_files_only=True)
    records = read_fasta(work / "input.fa")
    means = np.zeros((len(records), model.config.hidden_size), dtype=np.float32)
    c0, w0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for batch in padded_batches([len(s) for _, s in records], args.max_tokens):
            enc = tokenizer([records[i][1] for i in batch], return_tensors="pt", padding=True)
            hidden = model(**enc).last_hidden_state
            for row, i in enumerate(batch):
                means[i] = hidden[row, 1 : len(records[i][1]) + 1].mean(0).numpy()
    _finish(work, REFERENCE, means, time.process_time() - c0, time.perf_counter() - w0)


PEERS = {"fair-esm": peer_fair_esm, REFERENCE: peer_transformers}


# --------------------------------------------------------------------------- parent: setup and timing

def prepare(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The FASTA input and one random model written in the three formats."""
    import esm

    from bio_fm.alphabet import ProteinAlphabet
    from bio_fm.esm_compat import from_esm2_module, save_esm2_checkpoint
    from bio_fm.fasta import iter_fasta
    from bio_fm.hf_esm import save_hf_esm
    from fm_core.config import SIZES
    from fm_core.export import save_pretrained

    records = [(rid, seq[:1022]) for rid, seq in iter_fasta(VALID)][: args.n]
    (work / "input.fa").write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    shape = SIZES[args.size]
    torch.manual_seed(args.seed)
    ref = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                              attention_heads=shape["num_heads"], alphabet="ESM-1b")
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name == "embed_tokens.weight":
                p.mul_(0.3)  # keep activations in the range of a trained model
            p.add_(torch.randn_like(p) * 0.05)
    net = from_esm2_module(ref.eval())
    alphabet = ProteinAlphabet()
    save_esm2_checkpoint(net, work / "esm2_peer.pt", alphabet)
    save_hf_esm(net, alphabet, work / "hf", card={})
    save_pretrained(work / "export", net, alphabet)
    return {"records": records, "net": net, "alphabet": alphabet}


def run_child(cmd: list[str], log: Path) -> dict[str, float]:
    """Run one peer process; its own CPU seconds (user + system) and peak RSS from ``wait4``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(ARGS.threads), "MKL_NUM_THREADS": str(ARGS.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}); log: {log}\n{log.read_text()[-3000:]}")
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024.0}


def peer_command(name: str, work: Path) -> list[str]:
    if name.startswith("fm_embed_"):
        precision = name.removeprefix("fm_embed_")
        return [str(Path(sys.executable).with_name("fm-embed")), f"input={work / 'input.fa'}",
                f"checkpoint={work / 'export'}", f"out={work / name}", f"threads={ARGS.threads}",
                f"precision={precision}", "overwrite=true", "progress=false"]
    return [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--workdir", str(work),
            "--max-tokens", str(ARGS.max_tokens), "--threads", str(ARGS.threads)]


def inner_timing(name: str, work: Path) -> dict[str, float]:
    """A peer's own timing of its embedding loop (fm-embed: from its metrics.json)."""
    if name.startswith("fm_embed_"):
        metrics = json.loads((work / name / "metrics.json").read_text())
        return {"compute_cpu_seconds": metrics["embed/this_run_cpu_seconds"],
                "compute_wall_seconds": metrics["embed/this_run_seconds"]}
    return json.loads((work / f"{name}.json").read_text())


def collect(name: str, work: Path, ids: list[str]) -> np.ndarray:
    """A peer's mean embeddings in input order."""
    if name.startswith("fm_embed_"):
        from fm_core.embed import read_embeddings

        got_ids, means = read_embeddings(work / name)
        order = {rid: i for i, rid in enumerate(got_ids)}
        return np.stack([means[order[rid]] for rid in ids])
    return np.load(work / f"{name}.npy")


def gemm_peaks() -> dict[str, float]:
    """GFLOP/s (wall) and GFLOP per CPU second of an n^3 product, fp32 and bf16, at this thread count."""
    out = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        c0 = time.process_time()
        wall_gflops = matmul_gflops(dtype, n=ARGS.gemm_n, repeats=3)
        n_products = 4  # matmul_gflops: one warm-up + 3 timed
        out[f"{label}_gflops"] = wall_gflops
        out[f"{label}_gflop_per_cpu_second"] = n_products * 2 * ARGS.gemm_n**3 / 1e9 / (time.process_time() - c0)
    return out


def forward_flops(cfg: Any, lengths: list[int]) -> float:
    """Useful FLOPs of the encoder forward over these sequences (specials included, no padding):
    2 x tokens x matmul weights + 4 x layers x D x sum(L^2) (scores and weighted values)."""
    d, f = cfg.embed_dim, cfg.ffn_dim
    tokens = sum(n + 2 for n in lengths)
    sq = sum((n + 2) ** 2 for n in lengths)
    return 2 * tokens * cfg.num_layers * (4 * d * d + 2 * d * f) + 4 * cfg.num_layers * d * sq


def timed_rounds(names: list[str], work: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    runs: dict[str, list[dict]] = {n: [] for n in names}
    rounds = []
    for r in range(ARGS.rounds):
        load_before = os.getloadavg()[0]
        for name in names[r % len(names):] + names[: r % len(names)]:
            m = run_child(peer_command(name, work), work / f"{name}.log")
            m.update(inner_timing(name, work))
            runs[name].append(m)
            print(f"round {r + 1}/{ARGS.rounds} {name:22s} {m['wall_seconds']:7.1f} s wall {m['cpu_seconds']:7.1f} "
                  f"cpu-s ({m['compute_cpu_seconds']:6.1f} in the loop) {m['peak_rss_mb']:6.0f} MB",
                  file=sys.stderr, flush=True)
        peaks = gemm_peaks()
        rounds.append({"load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0], **peaks})
        print(f"round {r + 1}: GEMM fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f}; "
              f"load {load_before:.2f} -> {rounds[-1]['load_avg_1m_after']:.2f}", file=sys.stderr, flush=True)
    return runs, rounds


class Int8LM(torch.nn.Module):
    """The float32 model with its encoder replaced by the int8 one fm-embed runs (LM head in float32)."""

    def __init__(self, net: Any):
        from fm_core.quant import quantize_encoder_int8

        super().__init__()
        self.config, self.encoder, self.lm_head = net.config, quantize_encoder_int8(net.encoder), net.lm_head
        self.embedding_weight = net.encoder.embed_tokens.weight

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden, self.embedding_weight)


def pppl_drift(net: Any, alphabet: Any, records: list[tuple[str, str]]) -> dict[str, Any]:
    """Pseudo-perplexity per protein from ``--pppl-positions`` masked residues, float32 vs int8."""
    from scipy.stats import spearmanr

    from fm_core.scoring import MaskedMarginals

    rng = np.random.default_rng(ARGS.seed)
    ids = [alphabet.encode(seq) for _, seq in records]
    positions = [np.sort(rng.choice(len(s), size=min(ARGS.pppl_positions, len(s)), replace=False)) for s in ids]
    out, seconds = {}, {}
    for label, model in (("float32", net), ("int8", Int8LM(net))):
        c0 = time.process_time()
        logp = MaskedMarginals(model, alphabet, max_tokens=ARGS.max_tokens)(ids, positions)
        seconds[label] = time.process_time() - c0
        out[label] = np.array([np.exp(-np.mean(lp[p, s[p]])) for lp, p, s in zip(logp, positions, ids, strict=True)])
    rho = float(spearmanr(out["float32"], out["int8"]).statistic)
    return {"positions_per_protein": ARGS.pppl_positions, "proteins": len(ids), "spearman_rho": rho,
            "spearman_drift": 1 - rho, "max_relative_pppl_change": float(np.max(np.abs(out["int8"] / out["float32"] - 1))),
            "pppl_float32_median": float(np.median(out["float32"])), "pppl_int8_median": float(np.median(out["int8"])),
            "cpu_seconds": seconds}


def agreement(means: dict[str, np.ndarray], ref: np.ndarray) -> dict[str, dict[str, float]]:
    out = {}
    for name, m in means.items():
        cos = (m * ref).sum(1) / (np.linalg.norm(m, axis=1) * np.linalg.norm(ref, axis=1))
        out[name] = {"max_abs_diff": float(np.abs(m - ref).max()), "min_cosine": float(cos.min())}
    return out


def summarise(names: list[str], runs: dict[str, list[dict]], rounds: list[dict], flops: float,
              means: dict[str, np.ndarray]) -> dict[str, Any]:
    agree = agreement(means, means[REFERENCE])
    agree_esm = agreement(means, means["fair-esm"]) if "fair-esm" in means else {}
    peak_cpu = median([r["fp32_gflop_per_cpu_second"] for r in rounds])
    peak_wall = median([r["fp32_gflops"] for r in rounds])
    base = {k: median([m[k] for m in runs[REFERENCE]]) for k in ("cpu_seconds", "compute_cpu_seconds", "wall_seconds")}
    results = {}
    for name in names:
        med = {k: median([m[k] for m in runs[name]]) for k in runs[name][0]}
        results[name] = {
            **{f"median_{k}": v for k, v in med.items()}, "rounds": runs[name],
            "sequences_per_second": ARGS.n / med["wall_seconds"], "residues_per_second": RESIDUES / med["wall_seconds"],
            "sequences_per_cpu_second": ARGS.n / med["cpu_seconds"],
            "speedup_cpu_vs_transformers": base["cpu_seconds"] / med["cpu_seconds"],
            "speedup_compute_cpu_vs_transformers": base["compute_cpu_seconds"] / med["compute_cpu_seconds"],
            "speedup_wall_vs_transformers": base["wall_seconds"] / med["wall_seconds"],
            "fraction_of_fp32_peak_per_cpu_second": flops / 1e9 / med["compute_cpu_seconds"] / peak_cpu,
            "fraction_of_fp32_peak_wall": flops / 1e9 / med["compute_wall_seconds"] / peak_wall,
            "vs_transformers": agree[name], "vs_fair_esm": agree_esm.get(name),
        }
    return results


def main() -> None:
    global ARGS, RESIDUES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="esm2_8m")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch (fm-embed's default)")
    ap.add_argument("--precisions", nargs="+", default=["float32", "int8"], help="fm-embed precisions")
    ap.add_argument("--peers", nargs="+", default=list(PEERS), help="peers beside fm-embed")
    ap.add_argument("--pppl-positions", type=int, default=8, help="masked residues per protein (0: no PPPL)")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/fm_embed_peers")
    ap.add_argument("--peer", default=None, help=argparse.SUPPRESS)  # internal: run one peer in this process
    ap.add_argument("--out", default=None)
    ARGS = ap.parse_args()
    torch.set_num_threads(ARGS.threads)
    work = Path(ARGS.workdir)
    if ARGS.peer:
        PEERS[ARGS.peer](work, ARGS)
        return
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare(work, ARGS)
    records, net = setup["records"], setup["net"]
    RESIDUES = sum(len(s) for _, s in records)
    names = [*ARGS.peers, *(f"fm_embed_{p}" for p in ARGS.precisions)]
    if REFERENCE not in names:
        raise SystemExit(f"--peers must include {REFERENCE} (the reference of every ratio)")
    load_start = os.getloadavg()
    runs, rounds = timed_rounds(names, work)
    ids = [rid for rid, _ in records]
    means = {name: collect(name, work, ids) for name in names}
    flops = forward_flops(net.config, [len(s) for _, s in records])
    results = summarise(names, runs, rounds, flops, means)
    payload = {
        "model": {"size": ARGS.size, "weights": f"random ESM-2 (seed {ARGS.seed}), one model in three formats"},
        "data": {"sequences": len(records), "residues": RESIDUES, "source": "bio_fm/data/uniprot_slice/valid.fasta.gz "
                 "(real held-out UniProt, first n), cut at 1022"},
        "settings": {"threads": ARGS.threads, "max_tokens": ARGS.max_tokens, "rounds": ARGS.rounds},
        "machine": {**machine(), "load_avg_at_start": load_start, "load_avg_at_end": os.getloadavg(),
                    "cpu_flags_avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
                    "cpu_flags_amx": "amx" in Path("/proc/cpuinfo").read_text(),
                    "cpu_flags_avx512_vnni": "avx512_vnni" in Path("/proc/cpuinfo").read_text()},
        "gemm_peaks_per_round": rounds, "forward_flops": flops,
        "gemm_peak_fp32_gflops": median([r["fp32_gflops"] for r in rounds]),
        "gemm_peak_bf16_gflops": median([r["bf16_gflops"] for r in rounds]),
        "results": results,
        "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if "int8" in ARGS.precisions and ARGS.pppl_positions > 0:
        payload["int8_pseudo_perplexity"] = pppl_drift(net, setup["alphabet"], records)
    for name in names:
        if name.startswith("fm_embed_"):
            payload[f"ratio_cpu_{name}_vs_transformers"] = results[name]["speedup_cpu_vs_transformers"]
    report(payload, names)
    write_json("embed_peers" if ARGS.size == "esm2_8m" else f"embed_peers_{ARGS.size}", payload, ARGS.out)


def report(payload: dict[str, Any], names: list[str]) -> None:
    res = payload["results"]
    rows = [(n, res[n]["sequences_per_second"], res[n]["residues_per_second"], res[n]["median_cpu_seconds"],
             res[n]["median_compute_cpu_seconds"], res[n]["speedup_cpu_vs_transformers"], res[n]["median_peak_rss_mb"],
             res[n]["vs_transformers"]["max_abs_diff"], f"{res[n]['vs_transformers']['min_cosine']:.6f}",
             f"{100 * res[n]['fraction_of_fp32_peak_per_cpu_second']:.0f}%") for n in names]
    m = payload["machine"]
    print_table(f"{payload['model']['size']}, {payload['data']['sequences']} proteins, {ARGS.threads} threads, medians "
                f"of {ARGS.rounds} rounds; GEMM peak fp32 {payload['gemm_peak_fp32_gflops']:.0f}, bf16 "
                f"{payload['gemm_peak_bf16_gflops']:.0f} GFLOP/s; load {m['load_avg_at_start'][0]:.2f} -> "
                f"{m['load_avg_at_end'][0]:.2f}",
                ("peer", "seq/s", "res/s", "cpu-s", "loop cpu-s", "x cpu", "RSS MB", "max|diff|", "min cos",
                 "fp32 peak"), rows)
    if "int8_pseudo_perplexity" in payload:
        p = payload["int8_pseudo_perplexity"]
        print(f"int8 pseudo-perplexity ({p['positions_per_protein']} positions x {p['proteins']} proteins): "
              f"Spearman rho {p['spearman_rho']:.5f} (drift {p['spearman_drift']:.5f})")


if __name__ == "__main__":
    main()
