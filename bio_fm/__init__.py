"""bio_fm: protein specifics (ESM-compatible alphabet, FASTA data, fair-esm interoperability,
embeddings and scoring). Importing it registers the fair-esm ESM-2 checkpoint format with
``fm_core.export.load_pretrained``."""

from bio_fm import esm_compat  # noqa: F401  (registers the fair-esm ESM-2 format)
