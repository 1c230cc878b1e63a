"""bio_fm: protein specifics (ESM-compatible alphabet, FASTA data, fair-esm interoperability,
the ESM contact head, embeddings and scoring). Importing the package imports nothing heavy;
``bio_fm.plugins`` (the ``fm_toolkit.plugins`` entry point, loaded by ``fm_core.registry`` when a
lookup misses) registers the protein alphabet, the ESM contact head, the fair-esm ESM-2 checkpoint
format and the Hugging Face ESM directory format."""
