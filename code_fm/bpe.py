"""Byte-level BPE tokenizer for source code (Hugging Face ``tokenizers``) behind fm_core's ``Tokenizer``.

Byte level: every file encodes without unknown tokens and decodes back to the exact text
(whitespace and indentation included). Special tokens, fixed ids 0..7: ``<pad>``, ``<unk>``,
``<cls>`` (beginning of a record), ``<eos>``, ``<mask>`` (masked LM) and ``<fim_prefix>``,
``<fim_middle>``, ``<fim_suffix>`` (fill-in-the-middle). ``to_dict`` carries the whole trained
model, so a dataset or checkpoint that saves it is self-describing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fm_core.tokenizer import TokenizerBase, register_tokenizer

SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<eos>", "<mask>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>")


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> CodeBPETokenizer:
    """Train a byte-level BPE on ``texts`` (all 256 bytes are in the base alphabet)."""
    tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return CodeBPETokenizer(tok)


@register_tokenizer("code_bpe")
class CodeBPETokenizer(TokenizerBase):
    def __init__(self, tokenizer: HFTokenizer):
        self.hf = tokenizer
        # a file's text is data: "<mask>" written in a source file is encoded as text, never as the
        # special token (build special-token sequences from the ids below instead)
        self.hf.encode_special_tokens = True
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"special tokens must have ids 0..{len(SPECIAL_TOKENS) - 1}, got {ids}")
        self.vocab_size = tokenizer.get_vocab_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = range(5)
        self.cls_id = self.bos_id
        self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id = 5, 6, 7
        self._special = np.arange(len(SPECIAL_TOKENS), dtype=np.int64)
        self._random = np.arange(len(SPECIAL_TOKENS), self.vocab_size, dtype=np.int64)
        self.dtype = np.uint16 if self.vocab_size <= 65536 else np.int32

    def encode(self, text: str, *, record: str | None = None, source: str | None = None) -> np.ndarray:
        """Text -> ids without special tokens (special-token text in the input is encoded as text)."""
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, dtype=self.dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=self.dtype) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Any) -> str:
        return self.hf.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)

    def encoder_defaults(self) -> dict[str, Any]:
        # token dropout stays on for code: the published code figures (README) were trained with it
        return {"token_dropout": True}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "tokenizer": json.loads(self.hf.to_str())}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> CodeBPETokenizer:
        return cls(HFTokenizer.from_str(json.dumps(spec["tokenizer"])))
