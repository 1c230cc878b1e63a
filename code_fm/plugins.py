"""What code_fm registers with ``fm_core.registry`` (the ``fm_toolkit.plugins`` entry point)."""

from code_fm import bpe  # noqa: F401  (registers the code_bpe tokenizer)
