"""MLP property heads over any representation, trained by Lightning with early stopping on the
validation split (the best epoch's weights restored), one output per target (multi-task: a missing
label, NaN, is masked out of the loss), optionally a mean-variance head (a mean and a variance per
regression target, trained with the Gaussian negative log-likelihood)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, Sampler


class MLP(nn.Module):
    def __init__(self, in_dim: int, *, hidden: tuple[int, ...], dropout: float, out_dim: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, out_dim)
        return self.net(x)


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


def as_kinds(kind: str | Sequence[str], n_targets: int) -> tuple[str, ...]:
    return (kind,) * n_targets if isinstance(kind, str) else tuple(kind)


class MaskedLoss(nn.Module):
    """The mean loss over the labelled (non-NaN) entries of (B, T) targets: BCE for classification
    targets, MSE for regression ones, or the Gaussian NLL when the head also predicts a variance
    (outputs (B, 2T): T means, then T raw variances through softplus)."""

    def __init__(self, kinds: tuple[str, ...], mean_variance: bool):
        super().__init__()
        self.kinds, self.mean_variance = kinds, mean_variance
        self.single = loss_fn(kinds[0]) if len(set(kinds)) == 1 and not mean_variance else None
        self.cls = torch.tensor([k == "classification" for k in kinds])

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mask = ~torch.isnan(y)
        t = len(self.kinds)
        z = out[:, :t]
        if self.single is not None:  # one kind, plain loss: exactly the single-task loss
            return self.single(z[mask], y[mask])
        y0 = torch.where(mask, y, torch.zeros_like(y))
        bce = nn.functional.binary_cross_entropy_with_logits(z, y0, reduction="none")
        if self.mean_variance:
            var = nn.functional.softplus(out[:, t:]) + 1e-6
            reg = nn.functional.gaussian_nll_loss(z, y0, var, reduction="none", full=True)
        else:
            reg = (z - y0) ** 2
        per = torch.where(self.cls.expand_as(z), bce, reg)
        return per[mask].mean()


class _Rows(torch.utils.data.Dataset):
    """Features and targets, indexed by a whole batch of row indices at once."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.as_tensor(x)
        self.y = torch.as_tensor(y.reshape(len(y), -1), dtype=torch.float32)

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

    def __init__(self, in_dim: int, kinds: tuple[str, ...], cfg: HeadConfig, seed: int, mean_variance: bool):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.mlp = MLP(in_dim, hidden=cfg.hidden, dropout=cfg.dropout,
                           out_dim=len(kinds) * (2 if mean_variance else 1))
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.crit = MaskedLoss(kinds, mean_variance)
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


def fit_mlp(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
            kind: str | Sequence[str], cfg: HeadConfig, seed: int, mean_variance: bool = False) -> FitResult:
    """Keeps the weights of the epoch with the lowest validation loss and stops after ``patience``
    epochs without improvement. ``y`` are standardised targets (regression) or 0/1 labels
    (classification), (n,) or (n, T) with NaN for a missing label; ``kind`` one per target. The
    global torch RNG is left as it was."""
    kinds = as_kinds(kind, 1 if y_train.ndim == 1 else y_train.shape[1])
    module = HeadModule(x_train.shape[1], kinds, cfg, seed, mean_variance)
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
def predict_targets(models: list[MLP], x: np.ndarray, kinds: Sequence[str], y_mean: np.ndarray, y_std: np.ndarray,
                    mean_variance: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(members, n, T) predictions: probabilities (classification) or values in label units, and
    the members' predicted variances in label units (mean-variance heads; None otherwise)."""
    xt = torch.as_tensor(x)
    t = len(kinds)
    cls = np.array([k == "classification" for k in kinds])
    means, variances = [], []
    for m in models:
        m.eval()
        out = m(xt).double().numpy()
        z = out[:, :t]
        means.append(np.where(cls, 1 / (1 + np.exp(-z)), z * y_std + y_mean))
        if mean_variance:
            variances.append((np.logaddexp(0, out[:, t:]) + 1e-6) * np.square(y_std))
    return np.stack(means), (np.stack(variances) if mean_variance else None)


def predict(models: list[MLP], x: np.ndarray, kind: str, y_mean: float = 0.0, y_std: float = 1.0) -> np.ndarray:
    """(members, n) predictions of single-target heads: probabilities (classification) or values in
    label units."""
    mean, _ = predict_targets(models, x, [kind], np.array([y_mean]), np.array([y_std]), False)
    return mean[..., 0]
