"""ESM's contact head: a head over the backbone's attention maps (``MaskedLM.heads["contact"]``).

Zero the maps of special and padding positions, drop the first and last token, symmetrise,
average product correction (APC), then one logistic regression over the ``layers x heads``
features (fitted apart, as ESM does: ``tasks.contacts`` fits it, a fair-esm import carries it).
Importing this module registers the head kind and the mapping of the ``contact_head.*`` weights
that exports of earlier versions wrote into every model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bio_fm.alphabet import ProteinAlphabet
from fm_core.config import EncoderConfig
from fm_core.model import MaskedLM
from fm_core.registry import LEGACY_WEIGHTS, register_head
from fm_core.tokenizer import Tokenizer

HEAD_NAME = "contact"  # its name in MaskedLM.heads (state dict keys heads.contact.regression.*)
LEGACY_PREFIX = "contact_head."  # where exports of earlier versions kept it


@register_head("esm_contact")
class ContactHead(nn.Module):
    """Attention maps (B, layers, H, L, L) -> contact logits (B, L-2, L-2).

    Rows are laid out as ``add_special_tokens`` writes them (``<cls> residues <eos> <pad>...``);
    the output covers ``L - 2`` positions, residue ``i`` at index ``i``, like fair-esm's. The
    regression starts at zero (probability 0.5 everywhere: not fitted) and is frozen: ESM fits it
    apart, by logistic regression (``head.requires_grad_(True)`` makes it trainable).
    """

    def __init__(self, num_layers: int, num_heads: int):
        super().__init__()
        self.num_layers, self.num_heads = num_layers, num_heads
        # no random draw: adding the head leaves the global RNG (and so every later init) as it was
        self.regression = nn.utils.skip_init(nn.Linear, num_layers * num_heads, 1)
        nn.init.zeros_(self.regression.weight)
        nn.init.zeros_(self.regression.bias)
        self.requires_grad_(False)

    @classmethod
    def for_config(cls, cfg: EncoderConfig) -> ContactHead:
        return cls(cfg.num_layers, cfg.num_heads)

    def to_dict(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "num_heads": self.num_heads}

    @staticmethod
    def residue_mask(tokens: Tensor, pad_id: int) -> Tensor:
        """(B, L) True at residues: not padding, not the first and not the last real token."""
        real = tokens.ne(pad_id)
        last = real.sum(-1, keepdim=True) - 1  # (B, 1) index of <eos>
        pos = torch.arange(tokens.shape[1], device=tokens.device)[None]
        return real & (pos > 0) & (pos != last)

    @staticmethod
    def features(attentions: Tensor, residue_mask: Tensor) -> Tensor:
        """(B, layers, H, L, L) -> (B, L-2, L-2, layers*H): symmetrised, APC-corrected maps."""
        m = residue_mask.to(attentions.dtype)
        x = attentions * (m[:, :, None] * m[:, None, :])[:, None, None]
        x = x[..., 1:-1, 1:-1]
        B, layers, H, L, _ = x.shape
        x = x.reshape(B, layers * H, L, L)
        x = x + x.transpose(-1, -2)  # symmetrise
        row, col = x.sum(-1, keepdim=True), x.sum(-2, keepdim=True)
        x = x - row * col / x.sum((-1, -2), keepdim=True)  # APC
        return x.permute(0, 2, 3, 1)  # (B, L-2, L-2, C)

    def forward(self, attentions: Tensor, residue_mask: Tensor) -> Tensor:
        """Contact logits (B, L-2, L-2); ``sigmoid`` gives fair-esm's contact probabilities."""
        feats = self.features(attentions, residue_mask).to(self.regression.weight.dtype)
        return self.regression(feats).squeeze(-1)


def contact_head(net: MaskedLM) -> ContactHead:
    """The backbone's contact head; a clear error when it has none."""
    if HEAD_NAME not in net.heads:
        raise ValueError("this model has no contact head: fit one (fm-finetune task=contacts, written into its "
                         "export) or import a fair-esm ESM-2 checkpoint with its contact regression")
    return net.heads[HEAD_NAME]


def attach_contact_head(net: MaskedLM) -> ContactHead:
    """The backbone's contact head, added (unfitted, zero) when it has none."""
    if HEAD_NAME not in net.heads:
        net.heads[HEAD_NAME] = ContactHead.for_config(net.config).to(net.encoder.embed_tokens.weight.device)
    return net.heads[HEAD_NAME]


def attention_features(net: MaskedLM, tokens: Tensor, out: dict[str, Any]) -> Tensor:
    """ESM's contact features (B, L-2, L-2, layers*H) from the attention maps in ``out`` (a forward
    run with ``need_weights=True``)."""
    mask = ContactHead.residue_mask(tokens, net.config.pad_id)
    return ContactHead.features(out["attentions"], mask)


def forward_with_contacts(net: MaskedLM, tokens: Tensor, repr_layers: Iterable[int] = ()) -> dict[str, Any]:
    """``net(tokens, need_weights=True)`` plus ``"contacts"`` (B, L-2, L-2), fair-esm's
    ``return_contacts=True``: probabilities from the contact head."""
    out = net(tokens, repr_layers=repr_layers, need_weights=True)
    mask = ContactHead.residue_mask(tokens, net.config.pad_id)
    out["contacts"] = contact_head(net)(out["attentions"], mask).sigmoid()  # (B, L-2, L-2)
    return out


def predict_contacts(net: MaskedLM, tokens: Tensor) -> Tensor:
    """Contact probabilities (B, L-2, L-2) from the backbone's contact head."""
    return forward_with_contacts(net, tokens)["contacts"]


def _upgrade_legacy(tokenizer: Tokenizer, cfg: EncoderConfig) -> tuple[str, ContactHead] | None:
    """``contact_head.*`` of an older export: the ESM contact head of a protein model; on a model of
    another alphabet it never meant anything (it was built into every model) and is dropped."""
    return (HEAD_NAME, ContactHead.for_config(cfg)) if isinstance(tokenizer, ProteinAlphabet) else None


LEGACY_WEIGHTS.register(LEGACY_PREFIX, _upgrade_legacy)

__all__ = ["HEAD_NAME", "ContactHead", "attach_contact_head", "attention_features", "contact_head",
           "forward_with_contacts", "predict_contacts"]
