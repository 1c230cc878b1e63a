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
                                      "from_checkpoint", "none"])
    assert {"cpu", "gpu", "ddp"} <= set(GROUPS["trainer"])
    assert {"wandb", "csv"} <= set(GROUPS["logger"])
    assert {"protein_quick", "protein_esm2_8m"} <= set(GROUPS["experiment"])


@pytest.mark.parametrize("group,name", list(options()))
def test_every_config_composes_and_resolves(compose, tmp_path, group, name):
    extra = ["data.train.path=x.fa", "data.val.path=y.fa"] if (group, name) == ("data", "fasta") else []
    cfg = compose([f"{group}={name}", f"paths.run_dir={tmp_path}", *extra])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.model.size in SIZES or (name in ("from_checkpoint", "none") and cfg.model.size is None)
    assert "max_length" not in cfg.data  # one source of truth: train() passes the model's
    assert cfg.module.scheduler.total_steps == cfg.trainer.max_steps


def test_model_configs_match_registry(compose, tmp_path, alphabet):
    for name in (n for n in GROUPS["model"] if n in SIZES):
        cfg = compose([f"model={name}", f"paths.run_dir={tmp_path}"])
        shape = EncoderConfig.from_name(cfg.model.size, vocab_size=33, pad_id=1, mask_id=32,
                                        max_length=cfg.model.max_length)
        assert shape.num_layers == SIZES[name]["num_layers"]
        assert cfg.model.max_length is None and shape.max_length == SIZES[name]["max_length"]
    net = instantiate(compose([f"paths.run_dir={tmp_path}"]).model, tokenizer=alphabet)
    assert net.config.vocab_size == alphabet.vocab_size == 33  # taken from the tokenizer


def test_esm2_shapes():
    expected = {"esm2_8m": (6, 320, 20), "esm2_35m": (12, 480, 20), "esm2_150m": (30, 640, 20),
                "esm2_650m": (33, 1280, 20)}
    for name, (layers, dim, heads) in expected.items():
        s = SIZES[name]
        assert (s["num_layers"], s["embed_dim"], s["num_heads"]) == (layers, dim, heads)
    # fair-esm's ESM2 at the 650M shape has 651,043,254 parameters, 661 of them in its contact head
    contact = 33 * 20 + 1  # counted with the head, not the backbone (bio_fm.contact.ContactHead)
    assert EncoderConfig.from_name("esm2_650m", vocab_size=33, pad_id=1, mask_id=32).num_parameters() + contact == 651_043_254


def test_wandb_is_offline_by_default(compose, tmp_path):
    cfg = compose([f"paths.run_dir={tmp_path}"])
    assert cfg.logger.wandb.offline is True
    assert cfg.logger.wandb.save_dir == str(tmp_path)


def test_context_length_lives_with_the_size():
    assert {n: s["max_length"] for n, s in SIZES.items() if n in ("tiny", "mini", "esm2_8m", "esm2_650m")} == {
        "tiny": 256, "mini": 512, "esm2_8m": 1024, "esm2_650m": 1024}
    assert EncoderConfig.from_name("mini").max_length == 512
    assert EncoderConfig.from_name("mini", max_length=128).max_length == 128


def test_encoder_conventions_come_from_the_tokenizer(alphabet):
    """fm_core's defaults are not ESM's: ids from the tokenizer, token dropout from the domain."""
    from fm_core.config import ConfigError
    from fm_core.model import build_model

    with pytest.raises(ConfigError, match="pad_id is unset"):
        EncoderConfig.from_name("tiny", vocab_size=33)
    with pytest.raises(ConfigError, match="mask_id=40 outside"):
        EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=40)
    plain = EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32)
    assert plain.token_dropout is False
    net = build_model("tiny", alphabet)
    assert (net.config.pad_id, net.config.mask_id, net.config.token_dropout) == (alphabet.pad_id, alphabet.mask_id, True)
    assert build_model("tiny", alphabet, token_dropout=False).config.token_dropout is False  # explicit wins


@pytest.mark.parametrize("mask_prob", [0.15, 0.3])
def test_token_dropout_ratio_follows_the_masking_config(compose, tmp_path, mask_prob):
    """data.masking.mask_prob reaches the model's token-dropout rescaling (mask_ratio_train)."""
    from fm_core.train import build_pieces

    cfg = compose([f"data.masking.mask_prob={mask_prob}", f"paths.run_dir={tmp_path}"])
    _, net, datamodule = build_pieces(cfg)
    assert net.config.token_dropout
    assert net.config.mask_ratio_train == pytest.approx(mask_prob * cfg.data.masking.mask_token_prob, rel=1e-12)
    assert datamodule.masking.expected_mask_fraction == net.config.mask_ratio_train
    assert datamodule.max_length == net.config.max_length
    if mask_prob == 0.15:  # the ESM-2 recipe: the same float as before
        assert net.config.mask_ratio_train == 0.15 * 0.8


def test_span_masking_ratio_reaches_the_model(compose, tmp_path):
    from fm_core.masking import SpanMasking
    from fm_core.train import build_pieces

    cfg = compose(["model=mini", "model.max_length=128", "data.masking._target_=fm_core.masking.SpanMasking",
                   "data.masking.mask_prob=0.2", "+data.masking.mean_span=3.0", "+data.masking.max_span=10",
                   "+data.masking.whole_words=false", f"paths.run_dir={tmp_path}"])
    _, net, datamodule = build_pieces(cfg)
    assert isinstance(datamodule.masking, SpanMasking)
    assert net.config.mask_ratio_train == pytest.approx(0.2 * 0.8)
    assert net.config.max_length == datamodule.max_length == 128  # the override of mini's 512
