"""LoRA adapters (fm_core.adapters, peft): exact start, merge, export, Lightning checkpoints, tasks."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch

from fm_core.adapters import (
    LoraAdapter,
    adapter_spec,
    is_adapter_weight,
    load_adapter,
    lora_layers,
    merge,
    merged_state_dict,
    trainable_parameters,
)
from fm_core.config import ConfigError
from fm_core.errors import UserError
from fm_core.model import build_model

ATTENTION = ["attn.qkv", "attn.out_proj"]


def lora(r=4, alpha=8.0, dropout=0.0, targets=ATTENTION) -> LoraAdapter:
    return LoraAdapter(r=r, alpha=alpha, dropout=dropout, target_modules=targets)


@pytest.fixture(scope="module")
def batch(valid_records):
    """Real UniProt sequences of mixed lengths, one padded batch with specials."""
    from bio_fm.alphabet import ProteinAlphabet
    from fm_core.padding import pad_batch

    alphabet = ProteinAlphabet()
    seqs = [s[:n] for (_, s), n in zip(valid_records[:4], (60, 33, 47, 12), strict=True)]
    return pad_batch([alphabet.add_special_tokens(alphabet.encode(s)) for s in seqs], alphabet.pad_id)


def outputs(net, tokens) -> dict[str, torch.Tensor]:
    net.eval()
    with torch.no_grad():
        out = net(tokens, repr_layers=range(net.config.num_layers + 1), need_weights=True)
    return {"logits": out["logits"], "attentions": out["attentions"],
            **{f"rep{k}": v for k, v in out["representations"].items()}}


def assert_same_outputs(got: dict, want: dict) -> None:
    """Merged vs unmerged: logits and attention maps within 1e-6 (the acceptance figure); hidden
    states within 1e-5 (LayerNorm outputs of magnitude ~3 differ by ~1e-6 from the reassociation)."""
    for key, value in want.items():
        atol = 1e-6 if key in ("logits", "attentions") else 1e-5
        torch.testing.assert_close(got[key], value, atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


def train_steps(net, tokens, steps=5, lr=1e-2) -> None:
    """A few AdamW steps of a masked-LM loss: moves the adapter (every trainable weight) away from 0."""
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        logits = net(tokens)["logits"]
        target = torch.randint(4, 24, tokens.shape, generator=g)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def base(alphabet):
    torch.manual_seed(0)
    return build_model("tiny", alphabet)


def test_zero_initialised_adapter_is_exactly_the_base_model(base, batch):
    expected = outputs(base, batch)
    net = lora(dropout=0.1).apply(copy.deepcopy(base))
    assert all(torch.count_nonzero(layer.lora_B["default"].weight) == 0 for layer in lora_layers(net).values())
    got = outputs(net, batch)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # only A and B train: (r x D) + (out x r) per adapted projection, hand-counted
    d, r, n = net.config.embed_dim, 4, net.config.num_layers
    assert trainable_parameters(net) == n * ((r * d + 3 * d * r) + (r * d + d * r))
    trainable = [k for k, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_weight(k) for k in trainable)
    assert sorted(lora_layers(net)) == sorted(f"encoder.layers.{i}.{t}" for i in range(n) for t in ATTENTION)


def test_mlp_targets_and_bad_settings():
    net = lora(targets=[*ATTENTION, "fc1", "fc2"]).apply(build_model("tiny", _alphabet()))
    assert len(lora_layers(net)) == 4 * net.config.num_layers
    assert adapter_spec(net) == {"kind": "lora", "r": 4, "alpha": 8.0, "dropout": 0.0,
                                 "target_modules": [*ATTENTION, "fc1", "fc2"]}
    with pytest.raises(ConfigError, match="target_modules"):
        lora(targets=["attn.q_proj"])
    with pytest.raises(UserError, match="rank"):
        lora(r=0)
    with pytest.raises(ConfigError, match="already has an adapter"):
        lora().apply(net)


def test_after_training_merged_and_unmerged_agree(base, batch):
    net = lora(dropout=0.1).apply(copy.deepcopy(base))
    train_steps(net, batch)
    # the adapter moved, the base did not
    assert all(torch.count_nonzero(layer.lora_B["default"].weight) > 0 for layer in lora_layers(net).values())
    base_state = base.state_dict()
    folded = merged_state_dict(net)
    assert set(folded) == set(base_state)
    for k, v in net.state_dict().items():
        if ".base_layer." in k:
            assert torch.equal(v, base_state[k.replace(".base_layer.", ".")])
    unmerged = outputs(net, batch)
    merged = merge(copy.deepcopy(net))
    assert not lora_layers(merged) and adapter_spec(merged) is None
    for k, v in merged.state_dict().items():  # our fold is peft's merge, to the bit
        assert torch.equal(v, folded[k]), k
    assert not torch.equal(folded["encoder.layers.0.attn.qkv.weight"], base_state["encoder.layers.0.attn.qkv.weight"])
    assert_same_outputs(outputs(merged, batch), unmerged)
    assert not torch.allclose(unmerged["logits"], outputs(base, batch)["logits"], atol=1e-4)  # training changed it


def test_export_is_merged_and_the_adapter_is_saved_alone(base, batch, tmp_path, alphabet):
    from safetensors.torch import load_file

    from fm_core.export import load_pretrained, save_pretrained

    net = lora().apply(copy.deepcopy(base))
    train_steps(net, batch)
    export = save_pretrained(tmp_path / "export", net, alphabet)
    spec = json.loads((export / "config.json").read_text())
    assert "adapter" not in spec and spec["metadata"]["merged_adapter"] == adapter_spec(net)
    plain, _ = load_pretrained(export)  # every reader gets a plain model
    assert not lora_layers(plain)
    assert_same_outputs(outputs(plain, batch), outputs(net, batch))
    # the adapter alone: A and B only, safetensors; base + adapter is the adapted model exactly
    saved = load_file(str(export / "adapter" / "adapter.safetensors"))
    assert sum(v.numel() for v in saved.values()) == trainable_parameters(net)
    assert all(is_adapter_weight(k) for k in saved)
    rebuilt = load_adapter(export / "adapter", copy.deepcopy(base))
    for key, value in outputs(net, batch).items():
        assert torch.equal(outputs(rebuilt, batch)[key], value), key


def _alphabet():
    from bio_fm.alphabet import ProteinAlphabet

    return ProteinAlphabet()


def _mlm_batches(tokens: torch.Tensor, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        labels = torch.where((torch.rand(tokens.shape, generator=g) < 0.3) & (tokens > 3), tokens, -100)
        out.append({"input_ids": torch.where(labels >= 0, _alphabet().mask_id, tokens), "labels": labels})
    return out


def _fit(net, batches, tmp_path, max_steps, ckpt_path=None):
    import lightning as L

    from fm_core.checkpoint import AtomicCheckpointIO
    from fm_core.module import MLMModule

    module = MLMModule(net, functools.partial(torch.optim.AdamW, lr=2e-2), tokenizer=_alphabet())
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        plugins=[AtomicCheckpointIO()], default_root_dir=str(tmp_path))
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return module, trainer


def test_lightning_checkpoint_round_trip_and_resume(base, batch, tmp_path, alphabet):
    """An adapted model trains, checkpoints and resumes with Lightning as any other: the resumed run
    ends exactly where the uninterrupted one does; the checkpoint reads as the merged model."""
    from fm_core.checkpoint import find_resume_checkpoint
    from fm_core.export import load_pretrained

    batches = _mlm_batches(batch, 1)  # one batch an epoch: the data order cannot differ on resume
    torch.manual_seed(5)
    straight, _ = _fit(lora().apply(copy.deepcopy(base)), batches, tmp_path / "a", max_steps=4)

    torch.manual_seed(5)
    first, trainer = _fit(lora().apply(copy.deepcopy(base)), batches, tmp_path / "b", max_steps=2)
    (tmp_path / "ckpt").mkdir()
    trainer.save_checkpoint(tmp_path / "ckpt" / "resume-step0000002.ckpt")
    ckpt = find_resume_checkpoint(tmp_path / "ckpt")  # what resume=auto picks
    assert ckpt is not None and ckpt.name == "resume-step0000002.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    assert raw["fm_toolkit"]["adapter"] == adapter_spec(first.net)
    assert any(is_adapter_weight(k) for k in raw["state_dict"])

    torch.manual_seed(99)  # another A initialisation: the checkpoint must restore the adapter
    resumed, _ = _fit(lora().apply(copy.deepcopy(base)), batches, tmp_path / "c", max_steps=4, ckpt_path=ckpt)
    assert resumed.trainer.global_step == 4
    for k, v in straight.net.state_dict().items():
        assert torch.equal(resumed.net.state_dict()[k], v), k

    plain, _ = load_pretrained(ckpt)  # fm-embed / init_from on the checkpoint: the merged model
    assert not lora_layers(plain)
    assert_same_outputs(outputs(plain, batch), outputs(first.net, batch))


def test_finetune_run_applies_the_configured_adapter(compose, alphabet):
    from fm_core.finetune import FinetuneRun

    cfg = compose(["task=contacts", "model=tiny"], config_name="finetune")
    assert cfg.model.adapter is None
    run = FinetuneRun(cfg=cfg, run_dir=None)
    assert not lora_layers(run.backbone(alphabet))

    cfg = compose(["task=contacts", "model=tiny", "adapter=lora", "model.adapter.r=2"], config_name="finetune")
    run = FinetuneRun(cfg=cfg, run_dir=None)
    net = run.backbone(alphabet, max_length=128)
    assert net.config.max_length == 128
    assert adapter_spec(net) == {"kind": "lora", "r": 2, "alpha": 16.0, "dropout": 0.05, "target_modules": ATTENTION}
    rand = run.random_backbone(net, alphabet)  # the random-init twin gets the same recipe
    assert adapter_spec(rand) == adapter_spec(net)
    assert trainable_parameters(rand) == trainable_parameters(net) == 2 * (2 * 64 + 3 * 64 * 2 + 2 * 64 + 64 * 2)

    cfg = compose(["task=code_completion", "model=tiny", "adapter=lora_mlp"], config_name="finetune")
    net = FinetuneRun(cfg=cfg, run_dir=None).backbone(alphabet, causal=True)
    assert adapter_spec(net)["target_modules"] == [*ATTENTION, "fc1", "fc2"] and net.config.causal


def test_contact_module_trains_only_the_adapter(alphabet):
    from tasks.structure.heads import ContactDataset, ContactModule, PairHead

    rng = np.random.default_rng(1)
    pairs = rng.random((40, 40)) < 0.1
    item = (alphabet.add_special_tokens(rng.integers(4, 24, size=40)), pairs | pairs.T)
    batch = ContactDataset([item], crop=40, pad_id=alphabet.pad_id, min_separation=6, seed=0).collate([item])
    for finetune_backbone in (False, True):
        torch.manual_seed(0)
        net = lora().apply(build_model("tiny", alphabet))
        before = {k: v.clone() for k, v in net.state_dict().items()}
        module = ContactModule(net, PairHead(net.config.embed_dim, proj=8, channels=8, dilations=[1]),
                               finetune_backbone=finetune_backbone, min_separation=6, lr=1e-2, backbone_lr=1e-2,
                               weight_decay=0.0, name="contact_head")
        opt = module.configure_optimizers()
        for _ in range(2):  # B moves on the first step, A on the second
            opt.zero_grad()
            module.training_step(batch, 0).backward()
            opt.step()
        changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
        if finetune_backbone:
            assert changed == {k for k in before if is_adapter_weight(k)}
        else:
            assert changed == set()


def test_secondary_structure_backbone_module_trains_only_adapter_and_head(alphabet, valid_records):
    from tasks.structure.heads import BackboneResidueModule, TokenResidueDataset, WindowHead, residue_features

    torch.manual_seed(0)
    net = lora().apply(build_model("tiny", alphabet))
    seqs = [s[:n] for (_, s), n in zip(valid_records[:3], (30, 18, 25), strict=True)]
    tokens = [alphabet.add_special_tokens(alphabet.encode(s)) for s in seqs]
    labels = [(np.arange(len(s)) % 3, np.arange(len(s)) % 8) for s in seqs]
    ds = TokenResidueDataset(tokens, labels, alphabet.pad_id)
    batch = ds.collate([ds[i] for i in range(3)])
    assert batch["tokens"].shape == (3, 32) and batch["mask"].sum() == 73 and int(batch["ys"][0][1, 18]) == -1
    # batched features of the padded batch = one chain alone (tasks.structure.data.backbone_features)
    from tasks.structure.data import backbone_features

    feats = residue_features(net.eval(), batch["tokens"], [0, 2])
    alone = backbone_features(net, alphabet, _Chain(tokens[1][1:-1]), layers=[0, 2])["embeddings"]
    np.testing.assert_allclose(feats[1, :18].detach().numpy(), alone, atol=1e-5)

    head = WindowHead(2 * net.config.embed_dim, out_dims=(3, 8), window=3, hidden=8, dropout=0.0)
    module = BackboneResidueModule(net, head, layers=[0, 2], name="ss", lr=1e-2, backbone_lr=1e-2, weight_decay=0.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    opt = module.configure_optimizers()
    for _ in range(2):
        opt.zero_grad()
        module.training_step(batch, 0).backward()
        opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if is_adapter_weight(k)}
    assert not torch.equal(head.state_dict()["net.0.weight"], head_before["net.0.weight"])


class _Chain:
    def __init__(self, tokens):
        self.tokens = tokens


def test_hugging_face_export_of_an_adapted_model_is_merged(base, batch, tmp_path, alphabet):
    """``save_hf_esm`` folds the adapter in: transformers' EsmForMaskedLM computes the adapted model."""
    from transformers import EsmForMaskedLM

    from bio_fm.hf_esm import save_hf_esm

    net = lora().apply(copy.deepcopy(base))
    train_steps(net, batch)
    save_hf_esm(net, alphabet, tmp_path / "hf", card={})
    hf = EsmForMaskedLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    real = batch.ne(alphabet.pad_id)
    with torch.no_grad():
        theirs = hf(input_ids=batch, attention_mask=real.long()).logits
    ours = outputs(net, batch)["logits"]
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=0)
    assert lora_layers(net)  # the adapted model itself is left as it was


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    from data_prep.structures import prepare_slice

    out = tmp_path_factory.mktemp("structures")
    prepare_slice(out, cluster_steps=1, test_fraction=0.3, valid_fraction=0.05)
    return out


