"""Packed (padding-free) batches: the same numbers as padded batches, for outputs and gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fm_core.config import EncoderConfig
from fm_core.data import MLMCollator, TokenBudgetBatchSampler
from fm_core.masking import IGNORE, MaskingConfig
from fm_core.model import MaskedLM, Packing, unpack


def tiny(alphabet, **overrides):
    torch.manual_seed(0)
    cfg = EncoderConfig.from_name("tiny", vocab_size=alphabet.vocab_size, pad_id=alphabet.pad_id,
                                  mask_id=alphabet.mask_id, **{**alphabet.encoder_defaults(), **overrides})
    return MaskedLM(cfg)


@pytest.fixture(scope="module")
def batches(alphabet, valid_records):
    """The same real, masked samples collated padded (B, L) and packed (1, N)."""
    from conftest import SLICE

    from bio_fm.fasta import fasta_dataset

    ds = fasta_dataset(SLICE / "valid.fasta.gz", alphabet)
    order = np.argsort(ds.lengths)
    picks = order[np.linspace(0, len(order) // 2, 5).astype(int)]  # short to median lengths
    samples = [ds[int(i)] for i in picks]
    padded = MLMCollator(alphabet, 512, MaskingConfig(0.15, 0.8, 0.1))(samples)
    packed = MLMCollator(alphabet, 512, MaskingConfig(0.15, 0.8, 0.1), packing=True)(samples)
    return padded, packed


def test_collated_packed_row_is_the_padded_batch_without_padding(batches, alphabet):
    padded, packed = batches
    real = padded["input_ids"] != alphabet.pad_id
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][real])
    assert torch.equal(packed["labels"][0], padded["labels"][real])
    assert packed["seq_lens"].tolist() == real.sum(1).tolist()
    assert real.float().mean() < 0.8  # the padded batch does waste something here


def test_packed_forward_and_gradients_match_padded(batches, alphabet):
    padded, packed = batches
    net = tiny(alphabet).train()
    assert net.config.token_dropout  # the per-sequence mask-ratio rescaling is exercised
    torch.manual_seed(1)  # no dropout in the model, but be explicit
    grads = []
    outs = []
    for batch in (padded, packed):
        net.zero_grad()
        hidden = net.encoder(batch["input_ids"], seq_lens=batch.get("seq_lens"))["hidden"]
        selected = batch["labels"] != IGNORE
        loss = F.cross_entropy(net.mlm_logits(hidden[selected]), batch["labels"][selected])
        loss.backward()
        outs.append((hidden, loss.detach()))
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    real = padded["input_ids"] != alphabet.pad_id
    torch.testing.assert_close(outs[1][0][0], outs[0][0][real], atol=2e-5, rtol=1e-4)
    assert float(outs[1][1]) == pytest.approx(float(outs[0][1]), rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-3, msg=name)
    # unpack gives each sequence its own slice
    pieces = unpack(outs[1][0].detach(), packed["seq_lens"])
    for row, piece in enumerate(pieces):
        torch.testing.assert_close(piece, outs[0][0][row, : len(piece)].detach(), atol=2e-5, rtol=1e-4)


def test_packing_layout_round_trip():
    p = Packing.from_lengths(torch.tensor([3, 1, 4]))
    x = torch.arange(8.0)[:, None]  # (N, 1)
    padded = p.pad(x)
    assert padded[..., 0].tolist() == [[0, 1, 2, 0], [3, 0, 0, 0], [4, 5, 6, 7]]
    assert p.key_padding_mask.tolist() == [[False, False, False, True], [False, True, True, True], [False] * 4]
    assert torch.equal(p.unpad(padded), x)
    with pytest.raises(ValueError, match="positive"):
        Packing.from_lengths(torch.tensor([3, 0]))


def test_packed_input_is_checked(alphabet):
    net = tiny(alphabet).eval()
    tokens = torch.full((1, 10), 5)
    with pytest.raises(ValueError, match=r"sum\(seq_lens\)"):
        net(tokens, seq_lens=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="need_weights"):
        net(tokens, seq_lens=torch.tensor([4, 6]), need_weights=True)


def test_packed_sampler_counts_real_tokens():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=3000)
    padded = TokenBudgetBatchSampler(lengths, 4096, seed=0)
    packed = TokenBudgetBatchSampler(lengths, 4096, seed=0, packed=True)
    seen = sorted(i for b in packed for i, _ in b)
    assert seen == list(range(len(lengths)))  # each sample exactly once
    assert all(sum(lengths[i] for i, _ in b) <= 4096 for b in packed)
    assert all(len(b) * max(lengths[i] for i, _ in b) <= 4096 for b in padded)
    assert len(packed) < len(padded)  # fewer, fuller batches: no budget spent on padding
    assert packed.padding_fraction() == 0.0 < padded.padding_fraction()


def test_bf16_autocast_stays_close_to_fp32(batches, alphabet):
    _, packed = batches
    net = tiny(alphabet).eval()
    with torch.no_grad():
        ref = net.encoder(packed["input_ids"], seq_lens=packed["seq_lens"])["hidden"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net.encoder(packed["input_ids"], seq_lens=packed["seq_lens"])["hidden"].float()
    cos = F.cosine_similarity(ref[0], low[0], dim=-1)
    assert float(cos.min()) > 0.99
