"""fm-finetune's shared runner: task chosen by _target_, backbone from init_from, metrics.json."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.config_store import ConfigStore

from fm_core.export import save_pretrained
from fm_core.finetune import FinetuneRun, finetune
from fm_core.model import build_model


class WeightProbe:
    """A task that reports sums of the backbone's weights and of a same-shape random one."""

    def __init__(self, size: str, scale: float):
        self.size, self.scale = size, scale

    def run(self, run: FinetuneRun) -> dict:
        from bio_fm.alphabet import ProteinAlphabet

        alphabet = ProteinAlphabet()
        net = run.backbone(alphabet, self.size)
        rand = run.random_backbone(net, alphabet)
        return {"probe/weight_sum": self.scale * float(sum(p.detach().double().sum() for p in net.parameters())),
                "probe/random_weight_sum": float(sum(p.detach().double().sum() for p in rand.parameters())),
                "probe/num_parameters": sum(p.numel() for p in net.parameters())}


ConfigStore.instance().store(group="task", name="weight_probe",
                             node={"name": "weight_probe", "_target_": f"{__name__}.WeightProbe",
                                   "size": "tiny", "scale": 2.0})


@pytest.fixture
def export(tmp_path, alphabet):
    torch.manual_seed(123)
    net = build_model("tiny", alphabet)
    save_pretrained(tmp_path / "export", net, alphabet)
    return tmp_path / "export", float(sum(p.detach().double().sum() for p in net.parameters()))


def test_finetune_loads_backbone_and_writes_metrics(compose, export, tmp_path):
    path, weight_sum = export
    cfg = compose(["task=weight_probe", f"init_from={path}", "logger=csv", f"paths.run_dir={tmp_path / 'run'}"],
                  config_name="finetune")
    metrics = finetune(cfg)
    assert metrics["probe/weight_sum"] == pytest.approx(2.0 * weight_sum, rel=1e-12)  # task params reach the task
    assert metrics["probe/random_weight_sum"] != pytest.approx(weight_sum)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["probe/weight_sum"] == metrics["probe/weight_sum"]
    assert on_disk["task"] == "weight_probe" and on_disk["init_from"] == str(path)


def test_random_init_baseline_is_seeded(compose, tmp_path):
    runs = [finetune(compose(["task=weight_probe", "logger=csv", f"seed={seed}", f"paths.run_dir={tmp_path / str(i)}"],
                             config_name="finetune")) for i, seed in enumerate((0, 0, 1))]
    assert runs[0]["init_from"] == "random"
    assert runs[0]["probe/random_weight_sum"] == runs[1]["probe/random_weight_sum"] != runs[2]["probe/random_weight_sum"]
    assert runs[0]["probe/num_parameters"] == sum(p.numel() for p in build_model("tiny", _alphabet()).parameters())


def _alphabet():
    from bio_fm.alphabet import ProteinAlphabet

    return ProteinAlphabet()


def test_missing_task_is_a_clear_error(compose):
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises((MissingMandatoryValue, ConfigCompositionException)):
        cfg = compose([], config_name="finetune")
        finetune(cfg)
