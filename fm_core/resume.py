"""Exact resumption of a killed run: data position, RNG states and the W&B run id.

Lightning restores the model, optimizer, LR scheduler, loop counters and callback states from a
checkpoint. Three things it leaves out are added here:

- **data position**: ``ResumableBatchSampler`` wraps a training batch sampler; when the trainer
  restarts from a checkpoint taken part-way through an epoch, the first iteration of the loader
  skips the batches that epoch had already trained on (batch plans are deterministic functions
  of ``(seed, epoch)``, so skipping reproduces the interrupted order exactly).
- **RNG states** (``ResumeState``): Python, NumPy and torch (CPU and CUDA) generators are saved in
  the checkpoint and put back just before the first batch trained after a resume.
- **W&B run id** (``ResumableWandbLogger``): an offline run in a run directory that already holds
  one continues its id, so ``wandb sync`` appends to one run.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class ResumableBatchSampler(Sampler):
    """Delegates to ``inner`` (any batch sampler with ``set_epoch``); ``resume_at(epoch, done)``
    makes the next iteration start at batch ``done`` of ``epoch``. The length stays the full
    epoch's, as Lightning counts the skipped batches as already run."""

    def __init__(self, inner: Any):
        self.inner = inner
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    @property
    def sampler(self) -> Any:
        # Lightning sets the epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler`` only,
        # never on a batch sampler itself: this is how the epoch reaches ``inner`` (without it
        # every epoch would repeat epoch 0's batch order)
        return self.inner

    def resume_at(self, epoch: int, done: int) -> None:
        self.inner.set_epoch(epoch)
        self._skip = int(done)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # padding_fraction, epoch ... of the wrapped sampler
        if name in ("inner", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def restored_position(trainer: L.Trainer | None) -> tuple[int, int] | None:
    """``(epoch, batches already trained in that epoch)`` when ``trainer`` has just restored a
    checkpoint for fitting, else None. Both counters come from Lightning's restored loop state."""
    if trainer is None or not trainer.fit_loop.restarting:
        return None
    epoch = trainer.fit_loop.epoch_progress.current.processed
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return int(epoch), int(done)


def resumable(sampler: Any, trainer: L.Trainer | None) -> ResumableBatchSampler:
    """Wrap a training batch sampler; position it if ``trainer`` is resuming."""
    wrapped = ResumableBatchSampler(sampler)
    position = restored_position(trainer)
    if position is not None:
        epoch, done = position
        if done:
            log.info("resuming inside epoch %d: skipping its first %d batches", epoch, done)
        wrapped.resume_at(epoch, done)
    return wrapped


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(L.Callback):
    """Saves the global RNG states in every checkpoint and restores them right before the first
    training batch after a resume (after the data loader has been rebuilt, which itself draws)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            _set_rng_state(self._pending)
            self._pending = None


_RUN_DIR = re.compile(r"^(?:offline-)?run-(?P<time>\d{8}_\d{6})-(?P<id>[a-z0-9]+)$")


def previous_wandb_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run already logged under ``<save_dir>/wandb``, if any."""
    runs = []
    for path in (Path(save_dir) / "wandb").glob("*run-*"):
        match = _RUN_DIR.match(path.name)
        if match and path.is_dir():
            runs.append((match["time"], match["id"]))
    return max(runs)[1] if runs else None


class ResumableWandbLogger(WandbLogger):
    """``WandbLogger`` that continues the run already in its ``save_dir`` (same id,
    ``resume="allow"``) instead of starting a second one, e.g. after a crash and ``resume=auto``."""

    def __init__(self, *args: Any, save_dir: str = ".", id: str | None = None, **kwargs: Any):
        previous = previous_wandb_id(save_dir) if id is None else None
        if previous is not None:
            log.info("W&B: continuing run %s found in %s", previous, save_dir)
            kwargs.setdefault("resume", "allow")
        super().__init__(*args, save_dir=save_dir, id=id or previous, **kwargs)
