"""Heads for the structure tasks and their Lightning modules.

- ``WindowHead``: per-residue classifier over a window of residues (Conv1d of width ``window``,
  GELU, Conv1d 1x1); ``hidden=0`` and ``window=1`` is a linear probe. Over one-hot residues or
  sequence profiles it is the classic window-MLP baseline; over embeddings it is the probe/conv head.
- ``PairHead``: contact logits from per-residue embeddings: a projection, the pair tensor
  [a_i, a_j, a_i * a_j], a few residual 2D convolutions (dilated), symmetrised.
- ``save_head`` / ``load_head``: a head as ``<name>.json`` (``_target_`` + arguments) and
  ``<name>.safetensors``, so ``fm-predict-structure`` rebuilds it without pickle.
"""

from __future__ import annotations

import importlib
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


class WindowHead(nn.Module):
    def __init__(self, in_dim: int, out_dims: Sequence[int] = (3, 8), window: int = 1, hidden: int = 0,
                 dropout: float = 0.1):
        super().__init__()
        if window % 2 != 1:
            raise ValueError(f"window must be odd, got {window}")
        self.kwargs = {"in_dim": in_dim, "out_dims": list(out_dims), "window": window, "hidden": hidden,
                       "dropout": dropout}
        self.out_dims = list(out_dims)
        # feature standardisation measured on the training residues (set_standardisation)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        total = sum(out_dims)
        if hidden:
            self.net = nn.Sequential(nn.Conv1d(in_dim, hidden, window, padding=window // 2), nn.GELU(),
                                     nn.Dropout(dropout), nn.Conv1d(hidden, total, 1))
        else:
            self.net = nn.Conv1d(in_dim, total, window, padding=window // 2)

    def set_standardisation(self, feats: Sequence[np.ndarray]) -> None:
        x = np.concatenate(feats).astype(np.float64)
        self.mean.copy_(torch.as_tensor(x.mean(0)))
        self.std.copy_(torch.as_tensor(np.maximum(x.std(0), 1e-6)))

    def forward(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """x (B, L, F), mask (B, L) -> logits per output (B, L, C_k); padding is zeroed before the
        convolution so it never leaks into a window."""
        x = ((x - self.mean) / self.std) * mask[..., None].to(x.dtype)
        y = self.net(x.transpose(1, 2)).transpose(1, 2)
        return list(torch.split(y, self.out_dims, dim=-1))


class PairHead(nn.Module):
    def __init__(self, in_dim: int, proj: int = 32, channels: int = 32, dilations: Sequence[int] = (1, 2, 4, 1),
                 kernel: int = 3):
        super().__init__()
        self.kwargs = {"in_dim": in_dim, "proj": proj, "channels": channels, "dilations": list(dilations),
                       "kernel": kernel}
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, proj)
        self.inp = nn.Conv2d(3 * proj, channels, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels), nn.GELU(),
                          nn.Conv2d(channels, channels, kernel, padding=d * (kernel // 2), dilation=d))
            for d in dilations)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> symmetric contact logits (B, L, L)."""
        a = self.proj(self.norm(x))  # (B, L, P)
        L_ = a.shape[1]
        ai = a[:, :, None, :].expand(-1, -1, L_, -1)
        aj = a[:, None, :, :].expand(-1, L_, -1, -1)
        h = self.inp(torch.cat([ai, aj, ai * aj], dim=-1).permute(0, 3, 1, 2))
        for block in self.blocks:
            h = h + block(h)
        y = self.out(h)[:, 0]
        return 0.5 * (y + y.transpose(1, 2))


# --- Lightning modules ---------------------------------------------------------------------------------
class ResidueModule(L.LightningModule):
    """Trains a ``WindowHead`` on precomputed per-residue features: sum of the cross-entropies of
    its outputs (3- and 8-state), padded positions ignored."""

    def __init__(self, head: WindowHead, name: str, lr: float = 1e-3, weight_decay: float = 1e-2):
        super().__init__()
        self.head, self.name_, self.lr, self.weight_decay = head, name, lr, weight_decay

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        outs = self.head(batch["x"], batch["mask"])
        loss = sum(F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1), ignore_index=-1)
                   for o, y in zip(outs, batch["ys"], strict=True))
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
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        ys = [torch.full((len(items), n), -1, dtype=torch.long) for _ in items[0][1]]
        for b, (f, labels) in enumerate(items):
            x[b, : len(f)] = torch.as_tensor(f, dtype=torch.float32)
            mask[b, : len(f)] = True
            for y, lab in zip(ys, labels, strict=True):
                y[b, : len(lab)] = torch.as_tensor(lab)
        return {"x": x, "mask": mask, "ys": ys}


class ContactModule(L.LightningModule):
    """Supervised contacts: backbone embeddings (frozen, or fine-tuned with ``finetune_backbone``)
    -> ``PairHead``; binary cross-entropy over residue pairs at least ``min_separation`` apart."""

    def __init__(self, backbone: nn.Module, head: PairHead, *, finetune_backbone: bool = False,
                 min_separation: int = 6, lr: float = 1e-3, backbone_lr: float = 1e-4, weight_decay: float = 1e-2,
                 name: str = "contact_head"):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.finetune_backbone, self.min_separation = finetune_backbone, min_separation
        self.lr, self.backbone_lr, self.weight_decay, self.name_ = lr, backbone_lr, weight_decay, name
        self.backbone.requires_grad_(finetune_backbone)
        self.backbone.contact_head.requires_grad_(False)
        self.backbone.lm_head.requires_grad_(False)

    def embed(self, tokens: Tensor) -> Tensor:
        layer = self.backbone.config.num_layers
        if self.finetune_backbone:
            rep = self.backbone.encoder(tokens, repr_layers=[layer])["representations"][layer]
        else:
            self.backbone.eval()
            with torch.no_grad():
                rep = self.backbone.encoder(tokens, repr_layers=[layer])["representations"][layer]
        return rep[:, 1:-1]  # drop <cls>; the <eos>/pad columns are masked out by the pair mask

    def forward(self, tokens: Tensor) -> Tensor:
        emb = self.embed(tokens)
        return self.head(emb[:, : tokens.shape[1] - 2])

    def training_step(self, batch: dict[str, Tensor], _: int) -> Tensor:
        logits = self(batch["tokens"])
        m = batch["pair_mask"]
        loss = F.binary_cross_entropy_with_logits(logits[m], batch["contacts"][m].float())
        self.log(f"{self.name_}/train_loss", loss, prog_bar=True, batch_size=batch["tokens"].shape[0])
        return loss

    def configure_optimizers(self):
        groups = [{"params": list(self.head.parameters()), "lr": self.lr}]
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": self.backbone_lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)


class ContactDataset(torch.utils.data.Dataset):
    """Chains as (tokens with specials, contact map), randomly cropped to ``crop`` residues with a
    per-(seed, epoch, index) crop."""

    def __init__(self, items: Sequence[tuple[np.ndarray, np.ndarray]], crop: int, pad_id: int,
                 min_separation: int, seed: int = 0):
        self.items, self.crop, self.pad_id, self.min_separation, self.seed = items, crop, pad_id, min_separation, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        tokens, contacts = self.items[i]
        n = len(tokens) - 2
        self.calls += 1
        start = 0
        if n > self.crop:
            start = int(np.random.default_rng((self.seed, i, self.calls)).integers(0, n - self.crop + 1))
        end = min(n, start + self.crop)
        toks = np.concatenate([tokens[:1], tokens[1 + start : 1 + end], tokens[-1:]])
        return toks, contacts[start:end, start:end]

    def collate(self, items):
        n = max(len(c) for _, c in items)
        tokens = torch.full((len(items), n + 2), self.pad_id, dtype=torch.long)
        contacts = torch.zeros(len(items), n, n, dtype=torch.bool)
        mask = torch.zeros(len(items), n, n, dtype=torch.bool)
        sep = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        for b, (t, c) in enumerate(items):
            k = len(c)
            tokens[b, : len(t)] = torch.as_tensor(t)
            contacts[b, :k, :k] = torch.as_tensor(c)
            mask[b, :k, :k] = sep[:k, :k] >= self.min_separation
        return {"tokens": tokens, "contacts": contacts, "pair_mask": mask}


# --- saving heads ----------------------------------------------------------------------------------------
def save_head(directory: str | Path, name: str, head: nn.Module, **meta: Any) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cls = type(head)
    spec = {"_target_": f"{cls.__module__}.{cls.__qualname__}", "kwargs": head.kwargs, **meta}
    (directory / f"{name}.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(directory / f"{name}.safetensors"))
    return directory / f"{name}.json"


TRUSTED_HEAD_MODULES = ("tasks.",)


def load_head(spec_path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    spec_path = Path(spec_path)
    spec = json.loads(spec_path.read_text())
    target = spec["_target_"]
    if not target.startswith(TRUSTED_HEAD_MODULES):
        raise ValueError(f"{spec_path}: head class {target!r} is outside {TRUSTED_HEAD_MODULES}")
    module, _, qual = target.rpartition(".")
    head = getattr(importlib.import_module(module), qual)(**spec["kwargs"])
    head.load_state_dict(load_file(str(spec_path.with_suffix(".safetensors"))))
    head.eval()
    return head, spec


__all__ = ["ContactDataset", "ContactModule", "PairHead", "ResidueDataset", "ResidueModule", "WindowHead",
           "load_head", "save_head"]
