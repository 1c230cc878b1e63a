"""Fill-in-the-middle layout, shared by training (``code_fm.fim``) and inference (``fm-complete``).

Pure formatting: no data loading, no Lightning. A tokenizer that can lay out FIM sequences has
the three sentinel ids (``FIMTokenizer``, e.g. ``code_fm.bpe.CodeBPETokenizer``):

- PSM: ``<fim_prefix> P <fim_suffix> S <fim_middle> M``
- SPM (StarCoder's variant): ``<fim_prefix> <fim_suffix> S <fim_middle> P M``
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from fm_core.tokenizer import Tokenizer


@runtime_checkable
class FIMTokenizer(Tokenizer, Protocol):
    """A ``Tokenizer`` with fill-in-the-middle sentinels (``isinstance`` checks a loaded one)."""

    fim_prefix_id: int
    fim_middle_id: int
    fim_suffix_id: int


def fim_layout(tok: FIMTokenizer, prefix: list[int] | np.ndarray, middle: list[int] | np.ndarray,
               suffix: list[int] | np.ndarray, spm: bool) -> list[int]:
    """The FIM sequence for training (``middle`` then ``<eos>``) or, with ``middle=[]`` and no
    eos appended by the caller, the prompt at inference."""
    p, m, s = (list(map(int, x)) for x in (prefix, middle, suffix))
    if spm:
        return [tok.fim_prefix_id, tok.fim_suffix_id, *s, tok.fim_middle_id, *p, *m]
    return [tok.fim_prefix_id, *p, tok.fim_suffix_id, *s, tok.fim_middle_id, *m]


__all__ = ["FIMTokenizer", "fim_layout"]
