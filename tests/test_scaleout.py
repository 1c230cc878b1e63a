"""Scale-out configs chosen by Hydra: strategies, the SLURM launcher, a run directory shared by ranks."""

import torch
from hydra.utils import instantiate

from fm_core.model import TransformerLayer
from fm_core.module import param_groups
from fm_core.resolvers import run_id


def test_fsdp_wraps_each_transformer_layer(compose):
    cfg = compose(["trainer=fsdp"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = instantiate(cfg.trainer.strategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {TransformerLayer}
    assert strategy.kwargs["use_orig_params"] is True  # param_groups sees the real parameters
    assert strategy._state_dict_type == "full"  # checkpoints load without FSDP


def test_slurm_launcher_follows_trainer_shape():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("fm_conf", version_base="1.3"):
        cfg = hydra_compose("pretrain", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                                   "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


def test_run_id_is_shared_by_ranks_of_one_launch(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # plain torchrun without --rdzv-id: no shared id
    assert run_id()[:2] == "20"  # local time
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "3f2a")
    assert run_id() == "torchrun-3f2a"
    monkeypatch.setenv("SLURM_JOB_ID", "81234")
    assert run_id() == "slurm-81234"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert run_id() == "slurm-81234_7"


def test_weight_decay_groups_by_module_type_not_shape():
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(net)
    assert [tuple(p.shape) for p in decay["params"]] == [(10, 4), (4, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(4,), (4,), (4,)]
    with torch.no_grad():  # a flattened (FSDP-like) weight is still a weight
        net[1].weight = torch.nn.Parameter(net[1].weight.flatten())
    assert [tuple(p.shape) for p in param_groups(net)[0]["params"]] == [(10, 4), (16,)]
