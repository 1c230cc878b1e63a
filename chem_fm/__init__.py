"""Chemistry side of fm-toolkit: SMILES tokenizer, molecule representations, property scoring.
Importing it registers the SMILES tokenizer with ``fm_core.registry`` (an ``fm_toolkit.plugins``
entry point)."""

from chem_fm import smiles  # noqa: F401  (registers the smiles_regex tokenizer)
