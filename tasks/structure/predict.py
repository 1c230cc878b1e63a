"""``fm-predict-structure``: contact maps and secondary structure for the sequences of a FASTA file.

    fm-predict-structure --checkpoint runs/finetune/contacts/<run>/export --fasta my.fa --out pred/
    fm-predict-structure --checkpoint esm2_t6_8M_UR50D.pt --fasta my.fa \\
        --heads runs/finetune/secondary_structure/<run>/export/heads

The backbone comes from ``--checkpoint`` (an export directory, an ``fm-pretrain`` ``.ckpt`` or a
fair-esm ESM-2 ``.pt``). Heads (``*.json`` + ``*.safetensors`` written by ``fm-finetune``) come from
``<checkpoint>/heads`` when it exists and from every ``--heads`` file or folder. Contacts use the
supervised ``contacts`` head when one is loaded, else the backbone's own contact regression (ESM's
recipe, fitted by ``fm-finetune task=contacts`` or shipped in an ESM-2 ``.pt``).

Writes per record ``<id>.contacts.npy`` (L x L float32 probabilities) and ``<id>.contacts.png``;
``secondary_structure.tsv`` (id, sequence, 3-state, 8-state) when a secondary-structure head is
loaded; ``summary.json`` (records read / predicted / rejected by reason, cropped, heads used).
Sequences longer than the backbone's ``max_length`` - 2 are cropped to it (counted). A record with
a character outside the alphabet is an error naming file and record (``--on-invalid skip`` counts
and skips it instead).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bio_fm.contact import attach_contact_head, predict_contacts
from bio_fm.fasta import iter_fasta
from bio_fm.structure import DSSP8, SS3
from fm_core.export import load_pretrained
from fm_core.plots import save_figure
from fm_core.tokenizer import InvalidRecordError
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


@torch.no_grad()
def predict(checkpoint: str, fasta: str, out: str, heads: list[str] | None = None, on_invalid: str = "error",
            png: bool = True) -> dict[str, Any]:
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"--on-invalid must be 'error' or 'skip', got {on_invalid!r}")
    net, tokenizer = load_pretrained(checkpoint)
    net.eval()
    loaded = find_heads(Path(checkpoint), heads or [])
    contact = loaded["contacts"][0] if "contacts" in loaded else None  # the supervised PairHead
    if contact is None:
        attach_contact_head(net)  # the backbone's regression; unfitted (0.5 everywhere) if the export has none
    ss = loaded.get("secondary_structure")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_res = net.config.max_length - tokenizer.num_special_added
    summary: dict[str, Any] = {"read": 0, "predicted": 0, "cropped": 0, "rejected_invalid": 0,
                               "contacts": "supervised head" if contact else "backbone contact regression",
                               "secondary_structure": bool(ss), "checkpoint": str(checkpoint)}
    ss_rows = []
    seen: set[str] = set()
    for rid, seq in iter_fasta(fasta):
        summary["read"] += 1
        try:
            ids = tokenizer.encode(seq, record=rid, source=str(fasta))
        except InvalidRecordError:
            if on_invalid == "error":
                raise
            summary["rejected_invalid"] += 1
            continue
        if len(ids) > max_res:
            ids, seq = ids[:max_res], seq[:max_res]
            summary["cropped"] += 1
        name = safe_name(rid)
        while name in seen:
            name += "_"
        seen.add(name)
        tokens = torch.as_tensor(tokenizer.add_special_tokens(ids))[None]
        probs = (contact_probabilities(net, contact, tokens) if contact else predict_contacts(net, tokens))[0].float().numpy()
        np.save(out_dir / f"{name}.contacts.npy", probs.astype(np.float32))
        if png:
            plot_contacts(out_dir / f"{name}.contacts.png", probs, rid)
        if ss:
            chain = Chain(rid, seq, np.asarray(ids), np.zeros((len(ids), 3), np.float32), "", "", None)
            feats = backbone_features(net, tokenizer, chain, layers=ss[1].get("repr_layers", [-1]))["embeddings"]
            y3, y8 = predict_states(ss[0], feats)
            ss_rows.append((rid, seq, states_to_string(y3, SS3), states_to_string(y8, DSSP8)))
        summary["predicted"] += 1
    if summary["read"] != summary["predicted"] + summary["rejected_invalid"]:
        raise AssertionError("records read != predicted + rejected")
    if ss:
        with open(out_dir / "secondary_structure.tsv", "w") as fh:
            fh.write("id\tsequence\tss3\tss8\n")
            fh.writelines("\t".join(r) + "\n" for r in ss_rows)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(out_dir / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="fm-predict-structure", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="export dir, fm-pretrain .ckpt or fair-esm ESM-2 .pt")
    p.add_argument("--fasta", required=True)
    p.add_argument("--out", default="structure_predictions")
    p.add_argument("--heads", nargs="*", default=[], help="head .json files or folders (from fm-finetune exports)")
    p.add_argument("--on-invalid", choices=("error", "skip"), default="error")
    p.add_argument("--no-png", dest="png", action="store_false")
    a = p.parse_args(argv)
    predict(a.checkpoint, a.fasta, a.out, a.heads, a.on_invalid, a.png)


if __name__ == "__main__":
    main()
