from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fm_core.config import SIZES, EncoderConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
          for g in ("model", "data", "module", "trainer", "logger", "callbacks", "paths", "experiment", "debug")}


def options():
    for group, names in GROUPS.items():
        for name in names:
            yield group, name


def test_every_group_has_options():
    assert GROUPS["model"] == sorted(["tiny", "mini", "esm2_8m", "esm2_35m", "esm2_150m", "esm2_650m",
                                      "from_checkpoint"])
    assert {"cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"wandb", "csv"} <= set(GROUPS["logger"])
    assert {"protein_quick", "protein_esm2_8m"} <= set(GROUPS["experiment"])


@pytest.mark.parametrize("group,name", list(options()))
def test_every_config_composes_and_resolves(compose, tmp_path, group, name):
    extra = ["data.train.path=x.fa", "data.val.path=y.fa"] if (group, name) == ("data", "fasta") else []
    cfg = compose([f"{group}={name}", f"paths.run_dir={tmp_path}", *extra])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.model.size in SIZES or (name == "from_checkpoint" and cfg.model.size is None)
    assert cfg.data.max_length == cfg.model.max_length  # one source of truth
    assert cfg.module.scheduler.total_steps == cfg.trainer.max_steps


def test_model_configs_match_registry(compose, tmp_path, alphabet):
    for name in (n for n in GROUPS["model"] if n in SIZES):
        cfg = compose([f"model={name}", f"paths.run_dir={tmp_path}"])
        shape = EncoderConfig.from_name(cfg.model.size, vocab_size=33)
        assert shape.num_layers == SIZES[name]["num_layers"]
    net = instantiate(compose([f"paths.run_dir={tmp_path}"]).model, tokenizer=alphabet)
    assert net.config.vocab_size == alphabet.vocab_size == 33  # taken from the tokenizer


def test_esm2_shapes():
    expected = {"esm2_8m": (6, 320, 20), "esm2_35m": (12, 480, 20), "esm2_150m": (30, 640, 20),
                "esm2_650m": (33, 1280, 20)}
    for name, (layers, dim, heads) in expected.items():
        s = SIZES[name]
        assert (s["num_layers"], s["embed_dim"], s["num_heads"]) == (layers, dim, heads)
    # fair-esm's ESM2 at the 650M shape has 651,043,254 parameters, 661 of them in its contact head
    assert EncoderConfig.from_name("esm2_650m", vocab_size=33).num_parameters() == 651_043_254


def test_wandb_is_offline_by_default(compose, tmp_path):
    cfg = compose([f"paths.run_dir={tmp_path}"])
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.wandb.save_dir == str(tmp_path)
