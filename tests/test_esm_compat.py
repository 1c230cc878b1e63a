"""fair-esm ESM-2 import/export: parity with fair-esm on real sequences, exact round trips,
safe loading of files in the released layout, clear errors on foreign or damaged files."""

import argparse
import collections

import esm
import pytest
import torch
from esm_fixtures import mixed_batch, padded_batch, random_esm2, write_released_layout
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bio_fm.contact import attach_contact_head, forward_with_contacts
from bio_fm.esm_compat import (
    check_exportable,
    from_esm2_module,
    load_esm2_checkpoint,
    regression_path,
    save_esm2_checkpoint,
    to_esm2_module,
)
from fm_core.checkpoint import CheckpointError
from fm_core.config import EncoderConfig
from fm_core.export import load_pretrained, save_pretrained
from fm_core.finetune import FinetuneRun
from fm_core.model import MaskedLM


def assert_within(ours, theirs, tol=1e-5):
    """Max |difference| <= tol x the tensor's scale (max |value|, at least 1). fp32 rounding grows
    with the magnitude of what is summed, not of each output element, so an elementwise relative
    tolerance would fail on small logits next to large ones for rounding alone."""
    scale = max(1.0, float(theirs.abs().max()))
    diff = float((ours - theirs).abs().max())
    assert diff <= tol * scale, f"max |diff| {diff:.3g} > {tol:g} x scale {scale:.3g}"


def assert_parity(ref, net, batch, contacts=True):
    layers = list(range(ref.num_layers + 1))
    with torch.no_grad():
        theirs = ref(batch, repr_layers=layers, return_contacts=contacts)
        # SDPA path unless contacts
        ours = forward_with_contacts(net, batch, repr_layers=layers) if contacts else net(batch, repr_layers=layers)
    assert_within(ours["logits"], theirs["logits"])
    for layer in layers:
        assert_within(ours["representations"][layer], theirs["representations"][layer])
    assert theirs["logits"].std() > 0.1  # far from uniform: the comparison means something
    if contacts:
        assert_within(ours["attentions"], theirs["attentions"])
        assert_within(ours["contacts"], theirs["contacts"])
        assert theirs["contacts"].std() > 1e-3


def check_import_parity(size, tmp_path, alphabet, records, n, max_len):
    ref = random_esm2(size, seed=3)
    path = write_released_layout(ref, tmp_path / f"esm2_{size}_test.pt")
    net, tok = load_pretrained(path)  # the generic loader recognises the fair-esm file
    assert tok.to_dict() == alphabet.to_dict() and net.config.max_length == 1024
    batch = mixed_batch(alphabet, records, n=n, max_len=max_len)
    assert (batch == alphabet.pad_id).any() and (batch == alphabet.mask_id).any()
    assert_parity(ref, net, batch)
    return ref, net


def test_import_parity_tiny(tmp_path, alphabet, valid_records):
    ref, net = check_import_parity("tiny", tmp_path, alphabet, valid_records, n=8, max_len=300)
    assert net.config.name == "tiny" and net.config.extra["contact_regression"] is True
    # the in-memory module imports to the very same weights as the file
    same = from_esm2_module(ref)
    for key, value in net.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key


@pytest.mark.slow
def test_import_parity_esm2_8m(tmp_path, alphabet, valid_records):
    ref, net = check_import_parity("esm2_8m", tmp_path, alphabet, valid_records, n=10, max_len=320)
    contact = sum(p.numel() for p in net.heads.parameters())  # fair-esm counts its contact regression
    assert net.config.name == "esm2_8m"
    assert net.config.num_parameters() + contact == sum(p.numel() for p in ref.parameters())
    # the full context (1022 residues) without attention maps (they would need gigabytes)
    longest = sorted(valid_records, key=lambda r: -len(r[1]))[:3]
    batch = padded_batch(alphabet, [longest[0][1][:1022], longest[1][1][:700], longest[2][1][:90]])
    assert batch.shape[1] == 1024
    assert_parity(ref, net, batch, contacts=False)


def test_released_layout_needs_allow_list_which_is_exactly_namespace(tmp_path, alphabet, valid_records):
    path = write_released_layout(random_esm2("tiny"), tmp_path / "esm2_t2_test.pt")
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(path)  # what users of torch >= 2.6 see
    with torch.serialization.safe_globals([argparse.Namespace]):  # fair-esm needs the same allowance
        ref, esm_alphabet = esm.pretrained.load_model_and_alphabet_local(path)
    net, _ = load_esm2_checkpoint(path)
    # fair-esm's own batch converter tokenizes exactly as our alphabet does
    _, _, ids = esm_alphabet.get_batch_converter()([(n, s[:150]) for n, s in valid_records[:4]])
    assert torch.equal(ids, padded_batch(alphabet, [s[:150] for _, s in valid_records[:4]]))
    with torch.no_grad():
        assert_within(net(ids)["logits"], ref(ids)["logits"])


