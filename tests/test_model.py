import esm
import pytest
import torch

from bio_fm.contact import attach_contact_head
from fm_core.config import SIZES, ConfigError, EncoderConfig
from fm_core.model import MaskedLM


def tiny_model(alphabet, **overrides):
    torch.manual_seed(0)
    cfg = EncoderConfig.from_name("tiny", vocab_size=alphabet.vocab_size, pad_id=alphabet.pad_id,
                                  mask_id=alphabet.mask_id, **overrides)
    return MaskedLM(cfg).eval()


def batch_of(alphabet, seqs):
    rows = [torch.from_numpy(alphabet.add_special_tokens(alphabet.encode(s))) for s in seqs]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=alphabet.pad_id)


def test_padding_invariance(alphabet, valid_records):
    model = tiny_model(alphabet)
    seqs = [s[:120] for _, s in valid_records[:6]]
    seqs[2] = seqs[2][:17]  # a short one among long ones
    batch = batch_of(alphabet, seqs)
    assert (batch == alphabet.pad_id).any()
    with torch.no_grad():
        together = model(batch, repr_layers=[1])
        for row, seq in enumerate(seqs):
            alone = model(batch_of(alphabet, [seq]), repr_layers=[1])
            n = len(seq) + 2
            torch.testing.assert_close(together["logits"][row, :n], alone["logits"][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together["representations"][1][row, :n], alone["representations"][1][0],
                                       atol=1e-5, rtol=1e-5)


def test_explicit_attention_path_matches_sdpa(alphabet, valid_records):
    model = tiny_model(alphabet)
    batch = batch_of(alphabet, [s[:50] for _, s in valid_records[:4]] + ["MKV"])
    with torch.no_grad():
        fast = model(batch)
        slow = model(batch, need_weights=True)
    torch.testing.assert_close(fast["logits"], slow["logits"], atol=1e-5, rtol=1e-5)
    att = slow["attentions"]  # (B, layers, H, L, L)
    assert att.shape == (5, 2, 4, batch.shape[1], batch.shape[1])
    real = batch != alphabet.pad_id
    sums = att.sum(-1)
    torch.testing.assert_close(sums[real[:, None, None, :].expand_as(sums)],
                               torch.ones(int(real.sum()) * 2 * 4), atol=1e-5, rtol=0)
    assert att[4, :, :, :, 5:].abs().max() == 0  # keys beyond the short sequence get no weight


def test_rotary_scores_depend_on_relative_position_only():
    from fm_core.model import RotaryEmbedding

    rot = RotaryEmbedding(16)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    L = 40
    qs, ks = rot(q.expand(1, 1, L, 16), k.expand(1, 1, L, 16))
    scores = (qs[0, 0] @ ks[0, 0].T)  # (L, L)
    assert torch.allclose(scores[3, 10], scores[20, 27], atol=1e-4)
    assert torch.allclose(scores[10, 3], scores[30, 23], atol=1e-4)
    assert not torch.allclose(scores[3, 10], scores[3, 11], atol=1e-3)


def test_token_dropout_rescales_like_esm(alphabet):
    model = tiny_model(alphabet, token_dropout=True)  # off by default in fm_core (a protein convention)
    tokens = batch_of(alphabet, ["MKTAYIAKQR"])
    masked = tokens.clone()
    masked[0, 3] = alphabet.mask_id
    emb = model.encoder.embed(masked, masked.eq(alphabet.pad_id))
    raw = model.encoder.embed_tokens(masked)
    scale = (1 - 0.15 * 0.8) / (1 - 1 / 12)
    torch.testing.assert_close(emb[0, 2], raw[0, 2] * scale)
    assert emb[0, 3].abs().max() == 0


def test_activation_checkpointing_same_gradients(alphabet, valid_records):
    batch = batch_of(alphabet, [s[:60] for _, s in valid_records[:3]])
    grads = []
    for flag in (False, True):
        model = tiny_model(alphabet, activation_checkpointing=flag).train()
        model(batch)["logits"].float().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_tied_head_and_parameter_count(alphabet):
    model = tiny_model(alphabet)
    assert sum(p.numel() for p in model.parameters()) == model.config.num_parameters()
    assert not any("lm_head.weight" in k for k in model.state_dict())  # projection is the embedding


@pytest.mark.parametrize("size", ["tiny", "esm2_8m", "esm2_35m",
                                  pytest.param("esm2_150m", marks=pytest.mark.slow),
                                  pytest.param("esm2_650m", marks=pytest.mark.slow)])
def test_parameterisation_matches_fair_esm_esm2(alphabet, size):
    """Same shapes as fair-esm's ESM2: every ESM-2 tensor has a counterpart of equal size
    (q/k/v fused here), so weights map one to one, the contact head (L*H + 1) included."""
    shape = SIZES[size]
    ref = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                              attention_heads=shape["num_heads"], alphabet="ESM-1b")
    cfg = EncoderConfig.from_name(size, vocab_size=33, pad_id=1, mask_id=32)
    n_ref = sum(p.numel() for p in ref.parameters())
    contact = shape["num_layers"] * shape["num_heads"] + 1
    assert cfg.num_parameters() + contact == n_ref  # fair-esm counts its contact regression
    if size in ("tiny", "esm2_8m"):
        ref_shapes = sorted(tuple(p.shape) for n, p in ref.named_parameters())
        ours = MaskedLM(cfg)
        assert sum(p.numel() for p in ours.parameters()) + contact == n_ref
        head = attach_contact_head(ours)
        assert sum(p.numel() for p in ours.parameters()) == n_ref
        assert head.regression.weight.numel() == contact - 1
        # q, k, v are three (D, D) matrices and biases in ESM, one fused (3D, D) here
        fused = sorted(tuple(p.shape) for p in ours.parameters())
        d = shape["embed_dim"]
        assert fused.count((3 * d, d)) == shape["num_layers"]
        assert ref_shapes.count((d, d)) == 4 * shape["num_layers"] + 1  # q, k, v, out + LM dense


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        EncoderConfig(embed_dim=100, num_heads=3, vocab_size=33)
    with pytest.raises(ConfigError, match="unknown model size"):
        EncoderConfig.from_name("esm9_1t")
    with pytest.raises(ConfigError, match="unknown EncoderConfig field"):
        EncoderConfig.from_dict({"num_layer": 3})
    with pytest.raises(ValueError, match="tokenizer"):
        MaskedLM(EncoderConfig.from_name("tiny"))
    assert EncoderConfig.from_name("esm2_650m", vocab_size=33, pad_id=1, mask_id=32).ffn_dim == 5120
