"""OmegaConf resolvers used by the config tree."""

from __future__ import annotations

from importlib.resources import files

from omegaconf import OmegaConf


def package_path(package: str, relative: str = "") -> str:
    """``${pkg_path:bio_fm,data/x.fa}`` -> absolute path of a file shipped inside a package."""
    return str(files(package).joinpath(relative))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pkg_path"):
        OmegaConf.register_new_resolver("pkg_path", package_path)
