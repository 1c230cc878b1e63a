from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

SLICE = Path(str(files("bio_fm").joinpath("data/uniprot_slice")))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Jobs run in-process set ``torch.set_num_threads`` (``threads=`` options); restore it after each
    test so that later tests (e.g. in-process vs subprocess bit-equality) see the default."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slice_dir():
    return SLICE


@pytest.fixture(scope="session")
def alphabet():
    from bio_fm.alphabet import ProteinAlphabet

    return ProteinAlphabet()


@pytest.fixture(scope="session")
def valid_records():
    """Real UniProt sequences (the embedded validation slice)."""
    from bio_fm.fasta import iter_fasta

    return list(iter_fasta(SLICE / "valid.fasta.gz"))


@pytest.fixture(scope="session")
def compose():
    """Compose the fm-pretrain config the way the CLI does, with overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def make(overrides: list[str], config_name: str = "pretrain"):
        with initialize_config_module("fm_conf", version_base="1.3"):
            return hydra_compose(config_name, overrides=overrides)

    return make
