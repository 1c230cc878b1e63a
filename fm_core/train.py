"""``train(cfg) -> metrics``: the whole pre-training run as a plain function (Hydra only wraps it)."""

from __future__ import annotations

import json
import logging
import math
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from fm_core.checkpoint import find_resume_checkpoint, verify_checkpoint
from fm_core.export import provenance, save_pretrained
from fm_core.locks import DirectoryLock, launcher_rank
from fm_core.summary import print_summary, rejected_counts

log = logging.getLogger(__name__)


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """``metrics.json``: flat keys, plain numbers/strings; printed so scripts can find it."""
    path = Path(run_dir) / "metrics.json"
    plain = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plain, indent=2, sort_keys=True))
    tmp.replace(path)
    print(f"metrics: {path}")
    return path


def instantiate_group(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


RESUME_MODES = {"auto": "auto", "true": "must", "false": "never"}


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` starts from.

    ``ckpt_path=...`` names one explicitly (verified against its sidecar when it has one).
    Otherwise ``resume`` decides: ``auto`` (default) continues from the newest checkpoint in
    ``<run_dir>/checkpoints`` that verifies (a truncated/corrupt one is reported and the previous
    one used) and starts fresh when there is none; ``true`` requires one; ``false`` never resumes.
    """
    if cfg.get("ckpt_path"):
        verify_checkpoint(cfg.ckpt_path)
        return str(cfg.ckpt_path)
    mode = RESUME_MODES.get(str(cfg.get("resume", "auto")).lower())
    if mode is None:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got {cfg.get('resume')!r}")
    if mode == "never":
        return None
    ckpt_dir = Path(cfg.paths.run_dir) / "checkpoints"
    found = find_resume_checkpoint(ckpt_dir)
    if found is None:
        if mode == "must":
            raise FileNotFoundError(f"resume=true but {ckpt_dir} holds no usable checkpoint")
        return None
    print(f"resuming from {found}")
    return str(found)


def close_loggers(trainer: L.Trainer) -> None:
    """Finish W&B runs so that a second ``train`` in the same process starts a new run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def build_pieces(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """(tokenizer, net, datamodule) of a pre-training config, each setting read from one place:
    the masking strategy is built once and gives the model the ``<mask>`` share its token dropout
    assumes (a checkpoint keeps its own); the model gives the data its context length."""
    tokenizer = instantiate(cfg.data.tokenizer)
    masking = instantiate(cfg.data.masking).for_tokenizer(tokenizer)
    net = instantiate(cfg.model, tokenizer=tokenizer, mask_ratio_train=masking.expected_mask_fraction)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer, max_length=net.config.max_length, masking=masking)
    return tokenizer, net, datamodule


def run_dir_lock(run_dir: Path, what: str) -> AbstractContextManager:
    """One writer per run directory: rank 0 of a run holds the lock (the other ranks of a
    distributed run write into the same directory by design)."""
    return DirectoryLock(run_dir, what=what) if launcher_rank() == 0 else nullcontext()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Pre-train (or continue pre-training) in ``paths.run_dir``, holding its lock throughout."""
    run_dir = Path(cfg.paths.run_dir)
    with run_dir_lock(run_dir, "fm-pretrain run"):
        return _train(cfg, run_dir)


def print_data_summary(tool: str, metrics: dict[str, Any]) -> None:
    """One line per data split that counts its records (read, kept, rejected by reason)."""
    for split in ("train", "val"):
        if f"data/{split}_read" in metrics:
            print_summary(f"{tool} {split} data", metrics[f"data/{split}_read"], metrics[f"data/{split}_kept"],
                          rejected_counts(metrics, f"data/{split}_rejected_"), None)


def finished_rerun(run_dir: Path, ckpt_path: str | None, trainer: L.Trainer, module: Any) -> dict[str, Any] | None:
    """The stored metrics when this leg resumed a finished run and trained nothing (``metrics.json``
    is then left as it was); None when the run trained."""
    metrics_path = run_dir / "metrics.json"
    if ckpt_path is None or module.resumed_step != trainer.global_step or not metrics_path.is_file():
        return None
    print(f"{run_dir}: already finished at step {trainer.global_step}, nothing to train; "
          f"{metrics_path} left as it was (raise trainer.max_steps to continue)")
    return json.loads(metrics_path.read_text())


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    # our training loader resumes mid-epoch (fm_core.resume), which Lightning cannot see
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

    tokenizer, net, datamodule = build_pieces(cfg)
    datamodule.setup("fit")
    module = instantiate(cfg.module, net=net, tokenizer=tokenizer,
                         unigram_log_probs=datamodule.unigram_log_probs())
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False,
                                     callbacks=instantiate_group(cfg.get("callbacks")),
                                     default_root_dir=str(run_dir))
    flat_cfg = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(flat_cfg)

    ckpt_path = resolve_ckpt_path(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    stored = finished_rerun(run_dir, ckpt_path, trainer, module)
    if stored is not None:
        close_loggers(trainer)
        return stored
    # the final state, for resuming with more steps or fine-tuning (atomic and hashed like all checkpoints)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    final = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    # every rank counted its own tokens: the run's total is their sum (a no-op on one process)
    tokens_seen = int(trainer.strategy.reduce(torch.tensor(float(module.tokens_seen)), reduce_op="sum"))

    metrics: dict[str, Any] = {k: float(v) for k, v in final.items()}
    metrics.update(datamodule.stats())
    metrics.update({
        "model/size": net.config.name,
        "model/num_parameters": sum(p.numel() for p in net.parameters()),
        "train/steps": trainer.global_step,
        "train/tokens_seen": tokens_seen,
        # over every leg of a resumed run (the totals travel in the checkpoint)
        "train/seconds": module.train_seconds,
        "train/tokens_per_second": tokens_seen / max(module.train_seconds, 1e-9),
        "train/legs": module.legs,
    })
    if "val/unigram_perplexity" in metrics:
        metrics["val/perplexity_ratio_to_unigram"] = metrics["val/perplexity"] / metrics["val/unigram_perplexity"]
    if trainer.is_global_zero:
        if cfg.get("export", True):
            export_dir = save_pretrained(run_dir / "export", net, tokenizer,
                                         metadata={"val/perplexity": metrics.get("val/perplexity", math.nan),
                                                   "train/steps": trainer.global_step, **provenance(cfg)})
            metrics["export_dir"] = str(export_dir)
        write_metrics(run_dir, metrics)
        print_data_summary("fm-pretrain", metrics)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                               step=trainer.global_step)
    close_loggers(trainer)
    return metrics
