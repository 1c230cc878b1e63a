"""MLP property heads over any representation, trained with early stopping on the validation
split, and seed ensembles (mean prediction + spread between members as the uncertainty)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


@dataclass
class HeadConfig:
    """MLP shape and training recipe (``task.head`` in the config)."""

    hidden: tuple[int, ...] = (512, 256)
    dropout: float = 0.2
    input_dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 150
    patience: int = 15


@dataclass
class FitResult:
    model: MLP
    best_epoch: int
    train_loss: float  # at the best epoch
    valid_loss: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, valid) per epoch


def loss_fn(kind: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if kind == "classification" else nn.MSELoss()


def fit_mlp(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, kind: str,
            cfg: HeadConfig, seed: int) -> FitResult:
    """Adam with weight decay; keeps the weights of the epoch with the lowest validation loss and
    stops after ``patience`` epochs without improvement. ``y`` are standardised targets (regression)
    or 0/1 labels (classification)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MLP(x_train.shape[1], tuple(cfg.hidden), cfg.dropout)
    drop_in = nn.Dropout(cfg.input_dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    crit = loss_fn(kind)
    xt, yt = torch.as_tensor(x_train), torch.as_tensor(y_train, dtype=torch.float32)
    xv, yv = torch.as_tensor(x_valid), torch.as_tensor(y_valid, dtype=torch.float32)
    best = (float("inf"), -1, float("nan"), None)
    history = []
    for epoch in range(cfg.max_epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            with torch.random.fork_rng():
                torch.manual_seed(seed * 100003 + epoch * 1009 + start)
                loss = crit(model(drop_in(xt[idx])), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            v = float(crit(model(xv), yv))
        history.append((total / len(xt), v))
        if v < best[0]:
            best = (v, epoch, total / len(xt), copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best[3])
    model.eval()
    return FitResult(model, best[1], best[2], best[0], history)


@torch.no_grad()
def predict(models: list[MLP], x: np.ndarray, kind: str, y_mean: float = 0.0, y_std: float = 1.0) -> np.ndarray:
    """(members, n) predictions: probabilities (classification) or values in label units."""
    xt = torch.as_tensor(x)
    out = []
    for m in models:
        m.eval()
        z = m(xt)
        out.append((torch.sigmoid(z) if kind == "classification" else z * y_std + y_mean).numpy())
    return np.stack(out).astype(np.float64)
