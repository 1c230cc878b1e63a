"""Secondary structure (3/8-state DSSP) from backbone embeddings, with single-sequence and profile baselines."""
