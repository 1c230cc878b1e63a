"""Saving matplotlib figures the same way everywhere (learning curves, task plots, predictions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Tight layout, write ``path`` (parents created), close the figure; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def log_image(loggers: Any, key: str, path: str | Path) -> None:
    """Log a saved PNG to every W&B logger among ``loggers`` (others have no image support)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [str(path)])
