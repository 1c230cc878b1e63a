"""Protein console entry points (Hydra apps); each only composes its config and calls a plain function."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="pkg://fm_conf", config_name="protein_score")
def protein_score(cfg: DictConfig) -> None:
    from bio_fm.scoring import score

    score(cfg)


if __name__ == "__main__":
    protein_score()
