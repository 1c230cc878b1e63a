"""Protein alphabet with token ids identical to fair-esm's ``Alphabet.from_architecture("ESM-1b")``."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from fm_core.tokenizer import InvalidRecordError, TokenizerBase, register_tokenizer

# fair-esm's proteinseq_toks, in its order (its ids depend on it)
RESIDUES = tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
STANDARD = tuple("ACDEFGHIKLMNPQRSTVWY")
_SPECIAL_RE = re.compile(r"(<[a-z_0-9]+>)")


@register_tokenizer("esm_alphabet")
class ProteinAlphabet(TokenizerBase):
    """cls/pad/eos/unk, the 20 standard residues and the rare ones, ``.``, ``-``, a filler, mask.

    ``encode`` accepts lower case and strips one terminal ``*`` (the stop mark gene predictors
    write); any other character raises ``InvalidRecordError`` with the record and 1-based position.
    Special tokens written inline (``MK<mask>LV``) are encoded too.
    """

    prepend = ("<cls>", "<pad>", "<eos>", "<unk>")
    append = ("<mask>",)

    def __init__(self) -> None:
        toks = list(self.prepend) + list(RESIDUES)
        toks += [f"<null_{i + 1}>" for i in range((8 - len(toks) % 8) % 8)]  # fair-esm's filler
        toks += list(self.append)
        self.tokens: list[str] = toks
        self.index = {t: i for i, t in enumerate(toks)}
        self.vocab_size = len(toks)
        self.cls_id, self.pad_id, self.eos_id, self.unk_id = (self.index[t] for t in self.prepend)
        self.bos_id = self.cls_id
        self.mask_id = self.index["<mask>"]
        self._special = np.array(
            [i for i, t in enumerate(toks) if t.startswith("<")], dtype=np.int64
        )
        self._random = np.array([self.index[r] for r in STANDARD], dtype=np.int64)
        table = np.full(256, 255, dtype=np.uint8)  # byte -> id; 255 = invalid
        for r in RESIDUES:
            table[ord(r)] = self.index[r]
            table[ord(r.lower())] = self.index[r]
        self._table = table

    # --- Tokenizer interface -------------------------------------------------------------
    def encode(self, text: str, *, record: str | None = None, source: str | None = None) -> np.ndarray:
        """Residues -> uint8 ids, no special tokens added."""
        if text.endswith("*"):
            text = text[:-1]
        if "<" in text:
            return self._encode_with_specials(text, record=record, source=source)
        return self._encode_plain(text, record=record, source=source)

    def _encode_plain(self, text: str, *, record: str | None, source: str | None) -> np.ndarray:
        if not text.isascii():
            pos = next(i for i, c in enumerate(text) if not c.isascii())
            raise InvalidRecordError(f"invalid residue {text[pos]!r}", source=source, record=record,
                                     position=pos + 1)
        ids = self._table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        bad = np.flatnonzero(ids == 255)
        if bad.size:
            pos = int(bad[0])
            raise InvalidRecordError(f"invalid residue {text[pos]!r}", source=source, record=record,
                                     position=pos + 1)
        return ids

    def _encode_with_specials(self, text: str, *, record: str | None, source: str | None) -> np.ndarray:
        parts, offset = [], 0
        for piece in _SPECIAL_RE.split(text):
            if not piece:
                continue
            if _SPECIAL_RE.fullmatch(piece):
                if piece not in self.index:
                    raise InvalidRecordError(f"unknown token {piece}", source=source, record=record,
                                             position=offset + 1)
                parts.append(np.array([self.index[piece]], dtype=np.uint8))
            else:
                try:
                    parts.append(self._encode_plain(piece, record=record, source=source))
                except InvalidRecordError as err:
                    raise InvalidRecordError(err.reason, source=source, record=record,
                                             position=offset + err.position) from None
            offset += len(piece)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)

    def encoder_defaults(self) -> dict[str, Any]:
        """Protein convention (ESM-2): token dropout, <mask> embeddings zeroed and rescaled."""
        return {"token_dropout": True}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ProteinAlphabet:
        alphabet = cls()
        if spec.get("tokens", alphabet.tokens) != alphabet.tokens:
            raise ValueError("saved protein alphabet differs from the ESM-1b alphabet of this version")
        return alphabet
