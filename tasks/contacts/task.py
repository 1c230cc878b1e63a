"""``fm-finetune task=contacts``: contact prediction from a backbone, beside its baselines.

Methods, all on the same test chains, one run:

- ``esm_lr``: ESM's unsupervised recipe: the symmetrised, APC-corrected attention maps of every
  layer and head (``bio_fm.contact.ContactHead.features``) as features, an L1 logistic regression
  (scikit-learn) fitted on at most ``max_train_chains`` training chains; the fitted weights go into
  the backbone's contact head (``net.heads["contact"]``, saved with its export), so
  ``bio_fm.contact.predict_contacts`` and ``fm-predict-structure`` use it.
- ``supervised``: a ``PairHead`` over last-layer embeddings trained with Lightning on training
  chains (backbone frozen, or fine-tuned with ``supervised.finetune_backbone``: every weight, or
  only its LoRA adapter's with ``adapter=lora``).
- ``random_init_esm_lr``, ``random_init_supervised``: the same over a randomly initialised
  backbone of the same shape; ``random`` scores and the ``separation_prior`` (closer in sequence
  ranks first).
- with ``retrieval.database`` (``tasks.structure.retrieval``): ``retrieved_coupling``, the APC-corrected
  mutual information of each chain's retrieved alignment (>= ``min_homologues_mi`` homologues, else
  the separation prior); ``retrieved_pair``, a ``PairHead`` trained on the retrieved profile and
  coupling (``pair_features``: standardised MI and the log separation) without a language model;
  ``supervised_retrieval``, the same over the backbone's last-layer embeddings with the profile
  beside them (``supervised``'s settings and training chains); subsets by homologue stratum and
  without identical hits.

Metrics: precision at L, L/2, L/5 for short / medium / long range (``tasks.structure.metrics``) on
every test chain (``test/<method>/long_P@L5``), on the chains without an MMseqs2 hit in train
(``test_no_train_hit/...``) and without a >= 50%-identity hit in the pre-training corpus
(``test_no_pretrain_hit/...``). Contact = C-beta distance < 8 A (C-alpha for glycine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bio_fm import profiles
from bio_fm.contact import attach_contact_head, predict_contacts
from fm_core.config import require_positive
from fm_core.export import save_pretrained
from fm_core.finetune import FinetuneRun
from fm_core.model import MaskedLM
from tasks.structure import data as sd
from tasks.structure import retrieval as sr
from tasks.structure.heads import (
    ContactDataset,
    ContactModule,
    PairFeatureDataset,
    PairFeatureModule,
    PairHead,
    contact_probabilities,
    save_head,
)
from tasks.structure.metrics import (
    MIN_SEPARATION,
    RANGES,
    contact_precisions,
    mean_precisions,
    random_scores,
    range_mask,
    separation_prior_scores,
)

log = logging.getLogger(__name__)
Scorer = Callable[[sd.Chain], np.ndarray]


def pair_training_set(feats: list[np.ndarray], contacts: list[np.ndarray], min_sep: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j at least ``min_sep`` apart of every chain: (N, C) features, (N,) labels."""
    xs, ys = [], []
    for f, c in zip(feats, contacts, strict=True):
        m = range_mask(len(c), min_sep, None)
        xs.append(f[m])
        ys.append(c[m])
    return np.concatenate(xs), np.concatenate(ys)


