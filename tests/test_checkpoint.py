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
