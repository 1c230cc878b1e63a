"""code_fm: source-code specifics (BPE tokenizer, code datasets, completion decoding)."""
