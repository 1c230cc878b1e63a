"""Check a Hydra app's overrides before any work starts: compose the config the way the app will
(Hydra's compose API) and turn each mistake into one `UserError` line naming the key and the remedy:
an unknown key (with the closest known ones), an unknown group option (with the available ones),
an unparsable override, a required value left out, a run directory that cannot be written."""

from __future__ import annotations

import difflib
import re
import tempfile
from pathlib import Path
from typing import Any

from fm_core.errors import UserError
from fm_core.help import CONF_PACKAGE, defaults, read_config

NOISE = ("See https://", "full_key:", "object_type", "reference_type", "Config search path", "provider=",
         "Set the environment variable")


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in [f"{prefix}{key}", *_flat_keys(value, f"{prefix}{key}.")]]
    return []


def _missing(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [m for key, value in node.items() for m in _missing(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def one_line(err: Exception, tool: str, known: list[str]) -> str:
    """Hydra's multi-line message as one line, with the available options or the closest keys."""
    raw = str(err).splitlines()
    available = [line.strip() for line in raw if line.startswith("\t") and "=" not in line]
    lines = [line.strip() for line in raw if line.strip() and not line.startswith("\t")]
    lines = [line for line in lines if not line.startswith((*NOISE, "Available options"))]
    message = lines[0].rstrip(".") if lines else type(err).__name__
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
        message = f"unknown key {key!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
        message += f"; a new key is added with +{key}=..."
    elif "no viable alternative" in message or "mismatched input" in message or "extraneous input" in message:
        message = f"cannot parse an override: {message} (quote values with brackets, commas or spaces)"
    elif len(lines) > 1 and not available:
        message += f": {lines[1]}"
    if available:
        message += f" (available: {', '.join(available)})"
    return f"{message}; see {tool} --help"


def _writable(raw: str, value: str) -> None:
    """Refuse a run directory that exists as a file or under a directory that cannot be written."""
    key = raw[2:-1] if re.fullmatch(r"\$\{\w+\}", raw) else "hydra.run.dir"
    probe = Path(value).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{key}={value}: {probe} is a file, not a directory (choose another {key}=...)")
    try:  # os.access says yes to root even where the file system refuses: try it
        with tempfile.TemporaryFile(dir=probe, prefix=".fm-write-probe-"):
            pass
    except OSError as err:
        raise UserError(f"{key}={value}: cannot write in {probe} ({err.strerror}); choose a writable {key}=...") from err


def _check_run_dir(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    HydraConfig.instance().set_config(cfg)
    try:
        value = str(cfg.hydra.run.dir)
    except OmegaConfBaseException:  # an interpolation only the running job can resolve: Hydra checks it
        return
    _writable(str(raw), value)


def check_overrides(config_module: str, config_name: str, tool: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            names = {group for group, _ in defaults(read_config(config_name))}
            groups = [o for o in overrides if o.split("=")[0].lstrip("+~") in names]
            try:
                known = _flat_keys(OmegaConf.to_container(compose(config_name, overrides=groups), resolve=False))
            except (HydraException, OmegaConfBaseException):
                known = []
            raise UserError(one_line(err, tool, known)) from err
        values = OmegaConf.to_container(cfg, resolve=False)
        values.pop("hydra", None)
        missing = _missing(values)
        if missing:
            raise UserError(f"missing required value{'s' if len(missing) > 1 else ''}: "
                            f"{', '.join(f'{m}=...' for m in missing)} (see {tool} --help)")
        _check_run_dir(cfg)
