"""OmegaConf resolvers used by the config tree."""

from __future__ import annotations

import os
import time
from importlib.resources import files

from omegaconf import OmegaConf


def package_path(package: str, relative: str = "") -> str:
    """``${pkg_path:some_package,data/x.fa}`` -> absolute path of a file shipped inside a package."""
    return str(files(package).joinpath(relative))


def run_id() -> str:
    """``${run_id:}``: a run name every rank of one launch agrees on, so that ranks started apart
    (SLURM tasks, torchrun workers) share one output directory instead of one per clock second:
    SLURM's job id (and array task), else torchrun's rendezvous id (``--standalone`` or
    ``--rdzv-id``), else the local time (one process, Hydra's usual name)."""
    if job := os.environ.get("SLURM_JOB_ID"):
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv and rdzv != "none":
        return f"torchrun-{rdzv}"
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pkg_path"):
        OmegaConf.register_new_resolver("pkg_path", package_path)
    if not OmegaConf.has_resolver("run_id"):
        # cached like Hydra's ${now:}: the run directory must not change between two reads
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)
