"""fm-finetune's shared runner: task chosen by _target_, backbone from the model group, metrics.json."""

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

    def __init__(self, scale: float):
        self.scale = scale

    def run(self, run: FinetuneRun) -> dict:
        from bio_fm.alphabet import ProteinAlphabet

        alphabet = ProteinAlphabet()
        net = run.backbone(alphabet)
        rand = run.random_backbone(net, alphabet)
        return {"probe/weight_sum": self.scale * float(sum(p.detach().double().sum() for p in net.parameters())),
                "probe/random_weight_sum": float(sum(p.detach().double().sum() for p in rand.parameters())),
                "probe/num_parameters": sum(p.numel() for p in net.parameters())}


ConfigStore.instance().store(group="task", name="weight_probe",
                             node={"name": "weight_probe", "_target_": f"{__name__}.WeightProbe",
                                   "scale": 2.0})


@pytest.fixture
def export(tmp_path, alphabet):
    torch.manual_seed(123)
    net = build_model("tiny", alphabet)
    save_pretrained(tmp_path / "export", net, alphabet)
    return tmp_path / "export", float(sum(p.detach().double().sum() for p in net.parameters()))


def test_finetune_loads_backbone_and_writes_metrics(compose, export, tmp_path):
    path, weight_sum = export
    cfg = compose(["task=weight_probe", f"model.init_from={path}", "logger=csv", f"paths.run_dir={tmp_path / 'run'}"],
                  config_name="finetune")
    metrics = finetune(cfg)
    assert metrics["probe/weight_sum"] == pytest.approx(2.0 * weight_sum, rel=1e-12)  # task params reach the task
    assert metrics["probe/random_weight_sum"] != pytest.approx(weight_sum)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["probe/weight_sum"] == metrics["probe/weight_sum"]
    assert on_disk["task"] == "weight_probe" and on_disk["init_from"] == str(path)


def test_random_init_baseline_is_seeded(compose, tmp_path):
    runs = [finetune(compose(["task=weight_probe", "model=tiny", "logger=csv", f"seed={seed}", f"paths.run_dir={tmp_path / str(i)}"],
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


TASKS = ("contacts", "secondary_structure", "code_completion", "drug_property", "go_transfer")


@pytest.mark.parametrize("task", TASKS)
def test_finetune_with_a_random_init_size_composes_for_every_task(compose, task):
    """``fm-finetune model=tiny task=...``: the backbone is the model group, as in fm-pretrain."""
    cfg = compose(["model=tiny", f"task={task}"], config_name="finetune")
    assert cfg.model.size == "tiny" and cfg.model.init_from is None
    assert "init_from" not in cfg and "size" not in cfg.task  # model.init_from is the one name
    assert FinetuneRun(cfg=cfg, run_dir=None).init_from is None


def test_finetune_defaults_to_a_checkpoint_backbone(compose, export):
    path, weight_sum = export
    cfg = compose(["task=contacts", f"model.init_from={path}"], config_name="finetune")
    run = FinetuneRun(cfg=cfg, run_dir=None)
    assert cfg.model.size is None and run.init_from == str(path)
    net = run.backbone(_alphabet(), max_length=128)  # a task's override changes the config, built once
    assert net.config.max_length == 128 and net.config.extra["init_from"] == str(path)
    assert float(sum(p.detach().double().sum() for p in net.parameters())) == pytest.approx(weight_sum, rel=1e-12)
    with pytest.raises(ValueError, match="model.init_from"):
        FinetuneRun(cfg=compose(["task=contacts"], config_name="finetune"), run_dir=None).backbone(_alphabet())


def test_random_init_mini_has_the_same_context_in_pretraining_and_finetuning(compose, tmp_path):
    """A size means one model: its context length is the registry's in every app."""
    from hydra.utils import instantiate

    from fm_core.config import SIZES
    from fm_core.train import build_pieces

    alphabet = _alphabet()
    _, pre_net, datamodule = build_pieces(compose(["model=mini", f"paths.run_dir={tmp_path}"]))
    ft = FinetuneRun(cfg=compose(["model=mini", "task=contacts"], config_name="finetune"), run_dir=tmp_path)
    ft_net = ft.backbone(alphabet)
    assert pre_net.config.max_length == ft_net.config.max_length == datamodule.max_length == SIZES["mini"]["max_length"]
    assert pre_net.config.token_dropout and ft_net.config.token_dropout  # the protein convention, from the alphabet
    assert instantiate(compose(["model=mini", "model.max_length=128", f"paths.run_dir={tmp_path}"]).model,
                       tokenizer=alphabet).config.max_length == 128


BAD_VALUES = [
    ("code_completion", ["task.steps=0"], "task.steps=0"),
    ("code_completion", ["task.retrieval=true", "task.gate_prompts=0"], "task.gate_prompts=0"),
    ("secondary_structure", ["task.train.batch_size=-1"], "task.train.batch_size=-1"),
    ("contacts", ["task.supervised.max_steps=0"], "task.supervised.max_steps=0"),
]


@pytest.mark.parametrize(("task", "bad", "named"), BAD_VALUES, ids=[b[2] for b in BAD_VALUES])
def test_a_bad_task_value_is_refused_before_a_model_or_logger_is_built(compose, tmp_path, task, bad, named, capsys):
    from fm_core.errors import run_cli

    run_dir = tmp_path / "run"
    cfg = compose(["model=tiny", f"task={task}", *bad, "logger=csv", f"paths.run_dir={run_dir}"], config_name="finetune")
    with pytest.raises(SystemExit) as done:
        run_cli("fm-finetune", lambda: finetune(cfg))
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(f"fm-finetune: error: {named}: must be greater than 0"), err
    assert not run_dir.exists() or not [p for p in run_dir.iterdir() if p.name != ".lock"]  # no logger output
