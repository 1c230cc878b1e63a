"""The tokenizer interface every corpus implements, and safe (re)loading of saved tokenizers.

A tokenizer turns one record (a protein sequence, a source file) into a 1-D array of regular
token ids *without* special tokens; ``add_special_tokens`` wraps it for the model. Collators,
masking and the model only use the ids exposed here, so protein and code share them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from fm_core.errors import UserError
from fm_core.registry import TOKENIZERS


class InvalidRecordError(UserError, ValueError):
    """A record that cannot be tokenized. The message names the source, the record and why."""

    def __init__(self, reason: str, *, source: str | None = None, record: str | None = None,
                 position: int | None = None):
        self.reason, self.source, self.record, self.position = reason, source, record, position
        where = []
        if source is not None:
            where.append(f"file {source}")
        if record is not None:
            where.append(f"record {record!r}")
        if position is not None:
            where.append(f"position {position}")
        super().__init__(f"{', '.join(where) or 'input'}: {reason}")


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    mask_id: int
    bos_id: int | None
    eos_id: int | None

    @property
    def special_ids(self) -> np.ndarray: ...  # never masked, never predicted

    @property
    def random_ids(self) -> np.ndarray: ...  # what the 10% random replacement draws from

    def encode(self, text: str, *, record: str | None = None) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...

    def add_special_tokens(self, ids: np.ndarray) -> np.ndarray: ...

    @property
    def num_special_added(self) -> int: ...  # tokens add_special_tokens puts around a record

    def to_dict(self) -> dict[str, Any]: ...

    # EncoderConfig fields that are conventions of this tokenizer's domain (e.g. token dropout for
    # proteins); ``build_model`` applies them to a new model, explicit overrides win
    def encoder_defaults(self) -> dict[str, Any]: ...


class TokenizerBase:
    """What the toolkit's tokenizers share: ``_special`` / ``_random`` id arrays set by the subclass,
    ``<bos> ids <eos>`` wrapping, and decoding by ``self.tokens`` (subclasses with another
    vocabulary store override ``decode``)."""

    bos_id: int
    eos_id: int
    tokens: list[str]
    _special: np.ndarray
    _random: np.ndarray

    @property
    def special_ids(self) -> np.ndarray:
        return self._special

    @property
    def random_ids(self) -> np.ndarray:
        return self._random

    def decode(self, ids: Any) -> str:
        return "".join(self.tokens[int(i)] for i in np.asarray(ids).reshape(-1))

    def encoder_defaults(self) -> dict[str, Any]:
        """EncoderConfig conventions of this domain for a new model: none by default."""
        return {}

    @property
    def num_special_added(self) -> int:
        """How many special tokens ``add_special_tokens`` adds to a record (the one source for it)."""
        return len(self.add_special_tokens(np.zeros(0, dtype=np.int64)))

    def add_special_tokens(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty(len(ids) + 2, dtype=np.int64)
        out[0], out[-1] = self.bos_id, self.eos_id
        out[1:-1] = ids
        return out


def register_tokenizer(kind: str):
    """Class decorator: make a tokenizer loadable from its ``to_dict()`` by ``kind`` (the package
    that defines it registers it when imported; see ``fm_core.registry``)."""

    def wrap(cls: type) -> type:
        TOKENIZERS.register(kind, cls)
        cls.kind = kind
        return cls

    return wrap


def tokenizer_from_dict(spec: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved by ``to_dict`` from its registered ``kind``. Nothing the dict
    names is imported (a ``module`` entry written by older versions is ignored): an unregistered
    kind is refused with ``fm_core.registry.UnknownKindError`` (a ``ValueError``)."""
    return TOKENIZERS.get(str(spec.get("kind"))).from_dict(spec)
