"""``fm-finetune task=secondary_structure``: 3- and 8-state DSSP secondary structure per residue.

Each method is a per-residue feature source and a ``WindowHead`` trained with Lightning on the
training chains (both outputs, 3 and 8 states, in one head), all scored on the same test chains:

- ``linear`` / ``conv``: embeddings of the backbone (frozen; ``repr_layers``, default every layer
  concatenated) with a linear probe / a small convolutional head (``heads.linear`` / ``heads.conv``);
  with ``train.finetune_backbone`` a copy of the backbone per head is fine-tuned with it (every
  weight, or only its LoRA adapter's with ``adapter=lora``) and exported with the best head;
- ``random_init_linear`` / ``random_init_conv``: the same over a random backbone of the same shape;
- ``onehot_window``: one-hot residues in a window (``window_mlp``): the strong single-sequence baseline;
- ``profile_window``: the sequence profiles shipped with the structure database in the same window
  MLP (the classic profile baseline; absent when the data have no profiles, e.g. PDB files);
- ``propensity``: each amino acid's most frequent state in the training chains.
- with ``retrieval.database`` (``tasks.structure.retrieval``): ``retrieved_profile_window`` (the profile
  of each chain's retrieved homologues in the window MLP) and ``<head>_retrieval`` (each head over the
  embeddings with that profile beside them); subsets by homologue stratum and without identical hits.

Metrics: ``<subset>/<method>/Q3``, ``.../Q8`` (per residue), ``.../Q3_per_chain``, ``.../Q8_per_chain``
for the subsets of ``tasks.structure.data.subsets``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bio_fm.structure import DSSP8, SS3
from fm_core.config import require_positive
from fm_core.export import save_pretrained
from fm_core.finetune import FinetuneRun
from fm_core.model import MaskedLM
from tasks.structure import data as sd
from tasks.structure import retrieval as sr
from tasks.structure.heads import (
    BackboneResidueModule,
    ResidueDataset,
    ResidueModule,
    TokenResidueDataset,
    WindowHead,
    save_head,
)
from tasks.structure.metrics import accuracies

log = logging.getLogger(__name__)
Features = Callable[[sd.Chain], np.ndarray]
SINGLE_SEQUENCE_BASELINES = ("propensity", "onehot_window")  # + random_init_<head> for every head


def onehot(chain: sd.Chain) -> np.ndarray:
    return np.eye(len(sd.AMINO), dtype=np.float32)[chain.aa_index]


def profile(chain: sd.Chain) -> np.ndarray:
    return chain.profile


def retrieved(chain: sd.Chain) -> np.ndarray:
    """The profile features of the chain's retrieved homologues (``tasks.structure.retrieval``)."""
    return chain.cache["retrieval"].features


def embeddings(net: MaskedLM, tokenizer, layers: list[int] | None) -> Features:
    def feats(chain: sd.Chain) -> np.ndarray:
        return sd.backbone_features(net, tokenizer, chain, layers=layers)["embeddings"]

    return feats


def propensity_table(chains: list[sd.Chain]) -> tuple[np.ndarray, np.ndarray]:
    """Most frequent 3- and 8-state label of each amino acid in ``chains`` (20,), (20,)."""
    aa = np.concatenate([c.aa_index for c in chains])
    t3 = np.zeros((len(sd.AMINO), len(SS3)), np.int64)
    t8 = np.zeros((len(sd.AMINO), len(DSSP8)), np.int64)
    np.add.at(t3, (aa, np.concatenate([c.y3 for c in chains])), 1)
    np.add.at(t8, (aa, np.concatenate([c.y8 for c in chains])), 1)
    return t3.argmax(1), t8.argmax(1)


