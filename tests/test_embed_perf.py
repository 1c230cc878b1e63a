"""The inference fast paths are the same math: in-place rotary, the no-grad attention layout; and
the fm-embed path imports neither Lightning nor an unrelated domain's plugin (start-up CPU and RSS)."""

import subprocess
import sys

import torch
from esm_fixtures import random_esm2

from bio_fm.esm_compat import from_esm2_module
from fm_core.model import RotaryEmbedding


def test_rotate_into_matches_the_training_form():
    torch.manual_seed(0)
    rot = RotaryEmbedding(16)
    qkv = torch.randn(3, 37, 3, 4, 16)  # (B, L, 3, H, Dh): the fused projection's layout
    qk = qkv[:, :, :2].permute(2, 0, 3, 1, 4)  # a strided view, as SelfAttention passes it
    for start in (0, 5):
        q_ref, k_ref = rot(qk[0], qk[1], start)
        out = rot.rotate_into(qk, start)
        assert out.is_contiguous() and out.shape == (2, 3, 4, 37, 16)
        torch.testing.assert_close(out[0], q_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(out[1], k_ref, rtol=0, atol=1e-6)


def test_no_grad_forward_equals_the_autograd_forward():
    net = from_esm2_module(random_esm2("tiny", seed=5)).eval()
    tokens = torch.randint(4, 24, (3, 50))
    tokens[:, 0] = 0
    tokens[1, 40:] = 1  # padding
    seq_lens = torch.tensor([20, 30])
    packed = torch.randint(4, 24, (1, 50))
    with torch.enable_grad():
        ref, ref_packed = net(tokens)["logits"], net(packed, seq_lens=seq_lens)["logits"]
    with torch.inference_mode():
        got, got_packed = net(tokens)["logits"], net(packed, seq_lens=seq_lens)["logits"]
    torch.testing.assert_close(got, ref.detach(), rtol=0, atol=2e-5)
    torch.testing.assert_close(got_packed, ref_packed.detach(), rtol=0, atol=2e-5)


def test_embed_path_imports_no_lightning_nor_other_domains(tmp_path, alphabet):
    from fm_core.export import save_pretrained

    save_pretrained(tmp_path / "export", from_esm2_module(random_esm2("tiny", seed=1)), alphabet)
    code = ("import sys\nfrom fm_core.embed import embed, run_embedding\nfrom fm_core.export import load_pretrained\n"
            "import bio_fm.fasta\n"
            f"load_pretrained({str(tmp_path / 'export')!r})\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'torchmetrics', 'wandb', 'chem_fm', "
            "'rdkit', 'code_fm', 'transformers'})\nprint('IMPORTED', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout, out.stdout


def test_checkpoint_io_still_resolves_lazily():
    from fm_core import checkpoint
    from fm_core.checkpoint_io import AtomicCheckpointIO

    assert checkpoint.AtomicCheckpointIO is AtomicCheckpointIO


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window_size):
    """What the CUDA varlen kernel computes, per sequence, with plain SDPA (CPU)."""
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qq, kk, vv = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))  # (1, H, L, Dh)
        out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=window_size == (-1, 0))
        outs.append(out[0].transpose(0, 1))
    return torch.cat(outs)


def test_varlen_packed_path_matches_the_padded_scatter(monkeypatch):
    import fm_core.model as M
    from fm_core.config import EncoderConfig

    for causal in (False, True):
        cfg = EncoderConfig.from_name("tiny", vocab_size=33, pad_id=1, mask_id=32, causal=causal)
        torch.manual_seed(2)
        net = M.MaskedLM(cfg)
        tokens, seq_lens = torch.randint(4, 24, (1, 61)), torch.tensor([17, 40, 4])
        ref = net(tokens, seq_lens=seq_lens)["logits"]  # the scatter into (S, Lmax) + SDPA path
        with monkeypatch.context() as m:
            m.setattr(M, "_VARLEN", _reference_varlen)
            m.setattr(M, "varlen_usable", lambda qkv: True)
            got = net(tokens, seq_lens=seq_lens)["logits"]
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
        packing = M.Packing.from_lengths(seq_lens)
        assert packing.cu_seqlens.tolist() == [0, 17, 57, 61] and packing.cu_seqlens.dtype == torch.int32
        assert packing.position[15:19].tolist() == [15, 16, 0, 1]
