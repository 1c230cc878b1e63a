"""Hugging Face ESM directories: parity with transformers' own forward on real sequences (random
weights built by transformers itself, nothing downloaded), exact round trips ours -> HF -> ours and
HF -> ours -> fair-esm -> ours, the loaders of every app, and clear errors on bad directories."""

import json
import logging

import numpy as np
import pytest
import torch
from esm_fixtures import mixed_batch, padded_batch
from safetensors.torch import load_file
from test_embed import job, write_fasta
from test_esm_compat import assert_within
from test_scoring import read_csv
from transformers import AutoTokenizer, EsmConfig, EsmForMaskedLM, EsmForTokenClassification, EsmModel
from transformers import logging as hf_logging

from bio_fm.contact import attach_contact_head, forward_with_contacts
from bio_fm.esm_compat import load_esm2_checkpoint, save_esm2_checkpoint
from bio_fm.hf_esm import export_to_hf, save_hf_esm
from bio_fm.scoring import score
from fm_core.checkpoint import CheckpointError
from fm_core.config import SIZES, EncoderConfig
from fm_core.errors import UserError
from fm_core.export import load_pretrained, read_checkpoint, save_pretrained
from fm_core.model import MaskedLM, build_model
from tasks.structure.predict import predict

hf_logging.set_verbosity_error()


def hf_config(size="tiny", **overrides):
    shape = SIZES[size]
    values = dict(vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=shape["embed_dim"],
                  num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
                  intermediate_size=4 * shape["embed_dim"], position_embedding_type="rotary", token_dropout=True,
                  emb_layer_norm_before=False, layer_norm_eps=1e-5, max_position_embeddings=1026)
    return EsmConfig(**{**values, **overrides})