@torch.no_grad()
def predict_states(head: WindowHead, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    head.eval()
    x = torch.as_tensor(feats, dtype=torch.float32)[None]
    o3, o8 = head(x, torch.ones(x.shape[:2], dtype=torch.bool))
    return o3[0].argmax(-1).numpy(), o8[0].argmax(-1).numpy()


def states_to_string(y: np.ndarray, alphabet: str) -> str:
    return "".join(alphabet[i] for i in y)


class SecondaryStructureTask(sd.StructureTask):
    """Arguments: see ``conf/task/secondary_structure.yaml`` (the defaults live there only)."""

    def __init__(self, *, max_train_chains: int | None, repr_layers: list[int] | None, heads: dict,
                 window_mlp: dict, train: dict, **common: Any):
        super().__init__(**common)
        self.max_train_chains = max_train_chains
        self.repr_layers = None if repr_layers is None else list(repr_layers)
        self.heads = {k: dict(v) for k, v in heads.items()}
        self.window_mlp, self.train = dict(window_mlp), dict(train)
        require_positive("task.train", max_steps=self.train["max_steps"], batch_size=self.train["batch_size"],
                         lr=self.train["lr"])
        require_positive("task", max_train_chains=max_train_chains)

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        s = self.setup(run)
        alphabet, net, test, groups, metrics = s.tokenizer, s.net, s.test, s.groups, s.metrics
        pool = sd.load_split(s.data_dir, "train", self.max_train_chains, run.seed)
        train = [c.crop(s.max_residues) for c in self.budget(pool, run.seed, metrics)]
        metrics["data/train_chains"] = len(train)
        metrics["data/train_residues"] = int(sum(len(c) for c in train))

        sources: dict[str, Features] = {"onehot": onehot, "embeddings": embeddings(net, alphabet, self.repr_layers),
                                        "random_init_embeddings": embeddings(s.random_net, alphabet, self.repr_layers)}
        if all(c.profile is not None for c in train + test):
            sources["profile"] = profile
        methods: dict[str, tuple[str, dict]] = {}
        for head_name, spec in self.heads.items():
            methods[head_name] = ("embeddings", spec)
            methods[f"random_init_{head_name}"] = ("random_init_embeddings", spec)
        methods["onehot_window"] = ("onehot", self.window_mlp)
        if "profile" in sources:
            methods["profile_window"] = ("profile", self.window_mlp)
        if self.retrieval["database"]:
            groups = self.add_retrieval(run, s, train, sources, methods)

        preds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        trained: dict[str, WindowHead] = {}
        backbones = {"embeddings": net, "random_init_embeddings": s.random_net}  # fine-tuned per head on request
        tuned: dict[str, MaskedLM] = {}
        for source, fn in sources.items():
            mine = {m: spec for m, (src, spec) in methods.items() if src == source}
            if not mine:
                continue
            train_x = [fn(c) for c in tqdm(train, desc=f"{source} (train)", leave=False)]
            test_x = [fn(c) for c in tqdm(test, desc=f"{source} (test)", leave=False)]
            for m, spec in mine.items():
                if self.train["finetune_backbone"] and source in backbones:
                    tuned[m], trained[m] = self.fit_backbone(run, backbones[source], alphabet, train_x, train, spec, m)
                    feats = embeddings(tuned[m], alphabet, self.repr_layers)
                    preds[m] = [predict_states(trained[m], feats(c)) for c in test]
                else:
                    trained[m] = self.fit(run, train_x, train, spec, m)
                    preds[m] = [predict_states(trained[m], x) for x in test_x]
        p3, p8 = propensity_table(train)
        preds["propensity"] = [(p3[c.aa_index], p8[c.aa_index]) for c in test]

        for group, idx in groups.items():
            for m, rows in preds.items():
                a3 = accuracies([rows[i][0] for i in idx], [test[i].y3 for i in idx], len(SS3))
                a8 = accuracies([rows[i][1] for i in idx], [test[i].y8 for i in idx], len(DSSP8))
                metrics.update({f"{group}/{m}/Q3": a3["per_residue"], f"{group}/{m}/Q3_per_chain": a3["per_chain"],
                                f"{group}/{m}/Q8": a8["per_residue"], f"{group}/{m}/Q8_per_chain": a8["per_chain"]})
        models = list(self.heads)
        best = max(models, key=lambda m: metrics[f"test/{m}/Q3"])
        single = [*SINGLE_SEQUENCE_BASELINES, *(f"random_init_{m}" for m in models)]
        best_base = max(single, key=lambda m: metrics[f"test/{m}/Q3"])
        metrics["summary/best_model"], metrics["summary/best_single_sequence_baseline"] = best, best_base
        for group in groups:
            for q in ("Q3", "Q8"):
                metrics[f"{group}/margin_best_model_vs_best_single_sequence/{q}"] = (
                    metrics[f"{group}/{best}/{q}"] - max(metrics[f"{group}/{b}/{q}"] for b in single))
                if "profile_window" in preds:
                    metrics[f"{group}/margin_best_model_vs_profile/{q}"] = (
                        metrics[f"{group}/{best}/{q}"] - metrics[f"{group}/profile_window/{q}"])
        if self.retrieval["database"]:
            metrics.update(sr.retrieval_summary(
                metrics, groups, [m for m in preds if "retriev" in m], [*single, *models], ("Q3", "Q8"),
                {"profile": "profile_window"} if "profile_window" in preds else {}))

        export = save_pretrained(run.run_dir / "export", tuned.get(best, net), alphabet)
        save_head(export / "heads", "secondary_structure", trained[best], task="secondary_structure",
                  features="embeddings", repr_layers=sd.resolve_layers(net, self.repr_layers), states=[SS3, DSSP8])
        self.plot(run, test, preds, list(preds))
        return metrics

    def add_retrieval(self, run: FinetuneRun, s: sd.StructureSetup, train: list[sd.Chain],
                      sources: dict[str, Features], methods: dict[str, tuple[str, dict]]) -> dict[str, list[int]]:
        """Retrieve homologues of every train and test chain; add the retrieved profile alone in the
        window MLP (``retrieved_profile_window``) and every head over the backbone's embeddings with
        the profile beside them (``<head>_retrieval``); returns the subsets with the homologue strata."""
        sr.retrieve(train + s.test, self.retrieval, self.mmseqs_threads)
        s.metrics.update(sr.retrieval_report(run.run_dir, {"train": train, "test": s.test}))
        feats = sources["embeddings"]
        sources["retrieved"] = retrieved
        sources["embeddings_retrieved"] = lambda c: np.concatenate([feats(c), retrieved(c)], 1)
        methods["retrieved_profile_window"] = ("retrieved", self.window_mlp)
        for head_name, spec in self.heads.items():
            methods[f"{head_name}_retrieval"] = ("embeddings_retrieved", spec)
        groups = sr.retrieval_subsets(s.test, s.groups)
        s.metrics.update({f"data/{name}_chains": len(idx) for name, idx in groups.items()})
        return groups

    def fit(self, run: FinetuneRun, feats: list[np.ndarray], chains: list[sd.Chain], spec: dict,
            name: str) -> WindowHead:
        head = self.new_head(run, feats, spec)
        module = ResidueModule(head, name=name, lr=self.train["lr"], weight_decay=self.train["weight_decay"])
        self.train_module(run, module, ResidueDataset(feats, [(c.y3, c.y8) for c in chains]), ResidueDataset.collate)
        head.eval()
        return head

    def fit_backbone(self, run: FinetuneRun, backbone: MaskedLM, tokenizer, feats: list[np.ndarray],
                     chains: list[sd.Chain], spec: dict, name: str) -> tuple[MaskedLM, WindowHead]:
        """``fit`` with a copy of ``backbone`` fine-tuned alongside the head (every weight, or its
        adapter's only); ``feats`` (the untouched backbone's) set the head's standardisation."""
        tuned = copy.deepcopy(backbone).train()  # LoRA dropout on (the features left it in eval mode)
        head = self.new_head(run, feats, spec)
        module = BackboneResidueModule(tuned, head, layers=sd.resolve_layers(tuned, self.repr_layers), name=name,
                                       lr=self.train["lr"], backbone_lr=self.train["backbone_lr"],
                                       weight_decay=self.train["weight_decay"])
        ds = TokenResidueDataset([tokenizer.add_special_tokens(c.tokens) for c in chains], [(c.y3, c.y8) for c in chains],
                                 tuned.config.pad_id)
        self.train_module(run, module, ds, ds.collate)
        head.eval()
        return tuned.eval(), head

    @staticmethod
    def new_head(run: FinetuneRun, feats: list[np.ndarray], spec: dict) -> WindowHead:
        torch.manual_seed(run.seed)
        head = WindowHead(feats[0].shape[1], out_dims=(len(SS3), len(DSSP8)), **spec)
        head.set_standardisation(feats)
        return head

    def train_module(self, run: FinetuneRun, module: Any, ds: torch.utils.data.Dataset, collate: Callable) -> None:
        loader = torch.utils.data.DataLoader(ds, batch_size=self.train["batch_size"], shuffle=True, collate_fn=collate,
                                             generator=torch.Generator().manual_seed(run.seed))
        trainer = run.trainer(max_steps=self.train["max_steps"], limit_val_batches=0, enable_checkpointing=False,
                              enable_model_summary=False, val_check_interval=None, check_val_every_n_epoch=None)
        trainer.fit(module, train_dataloaders=loader)

    def plot(self, run: FinetuneRun, test: list[sd.Chain], preds: dict, methods: list[str]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2, 4))
        data = [[float(np.mean(p[0] == c.y3)) for p, c in zip(preds[m], test, strict=True)] for m in methods]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("Q3 per test chain")
        ax.set_title(f"secondary structure, {len(test)} test chains (means: triangles)", fontsize=9)
        run.save_figure(fig, "per_chain_q3.png", "secondary_structure/per_chain_q3")


__all__ = ["SecondaryStructureTask", "predict_states", "propensity_table", "states_to_string"]
