"""``fm-predict-structure``: contact maps and secondary structure for the sequences of a FASTA file.

    fm-predict-structure --checkpoint runs/finetune/contacts/<run>/export --fasta my.fa --out pred/
    fm-predict-structure --checkpoint esm2_t6_8M_UR50D.pt --fasta my.fa \\
        --heads runs/finetune/secondary_structure/<run>/export/heads

The backbone comes from ``--checkpoint`` (an export directory, an ``fm-pretrain`` ``.ckpt`` or a
fair-esm ESM-2 ``.pt``). Heads (``*.json`` + ``*.safetensors`` written by ``fm-finetune``) come from
``<checkpoint>/heads`` when it exists and from every ``--heads`` file or folder. Contacts use the
supervised ``contacts`` head when one is loaded, else the backbone's own contact regression (ESM's
recipe, fitted by ``fm-finetune task=contacts`` or shipped in an ESM-2 ``.pt``). A regression never
fitted (a pre-training export) would say 0.5 everywhere: contacts are then not written (a warning;
with no secondary-structure head either, the run is refused).

Writes per record ``<name>.contacts.npy`` (L x L float32 probabilities) and ``<name>.contacts.png``;
``records.tsv`` (id -> file name: ids are made file-safe, and a repeated name gets ``-2``, ``-3``...);
``secondary_structure.tsv`` (id, sequence, 3-state, 8-state) when a secondary-structure head is
loaded; ``rejected.tsv`` (record, reason); ``summary.json`` (records read / predicted / rejected by
reason, cropped, heads used). Sequences longer than the backbone's ``max_length`` - 2 are cropped to
it (counted). A record with a character outside the alphabet, an empty record or a repeated id is an
error naming file and record (``--on-invalid skip`` counts, lists and skips it instead). ``--out`` is
locked for the run: a second run into it fails at once.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bio_fm.contact import HEAD_NAME, predict_contacts
from bio_fm.fasta import iter_fasta
from bio_fm.structure import DSSP8, SS3
from fm_core.batching import ReadStats
from fm_core.embed import HashedIdSet, validated_chunks
from fm_core.errors import UserError
from fm_core.export import load_pretrained
from fm_core.locks import DirectoryLock
from fm_core.plots import save_figure
from fm_core.summary import REJECTED_FILE, print_summary, write_rejected
from tasks.secondary_structure.task import predict_states, states_to_string
from tasks.structure.data import Chain, backbone_features
from tasks.structure.heads import contact_probabilities, load_head


def find_heads(checkpoint: Path, extra: list[str]) -> dict[str, tuple[torch.nn.Module, dict]]:
    paths: list[Path] = []
    for p in ([checkpoint / "heads"] if checkpoint.is_dir() else []) + [Path(e) for e in extra]:
        if p.is_dir():
            paths += sorted(p.glob("*.json"))
        elif p.is_file():
            paths.append(p)
        elif p not in (checkpoint / "heads",):
            raise FileNotFoundError(f"--heads {p}: no such file or folder")
    heads = {}
    for p in paths:
        head, spec = load_head(p)
        heads[spec.get("task", p.stem)] = (head, spec)
    return heads


def safe_name(rid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", rid)[:120] or "record"


def plot_contacts(path: Path, probs: np.ndarray, rid: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    im = ax.imshow(probs, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(f"{rid}: contact probability", fontsize=9)
    save_figure(fig, path, dpi=100)


def contact_predictor(net: Any, loaded: dict[str, tuple[torch.nn.Module, dict]]
                      ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """How contacts are predicted, and its name: the supervised ``contacts`` head when one is
    loaded, else the backbone's contact regression when it was fitted; ``(None, why)`` when
    neither is there (an unfitted regression says 0.5 everywhere: no prediction at all)."""
    if "contacts" in loaded:
        head = loaded["contacts"][0]
        return (lambda tokens: contact_probabilities(net, head, tokens)), "supervised head"
    if HEAD_NAME in net.heads and any(bool(p.any()) for p in net.heads[HEAD_NAME].parameters()):
        return (lambda tokens: predict_contacts(net, tokens)), "backbone contact regression"
    return None, ("not predicted: no contacts head, and the backbone's contact regression was never fitted "
                  "(fit one with fm-finetune task=contacts, or use a fair-esm ESM-2 .pt)")


def unique_name(rid: str, taken: set[str]) -> str:
    """A file name for ``rid``: its safe form, with ``-2``, ``-3``... when another record has it."""
    base = name = safe_name(rid)
    k = 1
    while name in taken:
        k += 1
        name = f"{base}-{k}"
    taken.add(name)
    return name


@torch.no_grad()
def predict(checkpoint: str, fasta: str, out: str, heads: list[str] | None = None, on_invalid: str = "error",
            png: bool = True) -> dict[str, Any]:
    """Predict into ``out``, holding its lock (a second run into it fails at once)."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"--on-invalid must be 'error' or 'skip', got {on_invalid!r}")
    with DirectoryLock(out, what="fm-predict-structure output"):
        return _predict(checkpoint, fasta, Path(out), heads or [], on_invalid, png)


