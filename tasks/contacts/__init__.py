"""Residue-residue contacts: the ESM logistic-regression recipe and a supervised pair head, with baselines."""
