"""Test helper loaded into an ``fm-pretrain`` subprocess (via PYTHONPATH and a Hydra callback
override): at a given optimizer step it announces itself in a file and stalls, so that the test
can SIGKILL the process at a known point in the middle of training."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class StallAt(L.Callback):
    def __init__(self, step: int, flag: str):
        self.step, self.flag = step, Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.flag.write_text(str(trainer.current_epoch))
            time.sleep(600)  # the test kills the process here
