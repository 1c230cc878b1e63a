"""Hydra configuration tree, installed as the package ``fm_core.conf``."""
