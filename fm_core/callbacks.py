"""Callbacks of general use: a learning-curve picture saved in the run and logged to W&B, and a
checkpoint of the last finished step when the process is asked to stop (SIGTERM)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fm_core.plots import log_image, save_figure

log = logging.getLogger(__name__)


class LearningCurve(L.Callback):
    """Records train loss and validation metrics; on fit end draws ``learning_curve.png``."""

    def __init__(self, path: str, val_keys: tuple[str, ...] = ("val/perplexity", "val/unigram_perplexity")):
        self.path = Path(path)
        self.val_keys = tuple(val_keys)
        self.train: list[tuple[int, float]] = []
        self.val: dict[str, list[tuple[int, float]]] = {k: [] for k in self.val_keys}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0 and "train/loss" in trainer.callback_metrics:
            self.train.append((trainer.global_step, float(trainer.callback_metrics["train/loss"])))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for key in self.val_keys:
            if key in trainer.callback_metrics:
                self.val[key].append((trainer.global_step, float(trainer.callback_metrics[key])))

    def state_dict(self) -> dict:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state: dict) -> None:
        self.train, self.val = list(state["train"]), {k: list(v) for k, v in state["val"].items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not (self.train or any(self.val.values())):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
        if self.train:
            steps, values = zip(*self.train, strict=True)
            ax_loss.plot(steps, values, lw=1)
        ax_loss.set(xlabel="step", ylabel="train loss (masked tokens)", title="training")
        for key, points in self.val.items():
            if points:
                steps, values = zip(*points, strict=True)
                ax_val.plot(steps, values, marker="o", label=key)
        ax_val.set(xlabel="step", ylabel="perplexity", title="validation")
        if any(self.val.values()):
            ax_val.legend()
        save_figure(fig, self.path, dpi=100)
        log_image(trainer.loggers, "learning_curve", self.path)
        log.info("learning curve: %s", self.path)


class SeenSamples(L.Callback):
    """Writes the dataset indices each rank trained on, one JSON list per epoch, to
    ``{dir}/seen_rank{rank}.json``: proof that ranks split the data without duplicates."""

    def __init__(self, dir: str):
        self.dir = Path(dir)
        self.epochs: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.epochs.setdefault(trainer.current_epoch, []).extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"seen_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({str(e): ids for e, ids in self.epochs.items()}))


class CheckpointOnSigterm(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint``, for SIGTERM only (a scheduler's stop, ``timeout``,
    ``kill``, SLURM pre-emption): Lightning finishes the optimizer step under way and raises
    ``SIGTERMException`` between steps, so the state saved here is whole, and ``resume=auto`` (the
    newest verified checkpoint by global step) continues from it instead of from the last periodic
    checkpoint. Other exceptions (a crash inside a step, Ctrl-C) can leave a half-updated state and
    save nothing: those runs resume from the periodic checkpoints."""

    def __init__(self, dirpath: str, filename: str = "sigterm"):
        super().__init__(dirpath=dirpath, filename=filename)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # not in the sanity check, nor in a validate/test call after fit (its checkpoint has no optimizer state)
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        super().on_exception(trainer, pl_module, exception)
        message = f"SIGTERM: saved step {trainer.global_step} to {self.ckpt_path}; rerun the same command to resume"
        log.warning(message)
        print(message, flush=True)
