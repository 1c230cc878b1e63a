"""code_fm: source-code specifics (BPE tokenizer, code datasets, completion decoding). Importing the
package imports nothing heavy; ``code_fm.plugins`` (the ``fm_toolkit.plugins`` entry point) registers
the BPE tokenizer with ``fm_core.registry``."""