@pytest.mark.slow  # a whole fm-finetune run (~40 s of CPU)
def test_secondary_structure_task_with_lora(compose, structures, tmp_path):
    """fm-finetune task=secondary_structure adapter=lora task.train.finetune_backbone=true: the heads
    train with the backbone's adapter; the export is the merged backbone, its adapter beside it."""
    from fm_core.export import load_pretrained
    from fm_core.finetune import finetune
    from tasks.structure.predict import predict

    corpus = tmp_path / "corpus.fa"
    corpus.write_text(">p0\nMKTAYIAKQRQISFVKSHFSRQ\n")
    cfg = compose(["task=secondary_structure", "logger=csv", f"paths.run_dir={tmp_path / 'run'}",
                   f"task.data_dir={structures}", "model=tiny", "model.max_length=256", "task.max_test_chains=6",
                   "trainer.enable_progress_bar=false", "task.train.max_steps=4", "task.train.batch_size=4",
                   "task.max_train_chains=8", f"task.pretrain_corpus={corpus}", "~task.heads.conv",
                   "task.window_mlp.hidden=8", "task.repr_layers=[-1]", "task.train.finetune_backbone=true",
                   "adapter=lora", "model.adapter.r=2"], config_name="finetune")
    m = finetune(cfg)
    assert 0.0 <= m["test/linear/Q3"] <= 1.0 and "test/random_init_linear/Q3" in m
    export = tmp_path / "run" / "export"
    spec = json.loads((export / "config.json").read_text())
    assert spec["metadata"]["merged_adapter"]["r"] == 2
    assert (export / "adapter" / "adapter.safetensors").is_file()
    net, _ = load_pretrained(export)
    assert not lora_layers(net)
    # the merged backbone differs from a fresh tiny model's weights only through training: the adapter moved
    adapter = load_adapter(export / "adapter", build_model("tiny", _alphabet()))
    assert any(torch.count_nonzero(v) > 0 for k, v in adapter.state_dict().items() if ".lora_B." in k)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">q\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n")
    summary = predict(str(export), str(fasta), str(tmp_path / "pred"), png=False)
    assert summary["predicted"] == 1


def test_causal_lm_module_optimises_only_the_adapter(alphabet):
    """Code completion trains the whole causal model: with an adapter, only A and B."""
    from fm_core.module import CausalLMModule

    net = lora(targets=[*ATTENTION, "fc1", "fc2"]).apply(build_model("tiny", alphabet, causal=True))
    opt = CausalLMModule(net, functools.partial(torch.optim.AdamW, lr=1e-3)).configure_optimizers()
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert optimised == {id(p) for k, p in net.named_parameters() if is_adapter_weight(k)}
