"""Choose the secondary-structure window MLP's training length and input on the *validation* split
(never the test split) for the retrieval-augmented heads of issue 16.

For the train chains of ``fm-finetune task=secondary_structure`` (the same seeded sample and crop)
and the validation chains of ``data/structures``, homologues are retrieved with the task's own
settings (``conf/homologues/mmseqs.yaml``, the search cache shared with the task), then the
task's ``WindowHead`` is trained on each input (the retrieved profile; the profile with the
query's one-hot beside it; the shipped profile as the reference) for several step counts and
hidden sizes, and scored by Q3 on validation. Writes ``bench/ss_retrieval_selection.json`` and
prints a table.

    python bench/ss_retrieval_selection.py --database data/retrieval/msdb --steps 200 1000 3000
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bio_fm.structure import DSSP8, SS3
from tasks.secondary_structure.task import onehot, predict_states
from tasks.structure import data as sd
from tasks.structure import retrieval as sr
from tasks.structure.heads import ResidueDataset, WindowHead, residue_loss
from tasks.structure.metrics import accuracies


def settings(database: str) -> dict:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fm_conf", version_base=None):
        cfg = compose("finetune", overrides=["task=secondary_structure", f"task.retrieval.database={database}"])
    return {"retrieval": dict(cfg.task.retrieval), "window_mlp": dict(cfg.task.window_mlp), "train": dict(cfg.task.train),
            "max_train_chains": cfg.task.max_train_chains}


def fit(train_x, train, spec, steps, train_cfg, seed) -> WindowHead:
    torch.manual_seed(seed)
    head = WindowHead(train_x[0].shape[1], out_dims=(len(SS3), len(DSSP8)), **spec)
    head.set_standardisation(train_x)
    opt = torch.optim.AdamW(head.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    ds = ResidueDataset(train_x, [(c.y3, c.y8) for c in train])
    loader = torch.utils.data.DataLoader(ds, batch_size=train_cfg["batch_size"], shuffle=True, collate_fn=ds.collate,
                                         generator=torch.Generator().manual_seed(seed))
    done = 0
    head.train()
    while done < steps:
        for batch in loader:
            loss = residue_loss(head(batch["x"], batch["mask"]), batch["ys"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    return head.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data/structures")
    ap.add_argument("--database", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 1000, 3000])
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--inputs", nargs="+", default=["retrieved_profile", "retrieved_profile+onehot", "shipped_profile"])
    ap.add_argument("--max-residues", type=int, default=510, help="the crop of model.max_length=512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/ss_retrieval_selection.json")
    args = ap.parse_args()
    cfg = settings(args.database)
    train = [c.crop(args.max_residues) for c in sd.load_split(Path(args.data_dir), "train", cfg["max_train_chains"], 0)]
    valid = [c.crop(args.max_residues) for c in sd.load_split(Path(args.data_dir), "valid", None, 0)]
    t0 = time.time()
    sr.retrieve(train + valid, cfg["retrieval"], args.threads)
    search_s = time.time() - t0
    inputs = {"retrieved_profile": lambda c: c.cache["retrieval"].features,
              "retrieved_profile+onehot": lambda c: np.concatenate([c.cache["retrieval"].features, onehot(c)], 1),
              "shipped_profile": lambda c: c.profile}
    rows = []
    for name in args.inputs:
        fn = inputs[name]
        tx, vx = [fn(c) for c in train], [fn(c) for c in valid]
        for hidden, layers, steps in itertools.product(args.hidden, args.layers, args.steps):
            spec = {**cfg["window_mlp"], "hidden": hidden, "layers": layers}
            t1 = time.time()
            head = fit(tx, train, spec, steps, cfg["train"], seed=0)
            preds = [predict_states(head, x)[0] for x in vx]
            q3 = accuracies(preds, [c.y3 for c in valid], len(SS3))["per_residue"]
            rows.append({"input": name, "hidden": hidden, "layers": layers, "steps": steps, "valid_Q3": q3,
                         "seconds": time.time() - t1})
            print(f"{name:26s} hidden {hidden:4d} layers {layers} steps {steps:5d}  valid Q3 {q3:.4f}  "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    out = {"command": "python " + " ".join(sys.argv), "train_chains": len(train), "valid_chains": len(valid), "search_seconds": search_s,
           "retrieval": {k: v for k, v in cfg["retrieval"].items() if k != "cache_dir"}, "window": cfg["window_mlp"]["window"],
           "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
