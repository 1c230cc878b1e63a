"""fair-esm ESM-2 fixtures built locally (no download is possible): ESM2 modules with random
weights, and files written in the layout of the released ``esm2_*.pt`` checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

import esm
import torch

from fm_core.config import SIZES


def random_esm2(size: str = "tiny", seed: int = 0, token_dropout: bool = True) -> esm.model.esm2.ESM2:
    """fair-esm's ESM2 at a registry shape, every parameter perturbed (LayerNorm gains and biases
    too, so that a swapped mapping cannot hide behind ones and zeros), contact regression included."""
    shape = SIZES[size]
    torch.manual_seed(seed)
    model = esm.model.esm2.ESM2(num_layers=shape["num_layers"], embed_dim=shape["embed_dim"],
                                attention_heads=shape["num_heads"], alphabet="ESM-1b",
                                token_dropout=token_dropout)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "embed_tokens.weight":
                p.mul_(0.3)  # keep activations in the range of a trained model
            if name.startswith("contact_head"):  # attention features are O(1/L): a trained head is large
                p.normal_(0.0, 30.0) if p.ndim == 2 else p.fill_(-1.0)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def write_released_layout(model: esm.model.esm2.ESM2, path: Path, regression: bool = True) -> Path:
    """Save ``model`` the way fairseq wrote the released ESM-2 files: fairseq key prefixes, the
    model configuration as an ``argparse.Namespace`` inside ``cfg``, training bookkeeping beside
    it, and the contact regression in ``<stem>-contact-regression.pt``."""
    state = model.state_dict()
    body = {}
    for name, tensor in state.items():
        if name.startswith("contact_head."):
            continue
        prefix = "encoder." if name.startswith("lm_head.") else "encoder.sentence_encoder."
        body[prefix + name] = tensor.clone()
    ns = argparse.Namespace(
        _name="esm2", arch=f"esm2_t{model.num_layers}", encoder_layers=model.num_layers,
        encoder_embed_dim=model.embed_dim, encoder_ffn_embed_dim=4 * model.embed_dim,
        encoder_attention_heads=model.attention_heads, token_dropout=model.token_dropout,
        max_positions=1024, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    data = {
        "cfg": {"_name": None, "common": {"seed": 1, "fp16": True}, "model": ns,
                "task": {"_name": "masked_lm", "tokens_per_sample": 1024},
                "optimization": {"max_update": 500000, "lr": [0.0004]}},
        "model": body,
        "args": None,
        "optimizer_history": [{"criterion_name": "MaskedLmLoss", "optimizer_name": "FairseqAdam",
                               "num_updates": 500000}],
        "extra_state": {"epoch": 1, "previous_training_time": 1234.5},
    }
    torch.save(data, path)
    if regression:
        torch.save({"model": {k: v.clone() for k, v in state.items() if k.startswith("contact_head.")}},
                   Path(str(path.with_suffix("")) + "-contact-regression.pt"))
    return path


def padded_batch(alphabet, seqs: list[str]) -> torch.Tensor:
    rows = [torch.from_numpy(alphabet.add_special_tokens(alphabet.encode(s))) for s in seqs]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=alphabet.pad_id)


def mixed_batch(alphabet, records, n: int = 8, max_len: int = 300) -> torch.Tensor:
    """Real sequences of mixed lengths (cut at ``max_len``) in one padded batch, two with masks."""
    seqs = [s[:max_len] if i % 3 else s[: max(20, max_len // (i + 2))] for i, (_, s) in enumerate(records[:n])]
    batch = padded_batch(alphabet, seqs)
    batch[1, 5] = batch[1, 9] = alphabet.mask_id
    batch[4, 3] = alphabet.mask_id
    return batch