def fit_contact_regression(net: MaskedLM, tokenizer, chains: list[sd.Chain], C: float, seed: int) -> dict[str, float]:
    """ESM's recipe: L1 logistic regression on attention-map features of ``chains``; the weights are
    written into the backbone's contact head (added when it has none). Returns fit statistics."""
    from sklearn.linear_model import LogisticRegression

    feats = [sd.backbone_features(net, tokenizer, c, embeddings=False, attention=True)["attention"]
             for c in tqdm(chains, desc="attention features (train)", leave=False)]
    x, y = pair_training_set(feats, [c.contacts() for c in chains], MIN_SEPARATION)
    if y.all() or not y.any():
        raise ValueError(f"contact regression: the {len(chains)} training chains have only one class of pairs")
    # features are standardised for the fit (attention maps of different heads differ in scale by
    # orders of magnitude, and the L1 penalty is scale-dependent); the scaling is folded back into
    # the weights, so the contact head takes raw features
    mean, std = x.mean(0), np.maximum(x.std(0), 1e-8)
    lr = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed, max_iter=1000)
    lr.fit((x - mean) / std, y)
    w = lr.coef_[0] / std
    b = lr.intercept_[0] - float((w * mean).sum())
    head = attach_contact_head(net)
    with torch.no_grad():
        head.regression.weight.copy_(torch.as_tensor(w[None], dtype=torch.float32))
        head.regression.bias.fill_(b)
    return {"pairs": int(len(y)), "positive_fraction": float(y.mean()), "nonzero_weights": int((lr.coef_ != 0).sum())}


def attention_scorer(net: MaskedLM, tokenizer) -> Scorer:
    @torch.no_grad()
    def score(chain: sd.Chain) -> np.ndarray:
        net.eval()
        tokens = torch.as_tensor(tokenizer.add_special_tokens(chain.tokens))[None]
        return predict_contacts(net, tokens)[0].float().numpy()

    return score


def pair_head_scorer(backbone: MaskedLM, head: PairHead, tokenizer) -> Scorer:
    def score(chain: sd.Chain) -> np.ndarray:
        tokens = torch.as_tensor(tokenizer.add_special_tokens(chain.tokens))[None]
        return contact_probabilities(backbone, head, tokens)[0].float().numpy()

    return score


def coupling(chain: sd.Chain, cfg: dict[str, Any]) -> np.ndarray:
    """The APC-corrected mutual information of the chain's retrieved alignment, computed once per
    chain (kept in ``chain.cache['coupling']``: three methods read it)."""
    if "coupling" not in chain.cache:
        chain.cache["coupling"] = profiles.coupling_map(chain.cache["retrieval"].msa, identity=cfg["identity"],
                                                        pseudocount=cfg["mi_pseudocount"])
    return chain.cache["coupling"]


def pair_features(chain: sd.Chain, cfg: dict[str, Any]) -> np.ndarray:
    """(L, L, 2) pair features of a chain's retrieved alignment: its APC-corrected mutual information,
    standardised over the chain's pairs i != j (zero below ``min_homologues_mi`` homologues), and
    log(1 + |i - j|) / log(1 + L). Computed once per chain (``chain.cache``; ``release_pair_cache``
    frees it): two heads read them."""
    if "pair_features" in chain.cache:
        return chain.cache["pair_features"]
    r, n = chain.cache["retrieval"], len(chain)
    mi = np.zeros((n, n), np.float32)
    if r.homologues >= cfg["min_homologues_mi"] and n > 1:
        mi = coupling(chain, cfg)
        off = ~np.eye(n, dtype=bool)
        mi = np.where(off, (mi - mi[off].mean()) / max(float(mi[off].std()), 1e-6), 0.0).astype(np.float32)
    sep = np.abs(np.arange(n)[None, :] - np.arange(n)[:, None])
    chain.cache["pair_features"] = np.stack([mi, (np.log1p(sep) / np.log1p(max(n, 1))).astype(np.float32)], -1)
    return chain.cache["pair_features"]


def release_pair_cache(chain: sd.Chain) -> None:
    """Drop a chain's (L, L) coupling and pair features once every method has read them (a few MB
    per chain: kept for a whole test split they would not fit in memory)."""
    for key in ("coupling", "pair_features"):
        chain.cache.pop(key, None)


def feature_pair_scorer(head: PairHead, feats: Callable[[sd.Chain], np.ndarray], cfg: dict[str, Any]) -> Scorer:
    @torch.no_grad()
    def score(chain: sd.Chain) -> np.ndarray:
        x = torch.as_tensor(feats(chain), dtype=torch.float32)[None]
        pair = torch.as_tensor(pair_features(chain, cfg))[None]
        return torch.sigmoid(head(x, pair))[0].float().numpy()

    return score


