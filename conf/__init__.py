"""Hydra configuration tree: its own package, ``fm_conf`` (the directory conf/ of the repository)."""
