"""Self-describing model exports: ``config.json`` (model + tokenizer) and ``model.safetensors``.

Loading never unpickles: weights come from safetensors, or from a Lightning checkpoint read with
``torch.load(weights_only=True)``. Other packages register the foreign formats they can import
(``register_format``; e.g. ``bio_fm.esm_compat`` for fair-esm ESM-2 ``.pt`` files), each with the
exact non-tensor globals its files may contain: nothing else is ever unpickled.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fm_core.checkpoint import CheckpointError, atomic_write_bytes, safe_torch_load
from fm_core.config import SIZES, ConfigError, EncoderConfig
from fm_core.model import MaskedLM
from fm_core.tokenizer import TRUSTED_PACKAGES, Tokenizer, tokenizer_from_dict

log = logging.getLogger(__name__)
FORMAT = "fm-toolkit/1"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# weights that older exports may lack: rebuilt at their initial values, with a warning
OPTIONAL_PREFIXES = ("contact_head.",)


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint format another package can import.

    ``accepts(obj)`` looks at what ``torch.load(weights_only=True)`` returned; ``load(obj, path)``
    builds ``(MaskedLM, Tokenizer)`` or raises ``CheckpointError``. ``safe_globals`` lists the only
    non-tensor classes its files may hold (allowed for that load only).
    """

    name: str
    accepts: Callable[[Any], bool]
    load: Callable[[Any, Path], tuple[MaskedLM, Tokenizer]]
    safe_globals: tuple[Any, ...] = ()


_FORMATS: dict[str, ForeignFormat] = {}


def register_format(fmt: ForeignFormat) -> ForeignFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def _load_plugins() -> None:
    """Import this toolkit's packages so that the formats they know are registered."""
    for package in TRUSTED_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:  # pragma: no cover - a package of the toolkit not installed
            pass


def save_pretrained(directory: str | Path, net: MaskedLM, tokenizer: Tokenizer,
                    metadata: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "fm_format": FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    spec = {"format": FORMAT, "model": net.config.to_dict(), "tokenizer": tokenizer.to_dict(),
            "metadata": metadata or {}}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(spec, indent=2, sort_keys=True).encode())
    return directory


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable config ({err})") from err
    if spec.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {spec.get('format')!r} is not {FORMAT!r}")
    return spec


def _build(spec: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> tuple[MaskedLM, Tokenizer]:
    try:
        cfg = EncoderConfig.from_dict(spec["model"])
        tokenizer = tokenizer_from_dict(spec["tokenizer"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model/tokenizer description ({err})") from err
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens, model {cfg.vocab_size}")
    net = MaskedLM(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise CheckpointError(f"{source}: weights do not fit the described model ({err})") from err
    optional = [k for k in missing if k.startswith(OPTIONAL_PREFIXES)]
    missing = [k for k in missing if not k.startswith(OPTIONAL_PREFIXES)]
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the described model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if optional:
        log.warning("%s: no weights for %s (an older export): left at their initial values", source, optional)
    net.eval()
    return net, tokenizer


def load_pretrained(path: str | Path) -> tuple[MaskedLM, Tokenizer]:
    """An export directory (or its config.json), a Lightning ``.ckpt`` of ``fm-pretrain``, or a
    file of a registered foreign format (e.g. a fair-esm ESM-2 ``.pt``)."""
    path = Path(path)
    if path.is_dir() or path.name == CONFIG_NAME:
        directory = path if path.is_dir() else path.parent
        spec = _read_spec(directory / CONFIG_NAME)
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: unreadable weights ({err})") from err
        return _build(spec, state, directory)
    _load_plugins()
    allowed = tuple(g for fmt in _FORMATS.values() for g in fmt.safe_globals)
    ckpt = safe_torch_load(path, allowed)
    meta = ckpt.get("fm_toolkit") if isinstance(ckpt, dict) else None
    if meta:
        state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        return _build({"format": FORMAT, **meta}, state, path)
    for fmt in _FORMATS.values():
        if fmt.accepts(ckpt):
            return fmt.load(ckpt, path)
    known = ", ".join(["fm-toolkit export directory", "fm-toolkit .ckpt", *_FORMATS])
    raise CheckpointError(f"{path}: not an fm-toolkit checkpoint (no 'fm_toolkit' entry) and no "
                          f"known format recognises it (known: {known})")


SHAPE_FIELDS = ("num_layers", "embed_dim", "num_heads", "ffn_dim", "vocab_size")


def init_from_checkpoint(path: str | Path, tokenizer: Tokenizer | None = None, size: str | None = None,
                         **overrides: Any) -> MaskedLM:
    """A backbone initialised from a checkpoint (``model.init_from``): its shape comes from the
    checkpoint; ``size`` or shape ``overrides`` must agree with it, other fields (``max_length``,
    ``activation_checkpointing``...) may be changed. The tokenizer must be the checkpoint's."""
    if size is not None and size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
    net, ckpt_tokenizer = load_pretrained(path)
    cfg = net.config
    expected = dict(SIZES[size]) if size is not None else {}
    expected.update({k: v for k, v in overrides.items() if k in SHAPE_FIELDS and v is not None})
    conflicts = {k: (v, getattr(cfg, k)) for k, v in expected.items() if getattr(cfg, k) != v}
    if conflicts:
        said = ", ".join(f"{k}={want} (checkpoint: {got})" for k, (want, got) in conflicts.items())
        raise ConfigError(f"model.init_from={path}: the checkpoint's shape disagrees with the configured "
                          f"{'size ' + repr(size) + ': ' if size else ''}{said}. Drop the size "
                          f"(model=from_checkpoint) to take the shape from the checkpoint.")
    if tokenizer is not None and tokenizer.to_dict() != ckpt_tokenizer.to_dict():
        raise ConfigError(f"model.init_from={path}: the checkpoint's tokenizer ({ckpt_tokenizer.to_dict().get('kind')}) "
                          f"differs from the data's ({tokenizer.to_dict().get('kind')})")
    changes = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS and v is not None}
    if changes:
        values = cfg.to_dict()
        values.update(changes)
        new_cfg = EncoderConfig.from_dict(values)
        state = net.state_dict()
        net = MaskedLM(new_cfg)
        net.load_state_dict(state)
    net.config.extra = {**net.config.extra, "init_from": str(path)}
    return net.train()


