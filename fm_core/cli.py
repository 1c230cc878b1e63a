"""Console entry points (Hydra apps). Each only composes the config and calls a plain function."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

# W&B is offline unless the user explicitly says otherwise; nothing here touches the network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from fm_core.train import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="pkg://fm_conf", config_name="pretrain")
def pretrain(cfg: DictConfig) -> None:
    train(cfg)


@hydra.main(version_base="1.3", config_path="pkg://fm_conf", config_name="embed")
def embed(cfg: DictConfig) -> None:
    from fm_core.embed import embed as run

    run(cfg)


@hydra.main(version_base="1.3", config_path="pkg://fm_conf", config_name="finetune")
def finetune(cfg: DictConfig) -> None:
    from fm_core.finetune import finetune as run

    run(cfg)


if __name__ == "__main__":
    pretrain()
