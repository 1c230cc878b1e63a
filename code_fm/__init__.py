"""code_fm: source-code specifics (BPE tokenizer, code datasets, completion decoding). Importing it
registers the BPE tokenizer with ``fm_core.registry`` (an ``fm_toolkit.plugins`` entry point)."""

from code_fm import bpe  # noqa: F401  (registers the code_bpe tokenizer)
