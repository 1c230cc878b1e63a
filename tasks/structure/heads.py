"""Heads for the structure tasks and their Lightning modules.

- ``WindowHead``: per-residue classifier over a window of residues (``layers`` Conv1d of width
  ``window``, each with GELU, then Conv1d 1x1); ``hidden=0`` and ``window=1`` is a linear probe. Over one-hot residues or
  sequence profiles it is the classic window-MLP baseline; over embeddings it is the probe/conv head.
- ``PairHead``: contact logits from per-residue features: a projection, the pair tensor
  [a_i, a_j, a_i * a_j] (and, with ``pair_dim``, given pair features such as a retrieved
  alignment's coupling map), a few residual 2D convolutions (dilated), symmetrised.
- ``save_head`` / ``load_head``: a head as ``<name>.json`` (its class's name in ``HEADS`` + arguments)
  and ``<name>.safetensors``, so ``fm-predict-structure`` rebuilds it without pickle and without
  importing anything a file names.

Every argument is required: the settings live in ``conf/task/contacts.yaml`` and
``conf/task/secondary_structure.yaml`` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fm_core.adapters import set_trainable
from fm_core.padding import pad_batch


class WindowHead(nn.Module):
    def __init__(self, in_dim: int, *, out_dims: Sequence[int], window: int, hidden: int, dropout: float,
                 layers: int = 1):
        super().__init__()
        if window % 2 != 1:
            raise ValueError(f"window must be odd, got {window}")
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.kwargs = {"in_dim": in_dim, "out_dims": list(out_dims), "window": window, "hidden": hidden,
                       "dropout": dropout, "layers": layers}
        self.out_dims = list(out_dims)
        # feature standardisation measured on the training residues (set_standardisation)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        total = sum(out_dims)
        if hidden:
            blocks: list[nn.Module] = []
            for k in range(layers):  # hidden convolutions of width `window`, each seeing the last one's window
                blocks += [nn.Conv1d(in_dim if k == 0 else hidden, hidden, window, padding=window // 2), nn.GELU(),
                           nn.Dropout(dropout)]
            self.net = nn.Sequential(*blocks, nn.Conv1d(hidden, total, 1))
        else:
            self.net = nn.Conv1d(in_dim, total, window, padding=window // 2)

    def set_standardisation(self, feats: Sequence[np.ndarray]) -> None:
        x = np.concatenate(feats).astype(np.float64)
        self.mean.copy_(torch.as_tensor(x.mean(0)))
        self.std.copy_(torch.as_tensor(np.maximum(x.std(0), 1e-6)))

    def forward(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """x (B, L, F), mask (B, L) -> logits per output (B, L, C_k); padding is zeroed before the
        convolution so it never leaks into a window."""
        keep = mask[:, None, :].to(x.dtype)
        y = (((x - self.mean) / self.std) * mask[..., None].to(x.dtype)).transpose(1, 2)
        for module in self.net if isinstance(self.net, nn.Sequential) else [self.net]:
            y = module(y)
            if isinstance(module, nn.Dropout):
                y = y * keep  # padding stays zero for the next hidden layer's window
        y = y.transpose(1, 2)
        return list(torch.split(y, self.out_dims, dim=-1))


class PairHead(nn.Module):
    def __init__(self, in_dim: int, *, proj: int, channels: int, dilations: Sequence[int], kernel: int = 3,
                 pair_dim: int = 0):
        super().__init__()
        self.kwargs = {"in_dim": in_dim, "proj": proj, "channels": channels, "dilations": list(dilations),
                       "kernel": kernel, "pair_dim": pair_dim}
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, proj)
        self.inp = nn.Conv2d(3 * proj + pair_dim, channels, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels), nn.GELU(),
                          nn.Conv2d(channels, channels, kernel, padding=d * (kernel // 2), dilation=d))
            for d in dilations)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor, pair: Tensor | None = None) -> Tensor:
        """x (B, L, D) and, with ``pair_dim``, pair features ``pair`` (B, L, L, pair_dim) -> symmetric
        contact logits (B, L, L)."""
        a = self.proj(self.norm(x))  # (B, L, P)
        L_ = a.shape[1]
        ai = a[:, :, None, :].expand(-1, -1, L_, -1)
        aj = a[:, None, :, :].expand(-1, L_, -1, -1)
        parts = [ai, aj, ai * aj] + ([pair.to(a.dtype)] if self.kwargs["pair_dim"] else [])
        h = self.inp(torch.cat(parts, dim=-1).permute(0, 3, 1, 2))
        for block in self.blocks:
            h = h + block(h)
        y = self.out(h)[:, 0]
        return 0.5 * (y + y.transpose(1, 2))


# --- Lightning modules ---------------------------------------------------------------------------------
class ResidueModule(L.LightningModule):
    """Trains a ``WindowHead`` on precomputed per-residue features: sum of the cross-entropies of
    its outputs (3- and 8-state), padded positions ignored."""

    def __init__(self, head: WindowHead, *, name: str, lr: float, weight_decay: float):
        super().__init__()
        self.head, self.name_, self.lr, self.weight_decay = head, name, lr, weight_decay

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        loss = residue_loss(self.head(batch["x"], batch["mask"]), batch["ys"])
        self.log(f"{self.name_}/train_loss", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class ResidueDataset(torch.utils.data.Dataset):
    """(features (L, F), labels [(L,), ...]) per chain; ``collate`` pads (labels with -1)."""

    def __init__(self, feats: Sequence[np.ndarray], labels: Sequence[Sequence[np.ndarray]]):
        self.feats, self.labels = feats, labels

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int):
        return self.feats[i], self.labels[i]

    @staticmethod
    def collate(items):
        n = max(len(f) for f, _ in items)
        x = torch.zeros(len(items), n, items[0][0].shape[1])
        for b, (f, _) in enumerate(items):
            x[b, : len(f)] = torch.as_tensor(f, dtype=torch.float32)
        return {"x": x, **label_batch([labels for _, labels in items], n)}


def residue_loss(outs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """Sum over the outputs (3- and 8-state) of the cross-entropy, padding (-1) ignored."""
    return sum(F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1), ignore_index=-1)
               for o, y in zip(outs, ys, strict=True))


def label_batch(labels: Sequence[Sequence[np.ndarray]], n: int) -> dict[str, Any]:
    """Per-chain labels [(L,), ...] -> ``mask`` (B, n) and ``ys`` [(B, n), ...] padded with -1."""
    mask = torch.zeros(len(labels), n, dtype=torch.bool)
    ys = [torch.full((len(labels), n), -1, dtype=torch.long) for _ in labels[0]]
    for b, chain_labels in enumerate(labels):
        mask[b, : len(chain_labels[0])] = True
        for y, lab in zip(ys, chain_labels, strict=True):
            y[b, : len(lab)] = torch.as_tensor(lab)
    return {"mask": mask, "ys": ys}


def residue_features(backbone: nn.Module, tokens: Tensor, layers: Sequence[int]) -> Tensor:
    """tokens (B, T) with <cls> ... <eos> -> the representations of ``layers`` concatenated
    (B, T - 2, D x layers): ``tasks.structure.data.backbone_features``, batched and differentiable."""
    reps = backbone.encoder(tokens, repr_layers=layers)["representations"]
    return torch.cat([reps[k][:, 1:-1] for k in layers], -1)


class BackboneResidueModule(L.LightningModule):
    """A ``WindowHead`` over the representations of a backbone fine-tuned with it (every weight, or
    only its adapter's with ``model.adapter``): tokens -> ``residue_features`` -> the head."""

    def __init__(self, backbone: nn.Module, head: WindowHead, *, layers: Sequence[int], name: str, lr: float,
                 backbone_lr: float, weight_decay: float):
        super().__init__()
        self.backbone, self.head, self.layers, self.name_ = backbone, head, list(layers), name
        self.lr, self.backbone_lr, self.weight_decay = lr, backbone_lr, weight_decay
        set_backbone_trainable(backbone, train=True)

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        outs = self.head(residue_features(self.backbone, batch["tokens"], self.layers), batch["mask"])
        loss = residue_loss(outs, batch["ys"])
        self.log(f"{self.name_}/train_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0])
        return loss

    def configure_optimizers(self):
        return head_and_backbone_optimizer(self.head, self.backbone, self.lr, self.backbone_lr, self.weight_decay)


class TokenResidueDataset(torch.utils.data.Dataset):
    """(tokens with specials (L + 2,), labels [(L,), ...]) per chain; ``collate`` pads the tokens
    with ``pad_id`` and the labels with -1."""

    def __init__(self, tokens: Sequence[np.ndarray], labels: Sequence[Sequence[np.ndarray]], pad_id: int):
        self.tokens, self.labels, self.pad_id = tokens, labels, pad_id

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i], self.labels[i]

    def collate(self, items):
        n = max(len(t) for t, _ in items) - 2
        return {"tokens": pad_batch([t for t, _ in items], self.pad_id, width=n + 2),
                **label_batch([labels for _, labels in items], n)}


def set_backbone_trainable(backbone: nn.Module, train: bool) -> None:
    """The backbone trains (``train``: every weight, or its adapter's only) or not; its own heads and
    its MLM head never do."""
    set_trainable(backbone, train)
    backbone.heads.requires_grad_(False)
    backbone.lm_head.requires_grad_(False)


def head_and_backbone_optimizer(head: nn.Module, backbone: nn.Module, lr: float, backbone_lr: float,
                                weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the head (``lr``) and the backbone's trainable weights, if any (``backbone_lr``)."""
    groups = [{"params": list(head.parameters()), "lr": lr}]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    if trainable:
        groups.append({"params": trainable, "lr": backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def residue_embeddings(backbone: nn.Module, tokens: Tensor) -> Tensor:
    """tokens (B, T) with <cls> ... <eos> -> last-layer embeddings (B, T - 2, D); the <eos>/pad
    columns of shorter chains are masked out by the pair mask."""
    layer = backbone.config.num_layers
    return backbone.encoder(tokens, repr_layers=[layer])["representations"][layer][:, 1:-1]


@torch.no_grad()
def contact_probabilities(backbone: nn.Module, head: PairHead, tokens: Tensor) -> Tensor:
    """Inference: tokens (B, T) -> contact probabilities (B, T - 2, T - 2) of a trained ``PairHead``."""
    backbone.eval()
    head.eval()
    return torch.sigmoid(head(residue_embeddings(backbone, tokens)))


class ContactModule(L.LightningModule):
    """Supervised contacts: backbone embeddings (frozen, or fine-tuned with ``finetune_backbone``)
    -> ``PairHead``; binary cross-entropy over residue pairs at least ``min_separation`` apart."""

    def __init__(self, backbone: nn.Module, head: PairHead, *, finetune_backbone: bool, min_separation: int,
                 lr: float, backbone_lr: float, weight_decay: float, name: str):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.finetune_backbone, self.min_separation = finetune_backbone, min_separation
        self.lr, self.backbone_lr, self.weight_decay, self.name_ = lr, backbone_lr, weight_decay, name
        set_backbone_trainable(self.backbone, train=finetune_backbone)  # with an adapter: only its weights train

    def embed(self, tokens: Tensor) -> Tensor:
        if self.finetune_backbone:
            return residue_embeddings(self.backbone, tokens)
        self.backbone.eval()
        with torch.no_grad():
            return residue_embeddings(self.backbone, tokens)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.embed(tokens))

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        loss = pair_loss(self(batch["tokens"]), batch)
        self.log(f"{self.name_}/train_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0])
        return loss

    def configure_optimizers(self):
        return head_and_backbone_optimizer(self.head, self.backbone, self.lr, self.backbone_lr, self.weight_decay)


def pair_loss(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Binary cross-entropy of contact logits (B, L, L) over the pairs of ``batch["pair_mask"]``."""
    m = batch["pair_mask"]
    return F.binary_cross_entropy_with_logits(logits[m], batch["contacts"][m].float())


class PairFeatureModule(L.LightningModule):
    """Supervised contacts from precomputed features: per-residue ``x`` (and pair features ``pair``)
    -> ``PairHead``; the same loss as ``ContactModule``."""

    def __init__(self, head: PairHead, *, lr: float, weight_decay: float, name: str):
        super().__init__()
        self.head, self.lr, self.weight_decay, self.name_ = head, lr, weight_decay, name

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        loss = pair_loss(self.head(batch["x"], batch["pair"]), batch)
        self.log(f"{self.name_}/train_loss", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class CroppedPairs(torch.utils.data.Dataset):
    """Chains randomly cropped to ``crop`` residues, a per-(seed, call, index) crop; ``pairs`` gives
    the contact maps' padding and the pair mask (pairs at least ``min_separation`` apart)."""

    def __init__(self, items: Sequence[tuple], *, crop: int, min_separation: int, seed: int):
        self.items, self.crop, self.min_separation, self.seed = items, crop, min_separation, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.items)

    def window(self, i: int, n: int) -> tuple[int, int]:
        self.calls += 1
        start = 0
        if n > self.crop:
            start = int(np.random.default_rng((self.seed, i, self.calls)).integers(0, n - self.crop + 1))
        return start, min(n, start + self.crop)

    def pairs(self, maps: Sequence[np.ndarray]) -> dict[str, Tensor]:
        n = max(len(c) for c in maps)
        contacts = torch.zeros(len(maps), n, n, dtype=torch.bool)
        mask = torch.zeros(len(maps), n, n, dtype=torch.bool)
        sep = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        for b, c in enumerate(maps):
            k = len(c)
            contacts[b, :k, :k] = torch.as_tensor(c)
            mask[b, :k, :k] = sep[:k, :k] >= self.min_separation
        return {"contacts": contacts, "pair_mask": mask}


class ContactDataset(CroppedPairs):
    """Chains as (tokens with specials, contact map), randomly cropped to ``crop`` residues."""

    def __init__(self, items: Sequence[tuple[np.ndarray, np.ndarray]], *, crop: int, pad_id: int,
                 min_separation: int, seed: int):
        super().__init__(items, crop=crop, min_separation=min_separation, seed=seed)
        self.pad_id = pad_id

    def __getitem__(self, i: int):
        tokens, contacts = self.items[i]
        start, end = self.window(i, len(tokens) - 2)
        toks = np.concatenate([tokens[:1], tokens[1 + start : 1 + end], tokens[-1:]])
        return toks, contacts[start:end, start:end]

    def collate(self, items):
        n = max(len(c) for _, c in items)
        tokens = pad_batch([t for t, _ in items], self.pad_id, width=n + 2)  # (B, n + 2)
        return {"tokens": tokens, **self.pairs([c for _, c in items])}


class PairFeatureDataset(CroppedPairs):
    """Chains as (per-residue features (L, D), pair features (L, L, P), contact map (L, L)), cropped
    as ``ContactDataset``; ``collate`` pads with zeros."""

    def __getitem__(self, i: int):
        x, pair, contacts = self.items[i]
        start, end = self.window(i, len(x))
        return x[start:end], pair[start:end, start:end], contacts[start:end, start:end]

    def collate(self, items):
        n = max(len(x) for x, _, _ in items)
        x = torch.zeros(len(items), n, items[0][0].shape[1])
        pair = torch.zeros(len(items), n, n, items[0][1].shape[2])
        for b, (f, p, _) in enumerate(items):
            x[b, : len(f)] = torch.as_tensor(f, dtype=torch.float32)
            pair[b, : len(f), : len(f)] = torch.as_tensor(p, dtype=torch.float32)
        return {"x": x, "pair": pair, **self.pairs([c for _, _, c in items])}


# --- saving heads ----------------------------------------------------------------------------------------
# the head classes a saved head may name (nothing a file names is imported)
HEADS: dict[str, type[nn.Module]] = {"WindowHead": WindowHead, "PairHead": PairHead}


def save_head(directory: str | Path, name: str, head: nn.Module, **meta: Any) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {"head": type(head).__name__, "kwargs": head.kwargs, **meta}
    (directory / f"{name}.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(directory / f"{name}.safetensors"))
    return directory / f"{name}.json"


def load_head(spec_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text())
    name = spec.get("head")
    if name not in HEADS:
        raise ValueError(f"{spec_path}: unknown head {name!r}; the structure heads are {sorted(HEADS)}")
    head = HEADS[name](**spec["kwargs"])
    head.load_state_dict(load_file(str(spec_path.with_suffix(".safetensors"))))
    head.eval()
    return head, spec


__all__ = ["HEADS", "BackboneResidueModule", "ContactDataset", "ContactModule", "CroppedPairs", "PairFeatureDataset",
           "PairFeatureModule", "PairHead", "ResidueDataset", "ResidueModule", "TokenResidueDataset", "WindowHead",
           "contact_probabilities", "load_head", "pair_loss", "residue_embeddings", "residue_features", "save_head"]
