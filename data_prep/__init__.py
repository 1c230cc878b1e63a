"""data_prep: raw corpora -> clean, deduplicated, leakage-free splits."""