def _predict(checkpoint: str, fasta: str, out_dir: Path, heads: list[str], on_invalid: str,
             png: bool) -> dict[str, Any]:
    net, tokenizer = load_pretrained(checkpoint)
    net.eval()
    loaded = find_heads(Path(checkpoint), heads)
    contacts, how = contact_predictor(net, loaded)
    ss = loaded.get("secondary_structure")
    stats, rejections = ReadStats(str(fasta)), []
    # the whole input is checked before anything is written: a bad record leaves --out as it was
    records = [r for chunk, _ in validated_chunks(iter_fasta(fasta), tokenizer, str(fasta), stats, HashedIdSet(),
                                                  on_invalid=on_invalid, rejections=rejections) for r in chunk]
    if contacts is None and not ss:
        raise UserError(f"{checkpoint}: nothing to predict: contacts {how}; no secondary_structure head either "
                        "(--heads)")
    if contacts is None:
        print(f"fm-predict-structure: warning: contacts {how}; writing secondary structure only", file=sys.stderr)
    max_res = net.config.max_length - tokenizer.num_special_added
    summary: dict[str, Any] = {"read": 0, "predicted": 0, "cropped": 0, "rejected_invalid": 0,
                               "contacts": how, "secondary_structure": bool(ss), "checkpoint": str(checkpoint)}
    ss_rows, names, taken = [], [], set()
    for rid, ids in records:
        cropped = len(ids) > max_res
        ids = ids[:max_res]
        seq = tokenizer.decode(ids)
        summary["cropped"] += cropped
        name = unique_name(rid, taken)
        names.append((rid, name, len(ids), cropped))
        tokens = torch.as_tensor(tokenizer.add_special_tokens(ids))[None]
        if contacts is not None:
            probs = contacts(tokens)[0].float().numpy()
            np.save(out_dir / f"{name}.contacts.npy", probs.astype(np.float32))
            if png:
                plot_contacts(out_dir / f"{name}.contacts.png", probs, rid)
        if ss:
            chain = Chain(rid, seq, np.asarray(ids), np.zeros((len(ids), 3), np.float32), "", "", None)
            feats = backbone_features(net, tokenizer, chain, layers=ss[1].get("repr_layers", [-1]))["embeddings"]
            y3, y8 = predict_states(ss[0], feats)
            ss_rows.append((rid, seq, states_to_string(y3, SS3), states_to_string(y8, DSSP8)))
    stats.check()
    summary.update(read=stats.read, predicted=stats.kept,
                   **{f"rejected_{why}": n for why, n in sorted(stats.rejected.items())})
    _write_tables(out_dir, names, ss_rows if ss else None, rejections, summary)
    print_summary("fm-predict-structure", stats.read, stats.kept, stats.rejected, out_dir / REJECTED_FILE,
                  kept_word="predicted")
    return summary


def _write_tables(out_dir: Path, names: list[tuple[str, str, int, bool]], ss_rows: list[tuple[str, ...]] | None,
                  rejections: list[tuple[str, str, str]], summary: dict[str, Any]) -> None:
    """``records.tsv`` (id -> file name, residues, cropped: the mapping of renamed ids),
    ``secondary_structure.tsv``, ``rejected.tsv`` and ``summary.json``."""
    with open(out_dir / "records.tsv", "w", encoding="utf-8") as fh:
        fh.write("id\tfile\tresidues\tcropped\n")
        fh.writelines(f"{rid}\t{name}\t{n}\t{int(cropped)}\n" for rid, name, n, cropped in names)
    if ss_rows is not None:
        with open(out_dir / "secondary_structure.tsv", "w") as fh:
            fh.write("id\tsequence\tss3\tss8\n")
            fh.writelines("\t".join(r) + "\n" for r in ss_rows)
    write_rejected(out_dir / REJECTED_FILE, rejections)
    summary["renamed"] = sum(rid != name for rid, name, _, _ in names)
    summary["files"] = {"records": "records.tsv", "rejected": REJECTED_FILE}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(out_dir / "summary.json")


def main(argv: list[str] | None = None) -> None:
    """``fm-predict-structure`` (its command line lives in ``tasks.structure.cli``)."""
    from tasks.structure.cli import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