def random_hf(cls=EsmForMaskedLM, size="tiny", seed=0, **overrides):
    """A transformers ESM model with every parameter perturbed (LayerNorms too) and a large contact
    regression (attention features are O(1/L)), eager attention so it returns its maps."""
    torch.manual_seed(seed)
    model = cls._from_config(hf_config(size, **overrides), attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "contact_head" in name:
                p.normal_(0.0, 30.0) if p.ndim == 2 else p.fill_(-1.0)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def hf_forward(model, batch):
    mask = batch.ne(1).long()
    with torch.no_grad():
        out = model(batch, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        contacts = model.predict_contacts(batch, mask)
    return out, contacts


def check_parity(model, net, batch):
    """Logits, every hidden state and contacts of ours within 1e-5 of transformers' (real tokens)."""
    out, contacts = hf_forward(model, batch)
    layers = range(net.config.num_layers + 1)
    with torch.no_grad():
        ours = forward_with_contacts(net, batch, repr_layers=layers)
    real = batch.ne(1)
    assert_within(ours["logits"][real], out.logits[real])
    assert len(out.hidden_states) == len(layers)
    for layer in layers:
        assert_within(ours["representations"][layer][real], out.hidden_states[layer][real])
    assert_within(ours["contacts"], contacts)
    assert out.logits.std() > 0.1 and contacts.std() > 1e-3  # far from trivial: the comparison means something
    return out, ours


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = random_hf(seed=1)
    path = tmp_path_factory.mktemp("hf") / "esm_tiny"
    model.save_pretrained(path)
    return model, path


def test_import_matches_transformers_on_a_padded_batch(hf_dir, alphabet, valid_records):
    model, path = hf_dir
    batch = mixed_batch(alphabet, valid_records, n=8, max_len=120)
    assert (batch == alphabet.pad_id).any() and (batch == alphabet.mask_id).any()  # padding and token dropout
    net, tok = load_pretrained(path)  # recognised by content through the generic loader
    assert tok.to_dict() == alphabet.to_dict() and net.config.max_length == 1024
    assert net.config.token_dropout and net.config.mask_ratio_train == pytest.approx(0.12)
    check_parity(model, net, batch)
    again = read_checkpoint(path / "config.json")  # the config file names the directory too
    assert all(torch.equal(again.state[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_import_matches_transformers_at_the_8m_shape(tmp_path, alphabet, valid_records):
    model = random_hf(size="esm2_8m", seed=2)
    model.save_pretrained(tmp_path / "esm2_8m")
    net, _ = load_pretrained(tmp_path / "esm2_8m")
    assert net.config.name == "esm2_8m"
    check_parity(model, net, mixed_batch(alphabet, valid_records, n=8, max_len=300))


def our_model(seed=4, **overrides):
    torch.manual_seed(seed)
    cfg = EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32,
                                 **{"token_dropout": True, **overrides})
    net = MaskedLM(cfg)
    attach_contact_head(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0.0, 30.0) if name.endswith("regression.weight") else p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_ours_to_hf_to_ours_is_exact(tmp_path, alphabet, valid_records):
    net = our_model(max_length=512, rotary_base=5000.0, layer_norm_eps=1e-6)
    meta = {"val/perplexity": 11.25, "train/steps": 1234, "data": "UniRef50 slice",
            "command": "fm-pretrain experiment=protein_quick"}
    save_pretrained(tmp_path / "export", net, alphabet, metadata=meta)
    out = export_to_hf(tmp_path / "export", tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.txt", "README.md",
                                                "tokenizer_config.json", "special_tokens_map.json"}
    card = (out / "README.md").read_text()
    for text in ("UniRef50 slice", "1234", "11.25", "fm-pretrain experiment=protein_quick"):
        assert text in card

    model, info = EsmForMaskedLM.from_pretrained(out, local_files_only=True, output_loading_info=True,
                                                 attn_implementation="eager")
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    seq = valid_records[0][1][:50]
    assert tokenizer(seq[:30] + "<mask>" + seq[30:])["input_ids"] == padded_batch(
        alphabet, [seq[:30] + "<mask>" + seq[30:]])[0].tolist()
    check_parity(model.eval(), net, mixed_batch(alphabet, valid_records, n=6, max_len=100))

    back, tok = load_pretrained(out)
    assert back.config.to_dict() == net.config.to_dict() and tok.to_dict() == alphabet.to_dict()
    theirs = back.state_dict()
    assert theirs.keys() == net.state_dict().keys()
    assert all(torch.equal(theirs[k], v) for k, v in net.state_dict().items())


def test_hf_to_ours_to_fair_esm_to_ours_is_exact(hf_dir, tmp_path):
    _, path = hf_dir
    net, _ = load_pretrained(path)
    pt, _ = save_esm2_checkpoint(net, tmp_path / "esm2_from_hf.pt")
    back, _ = load_esm2_checkpoint(pt)
    assert back.config.to_dict() == net.config.to_dict()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in net.state_dict().items())


def test_bodies_without_lm_head_and_pytorch_bin(tmp_path, alphabet, valid_records, caplog):
    batch = mixed_batch(alphabet, valid_records, n=6, max_len=80)
    real = batch.ne(alphabet.pad_id)
    body = random_hf(EsmModel, seed=5)  # with its pooler
    body.save_pretrained(tmp_path / "body")
    with caplog.at_level(logging.WARNING):
        net, _ = load_pretrained(tmp_path / "body")
    assert "pooler" in caplog.text
    with torch.no_grad():
        theirs = body(batch, attention_mask=real.long()).last_hidden_state
        ours = net(batch)
    assert_within(ours["hidden"][real], theirs[real])
    assert torch.count_nonzero(ours["logits"]) == 0  # no LM head: a zero one, said in the config
    assert "absent" in net.config.extra["lm_head"]

    tagger = random_hf(EsmForTokenClassification, seed=6, num_labels=3)
    directory = tmp_path / "tagger"
    tagger.save_pretrained(directory)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")  # the older format, read with weights_only
    net, _ = load_pretrained(directory)
    with torch.no_grad():
        theirs = tagger.esm(batch, attention_mask=real.long()).last_hidden_state
        assert_within(net(batch)["hidden"][real], theirs[real])


def test_every_app_loader_accepts_the_directory(hf_dir, compose, tmp_path, alphabet, valid_records):
    model, path = hf_dir
    records = [(r, s[:90]) for r, s in valid_records[:5]]
    fasta = write_fasta(tmp_path / "in.fa.gz", records)
    metrics = job(compose, f"input={fasta}", f"checkpoint={path}", "layers=[-1]", f"out={tmp_path / 'emb'}")
    assert metrics["embed/finished"] and metrics["embed/sequences"] == 5

    one = write_fasta(tmp_path / "one.fa.gz", records[:1])
    summary = predict(str(path), str(one), str(tmp_path / "pred"), png=False)
    assert summary["predicted"] == 1 and summary["contacts"] == "backbone contact regression"
    (saved,) = (tmp_path / "pred").glob("*.contacts.npy")
    _, contacts = hf_forward(model, padded_batch(alphabet, [records[0][1]]))
    assert_within(torch.from_numpy(np.load(saved)), contacts[0])  # transformers' contacts, via the app

    wt = records[1][1][:30]
    cfg = compose([f"input={write_fasta(tmp_path / 'wt.fa.gz', [('WT', wt)])}", f"checkpoint={path}",
                   f"out={tmp_path / 'score'}", "progress=false"], config_name="protein_score")
    assert score(cfg)["score/sequences"] == 1
    masked = padded_batch(alphabet, [wt]).repeat(len(wt), 1)
    positions = torch.arange(len(wt))
    truth = masked[positions, positions + 1].clone()
    masked[positions, positions + 1] = alphabet.mask_id
    with torch.no_grad():  # transformers' pseudo-log-likelihood: each residue masked in turn
        logp = model(masked).logits.log_softmax(-1)[positions, positions + 1, truth]
    (row,) = read_csv(tmp_path / "score" / "pppl.csv")
    assert float(row["pseudo_log_likelihood"]) == pytest.approx(float(logp.sum()), abs=1e-3)

    backbone = build_model(None, alphabet, init_from=str(path), max_length=256)
    assert backbone.config.max_length == 256 and backbone.training
    assert torch.equal(backbone.encoder.embed_tokens.weight, model.esm.embeddings.word_embeddings.weight)


# --- bad input -------------------------------------------------------------------------------------
def copy_dir(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def refused(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path)
    assert isinstance(info.value, UserError)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_bad_directories_are_refused_naming_file_and_reason(hf_dir, tmp_path, alphabet):
    _, good = hf_dir
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                                                  "hidden_size": 64, "vocab_size": 30522}))
    refused(bert, str(bert / "config.json"), "'bert'", "BertForMaskedLM", "only ESM")

    shapes = copy_dir(good, tmp_path / "shapes")
    edit_config(shapes, intermediate_size=100)
    refused(shapes, "model.safetensors", "disagree with the shapes in config.json", "fc1.weight")
    heads = copy_dir(good, tmp_path / "heads")
    edit_config(heads, num_attention_heads=8)
    refused(heads, "model.safetensors", "rotary frequencies", "8 heads")
    layers = copy_dir(good, tmp_path / "layers")
    edit_config(layers, num_hidden_layers=3)
    refused(layers, "model.safetensors", "missing", "esm.encoder.layer.2.")

    missing = copy_dir(good, tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    refused(missing, str(missing), "no weights", "model.safetensors")
    truncated = copy_dir(good, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    refused(truncated, str(truncated / "model.safetensors"), "truncated or corrupt")

    vocab = copy_dir(good, tmp_path / "vocab")
    tokens = list(alphabet.tokens)
    tokens[4], tokens[5] = tokens[5], tokens[4]  # L and A swapped
    (vocab / "vocab.txt").write_text("\n".join(tokens))
    refused(vocab, str(vocab / "vocab.txt"), "differs from the ESM alphabet", "line 5")
    ids = copy_dir(good, tmp_path / "ids")
    edit_config(ids, vocab_size=34)
    refused(ids, str(ids / "config.json"), "vocab_size=34")

    absolute = copy_dir(good, tmp_path / "absolute")
    edit_config(absolute, position_embedding_type="absolute")
    refused(absolute, str(absolute / "config.json"), "absolute", "rotary")
    refused(tmp_path / "not_there", str(tmp_path / "not_there"), "no such checkpoint", "no file or directory")


def test_export_refuses_what_transformers_cannot_represent(tmp_path, alphabet):
    with pytest.raises(ValueError, match="mask_ratio_train=0.15"):
        save_hf_esm(our_model(mask_ratio_train=0.15), alphabet, tmp_path / "a", card={})
    with pytest.raises(ValueError, match="causal"):
        save_hf_esm(our_model(causal=True), alphabet, tmp_path / "b", card={})
    saved = save_pretrained(tmp_path / "c", our_model(token_dropout=False, mask_ratio_train=0.15), alphabet)
    back, _ = load_pretrained(export_to_hf(saved, tmp_path / "d"))  # without token dropout the ratio is unused
    assert back.config.mask_ratio_train == 0.15 and not back.config.token_dropout
    assert not (tmp_path / "a").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="secondary"):
        net = our_model()
        net.heads["secondary"] = attach_contact_head(our_model())
        save_hf_esm(net, alphabet, tmp_path / "e", card={})


def test_pretraining_exports_record_their_data_for_the_card(compose):
    from fm_core.export import provenance

    meta = provenance(compose(["experiment=protein_quick"]))
    train, valid = meta["data"].split(", ")
    assert train.endswith("uniprot_slice/train.fasta.gz") and valid.endswith("uniprot_slice/valid.fasta.gz")
    assert "command" not in meta  # composed, not launched: no command line to record
