"""Console entry points of the Hydra apps (fm-pretrain, fm-embed, fm-finetune, fm-protein-score).

Each composes its config and calls one plain function, behind the one error path of
`fm_core.errors`: `--help` is rendered from the app's YAML (its purpose, its own groups and keys
with their comments, examples) without importing Hydra or torch; the overrides are composed and
checked (unknown keys, missing options and required values, an unwritable run directory) before
any work starts, each mistake in one line with exit code 2; torch, Lightning and W&B are imported
only when the work starts. An app's function is found by its config name in the
`fm_toolkit.apps` entry points (pyproject.toml), so this module names no domain package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from fm_core.errors import UserError, debug_requested, fail, run_cli, strip_debug
from fm_core.help import render_help, short_usage

CONFIG_MODULE = "pkg://fm_conf"
APP_GROUP = "fm_toolkit.apps"
# Hydra's own flags: with one of these the command goes to Hydra as it is (no pre-check)
HYDRA_FLAGS = ("--multirun", "-m", "--cfg", "-c", "--hydra-help", "--info", "-i", "--resolve", "--package",
               "-p", "--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
               "--experimental-rerun", "--shell-completion", "-sc")


def _env() -> None:
    # W&B is offline unless the user explicitly says otherwise; nothing here touches the network.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    if debug_requested():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")


def app_function(config_name: str) -> Callable[[Any], Any]:
    """The function an app runs, from the `fm_toolkit.apps` entry point named like its config."""
    found = entry_points(group=APP_GROUP, name=config_name)
    if not found:
        raise RuntimeError(f"no {APP_GROUP} entry point {config_name!r}: reinstall fm-toolkit (pip install -e .)")
    return next(iter(found)).load()


def run_app(config_name: str, tool: str, *, resumes: bool, argv: list[str] | None = None) -> None:
    """Run the Hydra app `config_name` as the console command `tool`."""
    _env()
    argv = strip_debug(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(render_help(config_name, tool, argv))
        return
    if not argv:
        usage = short_usage(config_name, tool)
        if usage:  # required keys: no arguments is a usage error, not 100 lines of Hydra
            print(usage, file=sys.stderr)
            raise SystemExit(2)
    run_cli(tool, lambda: _launch(config_name, tool, argv, resumes), resumes=resumes)


def _launch(config_name: str, tool: str, argv: list[str], resumes: bool) -> None:
    from fm_core.hydra_check import check_overrides

    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        check_overrides(CONFIG_MODULE, config_name, tool, argv)
    import hydra

    run = app_function(config_name)

    @hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name=config_name)
    def job(cfg: Any) -> None:
        run_cli(tool, lambda: run(cfg), resumes=resumes)

    saved = sys.argv
    sys.argv = [saved[0], *argv]  # Lightning relaunches DDP workers from sys.argv
    try:
        job()
    finally:
        sys.argv = saved


def pretrain() -> None:
    run_app("pretrain", "fm-pretrain", resumes=True)


def embed() -> None:
    run_app("embed", "fm-embed", resumes=True)


def finetune() -> None:
    run_app("finetune", "fm-finetune", resumes=False)


def protein_score() -> None:
    run_app("protein_score", "fm-protein-score", resumes=False)


__all__ = ["UserError", "app_function", "embed", "fail", "finetune", "pretrain", "protein_score", "run_app"]

if __name__ == "__main__":
    pretrain()
