"""What bio_fm registers with ``fm_core.registry`` (the ``fm_toolkit.plugins`` entry point)."""

from bio_fm import alphabet, contact, esm_compat, hf_esm  # noqa: F401  (register the tokenizer, head and formats)
