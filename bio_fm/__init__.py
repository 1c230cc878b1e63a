"""bio_fm: protein specifics (ESM-compatible alphabet, FASTA datasets, embedded UniProt slice)."""
