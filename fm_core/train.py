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

from fm_core.allocator import set_mmap_threshold
from fm_core.checkpoint import find_resume_checkpoint, verify_checkpoint
from fm_core.export import provenance, save_pretrained
from fm_core.locks import DirectoryLock, launcher_rank
from fm_core.summary import print_summary, rejected_counts, write_metrics  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


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


def training_flops(num_parameters: int, tokens: int) -> float:
    """Training compute, 6 N D (Kaplan et al. 2020: forward + backward, 2 + 4 FLOPs per parameter
    and token; the attention's sequence-length term left out, small at these context lengths)."""
    return 6.0 * num_parameters * tokens


class StepExports(L.Callback):
    """Exports the backbone at a geometric series of optimizer steps (``first``, ``first * factor``,
    ... up to ``trainer.max_steps``) into ``<dir>/step<N>/`` with the step, tokens seen and FLOPs in
    its metadata: the points of a metric-against-pre-training-compute curve (``fm-report --pretrain``).
    An export already there (a resumed run) is kept."""

    def __init__(self, dir: str, first: int, factor: float):
        if first < 1 or factor <= 1:
            raise ValueError(f"step_exports: first must be >= 1 and factor > 1, got first={first}, factor={factor}")
        self.dir, self.first, self.factor = Path(dir), int(first), float(factor)

    def steps(self, max_steps: int) -> list[int]:
        out, k = [], 0
        while (step := int(round(self.first * self.factor ** k))) <= max_steps:
            out.append(step)
            k += 1
        return sorted(set(out))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        target = self.dir / f"step{step:07d}"
        if not trainer.is_global_zero or step not in self.steps(trainer.max_steps) or target.is_dir():
            return
        n = sum(p.numel() for p in pl_module.net.parameters())
        save_pretrained(target, pl_module.net, pl_module.tokenizer,
                        metadata={"train/steps": step, "train/tokens_seen": int(pl_module.tokens_seen),
                                  "train/flops_estimate": training_flops(n, pl_module.tokens_seen)})
        log.info("export at step %d: %s", step, target)


def save_job_config(run_dir: Path, cfg: DictConfig) -> None:
    """``<run_dir>/.hydra/`` (config.yaml, hydra.yaml, overrides.yaml, as Hydra writes them), written
    here once the run directory's lock is held: the apps set ``hydra.output_subdir: null``, so that a
    second run refused by the lock leaves the first one's files as they were. Outside a Hydra job
    (a config composed in Python) there is nothing to write."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or launcher_rank() != 0:
        return
    hydra_cfg = HydraConfig.get()
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), out / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), out / "overrides.yaml")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Pre-train (or continue pre-training) in ``paths.run_dir``, holding its lock throughout."""
    run_dir = Path(cfg.paths.run_dir)
    with run_dir_lock(run_dir, "fm-pretrain run"):
        save_job_config(run_dir, cfg)
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
    set_mmap_threshold(cfg.get("malloc_mmap_threshold_mib"))

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
        "train/seconds": module.clock.seconds,
        "train/cpu_seconds": module.clock.cpu_seconds,
        "train/tokens_per_second": tokens_seen / max(module.clock.seconds, 1e-9),
        "train/legs": module.clock.legs,
        "train/flops_estimate": training_flops(sum(p.numel() for p in net.parameters()), tokens_seen),
    })
    if "val/unigram_perplexity" in metrics:
        metrics["val/perplexity_ratio_to_unigram"] = metrics["val/perplexity"] / metrics["val/unigram_perplexity"]
    if trainer.is_global_zero:
        if cfg.get("export", True):
            export_dir = save_pretrained(run_dir / "export", net, tokenizer,
                                         metadata={"val/perplexity": metrics.get("val/perplexity", math.nan),
                                                   "train/steps": trainer.global_step, "train/tokens_seen": tokens_seen,
                                                   **provenance(cfg)})
            metrics["export_dir"] = str(export_dir)
        write_metrics(run_dir, metrics)
        print_data_summary("fm-pretrain", metrics)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                               step=trainer.global_step)
    close_loggers(trainer)
    return metrics
