"""``finetune(cfg) -> metrics``: one entry point (``fm-finetune``) for every downstream task.

The ``task`` config group chooses the task by ``_target_``; the task object receives a
:class:`FinetuneRun` (the run directory, the backbone to start from, Lightning trainers and
loggers built from the shared config groups) and returns flat metrics. This function owns what
every task shares: seeding, the run directory, ``metrics.json``, logging the final metrics, and
closing W&B. A task is any object with ``run(run: FinetuneRun) -> dict[str, float | int | str]``::

    # conf/task/<name>.yaml
    name: my_task
    _target_: my_package.MyTask      # built with the keys below; run(FinetuneRun) -> metrics
    max_train_chains: 20
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from fm_core.allocator import set_mmap_threshold
from fm_core.model import MaskedLM
from fm_core.plots import log_image, save_figure
from fm_core.tokenizer import Tokenizer
from fm_core.train import instantiate_group, run_dir_lock, save_job_config, write_metrics

log = logging.getLogger(__name__)


class Task(Protocol):
    def run(self, run: FinetuneRun) -> dict[str, Any]: ...


@dataclass
class FinetuneRun:
    """What a task gets from ``fm-finetune``: everything configured outside the task group."""

    cfg: DictConfig
    run_dir: Path
    loggers: list[Logger] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def init_from(self) -> str | None:
        """``model.init_from``: the backbone checkpoint (export dir, fm-pretrain .ckpt or fair-esm
        .pt); None for a random-init size (``model=mini``) or when none is given."""
        model = self.cfg.get("model")
        if model is None or OmegaConf.is_missing(model, "init_from"):
            return None
        return str(model.init_from) if model.get("init_from") else None

    def backbone(self, tokenizer: Tokenizer, **overrides: Any) -> MaskedLM:
        """The encoder to adapt, built once from the ``model`` group (as fm-pretrain builds it):
        loaded from ``model.init_from`` (its tokenizer must be ``tokenizer``), or randomly
        initialised at ``model.size``. ``overrides`` are the task's EncoderConfig fields
        (e.g. ``causal=True, max_length=...``). With ``model.adapter`` (``adapter=lora``) the
        adapter is injected and only its weights train (``fm_core.adapters``)."""
        model = self.cfg.get("model")
        if model is None or (OmegaConf.is_missing(model, "init_from") and model.get("size") is None):
            raise ValueError("fm-finetune: give model.init_from=<checkpoint> or a random-init size "
                             "(model=mini, model=tiny...) to build a backbone")
        model = model.copy()
        with open_dict(model):
            model.pop("adapter", None)
        return self.with_adapter(instantiate(model, tokenizer=tokenizer, **overrides))

    def random_backbone(self, like: MaskedLM, tokenizer: Tokenizer, seed: int | None = None) -> MaskedLM:
        """A randomly initialised encoder with ``like``'s exact shape (the random-init baseline),
        with the same adapter as the backbone when ``model.adapter`` is set (the same recipe)."""
        with torch.random.fork_rng():
            torch.manual_seed(self.seed if seed is None else seed)
            return self.with_adapter(MaskedLM(like.config.__class__.from_dict(like.config.to_dict())))

    def with_adapter(self, net: MaskedLM) -> MaskedLM:
        """``net`` with ``model.adapter`` injected (in place; e.g. ``fm_core.adapters.LoraAdapter``),
        or unchanged when there is none."""
        model = self.cfg.get("model")
        node = None if model is None else model.get("adapter")
        if node is None:
            return net
        adapter = instantiate(node)
        adapter.apply(net)
        log.info("adapter %s: %d trainable of %d weights", adapter.to_dict(),
                 sum(p.numel() for p in net.parameters() if p.requires_grad), sum(p.numel() for p in net.parameters()))
        return net

    def trainer(self, callbacks: list[Any] | None = None, **overrides: Any) -> L.Trainer:
        """A Lightning trainer from the ``trainer`` group, with the run's loggers and the task's
        callbacks; ``overrides`` win over the config (e.g. ``max_steps`` from the task)."""
        return instantiate(self.cfg.trainer, logger=self.loggers or False, callbacks=callbacks or [],
                           default_root_dir=str(self.run_dir), **overrides)

    def save_figure(self, fig: Any, filename: str, key: str, dpi: int = 110) -> Path:
        """Save ``fig`` as ``<run_dir>/<filename>`` and log it under ``key`` (``log_image``)."""
        path = save_figure(fig, self.run_dir / filename, dpi)
        self.log_image(key, path)
        return path

    def log_image(self, key: str, path: str | Path) -> None:
        """A PNG saved in the run directory, also logged to W&B when a W&B logger is configured."""
        log_image(self.loggers, key, path)
        log.info("%s: %s", key, path)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.task`` in ``paths.run_dir``, holding the directory's lock throughout."""
    run_dir = Path(cfg.paths.run_dir)
    with run_dir_lock(run_dir, "fm-finetune run"):
        save_job_config(run_dir, cfg)
        return _finetune(cfg, run_dir)


def _finetune(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    set_mmap_threshold(cfg.get("malloc_mmap_threshold_mib"))

    task_cfg = cfg.task.copy()
    with open_dict(task_cfg):
        task_name = str(task_cfg.pop("name", None) or task_cfg._target_.rsplit(".", 1)[-1])
    # nested nodes reach the task as configs: it instantiates its heads/data itself; built first,
    # so that the values it refuses are refused before a logger starts a run or a model is built
    task: Task = instantiate(task_cfg, _recursive_=False)
    loggers = instantiate_group(cfg.get("logger"))
    flat_cfg = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(flat_cfg)
    run = FinetuneRun(cfg=cfg, run_dir=run_dir, loggers=loggers)

    started = time.perf_counter()
    metrics = dict(task.run(run))
    metrics.setdefault("task", task_name)
    metrics.setdefault("init_from", run.init_from or "random")
    metrics["finetune/seconds"] = time.perf_counter() - started
    write_metrics(run_dir, metrics)
    for logger in loggers:
        logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    close_wandb(loggers)
    return metrics


def close_wandb(loggers: list[Logger]) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


__all__ = ["FinetuneRun", "Task", "finetune"]
