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


def gated_fasta(path: str, flag: str, gate: str, after: int):
    """An ``fm-embed`` reader (``reader._target_=killpoint.gated_fasta``) that, before record
    ``after``, announces itself in ``flag`` and waits for the file ``gate``: the job holds its
    output directory, part-way through, for as long as the test needs."""
    from bio_fm.fasta import iter_fasta

    for k, record in enumerate(iter_fasta(path)):
        if k == after:
            Path(flag).write_text("waiting")
            deadline = time.monotonic() + 300
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        yield record


class StallUntilSigterm(L.Callback):
    """At optimizer step ``step``, announce itself in ``flag`` and wait (polling, so the signal
    handler runs) until Lightning has noted a SIGTERM; Lightning then stops between steps."""

    def __init__(self, step: int, flag: str):
        self.step, self.flag = step, Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.flag.write_text(str(trainer.current_epoch))
            deadline = time.monotonic() + 300
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)
