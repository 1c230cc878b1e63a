"""The Lightning ``CheckpointIO`` of training runs (``conf/trainer/*.yaml``:
``fm_core.checkpoint.AtomicCheckpointIO``, resolved here lazily so that readers of checkpoints do
not import Lightning)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import TorchCheckpointIO

from fm_core.checkpoint import atomic_torch_save, safe_torch_load, sidecar_path, verify_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, hashed saves (``atomic_torch_save``) and loads that
    verify the sidecar and never unpickle code (``torch.load(weights_only=True)``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        info = {"global_step": int(checkpoint.get("global_step", -1)), "epoch": int(checkpoint.get("epoch", -1)),
                "written_ns": time.time_ns()}
        atomic_torch_save(checkpoint, path, info)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        verify_checkpoint(path)
        return safe_torch_load(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
