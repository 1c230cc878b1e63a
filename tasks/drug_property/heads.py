"""MLP property heads over any representation, trained by Lightning with early stopping on the
validation split (the best epoch's weights restored), and seed ensembles (mean prediction + spread
between members as the uncertainty)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, Sampler


class MLP(nn.Module):
    def __init__(self, in_dim: int, *, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B,)
        return self.net(x).squeeze(-1)


@dataclass
class HeadConfig:
    """MLP shape and training recipe (``task.head`` in conf/task/drug_property.yaml: the defaults)."""

    hidden: tuple[int, ...]
    dropout: float
    input_dropout: float
    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)


@dataclass
class FitResult:
    model: MLP
    best_epoch: int
    train_loss: float  # at the best epoch
    valid_loss: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, valid) per epoch


def loss_fn(kind: str) -> nn.Module:
    return nn.BCEWithLogitsLoss() if kind == "classification" else nn.MSELoss()


class _Rows(torch.utils.data.Dataset):
    """Features and targets, indexed by a whole batch of row indices at once."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class _EpochBatches(Sampler):
    """One seeded permutation per epoch (``generator``), cut into batches; ``None`` = every row, in order."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        order = torch.arange(self.n) if self.generator is None else torch.randperm(self.n, generator=self.generator)
        for start in range(0, self.n, self.batch_size):
            yield order[start : start + self.batch_size]


class HeadModule(L.LightningModule):
    """Adam with weight decay on an :class:`MLP`; input dropout on the training batches, whose
    dropout masks are seeded by (seed, epoch, batch start) so that a fit is reproducible."""

    def __init__(self, in_dim: int, kind: str, cfg: HeadConfig, seed: int):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.mlp = MLP(in_dim, hidden=cfg.hidden, dropout=cfg.dropout)
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.crit = loss_fn(kind)
        self.cfg, self.seed = cfg, seed
        self.history: list[tuple[float, float]] = []  # (mean train loss, valid loss) per epoch
        self._total, self._rows = 0.0, 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.mlp.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def on_train_epoch_start(self) -> None:
        self._total, self._rows = 0.0, 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        with torch.random.fork_rng():
            torch.manual_seed(self.seed * 100003 + self.current_epoch * 1009 + batch_idx * self.cfg.batch_size)
            loss = self.crit(self.mlp(self.drop_in(x)), y)
        self._total += loss.item() * len(x)
        self._rows += len(x)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # the whole validation split, one batch
        loss = self.crit(self.mlp(x), y)
        self.history.append((self._total / self._rows, float(loss)))
        self.log("valid_loss", loss, batch_size=1)


class EarlyStoppingBest(EarlyStopping):
    """Lightning's early stopping on ``valid_loss`` that also keeps the best epoch's weights (in
    memory) and restores them when training ends."""

    def __init__(self, patience: int):
        super().__init__(monitor="valid_loss", mode="min", patience=patience, check_finite=False,
                         check_on_train_epoch_end=False, verbose=False)
        self.best_epoch, self.best_state = -1, None

    def on_validation_end(self, trainer: L.Trainer, pl_module: HeadModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.wait_count == 0:  # this epoch improved on the best
            self.best_epoch, self.best_state = trainer.current_epoch, copy.deepcopy(pl_module.mlp.state_dict())

    def on_train_end(self, trainer: L.Trainer, pl_module: HeadModule) -> None:
        pl_module.mlp.load_state_dict(self.best_state)


def fit_mlp(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray, kind: str,
            cfg: HeadConfig, seed: int) -> FitResult:
    """Keeps the weights of the epoch with the lowest validation loss and stops after ``patience``
    epochs without improvement. ``y`` are standardised targets (regression) or 0/1 labels
    (classification). The global torch RNG is left as it was."""
    module = HeadModule(x_train.shape[1], kind, cfg, seed)
    stop = EarlyStoppingBest(cfg.patience)
    with torch.random.fork_rng():
        loaders = [DataLoader(_Rows(x, y), sampler=_EpochBatches(len(x), n, g), batch_size=None)
                   for x, y, n, g in ((x_train, y_train, cfg.batch_size, torch.Generator().manual_seed(seed)),
                                      (x_valid, y_valid, len(x_valid), None))]
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=cfg.max_epochs, callbacks=[stop],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(module, *loaders)
    module.mlp.eval()
    train_loss, valid_loss = module.history[stop.best_epoch]
    return FitResult(module.mlp, stop.best_epoch, train_loss, valid_loss, module.history)


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
