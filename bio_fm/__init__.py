"""bio_fm: protein specifics (ESM-compatible alphabet, FASTA data, fair-esm interoperability,
the ESM contact head, embeddings and scoring). Importing it registers the protein alphabet, the
ESM contact head, the fair-esm ESM-2 checkpoint format and the Hugging Face ESM directory format
with ``fm_core.registry`` (an ``fm_toolkit.plugins`` entry point, so ``fm_core`` finds them when a
file or a directory names them)."""

from bio_fm import alphabet, contact, esm_compat, hf_esm  # noqa: F401  (register the tokenizer, head and formats)
