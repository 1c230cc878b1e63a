"""Chemistry side of fm-toolkit: SMILES tokenizer, molecule representations, property scoring."""
