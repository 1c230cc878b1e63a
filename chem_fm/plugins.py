"""What chem_fm registers with ``fm_core.registry`` (the ``fm_toolkit.plugins`` entry point)."""

from chem_fm import smiles  # noqa: F401  (registers the smiles_regex tokenizer)
