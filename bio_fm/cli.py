"""``fm-protein-score`` (a Hydra app, config ``protein_score.yaml``). The console command enters
through ``fm_core.cli.protein_score``, which finds ``bio_fm.scoring.score`` by the
``fm_toolkit.apps`` entry point, so that ``--help`` and argument errors do not import torch;
``python -m bio_fm.cli`` runs the same app."""

from __future__ import annotations

from fm_core.cli import protein_score

if __name__ == "__main__":
    protein_score()