def random_ours(seed=1):
    torch.manual_seed(seed)
    net = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32, max_length=512))
    attach_contact_head(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        net.heads["contact"].regression.weight.normal_(0.0, 30.0)
    return net.eval()


def test_round_trip_ours_fair_esm_ours_is_exact(tmp_path, alphabet, valid_records):
    net = random_ours()
    path, reg = save_esm2_checkpoint(net, tmp_path / "esm2_t2_mine.pt", alphabet)
    assert reg == regression_path(path) and reg.is_file()
    # fair-esm's own loader, plain torch.load (weights_only=True by default): no allow-list needed
    ref, _ = esm.pretrained.load_model_and_alphabet_local(path)
    batch = mixed_batch(alphabet, valid_records, n=6, max_len=200)
    assert_parity(ref, net, batch)
    in_memory = to_esm2_module(net).state_dict()  # the same, without a file
    assert all(torch.equal(in_memory[k], v) for k, v in ref.state_dict().items())
    for again in (from_esm2_module(ref), load_pretrained(path)[0]):
        assert again.state_dict().keys() == net.state_dict().keys()
        for key, value in net.state_dict().items():
            assert torch.equal(again.state_dict()[key], value), key
    assert load_pretrained(path)[0].config == net.config  # our config travels in the file too
    # and back into one of our exports, still exact
    save_pretrained(tmp_path / "export", load_pretrained(path)[0], alphabet)
    final, _ = load_pretrained(tmp_path / "export")
    with torch.no_grad():
        assert torch.equal(final(batch)["logits"], net(batch)["logits"])


def test_export_refuses_what_esm2_cannot_express(tmp_path, alphabet):
    net = random_ours()
    with pytest.raises(ValueError, match="must start with 'esm2'"):
        save_esm2_checkpoint(net, tmp_path / "mine.pt")
    odd = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32, ffn_dim=100))
    with pytest.raises(ValueError, match="ffn_dim=100"):
        save_esm2_checkpoint(odd, tmp_path / "esm2_odd.pt")
    with pytest.raises(ValueError, match="vocab_size=40"):
        check_exportable(EncoderConfig.from_name("tiny", vocab_size=40, pad_id=1, mask_id=32))


def test_damaged_and_foreign_files_are_named(tmp_path):
    ref = random_esm2("tiny")
    good = write_released_layout(ref, tmp_path / "esm2_good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "esm2_cut.pt"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"esm2_cut\.pt: truncated or corrupt"):
        load_pretrained(truncated)

    # ESM-1b files carry `args` (arch roberta_large) and no cfg
    esm1b = tmp_path / "esm1b_t33_650M_UR50S.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.save({"args": argparse.Namespace(arch="roberta_large"), "model": {"x": torch.zeros(1)}}, esm1b)
    with pytest.raises(CheckpointError, match="'roberta_large'.*not ESM-2"):
        load_pretrained(esm1b)

    # a class outside the allow-list is never unpickled
    Point = collections.namedtuple("Point", "x y")  # noqa: PYI024
    globals()["Point"] = Point
    Point.__module__ = __name__
    evil = tmp_path / "esm2_evil.pt"
    torch.save({"cfg": {"model": Point(1, 2)}, "model": {}}, evil)
    with pytest.raises(CheckpointError, match="refuses to unpickle.*Point"):
        load_pretrained(evil)

    # the head count declared in cfg disagrees with the weights (rotary frequencies tell)
    lying = torch.load(good, weights_only=False)
    lying["cfg"]["model"].encoder_attention_heads = 8
    torch.save(lying, tmp_path / "esm2_lying.pt")
    with pytest.raises(CheckpointError, match="rotary frequencies"):
        load_pretrained(tmp_path / "esm2_lying.pt")

    # a state dict of another model (an extra tensor, a missing one)
    other = torch.load(good, weights_only=False)
    other["model"]["encoder.sentence_encoder.embed_positions.weight"] = torch.zeros(4, 4)
    torch.save(other, tmp_path / "esm2_other.pt")
    with pytest.raises(CheckpointError, match="unexpected tensors.*embed_positions"):
        load_pretrained(tmp_path / "esm2_other.pt")
    del other["model"]["encoder.sentence_encoder.layers.1.fc2.bias"]
    torch.save(other, tmp_path / "esm2_other.pt")
    with pytest.raises(CheckpointError, match=r"missing \['layers.1.fc2.bias'\]"):
        load_pretrained(tmp_path / "esm2_other.pt")

    # without its regression file the model loads, with an inert contact head
    regression_path(good).unlink()
    net, _ = load_pretrained(good)
    assert net.config.extra["contact_regression"] is False
    assert net.heads["contact"].regression.weight.abs().sum() == 0


def test_init_from_esm2_through_hydra(tmp_path, compose, alphabet):
    ref = random_esm2("tiny", seed=5)
    path = write_released_layout(ref, tmp_path / "esm2_t2_test.pt")
    cfg = compose(["model=from_checkpoint", f"model.init_from={path}", "model.max_length=512"])
    net = instantiate(cfg.model, tokenizer=alphabet)
    assert net.training and net.config.max_length == 512 and net.config.num_layers == 2
    expected = from_esm2_module(ref).state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # an explicit size that agrees is fine; one that disagrees is a clear error
    ok = compose(["model=tiny", f"model.init_from={path}"])
    assert instantiate(ok.model, tokenizer=alphabet).config.embed_dim == 64
    clash = compose(["model=esm2_8m", f"model.init_from={path}"])
    with pytest.raises(InstantiationException, match=r"size 'esm2_8m'.*num_layers=6 \(checkpoint: 2\)"):
        instantiate(clash.model, tokenizer=alphabet)
    # every downstream task gets its backbone the same way (fm-finetune model.init_from=...)
    run = FinetuneRun(cfg=OmegaConf.create({"model": ok.model, "seed": 0}), run_dir=tmp_path)
    backbone = run.backbone(alphabet)
    assert backbone.config.extra["contact_regression"] is True
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
