import json

import pytest
import torch

from fm_core.checkpoint import CheckpointError
from fm_core.config import EncoderConfig
from fm_core.export import load_pretrained, save_pretrained
from fm_core.model import MaskedLM


@pytest.fixture
def model(alphabet):
    torch.manual_seed(1)
    return MaskedLM(EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32)).eval()


def tokens(alphabet, valid_records):
    rows = [torch.from_numpy(alphabet.add_special_tokens(alphabet.encode(s[:80]))) for _, s in valid_records[:5]]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=1)


def test_export_import_reproduces_logits_exactly(tmp_path, model, alphabet, valid_records):
    save_pretrained(tmp_path / "export", model, alphabet, metadata={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    again, tok = load_pretrained(tmp_path / "export")
    assert again.config == model.config and tok.tokens == alphabet.tokens
    x = tokens(alphabet, valid_records)
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], again(x)["logits"])


def test_lightning_checkpoint_loads_without_pickle(tmp_path, model, alphabet, valid_records):
    from fm_core.module import MLMModule

    module = MLMModule(model, optimizer=torch.optim.AdamW, tokenizer=alphabet)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "m.ckpt")
    again, _ = load_pretrained(tmp_path / "m.ckpt")
    x = tokens(alphabet, valid_records)
    with torch.no_grad():
        assert torch.equal(model(x)["logits"], again(x)["logits"])


def test_truncated_weights_named_in_error(tmp_path, model, alphabet):
    out = save_pretrained(tmp_path / "e", model, alphabet)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(out)


def test_config_of_another_shape_refused(tmp_path, model, alphabet):
    out = save_pretrained(tmp_path / "e", model, alphabet)
    spec = json.loads((out / "config.json").read_text())
    spec["model"]["num_layers"] = 3
    (out / "config.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained(out)


def test_foreign_files_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="format"):
        load_pretrained(tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not an fm-toolkit checkpoint"):
        load_pretrained(tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_pretrained(tmp_path / "missing.ckpt")


def test_heads_are_saved_by_kind_and_rebuilt(tmp_path, model, alphabet, valid_records):
    from bio_fm.contact import ContactHead, attach_contact_head, predict_contacts

    with torch.no_grad():
        attach_contact_head(model).regression.weight.normal_(0.0, 30.0)
    out = save_pretrained(tmp_path / "e", model, alphabet)
    spec = json.loads((out / "config.json").read_text())
    assert spec["heads"] == {"contact": {"kind": "esm_contact", "args": {"num_layers": 2, "num_heads": 4}}}
    again, _ = load_pretrained(out)
    assert isinstance(again.heads["contact"], ContactHead) and not again.heads["contact"].regression.weight.requires_grad
    x = tokens(alphabet, valid_records)
    with torch.no_grad():
        assert torch.equal(predict_contacts(again, x), predict_contacts(model, x))
    spec["heads"]["contact"]["kind"] = "never_registered"
    (out / "config.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="unknown head kind 'never_registered'"):
        load_pretrained(out)


def _as_previous_version(out, rename=True):
    """Rewrite an export as the previous version wrote it: no "heads" entry, the ESM contact head
    built into every model as ``contact_head.*`` (or, older still, absent)."""
    from safetensors.torch import load_file, save_file

    spec = json.loads((out / "config.json").read_text())
    spec.pop("heads")
    (out / "config.json").write_text(json.dumps(spec))
    state = load_file(str(out / "model.safetensors"))
    old = {k.replace("heads.contact.", "contact_head." if rename else "dropped."): v for k, v in state.items()}
    save_file({k: v for k, v in old.items() if not k.startswith("dropped.")}, str(out / "model.safetensors"))


def test_exports_of_the_previous_version_load(tmp_path, model, alphabet, valid_records):
    from bio_fm.contact import attach_contact_head, predict_contacts
    from chem_fm.smiles import SmilesTokenizer

    with torch.no_grad():
        attach_contact_head(model).regression.weight.normal_(0.0, 30.0)
    x = tokens(alphabet, valid_records)
    # protein: contact_head.* becomes the ESM contact head, exactly
    _as_previous_version(save_pretrained(tmp_path / "protein", model, alphabet))
    again, _ = load_pretrained(tmp_path / "protein")
    with torch.no_grad():
        assert torch.equal(predict_contacts(again, x), predict_contacts(model, x))
        assert torch.equal(again(x)["logits"], model(x)["logits"])
    # older still, without a contact head: the backbone alone
    _as_previous_version(save_pretrained(tmp_path / "older", model, alphabet), rename=False)
    assert len(load_pretrained(tmp_path / "older")[0].heads) == 0
    # another alphabet: the contact head every model carried then meant nothing and is dropped
    smiles = SmilesTokenizer()
    torch.manual_seed(0)
    mol = MaskedLM(EncoderConfig.from_name("tiny", vocab_size=smiles.vocab_size, pad_id=smiles.pad_id,
                                           mask_id=smiles.mask_id)).eval()
    attach_contact_head(mol)
    _as_previous_version(save_pretrained(tmp_path / "mol", mol, smiles))
    again, _ = load_pretrained(tmp_path / "mol")
    assert len(again.heads) == 0
    ids = torch.as_tensor(smiles.add_special_tokens(smiles.encode("CCO")))[None]
    with torch.no_grad():
        assert torch.equal(again(ids)["logits"], mol(ids)["logits"])
