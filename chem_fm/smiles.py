"""Regex atom-level SMILES tokenizer behind fm_core's ``Tokenizer`` protocol, and SMILES datasets.

Tokens follow the regular expression used by chemistry language models (Schwaller et al., 2019,
"Molecular Transformer"): a bracket atom (``[C@@H]``, ``[nH]``, ``[O-]``) is one token, as are
``Cl``/``Br``, aromatic atoms, bonds, branches and ring-closure digits (``%10`` is one token).
The vocabulary is fixed (the tokens of the organic subset plus the bracket atoms common in
drug-like molecules, ``BRACKET_ATOMS``); a bracket atom outside it encodes as ``<unk>`` (counted
by ``SmilesTokenizer.unknown``), a character no SMILES token matches is an ``InvalidRecordError``.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from fm_core.batching import ReadStats, SequenceDataset
from fm_core.textio import open_text
from fm_core.tokenizer import InvalidRecordError, TokenizerBase, register_tokenizer

SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<cls>", "<eos>", "<mask>")
ORGANIC = ("C", "c", "N", "n", "O", "o", "S", "s", "P", "p", "F", "Cl", "Br", "I", "B", "b")
SYMBOLS = ("(", ")", "=", "#", "-", "+", "\\", "/", ":", "~", "@", "?", ">", "*", "$", ".",
           *"0123456789", *(f"%{i}" for i in range(10, 100)))
BRACKET_ATOMS = (
    "[C@H]", "[C@@H]", "[C@]", "[C@@]", "[nH]", "[NH+]", "[NH2+]", "[NH3+]", "[N+]", "[N-]", "[n+]", "[n-]",
    "[nH+]", "[O-]", "[O+]", "[o+]", "[OH-]", "[S+]", "[S-]", "[s+]", "[S@]", "[S@@]", "[S@+]", "[S@@+]",
    "[SH]", "[P+]", "[P@]", "[P@@]", "[PH]", "[B-]", "[BH-]", "[BH3-]", "[Si]", "[SiH]", "[Se]", "[se]",
    "[SeH]", "[Te]", "[te]", "[As]", "[Ge]", "[Sn]", "[H]", "[2H]", "[3H]", "[13C]", "[13CH]", "[11C]",
    "[18F]", "[123I]", "[125I]", "[131I]", "[CH]", "[CH2]", "[CH-]", "[C-]", "[c-]", "[N@]", "[N@@]",
    "[N@+]", "[N@@+]", "[NH-]", "[NH]", "[NH2]", "[N]", "[O]", "[OH]", "[OH+]", "[I+]", "[IH]", "[Cl+]",
    "[Br-]", "[Cl-]", "[I-]", "[F-]", "[Na+]", "[K+]", "[Li+]", "[Na]", "[K]", "[Li]", "[Ca+2]", "[Mg+2]",
    "[Zn+2]", "[Ca]", "[Mg]", "[Zn]", "[Fe]", "[Fe+2]", "[Fe+3]", "[Cu]", "[Cu+2]", "[Co]", "[Pt]", "[Pt+2]",
    "[Hg]", "[Gd]", "[Gd+3]", "[Al]", "[Al+3]", "[Bi]", "[Au]", "[Ag]", "[Ag+]", "[Sb]", "[Tc]", "[Mn]",
    "[Cr]", "[Ni]", "[Ba+2]", "[Sr+2]", "[Ti]", "[V]", "[Ga]", "[In]", "[Tl]", "[Pd]", "[Ru]", "[Rh]",
)


@register_tokenizer("smiles_regex")
class SmilesTokenizer(TokenizerBase):
    """SMILES -> ids without special tokens; ids 0..4 are ``<pad> <unk> <cls> <eos> <mask>``."""

    def __init__(self, extra_tokens: tuple[str, ...] | list[str] = ()):
        tokens = list(dict.fromkeys([*SPECIAL_TOKENS, *ORGANIC, *SYMBOLS, *BRACKET_ATOMS, *extra_tokens]))
        self.extra_tokens = tuple(t for t in tokens[len(dict.fromkeys(
            [*SPECIAL_TOKENS, *ORGANIC, *SYMBOLS, *BRACKET_ATOMS])):])
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id = range(5)
        self._special = np.arange(len(SPECIAL_TOKENS), dtype=np.int64)
        self._random = np.arange(len(SPECIAL_TOKENS), self.vocab_size, dtype=np.int64)
        self.unknown = 0  # bracket atoms outside the vocabulary met so far (encoded as <unk>)

    @staticmethod
    def split(text: str, *, record: str | None = None, source: str | None = None) -> list[str]:
        """The regex tokens of ``text``; anything left unmatched is an ``InvalidRecordError``."""
        pos, out = 0, []
        for m in SMILES_REGEX.finditer(text):
            if m.start() != pos:
                break
            out.append(m.group(0))
            pos = m.end()
        if pos != len(text) or not out:
            raise InvalidRecordError(f"no SMILES token at character {pos + 1} ({text[pos:pos + 10]!r})"
                                     if text else "empty SMILES", source=source, record=record, position=pos)
        return out

    def encode(self, text: str, *, record: str | None = None, source: str | None = None) -> np.ndarray:
        toks = self.split(text.strip(), record=record, source=source)
        ids = np.fromiter((self.index.get(t, self.unk_id) for t in toks), dtype=np.uint16, count=len(toks))
        self.unknown += int((ids == self.unk_id).sum())
        return ids

    def encoder_defaults(self) -> dict[str, Any]:
        # token dropout stays on for SMILES: the published molecule figures (README) were trained with it
        return {"token_dropout": True}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": __name__, "extra_tokens": list(self.extra_tokens),
                "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SmilesTokenizer:
        tok = cls(tuple(spec.get("extra_tokens", ())))
        if "vocab_size" in spec and spec["vocab_size"] != tok.vocab_size:
            raise ValueError(f"saved SMILES vocabulary has {spec['vocab_size']} tokens, this version {tok.vocab_size}")
        return tok


def package_dir(name: str) -> Path:
    """Folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def read_smiles_column(path: str | Path, column: str = "SMILES", *, skip: int = 0,
                       max_records: int | None = None) -> list[tuple[int, str]]:
    """(row number, SMILES) from a CSV (gzip or plain) with a header; rows count from 1 after it."""
    path = Path(path)
    out = []
    with open_text(path, newline="", errors="strict") as fh:
        reader = csv.DictReader(fh)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"file {path}: no column {column!r} (has {reader.fieldnames})")
        for row, rec in enumerate(reader, start=1):
            if row <= skip:
                continue
            if max_records is not None and len(out) >= max_records:
                break
            out.append((row, rec[column] or ""))
    return out


def smiles_dataset(tokenizer: SmilesTokenizer, path: str, column: str = "SMILES", skip: int = 0,
                   max_records: int | None = None, on_invalid: str = "error",
                   package: str | None = None) -> SequenceDataset:
    """A masked-LM dataset of SMILES strings (e.g. MOSES ``train.csv.gz``): rows ``skip+1 ..
    skip+max_records``. ``package``: ``path`` is inside that installed package (located without
    importing it: molsets' ``moses`` does not import without its heavy dependencies).
    ``on_invalid``: ``error`` (raise, naming file, row and reason) or ``skip`` (counted in
    ``dataset.stats``)."""
    if package:
        path = str(package_dir(package) / path)
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    stats = ReadStats(str(path))
    arrays, names = [], []
    for row, smi in read_smiles_column(path, column, skip=skip, max_records=max_records):
        stats.read += 1
        try:
            arrays.append(tokenizer.encode(smi, record=f"row {row}", source=str(path)))
        except InvalidRecordError as err:
            if on_invalid == "error":
                raise
            stats.reject("invalid_smiles", str(err))
            continue
        names.append(f"row{row}")
        stats.kept += 1
    stats.check()
    return SequenceDataset(arrays, names, stats)
