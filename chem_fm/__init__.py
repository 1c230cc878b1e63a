"""Chemistry side of fm-toolkit: SMILES tokenizer, molecule representations, property scoring.
Importing the package imports nothing heavy; ``chem_fm.plugins`` (the ``fm_toolkit.plugins`` entry
point) registers the SMILES tokenizer with ``fm_core.registry``."""
