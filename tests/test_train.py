"""End to end: fm-pretrain's train(cfg), composed through Hydra on the tiny config and real sequences."""

import json

import pytest
import torch

from fm_core.export import load_pretrained
from fm_core.train import train

# tiny model, real UniProt slice, about a minute on 2 CPU cores
QUICK = ["model=tiny", "trainer.max_steps=300", "trainer.val_check_interval=150", "data.max_tokens=4096",
         "module.optimizer.lr=2e-3", "module.scheduler.warmup_steps=30", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from hydra import compose, initialize_config_module

    run_dir = tmp_path_factory.mktemp("pretrain")
    with initialize_config_module("fm_conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=[*QUICK, f"paths.run_dir={run_dir}"])
    return run_dir, cfg, train(cfg)


def test_validation_perplexity_beats_unigram(quick_run):
    run_dir, _, metrics = quick_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["val/perplexity"] == pytest.approx(metrics["val/perplexity"])
    uni = on_disk["val/unigram_perplexity"]
    assert 17.0 < uni < 19.5  # residue frequencies: about 18 on UniProt (20 would be uniform)
    assert on_disk["val/perplexity"] < 0.97 * uni
    assert on_disk["train/steps"] == 300
    assert on_disk["data/train_kept"] == on_disk["data/train_read"] == 12000
    assert on_disk["data/train_padding_fraction"] < 0.05
    assert all("/" in k or k == "export_dir" for k in on_disk)  # flat, namespaced keys


def test_outputs_of_a_run(quick_run):
    run_dir, _, metrics = quick_run
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, "W&B must log offline inside the run directory"


def test_export_reloads_to_same_validation_loss(quick_run, alphabet, valid_records):
    run_dir, cfg, metrics = quick_run
    net, tok = load_pretrained(run_dir / "export")
    assert net.config.name == "tiny" and tok.vocab_size == 33
    # the exported weights reproduce the Lightning checkpoint's logits exactly
    from_ckpt, _ = load_pretrained(run_dir / "checkpoints" / "last.ckpt")
    rows = [torch.from_numpy(tok.add_special_tokens(tok.encode(s[:100]))) for _, s in valid_records[:4]]
    x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_id)
    with torch.no_grad():
        assert torch.equal(net(x)["logits"], from_ckpt(x)["logits"])


def test_csv_logger_short_run(compose, tmp_path):
    cfg = compose(["logger=csv", "trainer.max_steps=20", "trainer.val_check_interval=10",
                   "trainer.enable_progress_bar=false", f"paths.run_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["train/steps"] == 20
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "wandb").exists()


def test_init_from_continues_pre_training(quick_run, tmp_path):
    """model.init_from starts from the trained weights: 10 more steps stay at the trained model's
    perplexity (far below the unigram baseline), which 10 steps from scratch never reach."""
    from hydra import compose, initialize_config_module

    run_dir, _, metrics = quick_run
    with initialize_config_module("fm_conf", version_base="1.3"):
        cfg = compose("pretrain", overrides=[*QUICK, "model=from_checkpoint", f"model.init_from={run_dir / 'export'}",
                                             "model.max_length=256", "trainer.max_steps=10",
                                             "trainer.val_check_interval=10", "logger=csv", f"paths.run_dir={tmp_path}"])
    continued = train(cfg)
    assert continued["model/size"] == "tiny"
    assert continued["val/perplexity"] < 1.02 * metrics["val/perplexity"] < 0.97 * continued["val/unigram_perplexity"]