class ContactTask(sd.StructureTask):
    """Arguments: see ``conf/task/contacts.yaml`` (the defaults live there only)."""

    def __init__(self, *, max_train_chains: int, l1_C: float, supervised: dict, plot_chains: int, **common: Any):
        super().__init__(**common)
        self.max_train_chains, self.l1_C = max_train_chains, l1_C
        self.supervised, self.plot_chains = dict(supervised), plot_chains
        require_positive("task", max_train_chains=max_train_chains, l1_C=l1_C)
        require_positive("task.supervised", **{k: self.supervised[k] for k in ("train_chains", "crop", "batch_size",
                                                                              "max_steps", "lr")})

    def run(self, run: FinetuneRun) -> dict[str, Any]:
        s = self.setup(run)
        alphabet, net, test, groups, metrics = s.tokenizer, s.net, s.test, s.groups, s.metrics
        sup = self.supervised
        pool = sd.load_split(s.data_dir, "train", max(self.max_train_chains, sup["train_chains"]), run.seed)
        pool = [c.crop(s.max_residues) for c in self.budget(pool, run.seed, metrics)]
        lr_chains = pool[: self.max_train_chains]
        metrics["data/train_chains_regression"] = len(lr_chains)
        metrics["data/train_chains_supervised"] = min(len(pool), sup["train_chains"])

        scorers: dict[str, Scorer] = {}
        for prefix, backbone in (("", net), ("random_init_", s.random_net)):
            fit = fit_contact_regression(backbone, alphabet, lr_chains, self.l1_C, run.seed)
            metrics.update({f"fit/{prefix}esm_lr/{k}": v for k, v in fit.items()})
            scorers[f"{prefix}esm_lr"] = attention_scorer(backbone, alphabet)
        modules = {}
        for prefix, backbone in (("", net), ("random_init_", s.random_net)):
            modules[prefix] = self.train_pair_head(run, backbone, alphabet, pool[: sup["train_chains"]], sup,
                                                   f"{prefix}supervised")
            scorers[f"{prefix}supervised"] = pair_head_scorer(backbone, modules[prefix].head, alphabet)
        scorers["random"] = lambda c: random_scores(len(c), seed=run.seed)
        scorers["separation_prior"] = lambda c: separation_prior_scores(len(c), seed=run.seed)
        if self.retrieval["database"]:
            groups = self.add_retrieval(run, s, scorers, pool[: sup["train_chains"]])

        per_chain: dict[str, list[dict[str, float]]] = {m: [] for m in scorers}
        keep = self.plot_indices(test)
        kept_maps: dict[int, dict[str, np.ndarray]] = {k: {} for k in keep}
        with torch.inference_mode():
            for k, chain in enumerate(tqdm(test, desc="test chains")):
                true = chain.contacts()
                for name, scorer in scorers.items():
                    scores = scorer(chain)
                    per_chain[name].append(contact_precisions(scores, true))
                    if k in kept_maps:
                        kept_maps[k][name] = scores
                release_pair_cache(chain)
        for group, idx in groups.items():
            for name, rows in per_chain.items():
                for key, v in mean_precisions([rows[i] for i in idx]).items():
                    metrics[f"{group}/{name}/{key}"] = v
        best_model = max(("esm_lr", "supervised"), key=lambda m: metrics[f"test/{m}/long_P@L5"])
        baselines = ("random_init_esm_lr", "random_init_supervised", "random", "separation_prior")
        best_base = max(baselines, key=lambda m: metrics[f"test/{m}/long_P@L5"])
        for group in groups:
            metrics[f"{group}/margin_best_model_vs_best_baseline/long_P@L5"] = (
                metrics[f"{group}/{best_model}/long_P@L5"] - metrics[f"{group}/{best_base}/long_P@L5"])
        metrics["summary/best_model"], metrics["summary/best_baseline"] = best_model, best_base
        if self.retrieval["database"]:
            mine = [m for m in scorers if "retriev" in m]
            metrics.update(sr.retrieval_summary(metrics, groups, mine, [m for m in scorers if m not in mine],
                                                ("long_P@L5",), {"separation_prior": "separation_prior"}))

        export = save_pretrained(run.run_dir / "export", net, alphabet,
                                 metadata={"contact_head": "esm_lr fitted by fm-finetune task=contacts"})
        save_head(export / "heads", "contacts", modules[""].head, task="contacts")
        self.plots(run, test, kept_maps, per_chain)
        return metrics

    def add_retrieval(self, run: FinetuneRun, s: sd.StructureSetup, scorers: dict[str, Scorer],
                      train: list[sd.Chain]) -> dict[str, list[int]]:
        """Retrieve homologues of the test chains and of the supervised heads' ``train`` chains; add
        ``retrieved_coupling`` (the APC-corrected mutual information of the retrieved alignment where
        it holds ``min_homologues_mi`` homologues, the separation prior elsewhere), ``retrieved_pair``
        (a ``PairHead`` over the retrieved profile and coupling, no language model) and
        ``supervised_retrieval`` (the same over the backbone's embeddings with the profile beside
        them). Returns the subsets with the homologue strata."""
        cfg = self.retrieval
        sr.retrieve(train + s.test, cfg, self.mmseqs_threads)
        s.metrics.update(sr.retrieval_report(run.run_dir, {"train": train, "test": s.test}))

        def retrieved_coupling(chain: sd.Chain) -> np.ndarray:
            if chain.cache["retrieval"].homologues < cfg["min_homologues_mi"]:
                return separation_prior_scores(len(chain), seed=run.seed)
            return coupling(chain, cfg)

        scorers["retrieved_coupling"] = retrieved_coupling
        layer = [s.net.config.num_layers]
        sources = {"retrieved_pair": lambda c: c.cache["retrieval"].features,
                   "supervised_retrieval": lambda c: np.concatenate(
                       [sd.backbone_features(s.net, s.tokenizer, c, layers=layer)["embeddings"],
                        c.cache["retrieval"].features], 1)}
        pairs = [pair_features(c, cfg) for c in tqdm(train, desc="pair features (train)", leave=False)]
        for c in train:
            release_pair_cache(c)
        for name, feats in sources.items():
            items = [(feats(c), p, c.contacts()) for c, p in zip(train, pairs, strict=True)]
            head = self.train_feature_pair_head(run, items, name)
            scorers[name] = feature_pair_scorer(head, feats, cfg)
        groups = sr.retrieval_subsets(s.test, s.groups)
        s.metrics.update({f"data/{name}_chains": len(idx) for name, idx in groups.items()})
        return groups

    def train_feature_pair_head(self, run: FinetuneRun, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                                name: str) -> PairHead:
        """A ``PairHead`` over precomputed (per-residue, pair) features, ``supervised``'s settings."""
        sup = self.supervised
        torch.manual_seed(run.seed)
        head = PairHead(items[0][0].shape[1], proj=sup["proj"], channels=sup["channels"], dilations=sup["dilations"],
                        pair_dim=items[0][1].shape[2])
        module = PairFeatureModule(head, lr=sup["lr"], weight_decay=sup["weight_decay"], name=name)
        ds = PairFeatureDataset(items, crop=sup["crop"], min_separation=MIN_SEPARATION, seed=run.seed)
        self.fit_loader(run, module, ds, sup)
        return head.eval()

    def fit_loader(self, run: FinetuneRun, module: Any, ds: Any, sup: dict) -> None:
        loader = torch.utils.data.DataLoader(ds, batch_size=sup["batch_size"], shuffle=True, collate_fn=ds.collate,
                                             generator=torch.Generator().manual_seed(run.seed))
        trainer = run.trainer(max_steps=sup["max_steps"], limit_val_batches=0, enable_checkpointing=False,
                              enable_model_summary=False, val_check_interval=None, check_val_every_n_epoch=None)
        trainer.fit(module, train_dataloaders=loader)

    def train_pair_head(self, run: FinetuneRun, backbone: MaskedLM, tokenizer, chains: list[sd.Chain],
                        sup: dict, name: str) -> ContactModule:
        torch.manual_seed(run.seed)
        head = PairHead(backbone.config.embed_dim, proj=sup["proj"], channels=sup["channels"],
                        dilations=sup["dilations"])
        module = ContactModule(backbone, head, finetune_backbone=sup["finetune_backbone"], lr=sup["lr"],
                               backbone_lr=sup["backbone_lr"], weight_decay=sup["weight_decay"],
                               min_separation=MIN_SEPARATION, name=name)
        items = [(tokenizer.add_special_tokens(c.tokens), c.contacts()) for c in chains]
        ds = ContactDataset(items, crop=sup["crop"], pad_id=backbone.config.pad_id, min_separation=MIN_SEPARATION,
                            seed=run.seed)
        self.fit_loader(run, module, ds, sup)
        module.eval()
        return module

    def plot_indices(self, test: list[sd.Chain]) -> list[int]:
        """The first chains (file order) of 60-300 residues: the ones drawn."""
        return [k for k, c in enumerate(test) if 60 <= len(c) <= 300][: self.plot_chains]

    def plots(self, run: FinetuneRun, test: list[sd.Chain], maps: dict[int, dict[str, np.ndarray]],
              per_chain: dict[str, list[dict[str, float]]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        methods = ("esm_lr", "supervised", "separation_prior")
        if maps:
            fig, axes = plt.subplots(len(maps), len(methods), figsize=(3.6 * len(methods), 3.6 * len(maps)),
                                     squeeze=False)
            for row, (k, scores) in enumerate(maps.items()):
                chain, true = test[k], test[k].contacts()
                n = len(chain)
                for col, m in enumerate(methods):
                    ax = axes[row, col]
                    s = scores[m]
                    sel = range_mask(n, MIN_SEPARATION, None)
                    order = np.argsort(-s[sel], kind="stable")[:n]
                    ii, jj = np.nonzero(sel)
                    pi, pj = ii[order], jj[order]
                    hit = true[pi, pj]
                    ti, tj = np.nonzero(true & range_mask(n, MIN_SEPARATION, None))
                    ax.scatter(tj, ti, s=3, c="0.6", marker="s", label="true (upper)")
                    ax.scatter(pi[hit], pj[hit], s=4, c="tab:blue", marker="s", label="top-L correct")
                    ax.scatter(pi[~hit], pj[~hit], s=4, c="tab:red", marker="s", label="top-L wrong")
                    ax.set_xlim(0, n)
                    ax.set_ylim(n, 0)
                    ax.set_aspect("equal")
                    p = per_chain[m][k]["long_P@L5"]
                    ax.set_title(f"{chain.id} L={n}\n{m}: long P@L/5 {p:.2f}", fontsize=8)
                    if row == 0 and col == 0:
                        ax.legend(fontsize=6, loc="lower left")
            fig.suptitle("true contacts (upper triangle) vs top-L predictions (lower), |i-j| >= 6", fontsize=9)
            run.save_figure(fig, "contact_maps.png", "contacts/maps")

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        lengths = np.array([len(c) for c in test])
        for m, color in (("supervised", "tab:blue"), ("esm_lr", "tab:green"), ("random_init_supervised", "tab:orange"),
                         ("separation_prior", "0.5")):
            y = np.array([r["long_P@L5"] for r in per_chain[m]])
            axes[0].scatter(lengths, y, s=6, alpha=0.6, c=color, label=f"{m} (mean {np.nanmean(y):.3f})")
        axes[0].set_xlabel("chain length")
        axes[0].set_ylabel("long-range P@L/5 per chain")
        axes[0].legend(fontsize=7)
        a = np.array([r["long_P@L5"] for r in per_chain["supervised"]])
        b = np.array([r["long_P@L5"] for r in per_chain["random_init_supervised"]])
        axes[1].scatter(b, a, s=6, alpha=0.6)
        axes[1].plot([0, 1], [0, 1], c="0.5", lw=0.8)
        axes[1].set_xlabel("random-init backbone + same head")
        axes[1].set_ylabel("pre-trained backbone + head")
        axes[1].set_title("per-chain long-range P@L/5", fontsize=9)
        run.save_figure(fig, "per_chain_precision.png", "contacts/per_chain_precision")


__all__ = ["ContactTask", "coupling", "feature_pair_scorer", "fit_contact_regression", "pair_features", "pair_training_set",
           "release_pair_cache", "RANGES"]
